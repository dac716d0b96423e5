"""Differentiable augmentation of the discriminator's inputs (DiffAugment; Zhao et al., "Differentiable Augmentation
for Data-Efficient GAN Training", 2020), for GANs trained on little data.

With a few thousand images (MNIST's 8,000 training digits here) the discriminator memorises the real set, its
gradients stop carrying shape, and the generator collapses onto a few easy modes. Augmenting *every* image the
discriminator sees, real and fake, in both the discriminator's and the generator's step, with a transform
differentiable in the image, keeps the discriminator from memorising while the generator still learns the
un-augmented distribution (the augmentation is applied to both sides, so it cannot leak into the samples).

Policies (comma-separated in `diff_augment(x, "translation,cutout")`):
    translation   shift each image by up to 1/8 of its size in x and y (integer pixels, edges replicated, so a
                  black MNIST background stays black);
    cutout        set a random square of half the image side to 0 per image (the reference's choice).
"""
from __future__ import annotations

import torch

POLICIES = ("translation", "cutout")


def parse_policy(policy: str | None) -> tuple[str, ...]:
    """The policy string as a tuple of known transforms; "" or None: none."""
    if policy is None:
        return ()
    if not isinstance(policy, str):
        raise TypeError(f"augment must be a comma-separated string, got {type(policy).__name__}")
    names = tuple(p.strip() for p in policy.split(",") if p.strip())
    for name in names:
        if name not in POLICIES:
            raise ValueError(f"augment: unknown transform {name!r}; known: {', '.join(POLICIES)}")
    return names


def _translation(x: torch.Tensor, ratio: float, generator: torch.Generator | None) -> torch.Tensor:
    n, _, h, w = x.shape
    sy, sx = max(1, int(h * ratio)), max(1, int(w * ratio))
    dy = torch.randint(-sy, sy + 1, (n, 1), device=x.device, generator=generator)
    dx = torch.randint(-sx, sx + 1, (n, 1), device=x.device, generator=generator)
    rows = (torch.arange(h, device=x.device) + dy).clamp_(0, h - 1)  # (n, h): the source row of each output row
    cols = (torch.arange(w, device=x.device) + dx).clamp_(0, w - 1)
    batch = torch.arange(n, device=x.device)[:, None, None]
    return x.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def _cutout(x: torch.Tensor, ratio: float, generator: torch.Generator | None) -> torch.Tensor:
    n, _, h, w = x.shape
    ch, cw = max(1, int(h * ratio)), max(1, int(w * ratio))
    cy = torch.randint(0, h - ch + 1, (n, 1), device=x.device, generator=generator)
    cx = torch.randint(0, w - cw + 1, (n, 1), device=x.device, generator=generator)
    ys, xs = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    inside_y = (ys >= cy) & (ys < cy + ch)  # (n, h)
    inside_x = (xs >= cx) & (xs < cx + cw)
    keep = ~(inside_y[:, :, None] & inside_x[:, None, :])
    return x * keep[:, None].to(x.dtype)


def diff_augment(x: torch.Tensor, policy: str | tuple[str, ...] | None, *,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """x (N, C, H, W) with each transform of `policy` applied, independently drawn per image; differentiable in x.
    No policy: x itself."""
    names = policy if isinstance(policy, tuple) else parse_policy(policy)
    if not names:
        return x
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"x must be a 4-D (N, C, H, W) tensor, got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    for name in names:
        x = _translation(x, 1 / 8, generator) if name == "translation" else _cutout(x, 1 / 2, generator)
    return x
