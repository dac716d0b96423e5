"""gencore.gan losses against their textbook definitions, stability at large logits, and bad input."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gencore.gan import LOSS_KINDS, discriminator_loss, generator_loss
from gencore.testing import assert_close


def _logits(seed=0, n=(7, 1), scale=3.0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, generator=gen, dtype=torch.float64) * scale


def _definition_d(kind, r, f, real_label=1.0):
    """The losses as written in papers and tutorials, with D = sigmoid(logit) (fine at moderate logits)."""
    if kind == "bce":
        pr, pf = torch.sigmoid(r), torch.sigmoid(f)
        return (-(real_label * torch.log(pr) + (1 - real_label) * torch.log(1 - pr))).mean() \
            + (-torch.log(1 - pf)).mean()
    if kind == "non_saturating":
        return -torch.log(torch.sigmoid(r)).mean() - torch.log(1 - torch.sigmoid(f)).mean()
    if kind == "hinge":
        return torch.clamp(1 - r, min=0).mean() + torch.clamp(1 + f, min=0).mean()
    return f.mean() - r.mean()


def _definition_g(kind, f):
    if kind in ("bce", "non_saturating"):
        return -torch.log(torch.sigmoid(f)).mean()
    return -f.mean()


@pytest.mark.parametrize("kind", LOSS_KINDS)
def test_matches_definition(kind):
    r = _logits(0).requires_grad_(True)
    f = _logits(1, n=(5,)).requires_grad_(True)  # batches may differ, shapes too
    d = discriminator_loss(r, f, kind)
    truth = _definition_d(kind, r, f)
    assert_close(d, truth, torch.float64)
    gd = torch.autograd.grad(d, (r, f))
    gt = torch.autograd.grad(truth, (r, f))
    for a, b in zip(gd, gt):
        assert_close(a, b, torch.float64, kind="grad")
    g = generator_loss(f, kind)
    truth_g = _definition_g(kind, f)
    assert_close(g, truth_g, torch.float64)
    assert_close(torch.autograd.grad(g, f)[0], torch.autograd.grad(truth_g, f)[0], torch.float64, kind="grad")


def test_bce_matches_torch_bce_with_logits_and_label_smoothing():
    r, f = _logits(2), _logits(3)
    for label in (1.0, 0.9):
        expected = F.binary_cross_entropy_with_logits(r, torch.full_like(r, label)) \
            + F.binary_cross_entropy_with_logits(f, torch.zeros_like(f))
        assert_close(discriminator_loss(r, f, "bce", real_label=label), expected, torch.float64)
        assert_close(_definition_d("bce", r, f, label), expected, torch.float64)
    assert_close(generator_loss(f, "bce"), F.binary_cross_entropy_with_logits(f, torch.ones_like(f)), torch.float64)


@pytest.mark.parametrize("kind", ["bce", "non_saturating"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_stable_at_confident_logits(kind, dtype):
    """|logit| = 100: sigmoid rounds to 0 or 1 and log(0) = -inf; the softplus form is exact and finite."""
    r = torch.tensor([100.0, -100.0, 30.0], dtype=dtype, requires_grad=True)
    f = torch.tensor([-100.0, 100.0, -30.0], dtype=dtype, requires_grad=True)
    d = discriminator_loss(r, f, kind)
    g = generator_loss(f, kind)
    assert d.dtype == torch.float32 and g.dtype == torch.float32
    # d = mean softplus(-r) + mean softplus(f): the misclassified 100s cost exactly 100 each, the rest < 1e-13.
    assert_close(d, torch.tensor(200.0 / 3, dtype=torch.float64), torch.float32)
    # g = mean softplus(-f) = (100 + 0 + 30) / 3.
    assert_close(g, torch.tensor(130.0 / 3, dtype=torch.float64), torch.float32)
    (d + g).backward()
    assert torch.isfinite(r.grad).all() and torch.isfinite(f.grad).all()


def test_bce_equals_non_saturating_with_hard_labels():
    r, f = _logits(4), _logits(5)
    assert_close(discriminator_loss(r, f, "bce"), discriminator_loss(r, f, "non_saturating"), torch.float64)
    assert_close(generator_loss(f, "bce"), generator_loss(f, "non_saturating"), torch.float64)


@pytest.mark.parametrize("call,exc,match", [
    (lambda: discriminator_loss(torch.zeros(3), torch.zeros(3), "lsgan"), ValueError, "kind"),
    (lambda: generator_loss(torch.zeros(3), "minimax"), ValueError, "kind"),
    (lambda: discriminator_loss(torch.zeros(3), torch.zeros(3), "bce", real_label=1.5), ValueError, "real_label"),
    (lambda: discriminator_loss(torch.zeros(3), torch.zeros(3), "hinge", real_label=0.9), ValueError, "real_label"),
    (lambda: discriminator_loss(torch.zeros(3, dtype=torch.long), torch.zeros(3), "bce"), TypeError, "real_logits"),
    (lambda: discriminator_loss(torch.zeros(3), [0.0], "bce"), TypeError, "fake_logits"),
    (lambda: discriminator_loss(torch.zeros(0), torch.zeros(3), "bce"), ValueError, "empty"),
    (lambda: generator_loss(torch.zeros(0), "wasserstein"), ValueError, "empty"),
    (lambda: discriminator_loss(torch.zeros(3), torch.zeros(3, device="meta"), "bce"), ValueError, "device"),
], ids=["d-kind", "g-kind", "label-range", "label-not-bce", "int-logits", "list-logits", "empty-d", "empty-g",
        "device"])
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
