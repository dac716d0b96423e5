"""GAN trainers: DCGAN with BCE / hinge / non-saturating losses (optionally class-conditional), and WGAN-GP.

Losses and the gradient penalty come from gencore.gan (the penalty is gencore's fused op); models from
gencore.models. One trainer step is: `n_critic` discriminator/critic updates, each on a fresh real batch, then one
generator update (and the generator's EMA update when enabled).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..gan import discriminator_loss, generator_loss, gradient_penalty, r1_penalty
from ..models import (ConditionalDCGANDiscriminator, ConditionalDCGANGenerator, DCGANDiscriminator, DCGANGenerator,
                      ProjectionDiscriminator, WGANGPCritic)
from .options import DISCRIMINATORS, GAN_LOSSES
from .trainer import TrainConfig, Trainer, broadcast_state, make_ema


@dataclass
class GANConfig(TrainConfig):
    """GAN options (on top of TrainConfig).

    Parameters:
        loss: "bce" (the tutorial's), "non_saturating" or "hinge" (see gencore.gan).
        latent_dim, features: generator z size and feature maps (the tutorial's 100 and 64).
        extra_layers: stride-1 3x3 conv layers added to both networks (see DCGANGenerator); 0 is the tutorial's.
        lr, betas: Adam for both networks (the tutorial's 2e-4, (0.5, 0.999)).
        n_critic: discriminator updates per generator update.
        r1_gamma: weight gamma of StyleGAN's R1 penalty, gamma / 2 * mean ||grad_x D(real)||^2, added to the
            discriminator loss (0: off).
        spectral_norm: spectral normalization on the discriminator's layers.
        conditional: class-conditional generator and discriminator (needs labels).
        discriminator: "dcgan" (labels as an extra channel, the tutorial's ConditionalGAN, or the plain DCGAN
            discriminator when unconditional) or "projection" (projection discriminator; conditional only).
    """

    lr: float | None = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    loss: str = "bce"
    latent_dim: int = 100
    features: int = 64
    extra_layers: int = 0
    n_critic: int = 1
    r1_gamma: float = 0.0
    spectral_norm: bool = False
    conditional: bool = False
    discriminator: str = "dcgan"

    def validate(self) -> None:
        super().validate()
        if self.discriminator not in DISCRIMINATORS:
            raise ValueError(f"discriminator must be one of {DISCRIMINATORS}, got {self.discriminator!r}")
        if not isinstance(self.n_critic, int) or self.n_critic < 1:
            raise ValueError(f"n_critic must be a positive int, got {self.n_critic!r}")
        if isinstance(self.r1_gamma, bool) or not isinstance(self.r1_gamma, (int, float)) or not self.r1_gamma >= 0:
            raise ValueError(f"r1_gamma must be a non-negative number, got {self.r1_gamma!r}")
        self.betas = tuple(float(b) for b in self.betas)


@dataclass
class WGANGPConfig(GANConfig):
    """WGAN-GP options: the tutorial's n_critic=5, gp_lambda=10, Adam(1e-4, (0.5, 0.9)); a critic without batch
    norm (critic_norm "none" or "layer")."""

    lr: float | None = 1e-4
    betas: tuple[float, float] = (0.5, 0.9)
    loss: str = "wasserstein"
    n_critic: int = 5
    gp_lambda: float = 10.0
    critic_norm: str = "none"

    def validate(self) -> None:
        super().validate()
        if self.r1_gamma:
            raise ValueError("r1_gamma applies to the gan/cgan trainers; WGAN-GP's critic has its own gradient "
                             "penalty (gp_lambda)")


class GANTrainer(Trainer):
    """DCGAN (and conditional GAN) training. models: {"generator", "discriminator"}; optional generator EMA."""

    kind = "gan"
    default_loss_choices = GAN_LOSSES

    def __init__(self, dataset, config: GANConfig):
        if config.loss not in self.default_loss_choices:
            raise ValueError(f"loss must be one of {self.default_loss_choices}, got {config.loss!r}")
        self.batches_per_step = config.n_critic
        super().__init__(dataset, config)

    def _make_discriminator(self, c: int, size: int) -> nn.Module:
        cfg: GANConfig = self.config
        if self.conditional:
            if cfg.discriminator == "projection":
                return ProjectionDiscriminator(num_classes=self.dataset.num_classes, in_channels=c,
                                               features=cfg.features, image_size=size,
                                               spectral_norm=cfg.spectral_norm or True, extra_layers=cfg.extra_layers)
            return ConditionalDCGANDiscriminator(num_classes=self.dataset.num_classes, in_channels=c,
                                                 features=cfg.features, image_size=size,
                                                 spectral_norm=cfg.spectral_norm, extra_layers=cfg.extra_layers)
        if cfg.discriminator == "projection":
            raise ValueError("the projection discriminator needs a conditional GAN (gencore train cgan)")
        return DCGANDiscriminator(in_channels=c, features=cfg.features, image_size=size,
                                  spectral_norm=cfg.spectral_norm, extra_layers=cfg.extra_layers)

    def build(self) -> None:
        cfg: GANConfig = self.config
        _, c, h, w = self.dataset.images.shape
        if h != w:
            raise ValueError(f"DCGAN models need square images of side 16, 28, 32 or 64; the data is {h}x{w}")
        self.conditional = cfg.conditional
        if self.conditional:
            self.kind = "cgan"
            if self.dataset.labels is None:
                raise ValueError("a conditional GAN needs a labelled dataset (mnist, digits, or a folder of class "
                                 "sub-folders)")
            g = ConditionalDCGANGenerator(num_classes=self.dataset.num_classes, latent_dim=cfg.latent_dim,
                                          features=cfg.features, out_channels=c, image_size=h,
                                          extra_layers=cfg.extra_layers)
        else:
            g = DCGANGenerator(latent_dim=cfg.latent_dim, features=cfg.features, out_channels=c, image_size=h,
                               extra_layers=cfg.extra_layers)
        d = self._make_discriminator(c, h)
        self.models = {"generator": g.to(self.device), "discriminator": d.to(self.device)}
        self.optimizers = {role: torch.optim.Adam(m.parameters(), lr=cfg.lr, betas=cfg.betas)
                           for role, m in self.models.items()}
        if cfg.ema_decay:
            self.ema = {"generator": make_ema(self.models["generator"], cfg.ema_decay)}

    def _fake(self, n: int, labels: torch.Tensor | None, generator: torch.Generator | None = None) -> torch.Tensor:
        g = self.models["generator"]
        z = torch.randn(n, self.config.latent_dim, device=self.device, generator=generator)
        return g(z, labels) if self.conditional else g(z)

    def _disc(self, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        d = self.models["discriminator"]
        return d(x, labels) if self.conditional else d(x)

    def _fake_labels(self, n: int) -> torch.Tensor | None:
        if not self.conditional:
            return None
        return torch.randint(0, self.dataset.num_classes, (n,), device=self.device)

    def discriminator_step(self, real, labels) -> dict[str, float]:
        n = real.shape[0]
        fake_labels = self._fake_labels(n)
        with self.autocast():
            with torch.no_grad():
                fake = self._fake(n, fake_labels)
            d_loss = discriminator_loss(self._disc(real, labels), self._disc(fake, fake_labels), self.config.loss)
        losses = {"d_loss": d_loss.item()}
        if self.config.r1_gamma:
            r1 = r1_penalty(self.models["discriminator"], real.float(),
                            {"labels": labels} if self.conditional else None)
            d_loss = d_loss + 0.5 * self.config.r1_gamma * r1
            losses["r1"] = r1.item()
        self.optimizer_step("discriminator", d_loss)
        return losses

    def generator_step(self) -> dict[str, float]:
        n = self.config.batch_size
        fake_labels = self._fake_labels(n)
        d = self.models["discriminator"]
        d.requires_grad_(False)  # the generator step needs no discriminator parameter gradients
        try:
            with self.autocast():
                g_loss = generator_loss(self._disc(self._fake(n, fake_labels), fake_labels), self.config.loss)
            self.optimizer_step("generator", g_loss)
        finally:
            d.requires_grad_(True)
        return {"g_loss": g_loss.item()}

    def train_step(self, step: int) -> dict[str, float]:
        losses: dict[str, float] = {}
        for i in range(self.batches_per_step):
            real, labels = self.batch(step * self.batches_per_step + i)
            losses = self.discriminator_step(real, labels if self.conditional else None)
        losses.update(self.generator_step())
        if self.world > 1:  # BatchNorm running statistics: keep the replicas identical (rank 0's)
            broadcast_state([m for m in self.models.values() if any(True for _ in m.buffers())])
        return losses

    @torch.no_grad()
    def sample_images(self, n: int, generator: torch.Generator, class_labels=None) -> torch.Tensor:
        g = self.ema["generator"].module if self.ema else self.models["generator"]
        was_training = g.training
        g.eval()
        try:
            z = torch.randn(n, self.config.latent_dim, device=self.device, generator=generator)
            if self.conditional:
                if class_labels is None:
                    class_labels = torch.arange(n, device=self.device) % self.dataset.num_classes
                return g(z, class_labels)
            return g(z)
        finally:
            g.train(was_training)


class WGANGPTrainer(GANTrainer):
    """WGAN-GP: critic loss mean(D(fake)) - mean(D(real)) + lambda * gradient_penalty (gencore.gan, fused),
    n_critic critic updates per generator update. models: {"generator", "discriminator" (the critic)}."""

    kind = "wgan-gp"
    default_loss_choices = ("wasserstein",)

    def _make_discriminator(self, c: int, size: int) -> nn.Module:
        cfg: WGANGPConfig = self.config
        if self.conditional:
            raise ValueError("the WGAN-GP trainer is unconditional; use gencore train cgan for class conditioning")
        return WGANGPCritic(in_channels=c, features=cfg.features, image_size=size, norm=cfg.critic_norm,
                            spectral_norm=cfg.spectral_norm, extra_layers=cfg.extra_layers)

    def discriminator_step(self, real, labels) -> dict[str, float]:
        cfg: WGANGPConfig = self.config
        n = real.shape[0]
        critic = self.models["discriminator"]
        with self.autocast():
            with torch.no_grad():
                fake = self._fake(n, None)
            wasserstein = discriminator_loss(critic(real), critic(fake), "wasserstein")
        # The penalty differentiates the critic twice; it runs in float32 (its inputs are float32 images).
        gp = gradient_penalty(critic, real, fake.float())
        loss = wasserstein + cfg.gp_lambda * gp
        self.optimizer_step("discriminator", loss)
        return {"d_loss": wasserstein.item(), "gp": gp.item()}
