"""The embedded offline default: scikit-learn's 8x8 handwritten digits (1,797 images, shipped inside the
scikit-learn package, so nothing is downloaded), upsampled to MNIST's 28x28 layout.

MNIST centres each digit in a 20x20 box inside the 28x28 frame; the 8x8 digits fill their frame, so they are
resized (bilinear, antialiased) to 20x20 and padded by 4 pixels on each side, which makes them look like MNIST to
models and to the MNIST classifier.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .dataset import ImageDataset


def load_digits(*, image_size: int = 28) -> ImageDataset:
    """All 1,797 digits as an ImageDataset: images (1797, 1, image_size, image_size) float32 in [-1, 1] (background
    -1), labels 0..9.

    Needs scikit-learn (`pip install gencore[demo]`); raises ImportError saying so when it is missing.
    """
    if image_size < 8:
        raise ValueError(f"image_size must be at least 8, got {image_size}")
    try:
        from sklearn.datasets import load_digits as sk_load_digits  # optional: only these digits need it
    except ImportError as exc:
        raise ImportError("the embedded digits need scikit-learn: pip install 'gencore[demo]' "
                          "(or pass --data mnist / a folder of images)") from exc
    bunch = sk_load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32)[:, None] / 16.0  # values 0..16 -> [0, 1]
    box = round(image_size * 20 / 28)
    images = F.interpolate(images, size=(box, box), mode="bilinear", align_corners=False, antialias=True)
    pad = image_size - box
    images = F.pad(images, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))
    images = images.clamp(0, 1) * 2 - 1
    return ImageDataset(images.contiguous(), torch.as_tensor(bunch.target, dtype=torch.long), 10, "digits")
