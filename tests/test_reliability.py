"""Reliability under bad input and faults: every case is one row of a table, run through the real command line,
and each asserts the exit status, the one-line message and that nothing outside the expected folders changed.
Also: interrupted runs (SIGKILL mid-training, resume from a checkpoint, finished results never overwritten),
interrupted report builds, and permissions.

docs/RELIABILITY.md lists these cases with the measured behaviour.
"""

import hashlib
import io
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
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
    holding all ``needles``, and writes nothing into the working directory."""
    path = tmp_path / "c.yaml"
    path.write_bytes(config_text if isinstance(config_text, bytes) else config_text.encode())
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    out = snakemake("-n", "--configfile", str(path), workdir=work, check=False)
    assert out.returncode != 0, out.stdout[-3000:]
    lines = [line for line in out.stdout.splitlines() if all(n in line for n in needles)]
    assert len(lines) == 1, out.stdout[-3000:]
    assert [p.name for p in work.iterdir()] in ([], [".snakemake"])
    assert not any(p.is_file() for p in (work / ".snakemake").rglob("*") if "log" not in p.parts)


WORKFLOW_NAMES = [("name", ".."), ("name", "a/b"), ("model", "../../../../OUTSIDE"), ("model", "a\nb")]


@pytest.mark.slow
@pytest.mark.parametrize("where, value", WORKFLOW_NAMES)
def test_the_workflow_refuses_names_that_are_not_folder_names(tmp_path, where, value):
    cfg = tiny(name=value) if where == "name" else tiny(models={value: {"arch": "tfn", "tasks": ["tetris"]}})
    workflow_refuses(tmp_path, yaml.safe_dump(cfg), "relaxbench: ", "cannot be a folder name")


# --- validation complete before any job ---------------------------------------------------------------


def _set(path: str, value):
    """A change of :func:`tiny` setting the dotted ``path`` to ``value``."""

    def change(cfg):
        *parents, last = path.split(".")
        node = cfg
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value

    return change


def _text(cfg: dict) -> str:
    return yaml.safe_dump(cfg, sort_keys=False)


def _bomb(levels: int = 9, width: int = 9, mapping: bool = False) -> str:
    """A YAML alias bomb of under 1 kB: ``width ** levels`` values once expanded."""
    lines = [
        "a0: &a0 "
        + (
            "{" + ", ".join(f"k{i}: x" for i in range(width)) + "}"
            if mapping
            else "[" + ", ".join(["x"] * width) + "]"
        )
    ]
    for level in range(1, levels):
        refs = [f"*a{level - 1}"] * width
        body = (
            "{" + ", ".join(f"k{i}: {r}" for i, r in enumerate(refs)) + "}"
            if mapping
            else "[" + ", ".join(refs) + "]"
        )
        lines.append(f"a{level}: &a{level} {body}")
    return "\n".join(lines) + "\n" + _text(tiny())


#: (config file content: a change of :func:`tiny` or the file's bytes / text, what the one line must say)
BAD_INPUTS = {
    "n_train -1": (
        _set("tasks.tetris.n_train", -1),
        "at 'tasks.tetris': at 'n_train': -1 is less than the minimum of 1",
    ),
    "n_train 0": (_set("tasks.tetris.n_train", 0), "at 'n_train': 0 is less than the minimum of 1"),
    "n_train 'two'": (_set("tasks.tetris.n_train", "two"), "at 'n_train': 'two' is not of type 'integer'"),
    "n_train 2.0": (_set("tasks.tetris.n_train", 2.0), "at 'n_train': 2.0 is not of type 'integer'"),
    "n_train true": (_set("tasks.tetris.n_train", True), "at 'n_train': True is not of type 'integer'"),
    "n_train 10**12": (
        _set("tasks.tetris.n_train", 10**12),
        "at 'n_train': 1000000000000 is greater than the maximum",
    ),
    "jitter .nan": (
        _set("tasks.tetris.jitter", float("nan")),
        "at 'tasks.tetris.jitter': nan is not a finite number",
    ),
    "task seed 2**70": (
        _set("tasks.tetris.seed", 2**70),
        "at 'seed': 1180591620717411303424 is greater than the maximum",
    ),
    "nbody frames reversed": (_set("tasks.nbody", {"frame_in": 9, "frame_out": 3}), "frame_in"),
    "rotdigits too many": (
        _set("tasks.rotdigits", {"n_train": 1500, "n_val": 200, "n_test": 200}),
        "exceeds the 1797 digits",
    ),
    "epochs 2.0": (_set("training.epochs", 2.0), "at 'training.epochs': 2.0 is not of type 'integer'"),
    "epochs true": (_set("training.epochs", True), "at 'training.epochs': True is not of type 'integer'"),
    "epochs 0": (_set("training.epochs", 0), "at 'training.epochs': 0 is less than the minimum of 1"),
    "lr .nan": (_set("training.lr", float("nan")), "at 'training.lr': nan is not a finite number"),
    "lr .inf": (_set("training.lr", float("inf")), "at 'training.lr': inf is not a finite number"),
    "model lr -.inf": (
        _set("models.tfn.training", {"lr": float("-inf")}),
        "at 'models.tfn.training.lr': -inf is not a finite",
    ),
    "theta_peak .nan": (
        _set("methods.equivariant", {"theta_peak": float("nan")}),
        "theta_peak': nan is not a finite",
    ),
    "seed 2**70": (
        _set("seeds", [2**70]),
        "at 'seeds.0': 1180591620717411303424 is greater than the maximum",
    ),
    "seed -1": (_set("seeds", [-1]), "at 'seeds.0': -1 is less than the minimum of 0"),
    "seed 1.5": (_set("seeds", [1.5]), "at 'seeds.0': 1.5 is not of type 'integer'"),
    "methods {}": (_set("methods", {}), "at 'methods': {} should be non-empty"),
    "egnn on rotdigits": (
        _set("models", {"egnn": {"tasks": ["rotdigits"]}}),
        "does not support task 'rotdigits'",
    ),
    "models {}": (_set("models", {}), "at 'models': {} should be non-empty"),
    "duplicate key": (
        _text(tiny()) + "seeds: [0, 1]\n",
        "key 'seeds' given twice (first on line 2)",
    ),
    "duplicate nested key": (
        _text(tiny()).replace("  epochs: 1\n", "  epochs: 1\n  epochs: 3\n"),
        "key 'epochs' given twice",
    ),
    "latin-1 text": (
        _text(tiny()).replace("name: unit", "name: unit\ndescription: résumé").encode("latin-1"),
        "not UTF-8 text (byte 0xe9",
    ),
    "UTF-16 with BOM": (_text(tiny()).encode("utf-16"), "the file is UTF-16 text; save it as UTF-8"),
    "UTF-16 without BOM": (_text(tiny()).encode("utf-16-le"), "not valid YAML"),
    "NUL byte": (_text(tiny()).replace("unit", "un\x00it"), "not valid YAML"),
    "alias bomb (lists)": (_bomb(), "more than 100000 values once YAML aliases are expanded"),
    "alias bomb (mappings)": (_bomb(mapping=True), "more than 100000 values once YAML aliases are expanded"),
    "recursive alias": ("a: &a [*a]\n" + _text(tiny()), "more than 100000 values"),
    "2 MB file": (_text(tiny()) + "#" * 2_000_000 + "\n", "larger than 1048576 bytes"),
    "empty file": ("", "the top level must be a mapping"),
    "top-level list": ("- name: unit\n", "the top level must be a mapping"),
    "truncated YAML": (_text(tiny()) + "description: [one, two", "not valid YAML"),
    "bad indentation": ("name: unit\n models: {}\n", "not valid YAML"),
    "python object tag": ("!!python/object/apply:os.system ['touch PWNED']\n", "not valid YAML"),
}


def _write_config(world: Path, content) -> str:
    path = world / "c.yaml"
    if callable(content):
        cfg = tiny(tasks={"tetris": {"n_train": 1, "n_val": 1, "n_test": 1}})
        content(cfg)
        content = _text(cfg)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(path)


@pytest.mark.parametrize("case", BAD_INPUTS)
@pytest.mark.parametrize("command", ["train", "data", "collect"])
def test_bad_input_stops_with_one_line_before_anything_is_written(world, capsys, case, command):
    content, message = BAD_INPUTS[case]
    refused(world, COMMANDS[command](_write_config(world, content)), capsys, message)


def test_a_config_that_does_not_exist_is_one_line(world, capsys):
    refused(world, COMMANDS["train"](str(world / "nowhere.yaml")), capsys, "does not exist")


#: (case of BAD_INPUTS, what the dry run's output says): relaxbench's one line, Snakemake's own schema check
#: (which runs first), or Snakemake's own config loader, which stops with a traceback on text that is not UTF-8
WORKFLOW_BAD = [
    ("n_train -1", "relaxbench: "),
    ("epochs 2.0", "relaxbench: "),
    ("lr .nan", "relaxbench: "),
    ("seed 2**70", "ValidationError: 1180591620717411303424 is greater than the maximum"),
    ("methods {}", "ValidationError: {} should be non-empty"),
    ("duplicate key", "relaxbench: "),
    ("latin-1 text", "UnicodeDecodeError: 'utf-8' codec can't decode byte 0xe9"),
    ("UTF-16 with BOM", "UnicodeDecodeError: 'utf-8' codec can't decode byte 0xff"),
    ("alias bomb (lists)", "relaxbench: "),
]


@pytest.mark.slow
@pytest.mark.parametrize("case, says", WORKFLOW_BAD)
def test_the_workflow_dry_run_refuses_bad_input(tmp_path, case, says):
    content, message = BAD_INPUTS[case]
    path = Path(_write_config(tmp_path, content))
    needles = (says, message) if says == "relaxbench: " else (says,)
    workflow_refuses(tmp_path, path.read_bytes(), *needles)


# --- real-data files that are malformed ---------------------------------------------------------------------


def _nbody_files(folder: Path, spoil) -> dict:
    """Reference-layout N-body files (2 trajectories, 5 frames per split), ``spoil(name, bytes) -> bytes``."""
    from relaxbench.tasks.nbody import REFERENCE_SIZES, reference_file

    for split in REFERENCE_SIZES:
        for key, shape in (("loc", (2, 5, 3, 5)), ("vel", (2, 5, 3, 5)), ("charges", (2, 5, 1))):
            path = reference_file(folder, key, split)
            buffer = io.BytesIO()
            np.save(buffer, np.ones(shape))
            path.write_bytes(spoil(path.name, buffer.getvalue()))
    return {
        "nbody": {"path": str(folder), "n_train": 2, "n_val": 2, "n_test": 2, "frame_in": 0, "frame_out": 3}
    }


def _md_file(folder: Path, spoil) -> dict:
    buffer = io.BytesIO()
    np.savez(buffer, z=np.array([1, 8]), R=np.ones((4, 2, 3)), E=np.ones(4), F=np.ones((4, 2, 3)))
    (folder / "md17_x.npz").write_bytes(spoil("md17_x.npz", buffer.getvalue()))
    return {"md": {"path": str(folder / "md17_x.npz"), "n_train": 2, "n_val": 1, "n_test": 1}}


def _amat_files(folder: Path, spoil) -> dict:
    from relaxbench.tasks.rotmnist import AMAT_FILES

    for name, rows in ((AMAT_FILES["train_valid"], 12), (AMAT_FILES["test"], 3)):
        text = "\n".join(" ".join(["0.5"] * 784 + [str(i % 10)]) for i in range(rows)) + "\n"
        (folder / name).write_bytes(spoil(name, text.encode()))
    return {"rotmnist": {"path": str(folder), "n_train": 10, "n_val": 2}}


def _h5_files(folder: Path, spoil) -> dict:
    from relaxbench.tasks.shapes import write_h5

    for name in ("ply_data_train0.h5", "ply_data_test0.h5"):
        write_h5(folder / name, np.ones((3, 8, 3)), np.zeros(3))
        (folder / name).write_bytes(spoil(name, (folder / name).read_bytes()))
    return {"shapes": {"dataset": "modelnet40", "path": str(folder), "n_points": 8}}


def _only(target: str, change):
    return lambda name, data: change(data) if name.startswith(target) else data


def _nan_npy(data: bytes) -> bytes:
    array = np.load(io.BytesIO(data))
    array.flat[0] = np.nan
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _nan_npz(data: bytes) -> bytes:
    arrays = dict(np.load(io.BytesIO(data)))
    arrays["F"][0, 0, 0] = np.inf
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


#: (writer of the user's files, which file and how it is spoiled, what the one line says)
MALFORMED = {
    "empty .npy": (_nbody_files, _only("loc_train", lambda d: b""), "loc_train_charged5_initvel1small.npy"),
    "truncated .npy": (_nbody_files, _only("vel_valid", lambda d: d[: len(d) // 2]), "vel_valid_charged5"),
    "header-only .npy": (_nbody_files, _only("charges_test", lambda d: d[:20]), "charges_test_charged5"),
    "NaN in .npy": (_nbody_files, _only("loc_test", _nan_npy), "holds NaN or infinite values"),
    "empty .npz": (_md_file, lambda n, d: b"", "md17_x.npz as an npz file"),
    "truncated .npz": (_md_file, lambda n, d: d[: len(d) // 2], "md17_x.npz as an npz file"),
    "inf in .npz": (
        _md_file,
        lambda n, d: _nan_npz(d),
        "holds NaN or infinite positions, energies or forces",
    ),
    "empty .amat": (
        _amat_files,
        _only("mnist_all_rotation_normalized_float_test", lambda d: b""),
        "columns per row",
    ),
    "truncated .amat": (
        _amat_files,
        _only("mnist_all_rotation_normalized_float_train", lambda d: d[:-100]),
        "not a numeric .amat file",
    ),
    "label 12 in .amat": (
        _amat_files,
        _only("mnist_all_rotation_normalized_float_test", lambda d: d.replace(b" 1\n", b" 12\n", 1)),
        "labels outside the integers 0..9",
    ),
    "NaN in .amat": (
        _amat_files,
        _only("mnist_all_rotation_normalized_float_test", lambda d: d.replace(b"0.5", b"nan", 1)),
        "holds NaN or infinite values",
    ),
    "empty .h5": (
        _h5_files,
        _only("ply_data_test0", lambda d: b""),
        "ply_data_test0.h5: not a ModelNet40-style HDF5 file",
    ),
    "truncated .h5": (
        _h5_files,
        _only("ply_data_train0", lambda d: d[: len(d) // 2]),
        "ply_data_train0.h5: not a ModelNet40-style HDF5 file",
    ),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_a_malformed_data_file_is_one_line_naming_it_and_nothing_is_written(world, capsys, case):
    write, spoil, message = MALFORMED[case]
    folder = world / "user-data"
    folder.mkdir()
    tasks = write(folder, spoil)
    (task,) = tasks
    model = {"nbody": "egnn", "md": "se3_transformer", "rotmnist": "cnn", "shapes": "tfn"}[task]
    cfg = tiny(tasks=tasks, models={model: {"tasks": [task]}})
    refused(world, ["data", "--config", write_yaml(world, cfg), "--task", task], capsys, message)


# --- every failure visible ---------------------------------------------------------------------------


def _train_argv(world: Path, cfg: dict) -> list[str]:
    return COMMANDS["train"](write_yaml(world, cfg)) + ["--quiet"]


def _run_dir(world: Path) -> Path:
    return world / "work/results/unit/runs/tetris/tfn/equivariant/seed0"


def test_an_error_while_building_the_model_is_a_failed_run(world, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise KeyError("no such irreps")

    monkeypatch.setattr("relaxbench.train.build_model", broken)
    monkeypatch.chdir(world / "work")
    assert main(_train_argv(world, tiny())) == 0
    record = read_record(_run_dir(world) / "record.json")
    assert record.status == "failed" and record.reason == "KeyError: 'no such irreps'"
    assert not (_run_dir(world) / "model.pt").exists()


@pytest.mark.parametrize(
    "error", [KeyError("k"), IndexError("i"), AttributeError("a"), ZeroDivisionError("z")]
)
def test_any_exception_during_training_is_a_failed_run_with_its_reason(world, monkeypatch, error):
    def broken(self, epoch):
        raise error

    monkeypatch.setattr("relaxbench.train.Trainer.train_epoch", broken)
    monkeypatch.chdir(world / "work")
    assert main(_train_argv(world, tiny())) == 0
    record = read_record(_run_dir(world) / "record.json")
    assert record.status == "failed" and record.reason == f"{type(error).__name__}: {error}"


def test_non_finite_parameters_after_an_epoch_are_a_divergence(world, monkeypatch):
    original = torch.optim.Adam.step

    def poisoned(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        with torch.no_grad():
            self.param_groups[0]["params"][0].fill_(float("inf"))
        return out

    monkeypatch.setattr(torch.optim.Adam, "step", poisoned)
    monkeypatch.chdir(world / "work")
    assert main(_train_argv(world, tiny())) == 0
    record = read_record(_run_dir(world) / "record.json")
    assert record.status == "diverged" and "non-finite parameter" in record.reason
    assert record.diverged_epoch == 0


def test_a_huge_learning_rate_is_recorded_as_diverged_never_ok(world, monkeypatch):
    monkeypatch.chdir(world / "work")
    cfg = tiny()
    cfg["training"].update(lr=1e30, epochs=2)
    assert main(_train_argv(world, cfg)) == 0
    assert read_record(_run_dir(world) / "record.json").status == "diverged"


@pytest.mark.parametrize("bad", ["nan", "inf", "label"])
def test_non_finite_or_out_of_range_input_data_is_a_data_error(world, capsys, bad):
    cfg = tiny()
    config = write_yaml(world, cfg)
    cwd = os.getcwd()
    os.chdir(world / "work")
    try:
        assert main(COMMANDS["data"](config)) == 0
    finally:
        os.chdir(cwd)
    (data,) = (world / "work/results/unit/data/tetris").iterdir()
    with np.load(data / "tetris.npz") as stored:
        arrays = dict(stored)
    if bad == "label":
        arrays["train_label"][0] = 99
    else:
        arrays["train_pos"][0, 0, 0] = float(bad)
    np.savez(data / "tetris.npz", **arrays)
    message = "labels outside 0..7" if bad == "label" else "non-finite values in split 'train', 'pos'"
    refused(world, _train_argv(world, cfg), capsys, message)


def test_a_second_training_process_of_the_same_run_is_refused(world, capsys, monkeypatch):
    with monkeypatch.context() as m:  # the task's data first (a training job reads them, then locks its run)
        m.chdir(world / "work")
        assert main(COMMANDS["data"](write_yaml(world, tiny()))) == 0
    capsys.readouterr()
    run_dir = _run_dir(world)
    run_dir.mkdir(parents=True)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys, time; f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)",
            str(run_dir / ".lock"),
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout.readline().strip() == b"held"
        refused(world, _train_argv(world, tiny()), capsys, "another relaxbench process is training this run")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    cwd = os.getcwd()
    os.chdir(world / "work")
    try:
        assert main(_train_argv(world, tiny())) == 0  # the kernel released the killed holder's lock
    finally:
        os.chdir(cwd)
    assert read_record(run_dir / "record.json").status == "ok"


CORRUPT_RECORDS = {
    "not JSON": (b"{not json", "not UTF-8 JSON"),
    "truncated": (b'{"task": "tetris", "mod', "not UTF-8 JSON"),
    "not UTF-8": (b'{"task": "t\xe9tris"}', "not UTF-8 JSON"),
    "a list": (b"[1, 2]", "a JSON list, not an object"),
    "empty": (b"", "not UTF-8 JSON"),
    "unknown field": (b'{"surprise": 1}', "unknown field(s) ['surprise']"),
    "missing fields": (b'{"task": "tetris"}', "missing field(s)"),
}


@pytest.mark.parametrize("case", CORRUPT_RECORDS)
def test_a_corrupt_record_given_to_report_is_one_line(reported, capsys, case):
    work, argv = reported
    content, message = CORRUPT_RECORDS[case]
    (path,) = list((work / "results" / CONFIG_NAME / "runs/tetris/tfn/equivariant/seed0").glob("record.json"))
    path.write_bytes(content)
    refused(work.parent, argv, capsys, "seed0/record.json: ", message)


def test_a_record_with_wrong_field_types_is_one_line(reported, capsys):
    work, argv = reported
    path = work / "results" / CONFIG_NAME / "runs/tetris/tfn/equivariant/seed0/record.json"
    data = json.loads(path.read_text())
    data.update(seed="zero", test={"error_rate": "low"})
    path.write_text(json.dumps(data))
    refused(work.parent, argv, capsys, "field(s) ['seed', 'test'] of the wrong type")


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


def test_a_report_folder_holding_snakemakes_timestamp_is_rebuilt(reported):
    # Snakemake marks a finished directory() output with this file; the report rule's next run must not stop on it
    work, argv = reported
    site = work / "reports" / CONFIG_NAME
    (site / ".snakemake_timestamp").write_text("")
    (site / "runs" / "stale-page.html").write_text("old")
    assert main(argv) == 0
    assert not (site / "runs" / "stale-page.html").exists() and (site / "index.html").is_file()


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
