"""Sweep axes: expansion into cells (folders, labels, settings, data keys), run hashes under edits of one axis
value, and bad axes and values refused by name."""

from __future__ import annotations

import copy

import pytest

from relaxbench.cli import main
from relaxbench.config import (
    ConfigError,
    check_model_params,
    data_key,
    expand_runs,
    resolve_run,
    run_hash,
    validate_config,
)

BASE = {
    "name": "sweep",
    "seeds": [0, 1],
    "methods": {"equivariant": {}, "relaxed": {}},
    "tasks": {"nbody": {"n_train": 8, "n_val": 4, "n_test": 4}},
    "models": {
        "segnn": {
            "tasks": ["nbody"],
            "params": {"hidden": 4, "layers": 1},
            "training": {"epochs": 1},
        }
    },
}
SWEEPS = [{"params.layers": [1, 2]}, {"nbody.n_train": [8, 16]}]


def _cfg(sweeps=SWEEPS, **model):
    cfg = copy.deepcopy(BASE)
    cfg["models"]["segnn"].update(model)
    if sweeps is not None:
        cfg["models"]["segnn"]["sweeps"] = sweeps
    return validate_config(cfg)


def _hashes(cfg):
    return {(r.folder, r.method, r.seed): run_hash(resolve_run(cfg, r)) for r in expand_runs(cfg)}


def test_one_axis_at_a_time_shares_the_base_point_and_names_cells_off_the_base():
    runs = expand_runs(_cfg())
    assert sorted({r.folder for r in runs}) == ["segnn", "segnn+nbody.n_train=16", "segnn+params.layers=2"]
    assert len(runs) == 3 * 2 * 2  # three cells x two methods x two seeds: the base point runs once
    base = next(r for r in runs if r.folder == "segnn")
    assert base.sweep == "" and dict(base.axes) == {"params.layers": 1, "nbody.n_train": 8}
    assert base.path("sweep").as_posix() == "results/sweep/runs/nbody/segnn/equivariant/seed0"
    cell = next(r for r in runs if r.sweep == "params.layers=2")
    assert cell.path("sweep").as_posix() == "results/sweep/runs/nbody/segnn+params.layers=2/equivariant/seed0"


def test_crossed_axes_give_every_combination():
    runs = expand_runs(_cfg([{"params.layers": [1, 2], "nbody.n_train": [8, 16]}]))
    assert sorted({r.sweep for r in runs}) == [
        "",
        "nbody.n_train=16",
        "params.layers=2",
        "params.layers=2+nbody.n_train=16",
    ]


def test_cells_resolve_to_their_settings_and_data_are_keyed_by_the_task_parameters():
    cfg = _cfg()
    resolved = {r.folder: resolve_run(cfg, r) for r in expand_runs(cfg)}
    assert resolved["segnn+params.layers=2"]["model_params"] == {"hidden": 4, "layers": 2}
    assert resolved["segnn+nbody.n_train=16"]["task_params"]["n_train"] == 16
    assert resolved["segnn+params.layers=2"]["axes"] == {"params.layers": 2, "nbody.n_train": 8}
    assert resolved["segnn+params.layers=2"]["sweep"] == "params.layers=2"
    # one data set per distinct task parameter set: the layers cells share the base's
    keys = {folder: r["data_key"] for folder, r in resolved.items()}
    assert keys["segnn"] == keys["segnn+params.layers=2"] == data_key(cfg, "nbody")
    assert keys["segnn+nbody.n_train=16"] != keys["segnn"]


def test_adding_a_sweep_reruns_nothing_that_existed_and_editing_one_value_only_its_runs():
    plain, swept = _hashes(_cfg(sweeps=None)), _hashes(_cfg())
    assert all(swept[k] == h for k, h in plain.items())  # the base point keeps its hash and its folder
    # a task axis at a default value the config never wrote keeps the data key and hash as well
    default_n = _cfg([{"nbody.frame_in": [30, 0]}])
    assert _hashes(default_n)[("segnn", "relaxed", 0)] == plain[("segnn", "relaxed", 0)]

    edited = _hashes(_cfg([{"params.layers": [1, 3]}, {"nbody.n_train": [8, 16]}]))
    changed = {k for k in set(swept) | set(edited) if swept.get(k) != edited.get(k)}
    assert {folder for folder, _, _ in changed} == {"segnn+params.layers=2", "segnn+params.layers=3"}
    assert {k for k in changed if k in edited} == {k for k in edited if k[0] == "segnn+params.layers=3"}
    # the cell's label and axes are names, not settings: they do not enter the hash
    cfg = _cfg()
    run = next(r for r in expand_runs(cfg) if r.sweep)
    resolved = resolve_run(cfg, run)
    assert run_hash({**resolved, "sweep": "renamed", "axes": {}}) == run_hash(resolved)


def test_training_axes_and_list_values():
    cfg = copy.deepcopy(BASE)
    cfg["models"]["vn"] = {
        "arch": "vn_pointnet",
        "tasks": ["shapes"],
        "params": {"channels": [4, 8, 16]},  # training.epochs: 10 by default
        "sweeps": [{"training.epochs": [10, 3]}, {"params.channels": [[4, 8, 16], [8, 8, 8]]}],
    }
    cfg = validate_config(cfg)
    check_model_params(cfg)
    runs = {r.folder: r for r in expand_runs(cfg) if r.model == "vn"}
    assert sorted(runs) == ["vn", "vn+params.channels=8-8-8", "vn+training.epochs=3"]
    assert resolve_run(cfg, runs["vn+training.epochs=3"])["training"]["epochs"] == 3
    assert resolve_run(cfg, runs["vn+params.channels=8-8-8"])["model_params"]["channels"] == [8, 8, 8]


def test_cell_folders_are_checked_like_every_folder_name():
    cfg = _cfg([{"params.layers": [1, 2], "nbody.n_train": [8, 16]}])
    assert "segnn+params.layers=2+nbody.n_train=16" in {r.folder for r in expand_runs(cfg)}
    bad = copy.deepcopy(BASE)
    bad["models"]["segnn"]["params"]["hidden"] = "4x0e + 2x1o"
    bad["models"]["segnn"]["sweeps"] = [{"params.hidden": ["4x0e + 2x1o", "8x0e + 4x1o"]}]
    with pytest.raises(ConfigError, match=r"at 'models.segnn.sweeps': .*cannot be a folder name"):
        validate_config(bad)


BAD = [
    ([{"layers": [1, 2]}], "unknown axis 'layers'; an axis is 'params.<build parameter>'"),
    ([{"tetris.n_train": [1]}], "unknown axis 'tetris.n_train'"),
    ([{"nbody.n_trian": [1]}], "axis 'nbody.n_trian': unknown parameter 'n_trian' of task 'nbody'; choices"),
    ([{"training.epoch": [1]}], "axis 'training.epoch': unknown training setting 'epoch'; choices"),
    ([{"training.resume": [True]}], "unknown training setting 'resume'"),
    ([{"training.epochs": [1, 0]}], "axis 'training.epochs': value 0: 0 is less than the minimum of 1"),
    (
        [{"nbody.n_train": [8, "many"]}],
        "at 'models.segnn.sweeps': axis 'nbody.n_train': value 'many' (str) does not fit the base value 8 (int)",
    ),
    ([{"params.layers": [1, 2.5]}], "value 2.5 (float) does not fit the base value 1 (int)"),
    ([{"params.l_max": [1, 2]}, {"nbody.n_train": [8]}], "axis 'params.l_max' is left out of some sweeps"),
    ([{"params.layers": []}], "models.segnn.sweeps.0.params.layers"),
    ([{"params.layers": [1, 1]}], "has non-unique elements"),
    ([{}], "models.segnn.sweeps.0"),
]


@pytest.mark.parametrize("sweeps, message", BAD)
def test_bad_axes_and_values_are_refused_by_name(sweeps, message):
    with pytest.raises(ConfigError, match="^cfg.yaml") as err:
        cfg = copy.deepcopy(BASE)
        cfg["models"]["segnn"]["sweeps"] = sweeps
        validate_config(cfg, "cfg.yaml")
    assert message in str(err.value)


def test_unknown_model_parameter_axis_exits_2_with_one_line(tmp_path, capsys):
    import yaml

    cfg = copy.deepcopy(BASE)
    cfg["models"]["segnn"]["sweeps"] = [{"params.depth": [1, 2]}]
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match=r"unknown axis 'params.depth': 'segnn' takes no parameter 'depth'"):
        check_model_params(validate_config(cfg))
    bad = copy.deepcopy(BASE)
    bad["models"]["segnn"]["sweeps"] = [{"segnn.layers": [1, 2]}]
    path.write_text(yaml.safe_dump(bad))
    assert main(["list", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown axis 'segnn.layers'" in err
