"""RotDigits: scikit-learn's 1,797 handwritten 8x8 digits, enlarged and randomly rotated (always available).

Each digit is scaled to [0, 1], zoomed to ``zoom_size`` pixels square (``scipy.ndimage.zoom``, order 1) and
pasted centred on an odd ``canvas`` (29 x 29 by default: a 21-pixel digit stays inside the canvas's
inscribed disc, so rotations crop nothing but a few corner pixels' interpolation tails). The *source* images
are split first, stratified by class and seeded (test, then validation, then training from what remains,
so that changing ``n_train`` leaves validation and test unchanged), and only then rotated by uniform random
angles (bilinear): ``train_rotations`` / ``val_rotations`` / ``test_rotations`` rotated copies per source
image, the test split holding several seeded rotations of every test digit.

Batches: ``image [B, 1, canvas, canvas]`` float32 in [0, 1], ``label [B]`` int64 in 0..9. Metrics:
``error_rate`` (primary, fraction) and ``accuracy``; loss: cross-entropy. Symmetry: rotations of the image,
logits invariant (see :mod:`relaxbench.tasks._images`).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.ndimage import zoom

from relaxbench.tasks._images import RotatedImageTask, paste_centred, rotate_copies, stratified_take
from relaxbench.tasks.base import TaskError
from relaxbench.validation import SEED

__all__ = ["RotDigits", "TASK"]


#: Images in scikit-learn's digits data set.
DIGITS = 1797


class RotDigits(RotatedImageTask):
    name = "rotdigits"
    defaults = {
        "n_train": 1000,
        "n_val": 297,
        "n_test": 500,
        "train_rotations": 1,
        "val_rotations": 1,
        "test_rotations": 4,
        "zoom_size": 21,
        "canvas": 29,
        "seed": 0,
    }
    params_schema = {
        **{f"n_{s}": {"type": "integer", "minimum": 10, "maximum": DIGITS} for s in ("train", "val", "test")},
        **{
            f"{s}_rotations": {"type": "integer", "minimum": 1, "maximum": 64}
            for s in ("train", "val", "test")
        },
        "zoom_size": {"type": "integer", "minimum": 8, "maximum": 255},
        "canvas": {"type": "integer", "minimum": 3, "maximum": 255},
        "seed": SEED,
    }

    def __init__(self, params, data_dir) -> None:
        super().__init__(params, data_dir)
        p = self.params
        total = p["n_train"] + p["n_val"] + p["n_test"]
        if total > DIGITS:
            raise TaskError(f"rotdigits: n_train + n_val + n_test = {total} exceeds the {DIGITS} digits")
        if not 8 <= p["zoom_size"] <= p["canvas"]:
            raise TaskError(
                f"rotdigits: zoom_size must lie in [8, canvas={p['canvas']}], got {p['zoom_size']}"
            )

    def build_arrays(self):
        from sklearn.datasets import load_digits

        p = self.params
        digits = load_digits()
        labels = digits.target.astype(np.int64)
        factor = p["zoom_size"] / 8.0
        images = zoom(digits.images / 16.0, (1, factor, factor), order=1).clip(0.0, 1.0)
        images = paste_centred(images, p["canvas"])

        seed = int(p["seed"])
        test, rest = stratified_take(np.arange(len(labels)), labels, int(p["n_test"]), seed)
        val, rest = stratified_take(rest, labels, int(p["n_val"]), seed + 1)
        train, _ = stratified_take(rest, labels, int(p["n_train"]), seed + 2)
        generator = torch.Generator().manual_seed(seed)
        return {
            split: rotate_copies(images[idx], labels[idx], int(p[f"{split}_rotations"]), generator)
            for split, idx in (("train", train), ("val", val), ("test", test))
        }


TASK = RotDigits
