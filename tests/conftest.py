"""Shared test fixtures: small threads, float64 helpers, tiny configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def tiny_config(tmp_path: Path) -> dict:
    """A validated-able config dict for tetris/tfn with 2 epochs."""
    return {
        "name": "unit",
        "seeds": [0],
        "device": "cpu",
        "training": {"epochs": 2, "batch_size": 16, "equivariance_samples": 2, "equivariance_examples": 8},
        "methods": {"equivariant": {}, "relaxed": {}},
        "tasks": {"tetris": {"n_train": 2, "n_val": 2, "n_test": 2}},
        "models": {
            "tfn": {"tasks": ["tetris"], "params": {"hidden": "4x0e + 4x0o + 2x1e + 2x1o", "layers": 2}}
        },
    }
