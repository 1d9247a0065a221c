"""Symmetrisation by frame averaging: a model that is not equivariant becomes exactly equivariant."""

import math

import pytest
import torch
from torch import nn

from relaxbench.models import cnn, egnn, tfn
from relaxbench.relax import relaxed_layers, set_theta
from relaxbench.symmetrise import FrameAveraged, c4_frames, pca_frames
from relaxbench.symmetry import equivariance_error
from relaxbench.tasks.nbody import NBody
from relaxbench.tasks.rotdigits import RotDigits
from relaxbench.tasks.tetris import Tetris

F64 = torch.float64


def broken(model: nn.Module) -> nn.Module:
    """The relaxed twin at theta = 1 with large free maps: far from equivariant."""
    for layer in relaxed_layers(model):
        nn.init.normal_(layer.free.weight, std=0.5)
    set_theta(model, 1.0)
    return model.to(F64).eval()


def errors(model, task, batch, n=6):
    elements = task.sample_group(n, torch.Generator().manual_seed(1))
    with torch.no_grad():
        return equivariance_error(model, batch, elements, task.act, task.act_output)


def test_pca_frames_are_proper_rotations_and_report_degenerate_spectra():
    gen = torch.Generator().manual_seed(0)
    points = torch.randn(5, 7, 3, generator=gen, dtype=F64)
    frames, centre, gap = pca_frames(points)
    eye = torch.eye(3, dtype=F64).expand(4, 5, 3, 3)
    assert torch.allclose(frames.transpose(-1, -2) @ frames, eye, atol=1e-12)
    assert torch.allclose(torch.linalg.det(frames), torch.ones(4, 5, dtype=F64), atol=1e-12)
    assert torch.allclose(centre, points.mean(1, keepdim=True))
    assert (gap > 1e-3).all()
    square = torch.tensor([[[1.0, 1, 0], [1, -1, 0], [-1, 1, 0], [-1, -1, 0]]], dtype=F64)
    assert pca_frames(square)[2].item() == pytest.approx(0.0, abs=1e-12)


def test_c4_frame_pairs_are_inverse():
    for g, g_inv in c4_frames():
        assert (g.data["k"] + g_inv.data["k"]) % 4 == 0


def test_symmetrised_point_classifier_is_exactly_invariant(tmp_path):
    task = Tetris({"n_train": 1, "n_val": 1, "n_test": 2, "jitter": 0.05}, tmp_path)
    task.prepare()
    batch = {k: v.to(F64) for k, v in task.load_splits()["test"].head(16).items()}
    torch.manual_seed(0)
    model = broken(tfn.build({"num_classes": 8}, relaxed=True, hidden="4x0e + 4x0o + 2x1e + 2x1o", layers=2))
    assert errors(model, task, batch).exact > 1e-3
    assert errors(FrameAveraged(model, task), task, batch).exact < 1e-10


def test_symmetrised_particle_model_is_exactly_equivariant(tmp_path):
    """Positions out: rotated back and translated by the frame (E(3) with permutations of the particles)."""
    task = NBody({}, tmp_path)
    gen = torch.Generator().manual_seed(0)
    batch = {
        "loc": torch.randn(4, 5, 3, generator=gen, dtype=F64),
        "vel": 0.5 * torch.randn(4, 5, 3, generator=gen, dtype=F64),
        "charges": torch.randint(0, 2, (4, 5, 1), generator=gen).to(F64) * 2 - 1,
    }
    torch.manual_seed(0)
    model = broken(egnn.build({"n_particles": 5}, relaxed=True, hidden=8, layers=2))
    assert errors(model, task, batch).exact > 1e-3
    assert errors(FrameAveraged(model, task), task, batch).exact < 1e-10


def test_symmetrised_image_classifier_is_exactly_c4_invariant(tmp_path):
    task = RotDigits({}, tmp_path)
    gen = torch.Generator().manual_seed(0)
    batch = {"image": torch.rand(3, 1, 29, 29, generator=gen, dtype=F64)}
    torch.manual_seed(0)
    model = cnn.build({"channels": 1, "num_classes": 10}, channels=(4, 4), kernel_size=3).to(F64).eval()
    plain, averaged = errors(model, task, batch), errors(FrameAveraged(model, task), task, batch)
    assert plain.exact > 1e-4  # an untrained CNN's logits are mostly its head bias: small but clear
    assert averaged.exact < 1e-10 and averaged.exact_abs < 1e-15
    assert averaged.approx > 1e-6  # other angles interpolate: C4, not SO(2)


def test_a_task_without_a_frame_is_refused(tmp_path):
    task = Tetris({}, tmp_path)
    task.frame = None
    with pytest.raises(ValueError, match="frame"):
        FrameAveraged(nn.Identity(), task)


def test_frame_averaging_keeps_gradients_for_derived_outputs():
    """Forces as -dE/dpos of a symmetrised energy: the gradient flows through the PCA frame."""
    gen = torch.Generator().manual_seed(0)
    points = torch.randn(2, 6, 3, generator=gen, dtype=F64, requires_grad=True)
    frames, centre, _ = pca_frames(points)
    (frames.sum() + centre.sum()).backward()
    assert torch.isfinite(points.grad).all() and points.grad.abs().sum() > 0
    assert not math.isnan(points.grad.sum().item())
