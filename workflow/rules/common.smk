"""Helpers of the workflow: which relaxbench and which config file the jobs use, the grid of runs, paths.

The grid, the data keys and the per-run settings come from `relaxbench.config` (`expand_runs`,
`data_key`, `resolve_run`, `run_hash`), the same functions the `relaxbench` command line uses, so the
workflow and the jobs cannot disagree about what a config means.

Why one config file and no `--config KEY=VALUE`: every job runs `relaxbench ... --config FILE`, which reads
that file and nothing else. Snakemake merges command-line overrides (and several `--configfile`s) into its
own copy only, so the jobs would silently run a different config than the DAG was built from. The workflow
therefore refuses them; write the change into a copy of the config file instead.
"""

import os
import re
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

# The workflow runs the relaxbench next to this Snakefile, here and in every job (`python -m relaxbench`),
# whatever else is installed; a user's model modules stay importable through the PYTHONPATH they set.
CHECKOUT = workflow.basedir
sys.path.insert(0, CHECKOUT)
os.environ.update(PYTHONPATH=os.pathsep.join([CHECKOUT, *filter(None, [os.environ.get("PYTHONPATH")])]))

from relaxbench import layout
from relaxbench.errors import UserError, one_line
from relaxbench.config import (
    ConfigError,
    RunSpec,
    check_model_params,
    expand_runs,
    read_yaml,
    resolve_run,
    run_hash,
    validate_config,
)

DEFAULT_CONFIG = str(Path(workflow.basedir) / "configs" / "default.yaml")


def config_file():
    """The one YAML file every job reads (relative to the working directory when it lies below it).

    The `--configfile` given on the command line, else configs/default.yaml next to the Snakefile. Raises
    a WorkflowError if Snakemake's config is not exactly that file's content (several `--configfile`s or
    `--config` overrides), since the jobs would not see the difference.
    """
    given = [str(path) for path in workflow.overwrite_configfiles]
    if len(given) > 1:
        raise WorkflowError(
            f"relaxbench: give one --configfile, not {len(given)} ({', '.join(given)}): every job reads "
            "exactly one config file; merge them into one"
        )
    path = given[0] if given else DEFAULT_CONFIG
    try:
        on_disk = read_yaml(path)  # the size, encoding, duplicate-key and alias limits of relaxbench
    except ConfigError as err:
        raise WorkflowError(f"relaxbench: {one_line(err)}") from None
    if on_disk != config:
        changed = sorted(key for key in set(on_disk or {}) | set(config) if (on_disk or {}).get(key) != config.get(key))
        raise WorkflowError(
            f"relaxbench: the config differs from {path} in {changed} (--config overrides?): the jobs read "
            "the file itself, so write the change into a copy of it and pass that with --configfile"
        )
    relative = os.path.relpath(path)
    return path if relative.startswith(os.pardir) else relative


def checked_config(path):
    """`relaxbench.config.validate_config` and `check_model_params` on Snakemake's config: names of tasks,
    models, methods, entries and every task and model parameter, before any job runs."""
    try:
        cfg = validate_config(config, path)
        check_model_params(cfg, path)
        return cfg
    except UserError as err:
        raise WorkflowError(f"relaxbench: {one_line(err)}") from None


def one_of(names):
    """A wildcard constraint matching exactly one of ``names``."""
    return "|".join(re.escape(name) for name in names)


def run_spec(wildcards):
    """The run of the grid a train job's wildcards name (``{model}`` is the run folder: a swept cell's
    ``<model>+<label>``)."""
    return RUN_BY_FOLDER[(wildcards.task, wildcards.model, wildcards.method, int(wildcards.seed))]


def run_file(run, filename):
    """``results/<name>/runs/<task>/<model>/<method>/seed<k>/<filename>`` (`relaxbench.layout`)."""
    return str(layout.run_dir(layout.results_dir(NAME), run) / filename)


def run_files(filename):
    """``filename`` of every run of the grid."""
    return [run_file(run, filename) for run in RUNS]


def data_done(wildcards):
    """The DONE.json of the run's task data (``results/<name>/data/<task>/<key>/DONE.json``; a swept task
    parameter has its own key, the data of each distinct parameter set are generated once)."""
    key = resolve_run(CFG, run_spec(wildcards))["data_key"]
    return str(layout.data_dir(layout.results_dir(NAME), wildcards.task, key) / "DONE.json")


def config_hash(wildcards):
    """Hash of every setting the run depends on except its seed; a change reruns exactly the runs it touches."""
    return run_hash(resolve_run(CFG, run_spec(wildcards)))


def config_path(wildcards, input):
    """The config file the jobs read (`--config`).

    It takes `input` so that Snakemake counts it as derived from the inputs and leaves it out of the params
    rerun trigger: where the config lives does not change a run, what it says does (`config_hash`).
    """
    return CONFIG_FILE


def parent(path, levels=1):
    """``path`` without its last ``levels`` components."""
    return str(Path(path).parents[levels - 1])
