"""What the workflow's cluster jobs ask for: the submitted rules' own requests, and a Snakemake profile's.

`rule_requests` is the one place the rules `data` and `train` (workflow/rules/*.smk) take their threads and
resources from, so that `relaxbench cluster-check` computes the requests Snakemake makes without running
it: threads from the profile's `set-threads`, else the rule's; each resource from `set-resources`, else the
rule's, else `default-resources` (Snakemake's precedence). Several profiles merge as Snakemake merges several
`--profile`s: a top-level key of a later one replaces the earlier one's entirely. Inside a run, the
workflow's pre-flight hook reads the same requests from Snakemake's jobs (`from_jobs`).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import yaml

from relaxbench.cluster import ClusterError, JobRequest, PluginSettings

__all__ = ["from_jobs", "job_requests", "load_profiles", "plugin_settings", "rule_requests"]

PROFILE_FILES = ("profile.yaml", "config.yaml")


def rule_requests(cfg: dict) -> dict[str, tuple[int, dict]]:
    """``{rule: (threads, resources)}`` of the rules submitted as cluster jobs, before any profile.

    Memory in MB, runtime in minutes; `train` asks for one GPU when the config says ``device: cuda``.
    """
    return {
        "data": (1, {"mem_mb": 4000, "runtime": 60}),
        "train": (
            cfg["threads"],
            {"mem_mb": 8000, "runtime": 120, "gpu": 1 if cfg["device"] == "cuda" else 0},
        ),
    }


def profile_file(path: str | Path) -> Path:
    """The YAML file of a profile given as a folder (its profile.yaml or config.yaml) or as the file."""
    path = Path(path)
    if path.is_dir():
        for name in PROFILE_FILES:
            if (path / name).is_file():
                return path / name
        raise ClusterError(f"profile {path} has no {' or '.join(PROFILE_FILES)}")
    if not path.is_file():
        raise ClusterError(f"profile {path} does not exist")
    return path


def load_profiles(paths: Iterable[str | Path]) -> dict:
    """The profiles' settings merged as Snakemake merges several `--profile`s (later top-level keys win)."""
    merged: dict = {}
    for path in paths:
        file = profile_file(path)
        data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
        if not isinstance(data, dict):
            raise ClusterError(f"profile {file} is not a mapping of settings")
        merged.update(data)
    if merged.get("executor") != "slurm":
        raise ClusterError(
            f"the profiles set executor: {merged.get('executor')!r}; the check is for executor: slurm"
        )
    return merged


def _resources(mapping: dict) -> dict:
    """Resources with Snakemake's units (mem_mb, runtime in minutes) from a profile's mapping."""
    from snakemake.resources import Resources

    try:
        return dict(Resources.from_mapping(mapping or {}).unwrapped_items())
    except Exception as err:  # Snakemake's WorkflowError for sizes and times it cannot read
        raise ClusterError(f"profile resources {mapping}: {err}") from None


def job_requests(profile: dict, cfg: dict) -> list[JobRequest]:
    """One `JobRequest` per submitted rule, as Snakemake resolves the rule's and the profile's settings."""
    requests = []
    for rule, (threads, own) in rule_requests(cfg).items():
        threads = int((profile.get("set-threads") or {}).get(rule, threads))
        default = _resources(profile.get("default-resources"))
        override = _resources((profile.get("set-resources") or {}).get(rule))
        requests.append(JobRequest.from_resources(rule, threads, {**default, **_resources(own), **override}))
    return requests


def plugin_settings(profile: dict) -> PluginSettings:
    """The SLURM plugin's status settings the profiles give (status command None: the plugin's default)."""
    return PluginSettings(
        status_command=profile.get("slurm-status-command"),
        init_seconds=int(profile.get("slurm-init-seconds-before-status-checks", 40)),
    )


def from_jobs(jobs: Iterable) -> list[JobRequest]:
    """The distinct requests of Snakemake jobs (their evaluated threads and resources), in rule order."""
    requests = []
    for job in jobs:
        resources = {name: getattr(value, "value", value) for name, value in job.resources.items()}
        request = JobRequest.from_resources(job.rule.name, job.threads, resources)
        if request not in requests:
            requests.append(request)
    return sorted(requests, key=lambda r: r.rule)
