"""Checkpoints without pickle: safetensors weights + JSON config and trainer state, written atomically.

A run folder looks like:

    OUT/latest.json                 {"checkpoint": "checkpoint-00001200", "step": 1200}   (replaced atomically)
    OUT/checkpoint-00001200/
        config.json                 kind ("ddpm", "gan", "wgan-gp", "cgan"), models {role: {name, config}},
                                    scheduler config (DDPM), trainer config, data description, step
        <role>.safetensors          weights of each model (e.g. model, generator, discriminator)
        <role>_ema.safetensors      the EMA weights, when the run keeps an EMA
        trainer_state.safetensors   optimizer tensors and torch RNG states (one per process under DDP)
        trainer_state.json          step, loss history, optimizer hyper-parameters, Python/NumPy RNG states

A checkpoint is first written into a temporary folder next to it and renamed into place; only then is latest.json
replaced (temporary file + os.replace) and older checkpoints removed. Killing the process at any moment leaves the
previous checkpoint intact and pointed to, so `--resume` loses at most the steps since it.

`load_checkpoint`, `sample_from_checkpoint` and `gencore sample/eval --checkpoint` accept either the run folder or
one checkpoint folder.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile

import torch

FORMAT = "gencore-checkpoint"
VERSION = 1
LATEST = "latest.json"


class CheckpointError(ValueError):
    """A checkpoint folder is missing, incomplete or corrupt (the message names the file)."""


def _write_json(path: str, obj) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_json(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing: not a complete gencore checkpoint") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is corrupt ({exc})") from None


def save_tensors(path: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """safetensors file of CPU, contiguous, unshared copies (safetensors refuses aliased storage)."""
    from safetensors.torch import save_file

    save_file({k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}, path, metadata=metadata)


def load_tensors(path: str, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not os.path.isfile(path):
        raise CheckpointError(f"{path} is missing: not a complete gencore checkpoint")
    try:
        return load_file(path, device=str(device))
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"{path} is corrupt ({exc})") from None


def resolve_checkpoint(path: str) -> str:
    """The checkpoint folder for `path`: itself if it holds config.json, else the one OUT/latest.json names."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if not os.path.isdir(path):
        raise CheckpointError(f"{path} is a file; a checkpoint is a folder (a run's --out folder or one of its "
                              "checkpoint-* folders)")
    if os.path.isfile(os.path.join(path, "config.json")):
        return path
    latest = os.path.join(path, LATEST)
    if os.path.isfile(latest):
        name = _read_json(latest).get("checkpoint")
        if not isinstance(name, str) or not os.path.isdir(os.path.join(path, name)):
            raise CheckpointError(f"{latest} points to {name!r}, which is not a folder in {path}")
        return os.path.join(path, name)
    raise CheckpointError(f"{path} holds no checkpoint (neither config.json nor {LATEST}); was the run stopped "
                          "before its first checkpoint?")


def has_checkpoint(out_dir: str) -> bool:
    return os.path.isfile(os.path.join(out_dir, LATEST)) or os.path.isfile(os.path.join(out_dir, "config.json"))


def write_checkpoint(out_dir: str, step: int, config: dict, weights: dict[str, dict[str, torch.Tensor]],
                     state_tensors: dict[str, torch.Tensor], state_json: dict, keep: int = 1) -> str:
    """Write checkpoint-<step> under out_dir atomically, point latest.json at it, keep the newest `keep`.

    weights: {file stem: state_dict}; state_tensors / state_json: the trainer state (optimizer, RNG, history).
    Returns the checkpoint folder.
    """
    os.makedirs(out_dir, exist_ok=True)
    name = f"checkpoint-{step:08d}"
    final = os.path.join(out_dir, name)
    tmp = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=out_dir)
    try:
        for stem, sd in weights.items():
            save_tensors(os.path.join(tmp, f"{stem}.safetensors"), sd)
        save_tensors(os.path.join(tmp, "trainer_state.safetensors"), state_tensors)
        _write_json(os.path.join(tmp, "trainer_state.json"), state_json)
        _write_json(os.path.join(tmp, "config.json"), {"format": FORMAT, "version": VERSION, "step": step, **config})
        if os.path.exists(final):  # the same step saved twice (e.g. the final save right after a periodic one)
            shutil.rmtree(final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _write_json(os.path.join(out_dir, LATEST), {"checkpoint": name, "step": step})
    old = sorted(d for d in os.listdir(out_dir) if d.startswith("checkpoint-") and d != name)
    for d in old[:max(0, len(old) - (keep - 1))]:
        shutil.rmtree(os.path.join(out_dir, d), ignore_errors=True)
    for d in os.listdir(out_dir):  # temporary folders of runs killed mid-write
        if d.startswith(".checkpoint-") and ".tmp-" in d:
            shutil.rmtree(os.path.join(out_dir, d), ignore_errors=True)
    return final


def read_config(path: str) -> dict:
    """config.json of a checkpoint (path: run folder or checkpoint folder), validated."""
    ckpt = resolve_checkpoint(path)
    config = _read_json(os.path.join(ckpt, "config.json"))
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise CheckpointError(f"{os.path.join(ckpt, 'config.json')} is not a gencore checkpoint config")
    if config.get("version") != VERSION:
        raise CheckpointError(f"checkpoint version {config.get('version')} is not supported (this gencore reads "
                              f"version {VERSION})")
    return config


def load_models(path: str, *, device: str | torch.device = "cpu", ema: bool = True) -> tuple[dict, dict]:
    """Rebuild every model of a checkpoint in eval mode: returns ({role: module}, config).

    With ema=True a role's EMA weights are used where the checkpoint has them (what sampling should use).
    """
    from ..models import build_model

    ckpt = resolve_checkpoint(path)
    config = read_config(ckpt)
    models = {}
    for role, desc in config.get("models", {}).items():
        try:
            model = build_model(desc["name"], desc["config"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{os.path.join(ckpt, 'config.json')}: cannot rebuild model {role!r} ({exc})") \
                from None
        stem = f"{role}_ema" if ema and os.path.isfile(os.path.join(ckpt, f"{role}_ema.safetensors")) else role
        state = load_tensors(os.path.join(ckpt, f"{stem}.safetensors"))
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise CheckpointError(f"{os.path.join(ckpt, stem + '.safetensors')} does not fit the model in "
                                  f"config.json: {str(exc).splitlines()[0]}") from None
        models[role] = model.to(device).eval()
    return models, config


def sample_from_checkpoint(checkpoint_dir: str, n: int, *, batch_size: int = 250, device: str | torch.device = "cpu",
                           generator: torch.Generator | None = None, sampler: str = "ddim", steps: int = 50,
                           eta: float = 0.0, guidance_scale: float = 1.0, class_labels: torch.Tensor | None = None,
                           ema: bool = True, progress: bool = False) -> torch.Tensor:
    """n images from a trained checkpoint (any kind), as a CPU float32 tensor (n, C, H, W) clamped to [-1, 1].

    Args:
        checkpoint_dir: a run's --out folder or one checkpoint folder.
        n: number of images; batch_size: images per forward pass / sampling loop.
        device: where to run the model. generator: a torch.Generator on that device for reproducible samples
            (latents / initial noise and DDPM/DDIM noise); None uses the global RNG.
        sampler, steps, eta: diffusion only: "ddim" (default, `steps`=50, eta=0 deterministic) or "ddpm".
        guidance_scale: classifier-free guidance for a class-conditional DDPM (1 = plain conditional).
        class_labels: (n,) ints for class-conditional models; None gives balanced classes (i % num_classes).
        ema: use the EMA weights when the checkpoint has them.

    `gencore eval --checkpoint DIR` calls this with MNIST checkpoints: images (n, 1, 28, 28) in [-1, 1].
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    models, config = load_models(checkpoint_dir, device=device, ema=ema)
    kind = config.get("kind")
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
    with torch.no_grad():
        for start in range(0, n, batch_size):
            m = min(batch_size, n - start)
            labels = None if class_labels is None else class_labels[start:start + m].to(device)
            if kind == "ddpm":
                from .ddpm import diffusion_sample

                x = diffusion_sample(models["model"], config, m, sampler=sampler, steps=steps, eta=eta,
                                     generator=generator, class_labels=labels, guidance_scale=guidance_scale,
                                     device=device, progress=progress)
            elif kind in ("gan", "wgan-gp", "cgan"):
                g = models["generator"]
                z = torch.randn(m, g.latent_dim, generator=generator, device=device)
                x = g(z, labels) if labels is not None else g(z)
            else:
                raise CheckpointError(f"unknown checkpoint kind {kind!r}")
            out.append(x.float().clamp(-1, 1).cpu())
    return torch.cat(out)
