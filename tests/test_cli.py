"""The command line: subcommands, one-line errors with exit status 2, nothing written on bad input."""

import os
import subprocess
import sys

import pytest
import yaml
from threadpoolctl import threadpool_info

from relaxbench.cli import main
from relaxbench.threads import THREAD_VARIABLES


def write(tmp_path, cfg, name="c.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def train_tfn_relaxed(cfg: str, results: str) -> list[str]:
    """The command line of the tiny config's one run: tfn x relaxed x seed 0 on tetris."""
    run = ["--task", "tetris", "--model", "tfn", "--method", "relaxed", "--seed", "0"]
    return ["train", "--config", cfg, *run, "--results", results]


def test_help_lists_the_subcommands():
    out = subprocess.run(
        [sys.executable, "-m", "relaxbench", "--help"], capture_output=True, text=True, check=True
    )
    for sub in ("data", "train", "list"):
        assert sub in out.stdout


def test_list_shows_registered_names(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "tetris" in out and "tfn" in out and "relaxed_no_lie" in out


def test_data_then_train_then_cached(tmp_path, tiny_config, capsys, monkeypatch):
    for name in THREAD_VARIABLES:  # `train` sets them in this process; restore them afterwards
        monkeypatch.delenv(name, raising=False)
    cfg = write(tmp_path, tiny_config)
    res = str(tmp_path / "results")
    assert main(["data", "--config", cfg, "--task", "tetris", "--results", res]) == 0
    assert main(["data", "--config", cfg, "--task", "tetris", "--results", res]) == 0
    assert "cached" in capsys.readouterr().out
    args = train_tfn_relaxed(cfg, res) + ["--quiet"]
    assert main(args) == 0
    assert "ok, test error_rate" in capsys.readouterr().out
    assert (tmp_path / "results/unit/runs/tetris/tfn/relaxed/seed0/record.json").exists()
    # the config's `threads` (1) holds for numpy's BLAS and OpenMP pools too, not only for torch
    assert {pool["num_threads"] for pool in threadpool_info()} == {1}


BAD_RUNS = [
    (["--task", "tetris", "--model", "tfn", "--method", "rpp", "--seed", "0"], "not in"),
    (["--task", "tetris", "--model", "gcn", "--method", "relaxed", "--seed", "0"], "models ['tfn']"),
    (["--task", "tetris", "--model", "tfn", "--method", "relaxed", "--seed", "7"], "seeds [0]"),
]


@pytest.mark.parametrize("extra, message", BAD_RUNS)
def test_runs_outside_the_grid_are_rejected(tmp_path, tiny_config, capsys, extra, message):
    cfg = write(tmp_path, tiny_config)
    assert main(["train", "--config", cfg, "--results", str(tmp_path / "r"), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("relaxbench: error:") and message in err and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("command", ["list", "cluster-check"])
def test_commands_that_read_no_results_take_no_results_folder(command):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--results", "elsewhere"])
    assert exit_.value.code == 2


def test_a_model_on_a_task_it_does_not_support_exits_2_before_any_job(tmp_path, tiny_config, capsys):
    tiny_config["models"]["egnn"] = {"tasks": ["tetris"]}
    cfg = write(tmp_path, tiny_config)
    assert main(["list", "--config", cfg]) == 2
    err = capsys.readouterr().err
    assert "model 'egnn' does not support task 'tetris'" in err and err.count("\n") == 1


def test_bad_config_writes_nothing(tmp_path, tiny_config, capsys):
    tiny_config["training"]["epochz"] = 3
    cfg = write(tmp_path, tiny_config)
    args = train_tfn_relaxed(cfg, str(tmp_path / "r"))
    assert main(args) == 2
    assert "unknown key(s) ['epochz']" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("flag, value", [("--seed", "-1"), ("--threads", "0")])
def test_out_of_range_flags_exit_2(tmp_path, tiny_config, flag, value):
    options = {"--task": "tetris", "--model": "tfn", "--method": "relaxed", "--seed": "0", flag: value}
    args = ["train", "--config", write(tmp_path, tiny_config), "--results", str(tmp_path / "r")]
    with pytest.raises(SystemExit) as exit_:
        main(args + [item for pair in options.items() for item in pair])
    assert exit_.value.code == 2
    assert not (tmp_path / "r").exists()


def test_limit_threads_covers_pools_loaded_afterwards():
    """escnn loads scipy's own OpenBLAS after the limit is set; it must start with the limit too."""
    code = (
        "from relaxbench.threads import limit_threads; limit_threads(1); import escnn, sklearn; "
        "from threadpoolctl import threadpool_info; print(sorted({p['num_threads'] for p in threadpool_info()}))"
    )
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env
    ).stdout
    assert out.strip() == "[1]"
