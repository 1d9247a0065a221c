"""Reliability under bad input and faults: every case is one row of a table, run through the real command line,
and each asserts the exit status, the one-line message and that nothing outside the expected folders changed.
Also: interrupted runs (SIGKILL mid-training, resume from a checkpoint, finished results never overwritten),
interrupted report builds, and permissions.

docs/RELIABILITY.md lists these cases with the measured behaviour.
"""

import hashlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from relaxbench import records
from relaxbench.cli import main
from relaxbench.config import RunSpec, resolve_run, validate_config
from relaxbench.records import atomic_write_text, read_record
from relaxbench.train import train_run
from tests.report.synthetic import CONFIG_NAME, collect_standard_runs
from tests.workflow.helpers import snakemake

# --- the harness ---------------------------------------------------------------------------------------


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path below ``root`` with its kind, permissions and (for files) a digest of its bytes."""
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if stat.S_ISREG(st.st_mode) else None
        out[path.relative_to(root).as_posix()] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), digest)
    return out


def changed(before: dict, after: dict) -> list[str]:
    return sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))


def refused(world: Path, argv: list[str], capsys, *needles: str) -> str:
    """Run ``relaxbench ARGV`` in ``world/work``; assert exit 2, one line naming ``needles``, nothing written
    anywhere below ``world``. Returns the message."""
    before = snapshot(world)
    cwd = os.getcwd()
    os.chdir(world / "work")
    try:
        status = main(argv)
    finally:
        os.chdir(cwd)
    captured = capsys.readouterr()
    err = captured.err
    assert status == 2, (status, captured.out, err)
    assert err.startswith("relaxbench: error: ") and err.endswith("\n") and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, (needle, err)
    assert changed(before, snapshot(world)) == []
    return err


@pytest.fixture
def world(tmp_path):
    """A working directory ``work/`` (results and reports go there) inside a watched folder."""
    (tmp_path / "work").mkdir()
    return tmp_path


def write_yaml(world: Path, cfg, name="c.yaml") -> str:
    path = world / name
    path.write_text(yaml.safe_dump(cfg, allow_unicode=False))
    return str(path)


def tiny(**changes) -> dict:
    cfg = {
        "name": "unit",
        "seeds": [0],
        "device": "cpu",
        "training": {"epochs": 1, "batch_size": 16, "equivariance_samples": 2, "equivariance_examples": 4},
        "methods": {"equivariant": {}},
        "tasks": {"tetris": {"n_train": 1, "n_val": 1, "n_test": 1}},
        "models": {"tfn": {"tasks": ["tetris"], "params": {"hidden": "4x0e + 2x1o", "layers": 1}}},
    }
    cfg.update(changes)
    return cfg


# --- names that would become paths -------------------------------------------------------------------------

NASTY_NAMES = [
    "..",
    ".",
    "../../../../OUTSIDE",
    "a/b",
    "/etc",
    "a\\b",
    "\x00",
    "a\x00b",
    "\n",
    "a\nb",
    "\t",
    " ",
    "",
    "x" * 65,
    "x" * 5000,
    "-rf",
    ".hidden",
    "~",
    "$(touch PWNED)",
    "a b",
    "a;b",
    "résumé",
    "\u202egnp.exe",  # right-to-left override
    "a\u200bb",  # zero-width space
    "\uff0e\uff0e",  # fullwidth full stops
    "a\u2215b",  # division slash, looks like '/'
    "\ufeffname",  # byte-order mark
]
NASTY_IDS = [f"{i}-{n.encode('unicode_escape').decode()[:12]}" for i, n in enumerate(NASTY_NAMES)]
COMMANDS = {
    "report": lambda c: ["report", "--config", c],
    "collect": lambda c: ["collect", "--config", c],
    "train": lambda c: [
        "train",
        "--config",
        c,
        "--task",
        "tetris",
        "--model",
        "tfn",
        "--method",
        "equivariant",
        "--seed",
        "0",
    ],
    "data": lambda c: ["data", "--config", c, "--task", "tetris"],
    "list": lambda c: ["list", "--config", c],
}


@pytest.mark.parametrize("name", NASTY_NAMES, ids=NASTY_IDS)
@pytest.mark.parametrize("command", ["report", "train"])
def test_a_config_name_that_is_not_a_folder_name_is_refused(world, capsys, name, command):
    config = write_yaml(world, tiny(name=name))
    refused(world, COMMANDS[command](config), capsys, "at 'name'", "cannot be a folder name")


@pytest.mark.parametrize("key", NASTY_NAMES, ids=NASTY_IDS)
def test_a_model_key_that_is_not_a_folder_name_is_refused(world, capsys, key):
    cfg = tiny()
    cfg["models"] = {key: {"arch": "tfn", "tasks": ["tetris"]}}
    refused(
        world, COMMANDS["train"](write_yaml(world, cfg)), capsys, "at 'models.", "cannot be a folder name"
    )


@pytest.mark.parametrize("key", ["../x", "a/b", "", ".."])
@pytest.mark.parametrize("section", ["methods", "tasks"])
def test_a_method_or_task_key_that_is_not_a_folder_name_is_refused(world, capsys, section, key):
    cfg = tiny()
    cfg[section] = {key: {}}
    refused(
        world, COMMANDS["collect"](write_yaml(world, cfg)), capsys, f"at '{section}.", "cannot be a folder"
    )


def test_model_keys_that_differ_only_in_case_are_refused(world, capsys):
    cfg = tiny()
    cfg["models"] = {"tfn": {"tasks": ["tetris"]}, "TFN": {"arch": "tfn", "tasks": ["tetris"]}}
    refused(world, COMMANDS["list"](write_yaml(world, cfg)), capsys, "at 'models.", "'TFN'", "only in case")


def workflow_refuses(tmp_path: Path, config_text: str | bytes, *needles: str) -> None:
    """The workflow's dry run on a config file holding ``config_text`` stops before any job with one line
    ``relaxbench: ...`` naming ``needles``, and writes nothing into the working directory."""
    path = tmp_path / "c.yaml"
    path.write_bytes(config_text if isinstance(config_text, bytes) else config_text.encode())
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    out = snakemake("-n", "--configfile", str(path), workdir=work, check=False)
    assert out.returncode != 0, out.stdout[-3000:]
    lines = [line for line in out.stdout.splitlines() if "relaxbench: " in line]
    assert len(lines) == 1 and all(n in lines[0] for n in needles), out.stdout[-3000:]
    assert [p.name for p in work.iterdir()] in ([], [".snakemake"])
    assert not any(p.is_file() for p in (work / ".snakemake").rglob("*") if "log" not in p.parts)


WORKFLOW_NAMES = [("name", ".."), ("name", "a/b"), ("model", "../../../../OUTSIDE"), ("model", "a\nb")]


@pytest.mark.slow
@pytest.mark.parametrize("where, value", WORKFLOW_NAMES)
def test_the_workflow_refuses_names_that_are_not_folder_names(tmp_path, where, value):
    cfg = tiny(name=value) if where == "name" else tiny(models={value: {"arch": "tfn", "tasks": ["tetris"]}})
    workflow_refuses(tmp_path, yaml.safe_dump(cfg), "cannot be a folder name")


# --- a leaderboard of what the config asks for ------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Seeds 0 and 1 of :func:`tiny` trained through the command line; returns the working directory."""
    work = tmp_path_factory.mktemp("trained") / "work"
    work.mkdir()
    config = write_yaml(work.parent, tiny(seeds=[0, 1]))
    for seed in ("0", "1"):
        argv = COMMANDS["train"](config)[:-1] + [seed, "--results", str(work / "results"), "--quiet"]
        assert main(argv) == 0
    return work


def _drop_seed_1(cfg):
    cfg["seeds"] = [0]


def _wider_model(cfg):
    cfg["models"]["tfn"]["params"]["hidden"] = "8x0e + 2x1o"


def _model_renamed(cfg):
    cfg["models"] = {"tfn2": {**cfg["models"]["tfn"], "arch": "tfn"}}


def _method_added(cfg):
    cfg["methods"]["relaxed"] = {}


def _method_dropped(cfg):
    cfg["methods"] = {"relaxed": {}}


def _training_changed(cfg):
    cfg["training"]["lr"] = 0.01


def _seed_folder_deleted(cfg, results):
    shutil.rmtree(results / "runs/tetris/tfn/equivariant/seed1")


def _record_copied_elsewhere(cfg, results):
    shutil.rmtree(results / "runs/tetris/tfn/equivariant/seed1")
    shutil.copytree(
        results / "runs/tetris/tfn/equivariant/seed0", results / "runs/tetris/tfn/equivariant/seed1"
    )


def _record_of_another_metric_version(cfg, results):
    path = results / "runs/tetris/tfn/equivariant/seed1/record.json"
    record = read_record(path)
    record.config_hash, record.run_config["metric_version"] = "0123456789abcdef", 1
    record.write(path)


S0, S1 = "runs/tetris/tfn/equivariant/seed0", "runs/tetris/tfn/equivariant/seed1"
#: (change of the config, change of the results folder, {run_dir: status}, text of the stale reason)
GRIDS = {
    "unchanged": (None, None, {S0: "ok", S1: "ok"}, None),
    "seed dropped": (_drop_seed_1, None, {S0: "ok", S1: "stale"}, "grid has no such run"),
    "model made wider": (
        _wider_model,
        None,
        {S0: "stale", S1: "stale", S0 + "#": "missing", S1 + "#": "missing"},
        "other settings",
    ),
    "model renamed": (
        _model_renamed,
        None,
        {
            S0: "stale",
            S1: "stale",
            "runs/tetris/tfn2/equivariant/seed0": "missing",
            "runs/tetris/tfn2/equivariant/seed1": "missing",
        },
        "grid has no such run",
    ),
    "method added": (
        _method_added,
        None,
        {
            S0: "ok",
            S1: "ok",
            "runs/tetris/tfn/relaxed/seed0": "missing",
            "runs/tetris/tfn/relaxed/seed1": "missing",
        },
        None,
    ),
    "method dropped": (
        _method_dropped,
        None,
        {
            S0: "stale",
            S1: "stale",
            "runs/tetris/tfn/relaxed/seed0": "missing",
            "runs/tetris/tfn/relaxed/seed1": "missing",
        },
        "grid has no such run",
    ),
    "training changed": (
        _training_changed,
        None,
        {S0: "stale", S1: "stale", S0 + "#": "missing", S1 + "#": "missing"},
        "other settings",
    ),
    "run folder deleted": (None, _seed_folder_deleted, {S0: "ok", S1: "missing"}, None),
    "record copied to another seed": (
        None,
        _record_copied_elsewhere,
        {S0: "ok", S1: "stale", S1 + "#": "missing"},
        "lies elsewhere",
    ),
    "older metric version": (
        None,
        _record_of_another_metric_version,
        {S0: "ok", S1: "stale", S1 + "#": "missing"},
        "other settings",
    ),
}


@pytest.mark.parametrize("case", GRIDS)
def test_collect_lists_records_the_config_does_not_describe_as_stale_and_never_averages_them(
    trained, tmp_path, monkeypatch, capsys, case
):
    change_config, change_results, expected, reason = GRIDS[case]
    work = tmp_path / "work"
    shutil.copytree(trained, work)
    results = work / "results" / "unit"
    cfg = tiny(seeds=[0, 1])
    if change_config:
        change_config(cfg)
    if change_results:
        change_results(cfg, results)
    before = snapshot(tmp_path)
    monkeypatch.chdir(work)
    assert main(["collect", "--config", write_yaml(tmp_path, cfg)]) == 0
    board = pd.read_csv(results / "leaderboard.csv")
    seen: dict[str, str] = {}
    for row in board.itertuples():
        seen[row.run_dir + ("#" if row.run_dir in seen else "")] = row.status
    assert seen == expected
    stale = board[board["status"] == "stale"]
    assert all(reason in r for r in stale["reason"]) and (reason is None) == stale.empty
    aggregates = pd.read_csv(results / "aggregates.csv")
    assert aggregates["n_total"].sum() == (board["status"] != "stale").sum()
    assert set(zip(aggregates["model"], aggregates["method"])) == {
        (r.model, r.method) for r in board.itertuples() if r.status != "stale"
    }
    new = {"work/results/unit/leaderboard.csv", "work/results/unit/aggregates.csv"}
    assert set(changed(before, snapshot(tmp_path))) - new - {"c.yaml"} == set()


def test_the_report_lists_stale_records_apart(trained, tmp_path, monkeypatch):
    work = tmp_path / "work"
    shutil.copytree(trained, work)
    monkeypatch.chdir(work)
    cfg = tiny(seeds=[0])
    argv = ["--config", write_yaml(tmp_path, cfg)]
    assert main(["collect", *argv]) == 0 and main(["report", *argv]) == 0
    index = (work / "reports/unit/index.html").read_text()
    stale = index.split('<section id="stale">', 1)[1].split("</section>", 1)[0]
    assert S1 in stale and "grid has no such run" in stale
    assert index.count(S1) == 1 and not list((work / "reports/unit/runs").glob("*seed1*"))


# --- reports: published in one step, never over what relaxbench did not write ---------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Synthetic runs collected and reported once per module; returns the working directory."""
    work = tmp_path_factory.mktemp("built") / "work"
    collect_standard_runs(work / "results" / CONFIG_NAME)
    config = work.parent / "c.yaml"
    config.write_text(yaml.safe_dump(REPORTED))
    common = ["--config", str(config), "--results", str(work / "results")]
    assert main(["report", *common, "--reports", str(work / "reports")]) == 0
    return work


REPORTED = {"name": CONFIG_NAME, "seeds": [0, 1, 2], "models": {"tfn": {"tasks": ["tetris"]}}}


@pytest.fixture
def reported(built, tmp_path, monkeypatch):
    """A copy of :func:`built` as the working directory; returns (it, argv of `report`)."""
    work = tmp_path / "work"
    shutil.copytree(built, work)
    monkeypatch.chdir(work)
    return work, ["report", "--config", write_yaml(tmp_path, REPORTED)]


def test_a_failed_report_rebuild_keeps_the_old_report(reported, monkeypatch):
    work, argv = reported
    before = snapshot(work / "reports")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("relaxbench.report.figures.learning_curves", interrupted)
    with pytest.raises(KeyboardInterrupt):
        main(argv)
    assert changed(before, snapshot(work / "reports")) == []


def test_a_report_rebuild_replaces_the_folder_with_the_umask_s_permissions(reported):
    work, argv = reported
    (work / "reports" / CONFIG_NAME / "runs" / "stale-page.html").write_text("old")
    old = os.umask(0o027)
    try:
        assert main(argv) == 0
    finally:
        os.umask(old)
    assert sorted(p.name for p in (work / "reports").iterdir()) == [CONFIG_NAME]
    site = work / "reports" / CONFIG_NAME
    assert not (site / "runs" / "stale-page.html").exists() and (site / "index.html").is_file()
    modes = {stat.S_IMODE(p.stat().st_mode) for p in [site, *site.rglob("*")] if p.is_dir()}
    assert modes == {0o750}
    modes = {stat.S_IMODE(p.stat().st_mode) for p in site.rglob("*") if p.is_file()}
    assert modes == {0o640}


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "rename-aside"])
def test_atomic_replace_dir_leaves_only_the_new_folder(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(records, "_exchange", lambda a, b: False)
    for name, text in (("target", "old"), ("stage", "new")):
        (tmp_path / name / "sub").mkdir(parents=True)
        (tmp_path / name / "sub" / "f").write_text(text)
    (tmp_path / "target" / "only-old").write_text("x")
    records.atomic_replace_dir(tmp_path / "stage", tmp_path / "target")
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "target",
        "target/sub",
        "target/sub/f",
    ]
    assert (tmp_path / "target" / "sub" / "f").read_text() == "new"


@pytest.mark.slow
def test_a_report_build_killed_mid_way_keeps_the_old_report(reported):
    work, argv = reported
    before = snapshot(work / "reports")
    proc = subprocess.Popen([sys.executable, "-m", "relaxbench", *argv], cwd=work, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not any((work / "reports").glob(f".{CONFIG_NAME}.build-*/runs/*.html")):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    after = {k: v for k, v in snapshot(work / "reports").items() if not k.startswith(".")}
    assert changed(before, after) == []
    assert main(argv) == 0  # the next build removes the killed build's staging folder
    assert sorted(p.name for p in (work / "reports").iterdir()) == [CONFIG_NAME]


def test_a_report_folder_holding_other_files_is_refused(reported, capsys):
    work, argv = reported
    (work / "reports" / CONFIG_NAME / "notes.txt").write_text("mine")
    refused(work.parent, argv, capsys, "notes.txt", "relaxbench did not write")


# --- permissions follow the umask ----------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_written_files_get_the_permissions_of_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "f.txt", "x")
        records.follow_umask(tmp_path)
        folder = tmp_path / "folder"
        records.follow_umask(folder.mkdir() or folder, directory=True)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f.txt").stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~umask


# --- interrupted training ------------------------------------------------------------------------------

RUN = ["--task", "tetris", "--model", "tfn", "--method", "relaxed", "--seed", "0", "--quiet"]


def long_config(tiny_config, tmp_path):
    """A 40-epoch run that checkpoints every epoch; returns the config and the path of its YAML file."""
    tiny_config["training"].update(epochs=40, checkpoint_every=1)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_config))
    return tiny_config, path


def command(cfg_path, out, data, *extra):
    return [
        sys.executable,
        "-m",
        "relaxbench",
        "train",
        "--config",
        str(cfg_path),
        *RUN,
        "--out",
        str(out),
        "--data-dir",
        str(data),
        *extra,
    ]


def start(cfg_path, out, data):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        command(cfg_path, out, data), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )


def kill_when(proc, path, timeout=120.0):
    """SIGKILL ``proc`` as soon as ``path`` exists."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "the run never wrote its file"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
def test_killed_run_leaves_no_record_and_resumes_to_the_same_result(tmp_path, tiny_config):
    cfg, cfg_path = long_config(tiny_config, tmp_path)
    data, out = tmp_path / "data", tmp_path / "killed"
    proc = start(cfg_path, out, data)
    kill_when(proc, out / "checkpoint.pt")
    assert not (out / "record.json").exists()

    subprocess.run(command(cfg_path, out, data, "--resume"), check=True, capture_output=True)
    resumed = read_record(out / "record.json")
    assert resumed.status == "ok" and resumed.resumed and resumed.epochs_run == 40
    assert not (out / "checkpoint.pt").exists()

    resolved = resolve_run(validate_config(cfg), RunSpec("tetris", "tfn", "relaxed", 0))
    straight = train_run(resolved, tmp_path / "straight", data)
    assert not straight.resumed
    assert (resumed.test, resumed.val, resumed.best_epoch) == (
        straight.test,
        straight.val,
        straight.best_epoch,
    )
    assert resumed.config_hash == straight.config_hash


@pytest.mark.slow
def test_finished_record_survives_a_killed_rerun(tmp_path, tiny_config):
    _, cfg_path = long_config(tiny_config, tmp_path)
    out, data = tmp_path / "run", tmp_path / "data"
    subprocess.run(command(cfg_path, out, data), check=True, capture_output=True)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    proc = start(cfg_path, out, data)
    kill_when(proc, out / "checkpoint.pt")
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != "checkpoint.pt"}
    assert before == after


def test_checkpoint_of_another_configuration_is_ignored(tmp_path, tiny_config):
    cfg, _ = long_config(tiny_config, tmp_path)
    cfg["training"]["epochs"] = 3
    resolved = resolve_run(validate_config(cfg), RunSpec("tetris", "tfn", "relaxed", 0))
    out = tmp_path / "run"
    out.mkdir()
    torch.save({"config_hash": "somethingelse", "next_epoch": 2}, out / "checkpoint.pt")
    record = train_run(resolved, out, tmp_path / "data", resume=True)
    assert record.status == "ok" and not record.resumed and record.epochs_run == 3
