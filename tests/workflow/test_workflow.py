"""The Snakemake workflow without training: lint, schema, dry runs of every config and profile, its files."""

from __future__ import annotations

import re
import zipfile

import pytest
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from relaxbench import registry
from relaxbench.config import (
    SCHEMA_PATH,
    ConfigError,
    expand_runs,
    load_config,
    resolve_run,
    validate_config,
)
from relaxbench.methods import METHODS
from tests.workflow.helpers import REPO, job_counts, load, planned_jobs, snakemake, write_config

WORKFLOW_SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


def test_lint_is_clean(tmp_path):
    out = snakemake("--lint", "--configfile", "configs/smoke.yaml", workdir=tmp_path)
    assert "Congratulations, your workflow is in a good condition!" in out.stdout, out.stdout


def test_workflow_schema_is_the_package_schema():
    assert WORKFLOW_SCHEMA.is_symlink()
    assert WORKFLOW_SCHEMA.resolve() == SCHEMA_PATH.resolve()


BAD = [
    # (change, text naming the problem in snakemake's message, in relaxbench's message)
    (
        lambda c: c["training"].update(epoch=3),
        "'epoch' was unexpected",
        "at 'training': unknown key(s) ['epoch']",
    ),
    (lambda c: c.update(seed=[0]), "'seed' was unexpected", "unknown key(s) ['seed']"),
    (
        lambda c: c["training"].update(epochs="two"),
        "On instance['training']['epochs']",
        "at 'training.epochs'",
    ),
    (
        lambda c: c["models"]["tfn"].update(training={"lr": "fast"}),
        "On instance['models']['tfn']['training']['lr']",
        "at 'models.tfn.training.lr'",
    ),
    (
        lambda c: c["methods"]["relaxed"].update(lambda_lie=-1),
        "On instance['methods']['relaxed']['lambda_lie']",
        "at 'methods.relaxed.lambda_lie'",
    ),
]


@pytest.mark.parametrize("change, snakemake_says, relaxbench_says", BAD)
def test_schema_rejects_unknown_keys_and_wrong_types_naming_the_key(change, snakemake_says, relaxbench_says):
    cfg = load("configs/smoke.yaml")
    change(cfg)
    with pytest.raises(WorkflowError) as err:
        validate(cfg, str(WORKFLOW_SCHEMA))
    assert snakemake_says in str(err.value)
    with pytest.raises(ConfigError) as err:
        validate_config(cfg, "smoke")
    assert relaxbench_says in str(err.value)


@pytest.mark.slow
def test_the_workflow_stops_on_a_bad_config_naming_the_key(tmp_path):
    cfg = load("configs/smoke.yaml")
    cfg["models"]["tfn"]["paramz"] = {}
    out = snakemake(
        "-n", "--configfile", str(write_config(tmp_path / "bad.yaml", cfg)), workdir=tmp_path, check=False
    )
    assert out.returncode != 0
    assert "'paramz' was unexpected" in out.stdout and "On instance['models']['tfn']" in out.stdout


@pytest.mark.slow
def test_the_workflow_checks_model_parameters_before_any_job(tmp_path):
    cfg = load("configs/smoke.yaml")
    cfg["models"]["tfn"]["params"]["hiden"] = "4x0e"
    out = snakemake(
        "-n", "--configfile", str(write_config(tmp_path / "bad.yaml", cfg)), workdir=tmp_path, check=False
    )
    assert out.returncode != 0
    assert "at 'models.tfn.params': unknown parameter(s) ['hiden']; choices:" in out.stdout
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_the_workflow_refuses_a_model_on_a_task_kind_it_does_not_support(tmp_path):
    cfg = load("configs/smoke.yaml")
    cfg["models"]["egnn"]["tasks"] = ["nbody", "tetris"]
    out = snakemake(
        "-n", "--configfile", str(write_config(tmp_path / "bad.yaml", cfg)), workdir=tmp_path, check=False
    )
    assert out.returncode != 0
    assert "model 'egnn' does not support task 'tetris' (kind 'point_classification')" in out.stdout
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_the_workflow_refuses_overrides_the_jobs_would_not_see(tmp_path):
    out = snakemake(
        "-n", "--configfile", "configs/smoke.yaml", "--config", "seeds=[0,1]", workdir=tmp_path, check=False
    )
    assert out.returncode != 0
    assert "differs from" in out.stdout and "['seeds']" in out.stdout


def test_dry_run_of_the_default_config_with_the_local_profile(tmp_path):
    out = snakemake("-n", "--workflow-profile", "workflow/profiles/default", workdir=tmp_path)
    runs = expand_runs(load_config(REPO / "configs/default.yaml"))
    n_data = len({r.task for r in runs})
    assert job_counts(out.stdout) == {"data": n_data, "train": len(runs), "collect": 1, "report": 1, "all": 1}
    assert {r.method for r in runs} == {
        "equivariant",
        "relaxed",
        "relaxed_no_schedule",
        "relaxed_no_lie",
        "relaxed_no_reg",
        "rpp",  # the smoke plumes' RPP row
        "relaxed_published_lie",
        "dual_ascent",
        "dual_ascent_resilient",
        "symmetrised",
    }
    assert {r.seed for r in runs} == {0, 1, 2}
    assert "results/default/leaderboard.csv" in out.stdout and "reports/default" in out.stdout


def test_dry_run_of_the_smoke_config_covers_every_family_and_method(tmp_path):
    out = snakemake("-n", "-p", "--configfile", "configs/smoke.yaml", workdir=tmp_path)
    trains = [w for rule, w in planned_jobs(out.stdout) if rule == "train"]
    cfg = load_config(REPO / "configs/smoke.yaml")
    assert sorted((w["task"], w["model"], w["method"], int(w["seed"])) for w in trains) == [
        (r.task, r.model, r.method, r.seed) for r in expand_runs(cfg)
    ]
    assert {w["method"] for w in trains} == set(METHODS)
    families = {registry.get_model(m["arch"]).family for m in cfg["models"].values()}
    assert {"gnn", "steerable_cnn", "se3_transformer", "vector_neurons"} <= families
    assert {w["seed"] for w in trains} == {"0"}
    # the jobs get the config file, their own folders and the config's threads
    assert re.search(
        r"python -m relaxbench -v train --config \S*configs/smoke\.yaml --task tetris --model tfn "
        r"--method rpp --seed 0 --out results/smoke/runs/tetris/tfn/rpp/seed0 "
        r"--data-dir results/smoke/data/tetris/[0-9a-f]{16} --threads 1 --resume --quiet",
        out.stdout,
    )


def test_dry_run_of_the_paper_config_on_the_slurm_profile(tmp_path):
    out = snakemake(
        "-n",
        "--profile",
        "workflow/profiles/slurm",
        "--configfile",
        "configs/paper.yaml",
        "--cores",
        "8",
        workdir=tmp_path,
    )
    cfg = load_config(REPO / "configs/paper.yaml")
    runs = expand_runs(cfg)
    n_data = len({(r.task, resolve_run(cfg, r)["data_key"]) for r in runs})  # swept n_train: one per value
    assert n_data == len({r.task for r in runs}) + 3
    assert {r.folder for r in runs if r.model == "segnn"} == {
        "segnn",
        *(f"segnn+params.layers={n}" for n in (2, 6, 8)),
        *(f"segnn+nbody.n_train={n}" for n in (100, 300, 1000)),
    }
    assert job_counts(out.stdout) == {"data": n_data, "train": len(runs), "collect": 1, "report": 1, "all": 1}
    blocks = out.stdout.split("rule train:")[1:]
    assert blocks and all("gpu=1" in b.split("Shell command")[0] for b in blocks)
    assert "--threads 4" in out.stdout and "runtime=1440" in out.stdout


def test_profiles_resume_and_keep_going_and_leave_site_settings_to_the_site():
    local = yaml.safe_load((REPO / "workflow/profiles/default/config.yaml").read_text())
    slurm = yaml.safe_load((REPO / "workflow/profiles/slurm/config.yaml").read_text())
    for profile in (local, slurm):
        assert profile["rerun-incomplete"] is True and profile["keep-going"] is True
    assert slurm["executor"] == "slurm"
    assert slurm["set-resources"]["train"]["gpu"] == 1
    for rule in ("data", "train"):
        assert {"mem_mb", "runtime"} <= set(slurm["set-resources"][rule])
    site = {"slurm_partition", "slurm_account", "gres", "gpu_model"}
    for resources in (slurm["default-resources"], *slurm["set-resources"].values()):
        assert not site & set(resources)


def test_every_config_writes_under_its_own_name():
    names = [load(f"configs/{c}.yaml")["name"] for c in ("default", "smoke", "paper", "evidence")]
    assert names == ["default", "smoke", "paper", "evidence"]


def test_dry_run_of_the_evidence_config(tmp_path):
    out = snakemake("-n", "--configfile", "configs/evidence.yaml", workdir=tmp_path)
    cfg = load_config(REPO / "configs/evidence.yaml")
    runs = expand_runs(cfg)
    # tetris, shapes and one N-body set (EGNN and SEGNN share its 100 training trajectories)
    assert job_counts(out.stdout) == {"data": 3, "train": len(runs), "collect": 1, "report": 1, "all": 1}
    seeds = {}
    for run in runs:
        seeds.setdefault(run.model, set()).add(run.seed)
    # each entry's seeds: as many as its measured spread asks for to see 5% of the baseline where a CPU budget
    # buys them (docs/RESULTS.md section 1), fresh ones for the tfn replication
    assert seeds == {
        "egnn": set(range(30)),
        "vn_pointnet": set(range(20)),
        "segnn": set(range(10)),
        "tfn": set(range(10, 20)),
    }
    assert len(runs) == 170 and {r.folder for r in runs if r.task == "nbody"} == {"egnn", "segnn"}


def test_rule_environment_pins_agree_with_the_lock_file():
    lock = {
        line.split("==")[0].lower(): line.strip()
        for line in (REPO / "requirements.lock").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }
    env = yaml.safe_load((REPO / "workflow/envs/relaxbench.yaml").read_text())
    pins = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert pins
    for pin in pins:
        assert lock.get(pin.split("==")[0].lower()) == pin, pin


@pytest.mark.slow
def test_snakemakes_report_packages_the_tables_and_the_html_report_with_captions(tmp_path):
    # stand-ins for what `relaxbench collect` and `relaxbench report` write (the real ones: test_end_to_end.py)
    (tmp_path / "results/smoke").mkdir(parents=True)
    for table in ("leaderboard", "aggregates"):
        (tmp_path / f"results/smoke/{table}.csv").write_text("task,model,method\ntetris,tfn,relaxed\n")
    (tmp_path / "reports/smoke/figures").mkdir(parents=True)
    (tmp_path / "reports/smoke/index.html").write_text('<html><body><img src="figures/a.svg"></body></html>')
    (tmp_path / "reports/smoke/figures/a.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg"/>')
    snakemake(
        "--report", str(tmp_path / "report.zip"), "--configfile", "configs/smoke.yaml", workdir=tmp_path
    )
    with zipfile.ZipFile(tmp_path / "report.zip") as archive:
        names = archive.namelist()
        html = archive.read("report/report.html").decode()
    for packaged in ("/leaderboard.csv", "/aggregates.csv", "/index.html", "/figures/a.svg"):
        assert any(name.endswith(packaged) for name in names), packaged
    for caption in (
        "The leaderboard of config",
        "aggregates of config",
        "own HTML report of config",
        "relaxbench run of config",
    ):
        assert caption in html
