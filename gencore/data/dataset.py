"""In-memory image datasets for the trainers, and `load_dataset(spec)`: "mnist", "digits" or a folder path.

Every dataset here is small enough to live in memory as one float32 tensor of images in [-1, 1] (the range the
generators' tanh and the diffusion models assume), with optional int64 labels.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass
class ImageDataset(torch.utils.data.Dataset):
    """images: (N, C, H, W) float32 in [-1, 1]; labels: (N,) int64 in [0, num_classes) or None; a name for logs."""

    images: torch.Tensor
    labels: torch.Tensor | None = None
    num_classes: int | None = None
    name: str = "images"

    def __post_init__(self):
        if self.images.dim() != 4 or not self.images.is_floating_point():
            raise ValueError(f"images must be a float tensor (N, C, H, W), got {self.images.dtype} "
                             f"{tuple(self.images.shape)}")
        if self.labels is not None:
            if self.labels.shape != (self.images.shape[0],):
                raise ValueError(f"labels must have shape ({self.images.shape[0]},), got {tuple(self.labels.shape)}")
            self.labels = self.labels.long()
            if self.num_classes is None:
                self.num_classes = int(self.labels.max()) + 1 if len(self.labels) else 0

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i):
        if self.labels is None:
            return self.images[i]
        return self.images[i], self.labels[i]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def subset(self, n: int) -> "ImageDataset":
        """The first n images (and labels)."""
        return ImageDataset(self.images[:n], None if self.labels is None else self.labels[:n], self.num_classes,
                            self.name)


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
        from .digits import load_digits

        return load_digits(image_size=image_size or 28)
    if spec == "mnist":
        from .mnist import mnist_split, mnist_to_float

        part = {"train": "train", "heldout": "reference", "reference": "reference", "all": "all"}.get(split)
        if part is None:
            raise ValueError(f"split must be 'train', 'heldout' or 'all', got {split!r}")
        root = root if root is not None else os.environ.get("GENCORE_MNIST_DIR")
        arrays = mnist_split(part, root, download=download)
        return ImageDataset(mnist_to_float(arrays.images), arrays.labels, 10, f"mnist-{part}")
    if os.path.isdir(spec):
        from .folder import load_image_folder

        return load_image_folder(spec, image_size=image_size or 28, channels=channels or 1)
    if os.path.exists(spec):
        raise ValueError(f"--data {spec!r} is a file; give a folder of images, 'mnist' or 'digits'")
    raise FileNotFoundError(f"--data {spec!r}: no such folder (choices: mnist, digits, or a folder of images)")
