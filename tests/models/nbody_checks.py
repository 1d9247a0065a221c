"""Checks shared by the N-body GNN tests (EGNN, SEGNN, the linear baseline): equivariance, projection,
free branch, Lie penalty, and one tiny run through the trainer."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from relaxbench.config import RunSpec, resolve_run, validate_config
from relaxbench.relax import relaxed_layers, set_theta
from relaxbench.symmetry import equivariance_error
from relaxbench.tasks.nbody import NBody
from relaxbench.train import train_run

F64 = torch.float64
SPEC = {"kind": "nbody", "n_particles": 5}
TINY_TASK = {"n_train": 8, "n_val": 4, "n_test": 4, "frame_in": 0, "frame_out": 1}


def batch(b: int = 4, seed: int = 0) -> dict[str, Tensor]:
    """A float64 N-body batch with the data's scales (positions ~1, speeds ~0.5, charges +-1)."""
    g = torch.Generator().manual_seed(seed)
    return {
        "loc": torch.randn(b, 5, 3, generator=g, dtype=F64),
        "vel": 0.5 * torch.randn(b, 5, 3, generator=g, dtype=F64),
        "charges": torch.randint(0, 2, (b, 5, 1), generator=g).to(F64) * 2 - 1,
        "target": torch.randn(b, 5, 3, generator=g, dtype=F64),
    }


def build64(module, relaxed: bool, params: dict, seed: int = 0) -> nn.Module:
    """A model built from ``seed`` with float64 as the default dtype (so that constants such as e3nn's
    Clebsch-Gordan coefficients are not rounded to float32 first)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(F64)
    try:
        torch.manual_seed(seed)
        return module.build(SPEC, relaxed=relaxed, **params)
    finally:
        torch.set_default_dtype(previous)


def twins(module, params: dict, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """The plain and the relaxed model built from one seed, in float64."""
    return build64(module, False, params, seed), build64(module, True, params, seed)


def equivariance(model: nn.Module, tmp_path, seed: int = 0) -> float:
    """Worst-case relative error over rotations x translations x permutations, mean over a batch."""
    task = NBody({}, tmp_path)
    elements = task.sample_group(4, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return equivariance_error(model, batch(), elements, task.act, task.act_output).exact


def randomise_free_branches(model: nn.Module, std: float = 0.3) -> None:
    torch.manual_seed(1)
    for layer in relaxed_layers(model):
        nn.init.normal_(layer.free.weight, 0.0, std)


def check_projection_and_free_branch(plain: nn.Module, relaxed: nn.Module, tmp_path) -> None:
    """Plain: equivariant; relaxed at theta = 0: the plain outputs bit for bit (also with a random free map);
    at theta > 0 with a random free map: not equivariant. ``plain`` and ``relaxed`` are :func:`twins`."""
    assert equivariance(plain, tmp_path) < 1e-12
    assert list(relaxed_layers(relaxed)) and not list(relaxed_layers(plain))
    x = batch()
    set_theta(relaxed, 0.0)
    with torch.no_grad():
        assert torch.equal(plain(x), relaxed(x))
    randomise_free_branches(relaxed)
    with torch.no_grad():
        assert torch.equal(plain(x), relaxed(x))  # still projected
        set_theta(relaxed, 0.5)
        assert not torch.allclose(plain(x), relaxed(x))
    assert equivariance(relaxed, tmp_path) > 1e-3


def check_lie_penalty(relaxed: nn.Module, equivariant_weight: Callable[[nn.Module], Tensor]) -> None:
    """For every relaxed layer, the Lie term is ~0 for an equivariant free map and > 0 for a random one."""
    set_theta(relaxed, 0.5)
    relaxed.train()
    for layer in relaxed_layers(relaxed):
        with torch.no_grad():
            layer.free.weight.copy_(equivariant_weight(layer))
    relaxed(batch())
    layers = list(relaxed_layers(relaxed))
    for layer in layers:
        ld, norm = layer.penalty_terms()
        assert ld.item() < 1e-10 and norm.item() > 1e-6
    randomise_free_branches(relaxed)
    relaxed(batch())
    for layer in layers:
        ld, _ = layer.penalty_terms()
        assert ld.item() > 1e-3


def check_tiny_training_run(model_name: str, params: dict, tmp_path) -> None:
    """Two epochs of the relaxed method through the trainer write an ok record with a projected, equivariant
    model."""
    cfg = validate_config(
        {
            "name": "unit",
            "seeds": [0],
            "device": "cpu",
            "training": {"epochs": 2, "batch_size": 4, "equivariance_samples": 2, "equivariance_examples": 4},
            "methods": {"relaxed": {}},
            "tasks": {"nbody": TINY_TASK},
            "models": {model_name: {"tasks": ["nbody"], "params": params}},
        }
    )
    record = train_run(
        resolve_run(cfg, RunSpec("nbody", model_name, "relaxed", 0)), tmp_path / "run", tmp_path / "data"
    )
    assert record.status == "ok", record.reason
    assert record.family == "gnn" and record.metric == "mse_pos" and record.metric_unit == "length^2"
    assert record.test["mse_pos"] > 0 and record.params_free > 0
    assert record.equiv_final_exact < 1e-9  # float64 metric of the projected model
    assert (tmp_path / "run" / "record.json").exists()
