"""GAN losses for the discriminator (critic) and the generator, from raw logits / scores.

With r = D(real) and f = D(G(z)) (logits, any shape; each loss is a mean over its elements):

    kind              discriminator loss                                 generator loss
    "bce"             BCE(r, real_label) + BCE(f, 0)                     BCE(f, 1)
    "non_saturating"  softplus(-r) + softplus(f)                         softplus(-f)
    "hinge"           relu(1 - r) + relu(1 + f)                          -f
    "wasserstein"     f - r                                              -f

BCE(x, y) = y * softplus(-x) + (1 - y) * softplus(x) = -[y log sigmoid(x) + (1 - y) log(1 - sigmoid(x))]: computed
from logits through softplus (log-sigmoid), never through sigmoid then log, so confident logits (|x| ~ 100) give
exact finite losses instead of log(0). "bce" is the DCGAN tutorial's loss (its generator uses the real label, the
non-saturating trick); with real_label=1 it equals "non_saturating" (StyleGAN's logistic loss), and real_label < 1
gives one-sided label smoothing. "wasserstein" is WGAN's critic loss; add gencore.gan.gradient_penalty for WGAN-GP.

Half-precision logits are computed in float32 and the loss returned in float32 (as autocast does for losses).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..ops._checks import check_float_tensor

KINDS = ("bce", "non_saturating", "hinge", "wasserstein")


def _check_kind(kind) -> str:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(repr(k) for k in KINDS)}; got {kind!r}")
    return kind


def _logits(name: str, x) -> torch.Tensor:
    check_float_tensor(name, x)
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _bce(x: torch.Tensor, target: float) -> torch.Tensor:
    """Mean BCE of logits x against a constant target, through softplus (stable for any |x|)."""
    if target == 1.0:
        return F.softplus(-x).mean()
    if target == 0.0:
        return F.softplus(x).mean()
    return (target * F.softplus(-x) + (1.0 - target) * F.softplus(x)).mean()


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, kind: str = "bce", *,
                       real_label: float = 1.0) -> torch.Tensor:
    """The discriminator's (critic's) loss, to minimise; see the module table.

    Args:
        real_logits: D(real), raw logits / scores of any shape (usually (N,) or (N, 1)), floating point.
        fake_logits: D(G(z)), likewise (its batch may differ from real's). Detach G's output for the D step.
        kind: "bce", "non_saturating", "hinge" or "wasserstein".
        real_label: target of the real samples for "bce" (0.9 = one-sided label smoothing); must be 1 otherwise.

    Returns:
        0-dim loss tensor: real_logits' dtype, float32 for half precision. The two terms are summed, each a mean.
    """
    kind = _check_kind(kind)
    r = _logits("real_logits", real_logits)
    f = _logits("fake_logits", fake_logits)
    if r.device != f.device:
        raise ValueError(f"real_logits is on {r.device} but fake_logits is on {f.device}; "
                         "they must be on the same device")
    if isinstance(real_label, bool) or not isinstance(real_label, (int, float)) or not 0.0 <= real_label <= 1.0:
        raise ValueError(f"real_label must be a float in [0, 1], got {real_label!r}")
    if kind != "bce" and real_label != 1.0:
        raise ValueError(f"real_label applies to kind='bce' only, got real_label={real_label} with kind={kind!r}")
    if kind == "bce":
        return _bce(r, float(real_label)) + _bce(f, 0.0)
    if kind == "non_saturating":
        return F.softplus(-r).mean() + F.softplus(f).mean()
    if kind == "hinge":
        return F.relu(1.0 - r).mean() + F.relu(1.0 + f).mean()
    return f.mean() - r.mean()  # wasserstein


def generator_loss(fake_logits: torch.Tensor, kind: str = "bce") -> torch.Tensor:
    """The generator's loss, to minimise, from D(G(z)) (not detached); see the module table.

    Args:
        fake_logits: D(G(z)), raw logits / scores of any shape, floating point.
        kind: "bce", "non_saturating", "hinge" or "wasserstein".

    Returns:
        0-dim loss tensor: fake_logits' dtype, float32 for half precision.
    """
    kind = _check_kind(kind)
    f = _logits("fake_logits", fake_logits)
    if kind in ("bce", "non_saturating"):
        return F.softplus(-f).mean()
    return -f.mean()  # hinge and wasserstein: the generator raises the critic's score of its samples
