"""Benchmark cases of the models end to end: what a user's training and sampling gain from the fused backends.

Ops (mode "step" unless noted):
    ddpm_train_step   one DDPMTrainer step (forward, loss, backward, AdamW, EMA) of the MNIST UNet
                      (UNet(in_channels=1) defaults: 64 base channels, mult (1, 2, 2), attention at 14x14), batch 32.
    ddim_sample       a 50-step DDIM sampling run (mode "sample") of the same UNet, 16 images.
    gan_step          one DCGAN step at 28x28 (features 64, BCE: discriminator + generator updates), batch 64.
    wgan_gp_step      one WGAN-GP step at 28x28 (n_critic=5 critic updates with the gradient penalty + one
                      generator update), batch 64.
Providers: reference (every gencore op on the plain-PyTorch twin) and the fused backends that can run here (cpu on
CPU; cuda and triton on CUDA). Everything else (convolutions, attention, optimizers) is the same PyTorch code in
every provider, so the ratio is the honest end-to-end gain. bytes = 0 (not a bandwidth-bound op).
quick=True: tiny models and batches, for CI (`pytest bench --benchmark-disable`) and `gencore bench --quick`.
"""
from __future__ import annotations

import torch

from .. import _extension, backends
from ..data import ImageDataset
from ..diffusion import DDIMScheduler, sample
from ..models import UNet
from ..training import DDPMConfig, DDPMTrainer, GANConfig, GANTrainer, WGANGPConfig, WGANGPTrainer
from . import Case

MNIST_UNET = dict(base_channels=64, channel_mult=(1, 2, 2), num_res_blocks=2, attention_levels=(1,), norm_groups=32)
TINY_UNET = dict(base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(), norm_groups=4)


def _providers(device: str) -> list[str]:
    available = backends.available_backends()
    providers = ["reference"]
    if device == "cpu" and "cpu" in available and _extension.has_kernel("group_norm_silu_fwd", "CPU"):
        providers.append("cpu")
    if device == "cuda":
        providers += [p for p in ("cuda", "triton") if p in available]
    return providers


def _data(n: int, device: str):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(n, 1, 28, 28, generator=g) * 2 - 1
    return ImageDataset(images, torch.randint(0, 10, (n,), generator=g), 10, "random")


def _selection(provider: str) -> str:
    """The backend selection a provider runs under. "cpu" means gencore's fused CPU path as a user gets it: "auto",
    i.e. the cpu kernels for every op that has one and the reference for the rest (an explicit "cpu" would refuse
    an op without a CPU kernel)."""
    return "auto" if provider == "cpu" else provider


def _in_backend(provider: str, fn):
    def timed():
        with backends.use_backend(_selection(provider)):
            return fn()

    return timed


def _ddpm_step(provider: str, device: str, quick: bool):
    def setup():
        batch = 4 if quick else 32
        with backends.use_backend(_selection(provider)):
            trainer = DDPMTrainer(_data(batch, device), DDPMConfig(
                steps=1, batch_size=batch, device=device, progress=False,
                unet=dict(TINY_UNET if quick else MNIST_UNET)))
            trainer.train_step(0)  # warm-up (allocations, oneDNN primitive cache)
        return _in_backend(provider, lambda: trainer.train_step(0))

    return setup


def _ddim_sample(provider: str, device: str, quick: bool):
    def setup():
        torch.manual_seed(0)
        model = UNet(in_channels=1, **(TINY_UNET if quick else MNIST_UNET)).to(device).eval()
        sched = DDIMScheduler()
        n, steps = (2, 3) if quick else (16, 50)

        def run():
            g = torch.Generator(device=device).manual_seed(0)
            with torch.no_grad():
                return sample(model, sched, (n, 1, 28, 28), steps, eta=0.0, generator=g, progress=False)

        return _in_backend(provider, run)

    return setup


def _gan_step(provider: str, device: str, quick: bool, wgan: bool):
    def setup():
        batch = 8 if quick else 64
        features = 8 if quick else 64
        n_critic = (1 if quick else 5) if wgan else 1
        data = _data(batch * n_critic, device)
        with backends.use_backend(_selection(provider)):
            if wgan:
                trainer = WGANGPTrainer(data, WGANGPConfig(steps=1, batch_size=batch, device=device, progress=False,
                                                           features=features, n_critic=n_critic))
            else:
                trainer = GANTrainer(data, GANConfig(steps=1, batch_size=batch, device=device, progress=False,
                                                     features=features))
            trainer.train_step(0)
        return _in_backend(provider, lambda: trainer.train_step(0))

    return setup


def cases(device: str = "cpu", quick: bool = False) -> list[Case]:
    out = []
    for p in _providers(device):
        unet = "tiny-unet-b4" if quick else "mnist-unet-b32"
        out.append(Case("ddpm_train_step", p, unet, "float32", "step", 0, _ddpm_step(p, device, quick)))
        out.append(Case("ddim_sample", p, "tiny-unet-2x3steps" if quick else "mnist-unet-16x50steps", "float32",
                        "sample", 0, _ddim_sample(p, device, quick)))
        out.append(Case("gan_step", p, "dcgan28-b8" if quick else "dcgan28-f64-b64", "float32", "step", 0,
                        _gan_step(p, device, quick, wgan=False)))
        out.append(Case("wgan_gp_step", p, "critic28-b8-ncritic1" if quick else "critic28-f64-b64-ncritic5",
                        "float32", "step", 0, _gan_step(p, device, quick, wgan=True)))
    return out
