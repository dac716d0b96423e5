"""Pictures of a run: sample grids and progressive-generation strips (PNG via Pillow), loss curves (matplotlib)."""
from __future__ import annotations

import math
import os

import numpy as np
import torch


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) float in [-1, 1] -> (N, H, W, C) uint8 (values outside [-1, 1] are clipped)."""
    x = images.detach().float().cpu().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def grid(images: torch.Tensor, nrow: int | None = None, padding: int = 2) -> np.ndarray:
    """Tile (N, C, H, W) images in [-1, 1] into one (rows*(H+p)+p, nrow*(W+p)+p, C) uint8 array, dark padding."""
    if images.dim() != 4 or images.shape[0] == 0:
        raise ValueError(f"images must be a non-empty (N, C, H, W) tensor, got {tuple(images.shape)}")
    arr = to_uint8(images)
    n, h, w, c = arr.shape
    nrow = nrow or max(1, int(math.ceil(math.sqrt(n))))
    rows = int(math.ceil(n / nrow))
    out = np.zeros((rows * (h + padding) + padding, nrow * (w + padding) + padding, c), dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        y0, x0 = padding + r * (h + padding), padding + col * (w + padding)
        out[y0:y0 + h, x0:x0 + w] = arr[i]
    return out


def save_png(array: np.ndarray, path: str, scale: int = 1) -> str:
    """Write a (H, W, 1 or 3) uint8 array as PNG atomically (temporary file, then rename); nearest upscaling."""
    from PIL import Image  # Pillow is optional (the demo extra): only pictures need it

    mode_array = array[..., 0] if array.shape[-1] == 1 else array
    img = Image.fromarray(mode_array, mode="L" if array.shape[-1] == 1 else "RGB")
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    img.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


def save_grid(images: torch.Tensor, path: str, nrow: int | None = None, scale: int = 2) -> str:
    """Save (N, C, H, W) images in [-1, 1] as one PNG grid; returns the path."""
    return save_png(grid(images, nrow), path, scale)


def save_progressive_strip(intermediates: list[torch.Tensor], path: str, scale: int = 2,
                           column_labels: list[str] | None = None) -> str:
    """The progressive-generation view: row i is sample i, columns are the intermediate states from noise (left) to
    the final image (right). `intermediates` is a list of (N, C, H, W) tensors in time order; `column_labels` (one
    per column, e.g. the timestep of each state) are written above the columns."""
    if not intermediates:
        raise ValueError("no intermediate samples to draw")
    if column_labels is not None and len(column_labels) != len(intermediates):
        raise ValueError(f"column_labels has {len(column_labels)} entries for {len(intermediates)} columns")
    stacked = torch.stack([x.detach().float().cpu() for x in intermediates], dim=1)  # (N, T, C, H, W)
    n, t = stacked.shape[:2]
    array = grid(stacked.flatten(0, 1), nrow=t)
    if column_labels is None:
        return save_png(array, path, scale)
    return save_png(_with_header(array, column_labels, cell=stacked.shape[-1] + 2, scale=scale), path, 1)


def _with_header(array: np.ndarray, labels: list[str], *, cell: int, scale: int) -> np.ndarray:
    """Upscale a grid by `scale` and put a row of centred text labels above its columns (Pillow's built-in font)."""
    from PIL import Image, ImageDraw, ImageFont  # optional, as in save_png

    img = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    width = cell * scale
    try:  # a scalable font where Pillow has one (>= 10.1); the fixed bitmap font otherwise
        font = ImageFont.load_default(size=max(8, min(14, width // 4)))
    except TypeError:
        font = ImageFont.load_default()
    header = 4 + max(draw_h for draw_h in (ImageDraw.Draw(img).textbbox((0, 0), lab, font=font)[3]
                                           for lab in labels))
    out = Image.new(img.mode, (img.width, img.height + header), color=255 if img.mode == "L" else (255, 255, 255))
    out.paste(img, (0, header))
    draw = ImageDraw.Draw(out)
    for i, label in enumerate(labels):
        w = draw.textbbox((0, 0), label, font=font)[2]
        draw.text((i * width + (width - w) / 2 + scale, 2), label, fill=0 if img.mode == "L" else (0, 0, 0),
                  font=font)
    arr = np.asarray(out)
    return arr[..., None] if arr.ndim == 2 else arr


def plot_losses(history: dict[str, list[float]], path: str, title: str = "") -> str | None:
    """Loss curves (one line per loss, x = step) as PNG via matplotlib; returns None when matplotlib is missing."""
    try:  # optional (the demo extra): a run without it has no loss plot
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    steps = history.get("step", [])
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    for name, values in history.items():
        if name == "step" or not values:
            continue
        ax.plot(steps[:len(values)], values, label=name, linewidth=1)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    values = [v for name, vs in history.items() if name != "step" for v in vs]
    if values and min(values) > 0 and max(values) / min(values) > 20:  # a DDPM loss falls by ~50x: show the tail
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    ax.legend(loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}.png"
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return path
