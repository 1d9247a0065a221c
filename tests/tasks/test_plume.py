"""Smoke plumes: the PhiFlow generator's physics, the group actions (against escnn), the published-file loader,
the splits, the rollout and a tiny run."""

import io

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from relaxbench.symmetry import equivariance_error
from relaxbench.tasks import _plume_sim as sim
from relaxbench.tasks.base import TaskError
from relaxbench.tasks.plume import OFFSET, Plume, published_file, rotate_field, scale_field

SIDES = ("bottom", "right", "top", "left")
TINY = {
    "in_frames": 2,
    "out_frames": 2,
    "rollout": 3,
    "train_times": [0, 3],
    "val_times": [3, 4],
    "future_times": [4, 6],
    "domain_times": [0, 2],
}


def inward_flow(frames: np.ndarray, side: int) -> np.ndarray:
    """Mean velocity component along side ``side``'s inward normal in the cells of the plume's axis (the two
    middle columns for bottom / top, rows for left / right): ``[T]`` from ``frames [T, 2, H, W]``."""
    h = frames.shape[-1]
    mid = slice(h // 2 - 1, h // 2 + 1)
    normal = np.array(sim.ROTATION_SIDES[side][1])
    v = np.einsum("c,tchw->thw", normal, frames)
    strip = v[:, :, mid] if side in (0, 2) else v[:, mid, :]
    return strip.mean(axis=(1, 2))


@pytest.fixture(scope="module")
def four_sides():
    """One batched run: the same plume (buoyancy 0.1) entering from each side, 16 x 16 cells, 6 frames."""
    centers = np.array([c for c, _ in sim.ROTATION_SIDES])
    forces = 0.1 * np.array([n for _, n in sim.ROTATION_SIDES])
    return sim.simulate(16, centers, forces, 6)


def test_projection_leaves_the_flow_divergence_free(four_sides):
    assert four_sides.frames.shape == (4, 6, 2, 16, 16)
    assert four_sides.max_speed > 0.1
    assert four_sides.max_divergence < 1e-10 * four_sides.max_speed


def test_a_rotated_inflow_gives_the_rotated_flow_exactly(four_sides):
    """The simulator and the task's action agree: the plume entering from side j is the bottom plume turned by
    j quarter turns (the staggered grid maps onto itself under quarter turns about the box centre)."""
    frames = torch.from_numpy(four_sides.frames).double()
    for j in range(4):
        torch.testing.assert_close(frames[j], rotate_field(frames[0], j), rtol=0, atol=1e-12)


@pytest.mark.parametrize("side", range(4), ids=SIDES)
def test_buoyancy_drives_the_plume_inwards(four_sides, side):
    along = inward_flow(four_sides.frames[side], side)
    assert (along[1:] > 0).all() and along[-1] > 0.05


def test_the_bottom_plume_rises_towards_row_zero(four_sides):
    """Layout: row 0 is the top of the box and channel 1 points up, so the bottom plume (inflow in the last
    rows) has positive channel 1 on its axis."""
    last = four_sides.frames[0, -1]
    assert last[1, -4:, 7:9].mean() > 0.1
    assert abs(last[0, :, 7:9].mean()) < 1e-6  # symmetric about the axis: no net sideways flow


@pytest.mark.slow
def test_published_recipe_per_side_and_staggered_divergence():
    """Simulations 1-4 of the rotation set (sides 0-3, buoyancy 0.025 k) in the published staggered layout;
    the divergence of the saved staggered faces, recomputed here, vanishes (walls: the faces not saved are 0)."""
    run = sim.rotation_sims([1, 2, 3, 4], 16, 4, sampling="staggered")
    for k in range(4):
        assert inward_flow(run.frames[k], k)[-1] > 0
    faces = run.frames[..., ::-1, :].astype(np.float64)  # back to PhiFlow's y-up rows
    vx = np.concatenate([faces[:, :, 0], np.zeros_like(faces[:, :, 0, :, :1])], axis=-1)
    vy = np.concatenate([faces[:, :, 1], np.zeros_like(faces[:, :, 1, :1, :])], axis=-2)
    div = np.diff(vx, axis=-1) + np.diff(vy, axis=-2)
    assert np.abs(div).max() < 1e-5 * np.abs(faces).max()  # float32 frames


@pytest.mark.slow
def test_scale_set_is_downsampled_and_divided_by_the_factor():
    run = sim.scale_sims([0, 10], 8, 3)
    assert run.frames.shape == (2, 3, 2, 8, 8)
    assert np.isfinite(run.frames).all() and run.max_divergence < 1e-10 * run.max_speed
    assert (run.frames[:, -1, 1, -3:, 3:5].mean(axis=(1, 2)) > 0.01).all()  # both plumes rise on their axis


# --- group actions ------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [7, 8])
def test_rotation_matches_escnn_irrep1_on_c4(size):
    from escnn import gspaces
    from escnn import nn as enn

    gspace = gspaces.rot2dOnR2(4)
    field = enn.FieldType(gspace, [gspace.irrep(1)])
    v = torch.randn(3, 2, size, size, dtype=torch.float64)
    for k in range(4):
        expected = enn.GeometricTensor(v, field).transform(gspace.fibergroup.element(k)).tensor
        torch.testing.assert_close(rotate_field(v, k), expected, rtol=0, atol=1e-12)


def test_rotation_is_an_exact_c4_action():
    v = torch.randn(2, 5, 2, 8, 8)
    assert torch.equal(rotate_field(v, 4), v)
    assert torch.equal(rotate_field(rotate_field(v, 1), 3), v)
    assert torch.equal(rotate_field(rotate_field(v, 1), 1), rotate_field(v, 2))
    assert not torch.equal(rotate_field(v, 1), torch.rot90(v, 1, dims=(-2, -1)))  # components turn too


def test_scale_action_shrinks_into_the_middle_and_divides():
    v = torch.ones(1, 2, 8, 8)
    out = scale_field(v, 2.0)
    assert out.shape == v.shape
    assert torch.equal(out[..., 2:6, 2:6], torch.full((1, 2, 4, 4), 0.5))
    assert out.sum() == 0.5 * 2 * 16
    torch.testing.assert_close(scale_field(v, 1.0), v)


class NextFrame(nn.Module):
    """A tiny forecaster on ``{"frames": [B, T, 2, H, W]}``: an escnn irrep(1) -> irrep(1) convolution of the last
    frame (C4-equivariant), or a plain Conv2d (not equivariant)."""

    def __init__(self, equivariant: bool) -> None:
        super().__init__()
        self.equivariant = equivariant
        if equivariant:
            from escnn import gspaces
            from escnn import nn as enn

            gspace = gspaces.rot2dOnR2(4)
            self.field = enn.FieldType(gspace, [gspace.irrep(1)])
            self.conv = enn.R2Conv(self.field, self.field, kernel_size=3, padding=1)
        else:
            self.conv = nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, batch):
        last = batch["frames"][:, -1]
        if self.equivariant:
            from escnn import nn as enn

            return last + self.conv(enn.GeometricTensor(last, self.field)).tensor
        return last + self.conv(last)


def test_equivariance_metric_is_zero_for_a_c4_model_only(tmp_path):
    task = Plume({"size": 8, **TINY}, tmp_path)
    batch = {"frames": torch.randn(3, 2, 2, 8, 8), "target": torch.zeros(3, 4, 2, 8, 8)}
    elements = task.sample_group(8, torch.Generator().manual_seed(0))
    assert [g.data["k"] for g in elements] == [1, 2, 3] and all(g.exact for g in elements)
    errors = {}
    for equivariant in (True, False):
        model = NextFrame(equivariant).eval()  # float32: .double() would convert escnn's cached basis too
        err = equivariance_error(
            lambda b, m=model: task.predict(m, b), batch, elements, task.act, task.act_output
        )
        errors[equivariant] = err.exact
    assert errors[True] < 1e-5 < 1e-2 < errors[False]


def test_scale_task_samples_approximate_elements(tmp_path):
    task = Plume({"symmetry": "scale", "size": 8, **TINY}, tmp_path)
    elements = task.sample_group(8, torch.Generator().manual_seed(0))
    assert len(elements) == 2 and not any(g.exact for g in elements)
    batch = {"frames": torch.ones(1, 2, 2, 8, 8), "target": torch.ones(1, 3, 2, 8, 8)}
    moved = task.act(elements[0], batch)
    assert moved["frames"].shape == batch["frames"].shape and moved["frames"][0, 0, 0, 0, 0] == 0


# --- the published files ------------------------------------------------------------------------------


def write_published(folder, symmetry, indices, frames=12, seed=0):
    """Files in the published layout: ``[frames, 2, 64, 64]`` float32, value = 1000 k + 10 t + channel."""
    folder.mkdir(parents=True, exist_ok=True)
    for k in indices:
        t = torch.arange(frames, dtype=torch.float32).view(-1, 1, 1, 1)
        c = torch.arange(2, dtype=torch.float32).view(1, 2, 1, 1)
        rows = torch.arange(64, dtype=torch.float32).view(1, 1, 64, 1) * 1e-3
        data = (1000 * k + 10 * t + c + rows).expand(frames, 2, 64, 64).contiguous()
        torch.save(data, published_file(folder, symmetry, k))


def published_task(folder, data_dir, symmetry="rotation", train=(1, 2), domain=(3,)):
    params = {
        "symmetry": symmetry,
        "path": str(folder),
        "size": 64,
        "sampling": "staggered",
        "train_sims": list(train),
        "domain_sims": list(domain),
        **TINY,
    }
    return Plume(params, data_dir)


def test_loader_reads_published_rotation_files_into_windows(tmp_path):
    write_published(tmp_path / "Rotation", "rotation", [1, 2, 3])
    assert published_file(tmp_path, "rotation", 6).name == "raw_data_6_1.pt"
    task = published_task(tmp_path / "Rotation", tmp_path / "data")
    task.prepare()
    assert task.prepared()
    splits = task.load_splits()
    assert set(splits) == {"train", "val", "test", "test_domain"} and task.test_splits == (
        "test",
        "test_domain",
    )
    sizes = {name: len(split) for name, split in splits.items()}
    assert sizes == {"train": 2 * 3, "val": 2 * 1, "test": 2 * 2, "test_domain": 1 * 2}
    train = splits["train"].tensors
    assert train["frames"].shape == (6, 2, 2, 64, 64) and train["target"].shape == (6, 2, 2, 64, 64)
    assert splits["test"].tensors["target"].shape == (4, 3, 2, 64, 64)
    # simulation-major; window t reads frames t + OFFSET ...; rows flipped (row 0 = the file's last row)
    example = train["frames"][4]  # simulation 2, start 1
    assert example[0, 1, 0, 0] == pytest.approx(2000 + 10 * (1 + OFFSET) + 1 + 63e-3)
    assert train["target"][4, 0, 0, 63, 0] == pytest.approx(2000 + 10 * (1 + OFFSET + 2))
    domain = splits["test_domain"].tensors
    assert domain["frames"][0, 0, 0, 0, 0] == pytest.approx(3000 + 10 * OFFSET + 63e-3)


def test_loader_reads_published_scale_files(tmp_path):
    write_published(tmp_path / "Scale", "scale", [0, 4, 7])
    task = published_task(tmp_path / "Scale", tmp_path / "data", "scale", train=(0, 4), domain=(7,))
    task.prepare()
    assert task.load_splits()["test_domain"].tensors["frames"][0, 0, 0, 5, 0] == pytest.approx(
        7000 + 10 * OFFSET + 58e-3
    )


@pytest.mark.parametrize(
    "damage, message",
    [
        ("missing", "raw_data_3_2.pt not found"),
        ("garbage", "raw_data_3_2.pt is not a readable torch file"),
        ("shape", "raw_data_3_2.pt holds (12, 3, 64, 64); expected a tensor [T, 2, 64, 64]"),
        ("short", "raw_data_3_2.pt has 5 frames; the splits need 8"),
        ("dict", "raw_data_3_2.pt holds dict"),
        ("nan", "raw_data_3_2.pt holds non-finite values"),
    ],
)
def test_malformed_published_files_fail_naming_the_file(tmp_path, damage, message):
    folder = tmp_path / "Rotation"
    write_published(folder, "rotation", [1, 2, 3])
    bad = published_file(folder, "rotation", 3)
    if damage == "missing":
        bad.unlink()
    elif damage == "garbage":
        bad.write_bytes(b"not a torch file")
    elif damage == "shape":
        torch.save(torch.zeros(12, 3, 64, 64), bad)
    elif damage == "short":
        torch.save(torch.zeros(5, 2, 64, 64), bad)
    elif damage == "dict":
        torch.save({"velocity": torch.zeros(12, 2, 64, 64)}, bad)
    else:
        torch.save(torch.full((12, 2, 64, 64), float("nan")), bad)
    task = published_task(folder, tmp_path / "data")
    with pytest.raises(TaskError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        task.prepare()
    assert not task.prepared() and not (tmp_path / "data" / "plume.npz").exists()


@pytest.mark.parametrize(
    "params, message",
    [
        ({"symmetry": "reflection"}, "symmetry must be one of"),
        ({"train_sims": [1, 2], "domain_sims": [2]}, r"held out, but \[2\]"),
        ({"train_sims": [0]}, r"indices in 1..36"),
        ({"symmetry": "scale", "train_sims": [41]}, r"indices in 0..40"),
        ({"val_times": [5, 5]}, r"val_times must be \[start, stop\)"),
        ({"in_frames": 0}, "in_frames must be an integer >= 1"),
        ({"sampling": "faces"}, "sampling must be one of"),
        ({"path": "/nowhere", "size": 32}, "set size: 64 and sampling: staggered"),
        ({"colour": "red"}, "unknown parameter"),
    ],
)
def test_bad_parameters_name_the_key(tmp_path, params, message):
    with pytest.raises(TaskError, match=message):
        Plume(params, tmp_path)


# --- learning -----------------------------------------------------------------------------------------


def test_rollout_feeds_predictions_back_and_metrics_pool_the_rmse(tmp_path):
    task = Plume({"size": 8, **TINY}, tmp_path)
    seen = []

    class Recorder(nn.Module):
        def forward(self, batch):
            assert set(batch) == {"frames"}
            seen.append(batch["frames"].clone())
            return batch["frames"][:, -1] + 1.0

    frames = torch.zeros(2, 2, 2, 8, 8)
    target = torch.zeros(2, 3, 2, 8, 8)
    pred = task.predict(Recorder(), {"frames": frames, "target": target})
    assert pred.shape == (2, 3, 2, 8, 8)
    assert [float(p[0, 0, 0, 0]) for p in pred.unbind(1)] == [1.0, 2.0, 3.0]
    assert torch.equal(seen[2][:, 0], torch.ones(2, 2, 8, 8)) and torch.equal(
        seen[2][:, 1], 2 * torch.ones(2, 2, 8, 8)
    )
    assert task.loss(pred, {"target": target}).item() == pytest.approx(3 * (1 + 4 + 9) / 3)
    values = task.metric_values(pred, {"target": target})
    assert values["mse"].tolist() == pytest.approx([14 / 3, 14 / 3])
    assert task.reduce_metrics({"mse": 4.0, "loss": 4.0})["rmse"] == 2.0


def test_artifacts_hold_rollout_curves_and_fields(tmp_path):
    write_published(tmp_path / "Rotation", "rotation", [1, 2, 3])
    task = published_task(tmp_path / "Rotation", tmp_path / "data")
    task.prepare()
    splits = task.load_splits()
    model = NextFrame(equivariant=False).eval()
    files = task.artifacts(model, splits, 4, torch.device("cpu"))
    curve = pd.read_csv(io.BytesIO(files["rollout.csv"]))
    assert curve.groupby("split")["step"].max().to_dict() == {"test": 3, "test_domain": 3}
    fields = np.load(io.BytesIO(files["fields.npz"]))
    assert fields["test_domain_true"].shape == fields["test_domain_pred"].shape == (3, 2, 64, 64)
    assert fields["test_steps"].tolist() == [1, 2, 3]
    # the curve's mean square over steps is the split's pooled mean squared error
    from relaxbench.train import evaluate

    pooled = evaluate(model, task, splits["test"], 4, torch.device("cpu"))
    steps = curve[curve["split"] == "test"]["rmse"].to_numpy()
    assert np.mean(steps**2) == pytest.approx(pooled["mse"], rel=1e-5)
    assert pooled["rmse"] == pytest.approx(np.sqrt(pooled["mse"]))
    # the persistence reference: every future frame is the window's last frame
    still = pd.read_csv(io.BytesIO(files["reference.csv"]))
    split = splits["test_domain"].tensors
    direct = (split["target"] - split["frames"][:, -1:]).double().pow(2).flatten(2).mean(2).mean(0).sqrt()
    assert still[still["split"] == "test_domain"]["rmse"].to_numpy() == pytest.approx(
        direct.numpy(), rel=1e-12
    )
    assert still.groupby("split")["step"].max().to_dict() == {"test": 3, "test_domain": 3}


def test_spec_is_the_model_interface(tmp_path):
    spec = Plume({"symmetry": "scale", "size": 32, "in_frames": 5}, tmp_path).spec
    assert spec == {"kind": "plume", "symmetry": "scale", "in_frames": 5, "size": 32}


def build_tiny(spec, relaxed=False):
    """A ``module:function`` model entry for the run below (the plume models live in relaxbench.models)."""
    assert spec["kind"] == "plume" and not relaxed
    return NextFrame(equivariant=True)


def test_a_run_records_both_test_splits_and_the_rollout_curves(tmp_path):
    from relaxbench.config import RunSpec, resolve_run, validate_config
    from relaxbench.leaderboard import aggregate, collect
    from relaxbench.train import train_run

    write_published(tmp_path / "Rotation", "rotation", [1, 2, 3])
    params = {"path": str(tmp_path / "Rotation"), "size": 64, "sampling": "staggered", "train_sims": [1, 2]}
    cfg = validate_config(
        {
            "name": "unit",
            "seeds": [0],
            "device": "cpu",
            "training": {"epochs": 1, "batch_size": 4, "equivariance_samples": 3, "equivariance_examples": 2},
            "methods": {"equivariant": {}},
            "tasks": {"plume": {**params, "domain_sims": [3], **TINY}},
            "models": {
                "tiny": {
                    "arch": "tests.tasks.test_plume:build_tiny",
                    "family": "steerable_cnn",
                    "tasks": ["plume"],
                }
            },
        }
    )
    run_dir = tmp_path / "results" / "unit" / "runs" / "plume" / "tiny" / "equivariant" / "seed0"
    record = train_run(
        resolve_run(cfg, RunSpec("plume", "tiny", "equivariant", 0)), run_dir, tmp_path / "data"
    )
    assert record.status == "ok", record.reason
    assert record.metric == "rmse" and set(record.test) == {"loss", "mse", "rmse"}
    assert set(record.tests) == {"test_domain"} and record.tests["test_domain"]["rmse"] > 0
    assert record.equiv_final_exact < 1e-5 and record.equiv_final_approx is None
    curve = pd.read_csv(run_dir / "rollout.csv")
    assert set(curve["split"]) == {"test", "test_domain"}
    board = collect(tmp_path / "results" / "unit")
    assert board.loc[0, "test_domain_metric"] == record.tests["test_domain"]["rmse"]
    assert board.loc[0, "test_domain_rmse"] == record.tests["test_domain"]["rmse"]
    agg = aggregate(board)
    assert agg.loc[0, "test_domain_metric_mean"] == pytest.approx(record.tests["test_domain"]["rmse"])
