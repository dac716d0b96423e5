"""GAN building blocks: losses from logits, and gradient penalties (WGAN-GP, R1, R2) on gencore's fused ops.

    from gencore.gan import discriminator_loss, generator_loss, gradient_penalty
    loss_d = discriminator_loss(critic(real), critic(fake.detach()), "wasserstein") \\
        + 10.0 * gradient_penalty(critic, real, fake)
"""
from .losses import KINDS as LOSS_KINDS
from .losses import discriminator_loss, generator_loss
from .penalty import gradient_penalty, r1_penalty, r2_penalty

__all__ = ["LOSS_KINDS", "discriminator_loss", "generator_loss", "gradient_penalty", "r1_penalty", "r2_penalty"]
