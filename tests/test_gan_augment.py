"""gencore.gan.augment (DiffAugment): each transform does what it says per image, gradients reach the images, bad
policies are refused, and the GAN trainer applies it to what its discriminator sees."""
from __future__ import annotations

import pytest
import torch

from gencore.gan.augment import diff_augment, parse_policy


def _images(n=6, c=2, h=16, w=12):
    return torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(0))


def test_no_policy_is_the_identity():
    x = _images()
    assert diff_augment(x, "") is x and diff_augment(x, None) is x


def test_translation_shifts_each_image_by_whole_pixels_with_replicated_edges():
    x = _images()
    y = diff_augment(x, "translation", generator=torch.Generator().manual_seed(1))
    h, w = x.shape[2:]
    shifted = 0
    for xi, yi in zip(x, y):
        matches = []
        for dy in range(-(h // 8), h // 8 + 1):
            for dx in range(-(w // 8), w // 8 + 1):
                rows = (torch.arange(h) + dy).clamp(0, h - 1)
                cols = (torch.arange(w) + dx).clamp(0, w - 1)
                if torch.equal(xi[:, rows][:, :, cols], yi):
                    matches.append((dy, dx))
        assert matches, "an output that is no shift of its input"
        shifted += matches[0] != (0, 0)
    assert shifted >= 3  # drawn per image, not one shift for the batch


def test_cutout_zeroes_one_half_size_square_per_image():
    x = _images().abs() + 1  # no zeros of its own
    y = diff_augment(x, "cutout", generator=torch.Generator().manual_seed(2))
    h, w = x.shape[2:]
    for yi in y:
        cut = (yi == 0).all(dim=0)
        assert cut.sum() == (h // 2) * (w // 2)
        rows, cols = cut.any(dim=1).nonzero().flatten(), cut.any(dim=0).nonzero().flatten()
        assert rows.numel() == h // 2 and cols.numel() == w // 2  # one square, not scattered pixels
        assert rows[-1] - rows[0] == h // 2 - 1 and cols[-1] - cols[0] == w // 2 - 1
    assert torch.equal(y[y != 0], x[y != 0])


def test_gradients_reach_the_images():
    x = _images().requires_grad_()
    weights = torch.randn(x.shape)
    (diff_augment(x, "translation,cutout", generator=torch.Generator().manual_seed(3)) * weights).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    # The cut-out pixels pass no gradient; the rest of every image does.
    assert ((x.grad != 0).flatten(1).float().mean(1) > 0.4).all()


def test_bad_policies_are_refused_by_name():
    with pytest.raises(ValueError, match="augment: unknown transform 'color'"):
        parse_policy("translation,color")
    with pytest.raises(TypeError, match="augment"):
        parse_policy(["translation"])
    with pytest.raises(ValueError, match="x must be a 4-D"):
        diff_augment(torch.zeros(3, 4), "cutout")


def test_the_gan_trainer_augments_what_its_discriminator_sees():
    from gencore.data import load_digits
    from gencore.training import GANConfig, GANTrainer, WGANGPConfig

    common = dict(batch_size=16, progress=False, log_every=1, n_samples=4, features=8, steps=2)
    data = load_digits().subset(64)
    trainer = GANTrainer(data, GANConfig(**common, augment="translation,cutout"))
    seen = []
    trainer.models["discriminator"].register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    hist = trainer.train()
    assert len(hist["g_loss"]) == 2 and all(v == v for v in hist["d_loss"] + hist["g_loss"])
    # Cutout zeroes a 14x14 square of every 28x28 image the discriminator saw (the data's background is -1, not 0).
    assert seen and all(((x == 0).flatten(1).sum(1) >= 14 * 14).all() for x in seen)
    with pytest.raises(ValueError, match="augment is not supported by the WGAN-GP trainer"):
        WGANGPConfig(**common, augment="cutout").validate()
