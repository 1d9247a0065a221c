"""The contract of relaxbench.testing, run on every registered model and every task kind it declares.

For a model of group "none" (a plain CNN) the contract is the negative control: the tester must flag it. The
parameters below only make the models and tasks tiny; a new model or task kind needs an entry here (the
test says so).
"""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch
from torch import nn

from relaxbench import registry, testing
from relaxbench.symmetry import model_equivariance_error
from tests.tasks.test_md import TINY_MODEL as SE3_TINY
from tests.tasks.test_md import md_task
from tests.tasks.test_plume import TINY as PLUME_TINY

#: the task each kind is checked on (point classification: tetris has a chiral pair; VN models need more points)
KIND_TASK = {
    "point_classification": "tetris",
    "nbody": "nbody",
    "molecule": "md",
    "image_classification": "rotdigits",
    "plume": "plume",
}
TASK_PARAMS = {
    "tetris": {"n_train": 1, "n_val": 1, "n_test": 1},
    "shapes": {"n_points": 24, "n_train_per_class": 1, "n_val_per_class": 1, "n_test_per_class": 1},
    "nbody": {"n_train": 4, "n_val": 4, "n_test": 4, "frame_in": 0, "frame_out": 1},
    "rotdigits": {
        "n_train": 10,
        "n_val": 10,
        "n_test": 10,
        "test_rotations": 1,
        "canvas": 15,
        "zoom_size": 11,
    },
}
#: tiny parameters per model, or per (model, kind); "task" overrides KIND_TASK
MODELS = {
    "tfn": {"hidden": "4x0e + 4x0o + 2x1e + 2x1o", "layers": 3},  # 0o first appears in block 3
    "se3_transformer": SE3_TINY,
    ("se3_transformer", "point_classification"): {**SE3_TINY, "layers": 3},  # 0o first appears in block 3
    "egnn": {"hidden": 8, "layers": 2},
    "segnn": {"hidden": 4, "layers": 1},
    "nbody_linear": {},
    "steerable_cnn": {"channels": (2, 3), "kernel_size": 3, "head_hidden": 8},
    "cnn": {"channels": (4, 4), "kernel_size": 3},
    "vn_pointnet": {"task": "shapes", "channels": (4, 6, 8), "k": 5, "head": (16, 8)},
    "vn_dgcnn": {"task": "shapes", "channels": (3, 3, 4, 4, 8), "k": 5, "head": (16, 8)},
    "conv": {"hidden": 4, "layers": 3},
    "equiv": {"hidden": 2, "layers": 3},
    "rsteer": {"hidden": 2, "layers": 3},
    "lift": {"hidden": 2, "layers": 3},
}
#: models whose equivariant parts are float32 whatever the model's dtype (escnn builds and samples its kernel
#: bases in float32; the model is cast to float64 after it is built)
FLOAT32_EXACT = {"steerable_cnn", "conv", "equiv", "rsteer", "lift"}

CASES = [(name, kind) for name in registry.model_names() for kind in sorted(registry.task_kinds(name))]


@contextmanager
def float64_default():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    cache = {}

    def get(name):
        if name not in cache:
            if name == "md":
                task = md_task(tmp_path_factory.mktemp("md"))
            elif name == "plume":  # the rotation set, 8 x 8; random frames (no simulation needed)
                task = registry.get_task_class("plume")(
                    {"size": 8, **PLUME_TINY}, tmp_path_factory.mktemp("p")
                )
                g = torch.Generator().manual_seed(0)
                frames = torch.randn(3, 2, 2, 8, 8, generator=g, dtype=torch.float64)
                cache[name] = (
                    task,
                    {"frames": frames, "target": torch.randn(frames.shape, generator=g, dtype=torch.float64)},
                )
                return cache[name]
            else:
                if name not in TASK_PARAMS:
                    pytest.fail(f"add tiny parameters for task {name!r} to TASK_PARAMS in {__file__}")
                task = registry.get_task_class(name)(TASK_PARAMS[name], tmp_path_factory.mktemp(name))
                task.prepare()
            split = task.load_splits()["test"]
            batch = split.evenly_spaced(8) if name != "md" else split.head(3)
            batch = {k: v.double() if v.is_floating_point() else v for k, v in batch.items()}
            cache[name] = (task, batch)
        return cache[name]

    return get


def params_for(name, kind):
    params = MODELS.get((name, kind), MODELS.get(name))
    if params is None:
        pytest.fail(f"add tiny parameters for model {name!r} to MODELS in {__file__}")
    return dict(params)


def build(name, spec, relaxed, params):
    if name in FLOAT32_EXACT:
        torch.manual_seed(0)
        return registry.get_model(name).build(spec, relaxed=relaxed, **params).double()
    with float64_default():
        torch.manual_seed(0)
        return registry.get_model(name).build(spec, relaxed=relaxed, **params).double()


def calibrate(model, task, batch):
    """Batch-norm statistics from the batch itself (identical for a model and its projected twin), so that the
    outputs depend on the input at O(1) in eval mode."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.momentum = None
        m.reset_running_stats()
    if norms:
        model.train()
        with torch.enable_grad() if task.needs_grad else torch.no_grad():
            task.predict(model, batch)
    model.eval()


@pytest.mark.parametrize("name,kind", CASES, ids=[f"{n}-{k}" for n, k in CASES])
def test_model_passes_the_contract(name, kind, tasks):
    group = registry.task_kinds(name)[kind]
    if kind not in KIND_TASK:
        if not any(registry.get_task_class(t).kind == kind for t in registry.task_names()):
            pytest.skip(f"no registered task of kind {kind!r} yet")
        pytest.fail(f"add a task for kind {kind!r} to KIND_TASK in {__file__}")
    params = params_for(name, kind)
    task_name = params.pop("task", KIND_TASK[kind])
    task, batch = tasks(task_name)
    assert task.kind == kind
    tol = testing.tolerance(torch.float32 if name in FLOAT32_EXACT else torch.float64)
    plain = build(name, task.spec, False, params)
    calibrate(plain, task, batch)
    if group.startswith("none"):  # the negative control: the tester flags a model without the symmetry
        err = model_equivariance_error(plain, task, batch, n_elements=4, seed=0)
        assert err.exact > 100 * tol
        return
    testing.assert_equivariant(plain, task, batch, tol=tol)
    if kind == "point_classification":  # O(3) identifies a shape with its mirror image, SO(3) does not
        assert group.startswith(("SO(3)", "O(3)")), group
        testing.assert_separates(
            plain, task, batch, testing.mirrored(batch), separates=group.startswith("SO(3)")
        )
    relaxed = build(name, task.spec, True, params)
    calibrate(relaxed, task, batch)
    testing.assert_projection_exact(plain, relaxed, task, batch)
    testing.assert_relaxed_breaks_symmetry(relaxed, task, batch, tol=tol)
    testing.assert_theta_reaches_every_layer(relaxed, task, batch)
    testing.assert_penalty_null_space(relaxed, task, batch)


def test_every_registered_model_declares_task_kinds_of_registered_tasks_or_is_awaited():
    kinds = {registry.get_task_class(t).kind for t in registry.task_names()}
    assert set(KIND_TASK) <= kinds
    for name in registry.model_names():
        assert registry.task_kinds(name), name
