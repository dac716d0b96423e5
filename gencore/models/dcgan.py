"""DCGAN generator and discriminator (the PyTorch tutorial's architecture), a WGAN-GP critic, conditional variants.

Sizes: 64x64 is the tutorial's network exactly (latent 100, 64 feature maps, four stride-2 layers from 4x4);
32x32 drops one layer, 16x16 two; 28x28 (MNIST) starts from 7x7 and doubles twice. Discriminators and critics return one
*logit* per sample, shape (N,): the sigmoid of the tutorial's discriminator lives in the loss (gencore.gan's "bce"
takes logits, which is the numerically stable form).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from ..nn import GroupNorm

SIZES = (16, 28, 32, 64)
DISCRIMINATOR_NORMS = ("batch", "layer", "none")


def _layout(image_size: int) -> tuple[int, int]:
    """(side of the first/last feature map, number of stride-2 doublings) for a supported image size."""
    if image_size not in SIZES:
        raise ValueError(f"image_size must be one of {SIZES}, got {image_size!r}")
    return (7, 2) if image_size == 28 else (4, {16: 2, 32: 3, 64: 4}[image_size])


def dcgan_init_(module: nn.Module) -> None:
    """The tutorial's weights_init: conv weights ~ N(0, 0.02); BatchNorm weight ~ N(1, 0.02), bias 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            # Under spectral norm the stored tensor is parametrizations.weight.original.
            p = getattr(m, "parametrizations", None)
            nn.init.normal_(p.weight.original if p is not None and "weight" in p else m.weight, 0.0, 0.02)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def _check_ints(minimum: int = 1, **values) -> None:
    """Each value is an int (not a bool) >= minimum: 1 for sizes and counts, 0 for optional layers."""
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


class DCGANGenerator(nn.Module):
    """z (N, latent_dim) or (N, latent_dim, 1, 1) -> images (N, out_channels, image_size, image_size) in [-1, 1].

    Parameters:
        latent_dim: length of z (the tutorial's nz = 100).
        features: feature maps of the last hidden layer (ngf = 64); layer i from the output has features * 2^i.
        out_channels: image channels (1 for MNIST, 3 for colour).
        image_size: 16, 28, 32 or 64.
        extra_layers: stride-1 3x3 conv + BatchNorm + ReLU layers before the output layer, at the last hidden
            resolution (the WGAN code's n_extra_layers): depth without changing the tutorial's pyramid.
    """

    def __init__(self, *, latent_dim: int = 100, features: int = 64, out_channels: int = 1, image_size: int = 64,
                 extra_layers: int = 0):
        super().__init__()
        _check_ints(latent_dim=latent_dim, features=features, out_channels=out_channels)
        _check_ints(0, extra_layers=extra_layers)
        first, doublings = _layout(image_size)
        self.config = dict(latent_dim=latent_dim, features=features, out_channels=out_channels,
                           image_size=image_size, extra_layers=extra_layers)
        self.latent_dim, self.image_size, self.out_channels = latent_dim, image_size, out_channels
        ch = features * 2 ** (doublings - 1)
        layers: list[nn.Module] = [nn.ConvTranspose2d(latent_dim, ch, first, 1, 0, bias=False),
                                   nn.BatchNorm2d(ch), nn.ReLU(True)]
        for _ in range(doublings - 1):
            layers += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ch // 2), nn.ReLU(True)]
            ch //= 2
        for _ in range(extra_layers):
            layers += [nn.Conv2d(ch, ch, 3, 1, 1, bias=False), nn.BatchNorm2d(ch), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(ch, out_channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)
        dcgan_init_(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() == 2:
            z = z[:, :, None, None]
        if z.dim() != 4 or z.shape[1] != self.latent_dim or z.shape[2:] != (1, 1):
            raise ValueError(f"z must have shape (N, {self.latent_dim}) or (N, {self.latent_dim}, 1, 1), "
                             f"got {tuple(z.shape)}")
        return self.main(z)


class DCGANDiscriminator(nn.Module):
    """images (N, in_channels, image_size, image_size) -> logits (N,).

    Parameters:
        in_channels: image channels.
        features: feature maps of the first layer (ndf = 64); doubling at each stride-2 layer.
        image_size: 16, 28, 32 or 64.
        norm: "batch" (the tutorial's BatchNorm after every hidden conv but the first), "layer" (GroupNorm with one
            group, i.e. LayerNorm over C, H, W: per-sample, so compatible with a gradient penalty) or "none".
        spectral_norm: wrap every convolution in spectral normalization (Miyato et al.).
        extra_layers: stride-1 3x3 conv (+ norm) + LeakyReLU layers after the first, at its resolution (the WGAN
            code's n_extra_layers).
    """

    def __init__(self, *, in_channels: int = 1, features: int = 64, image_size: int = 64, norm: str = "batch",
                 spectral_norm: bool = False, extra_layers: int = 0):
        super().__init__()
        _check_ints(in_channels=in_channels, features=features)
        _check_ints(0, extra_layers=extra_layers)
        if norm not in DISCRIMINATOR_NORMS:
            raise ValueError(f"norm must be one of {DISCRIMINATOR_NORMS}, got {norm!r}")
        last, doublings = _layout(image_size)
        self.config = dict(in_channels=in_channels, features=features, image_size=image_size, norm=norm,
                           spectral_norm=spectral_norm, extra_layers=extra_layers)
        self.in_channels, self.image_size = in_channels, image_size
        sn = _spectral_norm if spectral_norm else (lambda m: m)

        def normalization(ch):
            if norm == "batch":
                return [nn.BatchNorm2d(ch)]
            if norm == "layer":  # gencore's fused GroupNorm (one group = LayerNorm over C, H, W)
                return [GroupNorm(1, ch)]
            return []

        ch = features
        layers: list[nn.Module] = [sn(nn.Conv2d(in_channels, ch, 4, 2, 1, bias=False)), nn.LeakyReLU(0.2, True)]
        for _ in range(extra_layers):
            layers += [sn(nn.Conv2d(ch, ch, 3, 1, 1, bias=False)), *normalization(ch), nn.LeakyReLU(0.2, True)]
        for _ in range(doublings - 1):
            layers += [sn(nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=False)), *normalization(ch * 2),
                       nn.LeakyReLU(0.2, True)]
            ch *= 2
        self.features = nn.Sequential(*layers)
        self.feature_channels = ch
        self.head = sn(nn.Conv2d(ch, 1, last, 1, 0, bias=False))
        dcgan_init_(self)

    def _check(self, x: torch.Tensor) -> None:
        want = (self.in_channels, self.image_size, self.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(f"images must have shape (N, {want[0]}, {want[1]}, {want[2]}), got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        return self.head(self.features(x)).flatten()


class WGANGPCritic(DCGANDiscriminator):
    """The DCGAN discriminator as a WGAN-GP critic: no batch norm (the gradient penalty is per sample, and batch
    statistics would couple samples), norm="none" by default ("layer" is the WGAN-GP paper's choice). Returns
    unbounded scores (N,)."""

    def __init__(self, *, in_channels: int = 1, features: int = 64, image_size: int = 64, norm: str = "none",
                 spectral_norm: bool = False, extra_layers: int = 0):
        if norm == "batch":
            raise ValueError("a WGAN-GP critic must not use batch norm (the penalty is per sample); "
                             "use norm='none' or 'layer'")
        super().__init__(in_channels=in_channels, features=features, image_size=image_size, norm=norm,
                         spectral_norm=spectral_norm, extra_layers=extra_layers)


def _check_labels(labels: torch.Tensor, n: int, num_classes: int) -> torch.Tensor:
    if not torch.is_tensor(labels) or labels.shape != (n,) or labels.is_floating_point():
        raise ValueError(f"labels must be an integer tensor of shape ({n},), got "
                         f"{tuple(labels.shape) if torch.is_tensor(labels) else type(labels).__name__}")
    return labels.long()


class ConditionalDCGANGenerator(nn.Module):
    """Class-conditional generator: z concatenated with a learned label embedding (the tutorial's ConditionalGAN).

    Parameters:
        num_classes: number of classes K; labels are ints in [0, K).
        embed_dim: width of the label embedding appended to z (default 50).
        latent_dim, features, out_channels, image_size, extra_layers: as DCGANGenerator.

    forward(z, labels): z (N, latent_dim), labels (N,) int -> images (N, out_channels, S, S).
    """

    def __init__(self, *, num_classes: int = 10, embed_dim: int = 50, latent_dim: int = 100, features: int = 64,
                 out_channels: int = 1, image_size: int = 64, extra_layers: int = 0):
        super().__init__()
        _check_ints(num_classes=num_classes, embed_dim=embed_dim)
        self.config = dict(num_classes=num_classes, embed_dim=embed_dim, latent_dim=latent_dim, features=features,
                           out_channels=out_channels, image_size=image_size, extra_layers=extra_layers)
        self.num_classes, self.latent_dim, self.image_size = num_classes, latent_dim, image_size
        self.out_channels = out_channels
        self.label_embedding = nn.Embedding(num_classes, embed_dim)
        self.net = DCGANGenerator(latent_dim=latent_dim + embed_dim, features=features, out_channels=out_channels,
                                  image_size=image_size, extra_layers=extra_layers)

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        z = z.flatten(1)
        if z.shape[1] != self.latent_dim:
            raise ValueError(f"z must have shape (N, {self.latent_dim}), got {tuple(z.shape)}")
        labels = _check_labels(labels, z.shape[0], self.num_classes)
        return self.net(torch.cat([z, self.label_embedding(labels)], dim=1))


class ConditionalDCGANDiscriminator(nn.Module):
    """Class-conditional discriminator: the label embedded as one extra image-sized channel, concatenated (the
    tutorial's ConditionalGAN). forward(images, labels) -> logits (N,).

    Parameters:
        num_classes: number of classes K.
        in_channels, features, image_size, norm, spectral_norm, extra_layers: as DCGANDiscriminator.
    """

    def __init__(self, *, num_classes: int = 10, in_channels: int = 1, features: int = 64, image_size: int = 64,
                 norm: str = "batch", spectral_norm: bool = False, extra_layers: int = 0):
        super().__init__()
        _check_ints(num_classes=num_classes)
        self.config = dict(num_classes=num_classes, in_channels=in_channels, features=features,
                           image_size=image_size, norm=norm, spectral_norm=spectral_norm, extra_layers=extra_layers)
        self.num_classes, self.image_size = num_classes, image_size
        self.label_embedding = nn.Embedding(num_classes, image_size * image_size)
        self.net = DCGANDiscriminator(in_channels=in_channels + 1, features=features, image_size=image_size,
                                      norm=norm, spectral_norm=spectral_norm, extra_layers=extra_layers)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        labels = _check_labels(labels, x.shape[0], self.num_classes)
        s = self.image_size
        label_map = self.label_embedding(labels).view(-1, 1, s, s).to(x.dtype)
        return self.net(torch.cat([x, label_map], dim=1))


class ProjectionDiscriminator(nn.Module):
    """Projection discriminator (Miyato & Koyama, 2018): logit = w . phi(x) + embed(y) . phi(x), where phi(x) are
    the pooled features of a DCGAN trunk. Spectral norm on by default, as in the paper.

    Parameters:
        num_classes: number of classes K.
        in_channels, features, image_size, extra_layers: as DCGANDiscriminator.
        norm: "none" (default), "layer" or "batch" in the trunk.
        spectral_norm: spectral normalization of every conv, the linear head and the class embedding.

    forward(images, labels) -> logits (N,).
    """

    def __init__(self, *, num_classes: int = 10, in_channels: int = 1, features: int = 64, image_size: int = 64,
                 norm: str = "none", spectral_norm: bool = True, extra_layers: int = 0):
        super().__init__()
        _check_ints(num_classes=num_classes)
        self.config = dict(num_classes=num_classes, in_channels=in_channels, features=features,
                           image_size=image_size, norm=norm, spectral_norm=spectral_norm, extra_layers=extra_layers)
        self.num_classes = num_classes
        self.trunk = DCGANDiscriminator(in_channels=in_channels, features=features, image_size=image_size,
                                        norm=norm, spectral_norm=spectral_norm, extra_layers=extra_layers)
        self.trunk.head = nn.Identity()  # only the feature extractor is used
        ch = self.trunk.feature_channels
        sn = _spectral_norm if spectral_norm else (lambda m: m)
        self.linear = sn(nn.Linear(ch, 1))
        self.embedding = sn(nn.Embedding(num_classes, ch))

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.trunk._check(x)
        labels = _check_labels(labels, x.shape[0], self.num_classes)
        phi = torch.relu(self.trunk.features(x)).sum(dim=(2, 3))  # (N, C): global sum pooling
        return self.linear(phi).flatten() + (self.embedding(labels) * phi).sum(dim=1)
