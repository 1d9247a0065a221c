"""Rotated Fashion-MNIST: the 70,000 Fashion-MNIST images, each randomly rotated (realistic scale).

Reads the original IDX files (``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``) from ``path``, by
default where Debian's ``dataset-fashion-mnist`` package installs them. The 28 x 28 images are scaled to
[0, 1] and pasted on an odd ``canvas`` (29 x 29: one zero row and column added at the bottom and right, so
rot90 about the centre pixel is exact), subsampled stratified by class for CPU scale (``n_train``,
``n_val`` from the training file, validation drawn first; ``n_test`` from the test file; ``None`` = all),
then rotated by uniform random angles (bilinear), ``{split}_rotations`` copies per image. Unlike digits,
garments fill the frame, so rotations crop their corners: that is inherent to rotated Fashion-MNIST.

Batches: ``image [B, 1, canvas, canvas]`` float32 in [0, 1], ``label [B]`` int64 in 0..9. Metrics:
``error_rate`` (primary) and ``accuracy``; loss: cross-entropy; logits invariant under image rotations.
"""

from __future__ import annotations

from pathlib import Path

from relaxbench.tasks._images import RotatedImageTask, idx_rotated_arrays
from relaxbench.tasks.base import TaskError
from relaxbench.validation import SEED

__all__ = ["RotFashionMNIST", "TASK"]

DEBIAN_PATH = "/usr/share/datasets/fashion-mnist"


class RotFashionMNIST(RotatedImageTask):
    name = "rotfmnist"
    defaults = {
        "path": DEBIAN_PATH,
        "n_train": 5000,
        "n_val": 1000,
        "n_test": 2000,
        "train_rotations": 1,
        "val_rotations": 1,
        "test_rotations": 2,
        "canvas": 29,
        "seed": 0,
    }
    params_schema = {
        "path": {"type": "string"},
        **{f"n_{s}": {"type": ["integer", "null"], "minimum": 1} for s in ("train", "val", "test")},
        **{
            f"{s}_rotations": {"type": "integer", "minimum": 1, "maximum": 64}
            for s in ("train", "val", "test")
        },
        "canvas": {"type": "integer", "minimum": 3, "maximum": 255},
        "seed": SEED,
    }

    def build_arrays(self):
        path = Path(self.params["path"])
        if (
            not (path / "train-images-idx3-ubyte.gz").is_file()
            and not (path / "train-images-idx3-ubyte").is_file()
        ):
            raise TaskError(
                f"rotfmnist: no Fashion-MNIST IDX files in {str(path)!r}; install them with "
                "`apt-get install dataset-fashion-mnist` or set params.path"
            )
        return idx_rotated_arrays(path, self.params, self.data_dir / "raw")


TASK = RotFashionMNIST
