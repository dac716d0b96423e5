"""`gencore sample --checkpoint DIR --out FILE` (arguments: gencore.cli): images from a trained checkpoint as a PNG grid
or a safetensors tensor file, optionally with the progressive-generation strip."""
from __future__ import annotations

import contextlib
import os

import torch
from safetensors import SafetensorError

from .. import backends
from ..training.checkpoint import load_models, save_tensors
from ..training.ddpm import diffusion_sample, progressive_labels, sampling_plan
from ..training.generate import sample_from_checkpoint
from ..training.images import save_grid, save_progressive_strip
from ..training.paths import OutputPathError, check_output_file
from ._device import resolve_device


@contextlib.contextmanager
def _writing(path: str):
    """Turns a failed write (the folder checked at the start went away or filled up) into one message naming the
    file asked for, not the temporary file the writer used."""
    try:
        yield
    except (OSError, SafetensorError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc).splitlines()[0]
        raise OutputPathError(f"--out {path}: cannot be written ({reason})") from None


def run(args) -> int:
    """The command, with --backend in force for it alone (main() may run in a process that goes on)."""
    with backends.use_backend(args.backend) if args.backend else contextlib.nullcontext():
        return _run(args)


def _run(args) -> int:
    suffix = os.path.splitext(args.out)[1].lower()
    strip = os.path.splitext(args.out)[0] + "-progressive.png"
    check_output_file(args.out, "--out")  # before the model is loaded or any image drawn
    device = resolve_device(args.device)
    models, config = load_models(args.checkpoint, device=device, ema=not args.no_ema)  # validates the checkpoint
    if config.get("kind") == "ddpm":  # a distilled student's own sampler and calls; errors for others asked
        args.sampler, args.steps = sampling_plan(config, args.sampler, args.steps, args.guidance_scale, args.eta)
    labels = None
    if args.class_label is not None:
        k = config.get("data", {}).get("num_classes") if config.get("conditional") else None
        if not k:
            raise ValueError("--class needs a class-conditional checkpoint (ddpm --class-conditional, or cgan)")
        if args.class_label >= k:
            raise ValueError(f"--class must be in [0, {k}), got {args.class_label}")
        labels = torch.full((args.n,), args.class_label, dtype=torch.long)
    if args.guidance_scale != 1.0 and not (config.get("kind") == "ddpm" and config.get("conditional")):
        raise ValueError("--guidance-scale needs a class-conditional DDPM checkpoint")
    if args.progressive and config.get("kind") != "ddpm":
        raise ValueError("--progressive applies to diffusion checkpoints only")
    gen = torch.Generator(device=device).manual_seed(args.seed)
    if args.progressive:
        n = min(args.n, 16)
        lab = None if labels is None else labels[:n].to(device)
        if lab is None and config.get("conditional"):
            lab = torch.arange(n, device=device) % config["data"]["num_classes"]
        every = max(1, args.steps // 10)
        with torch.no_grad():
            final, inter = diffusion_sample(models["model"], config, n, sampler=args.sampler, steps=args.steps,
                                            eta=args.eta, generator=gen, class_labels=lab,
                                            guidance_scale=args.guidance_scale, device=device,
                                            return_intermediates=every)
        with _writing(strip):
            save_progressive_strip(list(inter), strip, scale=4 if inter[0].shape[-1] <= 16 else 2,
                                   column_labels=progressive_labels(config, args.sampler, args.steps, every))
        print(f"progressive generation strip ({n} samples x {len(inter)} stages): {strip}")
        gen.manual_seed(args.seed)
    images = sample_from_checkpoint(args.checkpoint, args.n, batch_size=args.batch_size, device=device,
                                    generator=gen, sampler=args.sampler, steps=args.steps, eta=args.eta,
                                    guidance_scale=args.guidance_scale, class_labels=labels, ema=not args.no_ema,
                                    optimize=args.optimize)
    with _writing(args.out):
        if suffix == ".safetensors":
            os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)  # as save_grid does for a PNG
            tmp = f"{args.out}.tmp-{os.getpid()}"
            save_tensors(tmp, {"images": images.detach().float()}, metadata={"format": "images in [-1, 1], NCHW"})
            os.replace(tmp, args.out)
        else:
            nrow = config["data"].get("num_classes") if config.get("conditional") and labels is None else None
            save_grid(images, args.out, nrow=nrow if nrow and args.n >= nrow else None)
    print(f"{args.n} samples ({config.get('kind')}, step {config.get('step')}): {os.path.abspath(args.out)}")
    return 0
