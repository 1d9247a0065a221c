"""Shared pieces of the rotated-image classification tasks (``rotdigits``, ``rotfmnist``, ``rotmnist``).

Images are single-channel squares on an odd canvas (default 29 x 29), so that ``torch.rot90`` is an exact
C4 action about the centre pixel. Every task yields splits ``{"image": [N, 1, S, S] float32 in [0, 1],
"label": [N] int64}``; the logits ``[B, num_classes]`` are invariant under rotations of the image.

Group elements for the equivariance metric: rotations by multiples of 90 degrees act exactly on the pixel
grid (``GroupElement(exact=True)``, applied with ``torch.rot90``); other angles interpolate bilinearly
(``exact=False``, applied with :func:`rotate`). Data rotations use the same bilinear interpolation (order 1;
order 3 overshoots the [0, 1] range).

Rotation convention: a positive angle (radians) turns the image counter-clockwise as displayed (row axis
pointing down), so ``rotate(x, pi/2)`` equals ``torch.rot90(x, 1, dims=(-2, -1))`` up to rounding.
"""

from __future__ import annotations

import abc
import gzip
import math
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from relaxbench.records import atomic_write_bytes, atomic_write_npz
from relaxbench.symmetry import GroupElement
from relaxbench.tasks.base import Batch, ClassificationTask, Split, TaskError

__all__ = [
    "RotatedImageTask",
    "SPLITS",
    "idx_rotated_arrays",
    "paste_centred",
    "read_idx",
    "rotate",
    "rotate_copies",
    "rotation_elements",
    "stratified_take",
]

SPLITS = ("train", "val", "test")


def rotate(images: Tensor, angles: Tensor | float) -> Tensor:
    """Rotate ``images [N, C, H, W]`` (H == W) about the grid centre by ``angles`` (radians, ``[N]`` or scalar).

    Bilinear interpolation, zeros outside the canvas; returns ``[N, C, H, W]`` in the input dtype.
    """
    n, _, h, w = images.shape
    if h != w:
        raise ValueError(f"rotate needs square images, got {h}x{w}")
    angles = torch.as_tensor(angles, dtype=images.dtype, device=images.device).expand(n)
    cos, sin = torch.cos(angles), torch.sin(angles)
    zero = torch.zeros_like(cos)
    # output pixel (x right, y down, normalised) samples the input at R(-angle) in the y-up frame
    theta = torch.stack([torch.stack([cos, -sin, zero], -1), torch.stack([sin, cos, zero], -1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=True)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def paste_centred(images: np.ndarray, canvas: int) -> np.ndarray:
    """Paste ``images [N, h, w]`` onto zero canvases ``[N, canvas, canvas]`` (offset ``(canvas - h) // 2``)."""
    n, h, w = images.shape
    if h > canvas or w > canvas:
        raise TaskError(f"images of {h}x{w} pixels do not fit a canvas of {canvas}")
    out = np.zeros((n, canvas, canvas), dtype=np.float32)
    top, left = (canvas - h) // 2, (canvas - w) // 2
    out[:, top : top + h, left : left + w] = images
    return out


def rotate_copies(
    images: np.ndarray, labels: np.ndarray, copies: int, generator: torch.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``copies`` independently rotated versions of every image (uniform angles in [0, 2 pi)).

    Args:
        images: ``[N, S, S]`` float in [0, 1]; labels: ``[N]``.
    Returns:
        ``([N * copies, 1, S, S] float32, [N * copies] int64)``, copies of one image adjacent.
    """
    if not isinstance(copies, int) or copies < 1:
        raise TaskError(f"the number of rotated copies per image must be an integer >= 1, got {copies!r}")
    source = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).unsqueeze(1)
    source = source.repeat_interleave(copies, dim=0)
    angles = torch.rand(source.shape[0], generator=generator, dtype=torch.float64) * (2 * math.pi)
    chunk = 8192  # bounds the float64 working memory for the 60k-image datasets
    rotated = torch.cat(
        [
            rotate(source[i : i + chunk].double(), angles[i : i + chunk]).float().clamp_(0.0, 1.0)
            for i in range(0, max(len(source), 1), chunk)
        ]
    )
    return rotated.numpy(), np.repeat(labels.astype(np.int64), copies)


def stratified_take(
    indices: np.ndarray, labels: np.ndarray, n: int | None, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``indices`` into ``n`` stratified by ``labels[indices]`` (seeded) and the rest.

    ``n=None`` (or ``n == len(indices)``) takes everything. Raises :class:`TaskError` if ``n`` is larger than
    the pool or too small to hold every class.
    """
    from sklearn.model_selection import train_test_split

    if n is None or n == len(indices):
        return indices, indices[:0]
    n_classes = len(np.unique(labels[indices]))
    if not n_classes <= n <= len(indices) - n_classes:
        raise TaskError(
            f"cannot take {n} stratified examples from a pool of {len(indices)} with {n_classes} classes"
        )
    taken, rest = train_test_split(indices, train_size=n, stratify=labels[indices], random_state=seed)
    return np.sort(taken), np.sort(rest)


def read_idx(directory: str | Path, stem: str, cache: Path) -> np.ndarray:
    """Read the IDX file ``stem`` (e.g. ``train-images-idx3-ubyte``) or ``stem.gz`` from ``directory``.

    A gzipped file is decompressed into ``cache`` first (torchvision's reader takes plain files). Returns
    the array (``[N, 28, 28]`` uint8 images or ``[N]`` uint8 labels). Raises :class:`TaskError` if the file is
    missing or not IDX.
    """
    from torchvision.datasets.mnist import read_sn3_pascalvincent_tensor

    directory = Path(directory)
    plain, packed = directory / stem, directory / f"{stem}.gz"
    if not plain.is_file() and packed.is_file():
        plain = cache / stem
        if not plain.is_file():
            try:
                content = gzip.decompress(packed.read_bytes())
            except (OSError, EOFError, zlib.error) as err:
                raise TaskError(f"{packed} is not a valid gzip file ({err or type(err).__name__})") from None
            atomic_write_bytes(plain, content)
    if not plain.is_file():
        raise TaskError(f"IDX file {stem}[.gz] not found in {str(directory)!r}")
    try:
        return read_sn3_pascalvincent_tensor(str(plain), strict=True).numpy()
    except (AssertionError, KeyError, RuntimeError, ValueError) as err:
        raise TaskError(f"{plain} is not a valid IDX file ({err or type(err).__name__})") from None


def idx_rotated_arrays(
    directory: str | Path, params: Mapping[str, Any], cache: Path
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Train / val / test arrays from MNIST-layout IDX files, subsampled (stratified) and rotated.

    Validation and training examples come from the ``train-*`` files (validation drawn first), test
    examples from the ``t10k-*`` files. ``params``: ``n_train``, ``n_val``, ``n_test`` (``None``: all that
    remain), ``{split}_rotations``, ``canvas``, ``seed``.
    """
    if params["n_val"] is None:
        raise TaskError("n_val must be a number: validation examples are drawn from the training file")
    pools = {}
    for part in ("train", "t10k"):
        images = read_idx(directory, f"{part}-images-idx3-ubyte", cache)
        labels = read_idx(directory, f"{part}-labels-idx1-ubyte", cache).astype(np.int64)
        if len(labels) and labels.max() > 9:
            raise TaskError(f"{part}-labels-idx1-ubyte in {str(directory)!r} has labels outside 0..9")
        if images.ndim != 3 or len(images) != len(labels):
            raise TaskError(
                f"{part} IDX files in {str(directory)!r} disagree: images {images.shape}, labels {labels.shape}"
            )
        pools[part] = (paste_centred(images.astype(np.float32) / 255.0, params["canvas"]), labels)
    seed = int(params["seed"])
    train_labels, test_labels = pools["train"][1], pools["t10k"][1]
    val, rest = stratified_take(np.arange(len(train_labels)), train_labels, params["n_val"], seed + 1)
    train, _ = stratified_take(rest, train_labels, params["n_train"], seed + 2)
    test, _ = stratified_take(np.arange(len(test_labels)), test_labels, params["n_test"], seed)
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for split, (images, labels), idx in (
        ("train", pools["train"], train),
        ("val", pools["train"], val),
        ("test", pools["t10k"], test),
    ):
        out[split] = rotate_copies(images[idx], labels[idx], params[f"{split}_rotations"], generator)
    return out


def rotation_elements(n: int, generator: torch.Generator) -> list[GroupElement]:
    """``n`` rotations alternating exact (90, 180, 270 degrees in turn) and approximate (uniform angle)."""
    elements = []
    for i in range(n):
        if i % 2 == 0:
            k = 1 + (i // 2) % 3
            elements.append(GroupElement(f"rot90x{k}", True, {"k": k}))
        else:
            angle = float(torch.rand((), generator=generator, dtype=torch.float64)) * 2 * math.pi
            elements.append(GroupElement(f"rot{math.degrees(angle):.1f}", False, {"angle": angle}))
    return elements


class RotatedImageTask(ClassificationTask):
    """Image classification under rotations: data cached as one ``images.npz``; subclasses build the arrays.

    Subclasses implement :meth:`build_arrays` and set ``defaults`` (which must contain ``canvas``).
    """

    kind = "image_classification"

    num_classes = 10
    frame = "c4"

    def __init__(self, params, data_dir) -> None:
        super().__init__(params, data_dir)
        canvas = self.params["canvas"]
        if not isinstance(canvas, int) or canvas < 3 or canvas % 2 == 0:
            raise TaskError(
                f"task {self.name!r}: canvas must be an odd integer >= 3 (exact rot90), got {canvas!r}"
            )

    @abc.abstractmethod
    def build_arrays(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """``{split: (images [N, 1, S, S] float32 in [0, 1], labels [N] int64)}`` for train, val, test."""

    def prepare(self) -> None:
        arrays = self.build_arrays()
        payload = {}
        for split in SPLITS:
            images, labels = arrays[split]
            payload[f"{split}_image"], payload[f"{split}_label"] = (
                images.astype(np.float32),
                labels.astype(np.int64),
            )
        atomic_write_npz(self.data_dir / "images.npz", **payload)
        self.mark_prepared(
            {
                "examples": {s: int(len(arrays[s][1])) for s in SPLITS},
                "class_counts": {
                    s: np.bincount(arrays[s][1], minlength=self.num_classes).tolist() for s in SPLITS
                },
            }
        )

    def load_splits(self) -> dict[str, Split]:
        with np.load(self.data_dir / "images.npz") as data:
            return {
                s: Split(
                    {
                        "image": torch.from_numpy(data[f"{s}_image"]),
                        "label": torch.from_numpy(data[f"{s}_label"]),
                    }
                )
                for s in SPLITS
            }

    @property
    def spec(self) -> dict[str, Any]:
        size = self.params["canvas"]
        return {"kind": self.kind, "channels": 1, "size": size, "num_classes": self.num_classes}

    def sample_group(self, n: int, generator: torch.Generator) -> list[GroupElement]:
        return rotation_elements(n, generator)

    def act(self, g: GroupElement, batch: Batch) -> Batch:
        image = batch["image"]
        if g.exact:
            return {**batch, "image": torch.rot90(image, g.data["k"], dims=(-2, -1))}
        return {**batch, "image": rotate(image, g.data["angle"])}
