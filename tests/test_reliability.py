"""Interrupted runs: SIGKILL mid-training, resume from a checkpoint, finished results never overwritten."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from relaxbench.config import RunSpec, resolve_run, validate_config
from relaxbench.records import read_record
from relaxbench.train import train_run

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
