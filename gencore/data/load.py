"""`load_dataset(spec)`: a `--data` argument ("mnist", "digits" or a folder path) resolved to an ImageDataset."""
from __future__ import annotations

import os

from .dataset import ImageDataset
from .digits import load_digits
from .folder import load_image_folder
from .mnist import mnist_split, mnist_to_float


DATA_CHOICES = ("mnist", "digits")


def load_dataset(spec: str, *, root: str | None = None, split: str = "train", image_size: int | None = None,
                 channels: int | None = None, download: bool = False) -> ImageDataset:
    """Resolve a `--data` argument.

    Args:
        spec: "digits" (scikit-learn's 8x8 digits upsampled to 28x28: offline, no download), "mnist" (the project's
            MNIST split, see gencore.data.mnist: split="train" is the first 8,000 test-set images, "heldout" the last
            2,000, "all" all 10,000; `root` names the folder of IDX files, default $GENCORE_MNIST_DIR, else the
            download cache), or the path of a folder of images
            (gencore.data.folder: every image resized to image_size, converted to `channels`).
        image_size: side of the images for folders and digits (default 28); channels: only for folders (default 1).
        download: fetch MNIST (checksum-verified) when `root` does not hold it.

    Raises FileNotFoundError with the path for a missing folder, ValueError for an unknown spec.
    """
    if spec == "digits":
        return load_digits(image_size=image_size or 28)
    if spec == "mnist":
        part = {"train": "train", "heldout": "reference", "reference": "reference", "all": "all"}.get(split)
        if part is None:
            raise ValueError(f"split must be 'train', 'heldout' or 'all', got {split!r}")
        root = root if root is not None else os.environ.get("GENCORE_MNIST_DIR")
        arrays = mnist_split(part, root, download=download)
        return ImageDataset(mnist_to_float(arrays.images), arrays.labels, 10, f"mnist-{part}")
    if os.path.isdir(spec):
        return load_image_folder(spec, image_size=image_size or 28, channels=channels or 1)
    if os.path.exists(spec):
        raise ValueError(f"--data {spec!r} is a file; give a folder of images, 'mnist' or 'digits'")
    raise FileNotFoundError(f"--data {spec!r}: no such folder (choices: mnist, digits, or a folder of images)")
