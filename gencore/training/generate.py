"""Images from a trained checkpoint of any kind: the one function `gencore sample` and `gencore eval --checkpoint`
call. It sits above both the checkpoint format (gencore.training.checkpoint) and the DDPM sampling recipe
(gencore.training.ddpm), so that neither imports the other."""
from __future__ import annotations

import torch

from ..diffusion.noise import randn
from .checkpoint import CheckpointError, load_models
from .ddpm import diffusion_sample, sampling_plan


def sample_from_checkpoint(checkpoint_dir: str, n: int, *, batch_size: int = 250, device: str | torch.device = "cpu",
                           generator: torch.Generator | None = None, sampler: str | None = None,
                           steps: int | None = None,
                           eta: float = 0.0, guidance_scale: float = 1.0, class_labels: torch.Tensor | None = None,
                           ema: bool = True, progress: bool = False, optimize: bool = False) -> torch.Tensor:
    """n images from a trained checkpoint (any kind), as a CPU float32 tensor (n, C, H, W) clamped to [-1, 1].

    Args:
        checkpoint_dir: a run's --out folder or one checkpoint folder.
        n: number of images; batch_size: images per forward pass / sampling loop.
        device: where to run the model. generator: a torch.Generator on that device for reproducible samples
            (latents / initial noise and DDPM/DDIM noise); None uses the global RNG. A diffusion checkpoint's initial
            noise x_T is the generator's first draw, (n, C, H, W) standard normal for all n images at once, before
            any step noise: the same generator seed and n give every diffusion checkpoint of that image shape (a
            teacher and its students) and every sampler, number of steps and batch size the same x_T.
        sampler, steps, eta: diffusion only: "ddim" (default, `steps`=50, eta=0 deterministic), "dpm++" (DPM-Solver++,
            20 steps as good as DDIM's 50) or "ddpm". A distilled student samples as it was trained (its sampler and
            number of calls; None takes them, anything else is an error).
        guidance_scale: classifier-free guidance for a class-conditional DDPM (1 = plain conditional).
        class_labels: (n,) ints for class-conditional models; None gives balanced classes (i % num_classes).
        ema: use the EMA weights when the checkpoint has them.
        optimize: run the model through gencore.optimize (fused modules, channels_last, torch.compile): its first
            call compiles (tens of seconds on a CPU), every later one is faster; worth it for many images.

    `gencore eval --checkpoint DIR` calls this with MNIST checkpoints: images (n, 1, 28, 28) in [-1, 1].
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    models, config = load_models(checkpoint_dir, device=device, ema=ema)
    if optimize:
        from .._optimize import optimize as optimize_model  # here: it imports torch.compile's machinery
        models = {role: optimize_model(model) for role, model in models.items()}
    kind = config.get("kind")
    if kind == "ddpm":
        sampler, steps = sampling_plan(config, sampler, steps, guidance_scale, eta)
    num_classes = config.get("data", {}).get("num_classes") if config.get("conditional") else None
    if class_labels is not None:
        class_labels = torch.as_tensor(class_labels).long()
        if class_labels.shape != (n,):
            raise ValueError(f"class_labels must have shape ({n},), got {tuple(class_labels.shape)}")
        if num_classes is None:
            raise ValueError("class_labels given but the checkpoint's model is not class-conditional")
        if class_labels.min() < 0 or class_labels.max() >= num_classes:
            raise ValueError(f"class_labels must be in [0, {num_classes})")
    elif num_classes:
        class_labels = torch.arange(n) % num_classes
    out = []
    if kind == "ddpm":
        noise = randn((n, *config["data"]["image_shape"]), generator, torch.device(device), torch.float32)
    with torch.no_grad():
        for start in range(0, n, batch_size):
            m = min(batch_size, n - start)
            labels = None if class_labels is None else class_labels[start:start + m].to(device)
            if kind == "ddpm":
                x = diffusion_sample(models["model"], config, m, sampler=sampler, steps=steps, eta=eta,
                                     generator=generator, class_labels=labels, guidance_scale=guidance_scale,
                                     device=device, progress=progress, noise=noise[start:start + m])
            elif kind in ("gan", "wgan-gp", "cgan"):
                g = models["generator"]
                z = torch.randn(m, g.latent_dim, generator=generator, device=device)
                x = g(z, labels) if labels is not None else g(z)
            else:
                raise CheckpointError(f"unknown checkpoint kind {kind!r}")
            out.append(x.float().clamp(-1, 1).cpu())
    return torch.cat(out)
