"""Any folder of images as a dataset (Pillow): train on your own pictures with `--data PATH`."""
from __future__ import annotations

import os

import numpy as np
import torch

from .dataset import ImageDataset

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def load_image_folder(path: str, *, image_size: int = 28, channels: int = 1, limit: int | None = None) -> ImageDataset:
    """Every image under `path` (recursively, sorted by path), centre-cropped to a square, resized to
    image_size x image_size, converted to grayscale (channels=1) or RGB (channels=3), scaled to [-1, 1].

    Sub-folders one level down become class labels (sorted folder names -> 0, 1, ...) when every image sits in one;
    otherwise the dataset is unlabelled. Files Pillow cannot read are skipped; if none can be read, ValueError.
    limit: read only the first `limit` files (sorted order).
    """
    try:
        from PIL import Image  # optional: only image folders need it
    except ImportError as exc:
        raise ImportError("reading image folders needs Pillow: pip install pillow") from exc
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"image folder not found: {path}")
    files = []
    for dirpath, _, names in os.walk(path):
        files += [os.path.join(dirpath, n) for n in names if n.lower().endswith(EXTENSIONS)]
    files.sort()
    if limit is not None:
        files = files[:limit]
    if not files:
        raise ValueError(f"no images ({', '.join(EXTENSIONS)}) found under {path}")
    arrays, kept, bad = [], [], []
    for f in files:
        try:
            with Image.open(f) as im:
                im = im.convert("L" if channels == 1 else "RGB")
                w, h = im.size
                s = min(w, h)
                im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
                im = im.resize((image_size, image_size), Image.BICUBIC)
                arrays.append(np.asarray(im, dtype=np.uint8).reshape(image_size, image_size, channels))
                kept.append(f)
        except (OSError, ValueError):
            bad.append(f)
    if not arrays:
        raise ValueError(f"none of the {len(files)} image files under {path} could be read")
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    rel_dirs = [os.path.dirname(os.path.relpath(f, path)) for f in kept]
    labels = num_classes = None
    if all(d and os.sep not in d for d in rel_dirs):
        classes = sorted(set(rel_dirs))
        if len(classes) > 1:
            index = {c: i for i, c in enumerate(classes)}
            labels = torch.tensor([index[d] for d in rel_dirs], dtype=torch.long)
            num_classes = len(classes)
    return ImageDataset(images.contiguous(), labels, num_classes, os.path.basename(os.path.normpath(path)))
