"""Helpers of the N-body GNN tests (EGNN, SEGNN, the linear baseline): float64 twins, a batch, and one tiny
run through the trainer. Equivariance, projection, free branches and Lie penalties are the contract
(tests/test_contract.py, relaxbench.testing)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from relaxbench.config import RunSpec, resolve_run, validate_config
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
