"""The in-memory image dataset every source returns (gencore.data.load resolves a `--data` argument to one).

Every dataset here is small enough to live in memory as one float32 tensor of images in [-1, 1] (the range the
generators' tanh and the diffusion models assume), with optional int64 labels.
"""
from __future__ import annotations

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
