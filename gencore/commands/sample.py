"""`gencore sample --checkpoint DIR --out FILE`: images from a trained checkpoint (DDIM, DPM-Solver++ or DDPM for
diffusion checkpoints, the generator for GAN ones), as a PNG grid (FILE.png) or as a tensor file (FILE.safetensors: one
float32 tensor "images" (N, C, H, W) in [-1, 1], what `gencore eval --fake` reads), optionally the
progressive-generation strip."""
from __future__ import annotations

import os

from ..training.ddpm import DEFAULT_STEPS, SAMPLERS
from ._args import HelpFormatter, non_negative_float, non_negative_int, positive_int, resolve_device

OUTPUT_SUFFIXES = (".png", ".safetensors")


def add_parser(sub, name):
    p = sub.add_parser(name, help="sample images from a trained checkpoint", description=__doc__,
                       formatter_class=HelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a run's --out folder or one of its checkpoint-* folders")
    p.add_argument("--out", default="samples.png",
                   help="FILE.png for a grid of the images, FILE.safetensors for the images as a tensor")
    p.add_argument("--n", type=positive_int, default=64, help="number of images")
    p.add_argument("--sampler", choices=SAMPLERS, default="ddim",
                   help="diffusion sampler: ddim, dpm++ (DPM-Solver++: as good in 20 steps as ddim in 50), ddpm")
    p.add_argument("--steps", type=positive_int, default=None,
                   help="diffusion sampling steps (default: 50 for ddim, 20 for dpm++, 1000 for ddpm)")
    p.add_argument("--eta", type=non_negative_float, default=0.0, help="DDIM eta (0 deterministic, 1 DDPM-like)")
    p.add_argument("--guidance-scale", type=non_negative_float, default=1.0,
                   help="classifier-free guidance scale (class-conditional DDPM)")
    p.add_argument("--class", dest="class_label", type=non_negative_int, default=None,
                   help="sample only this class (conditional models); default: all classes in turn")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--device", default=None, help="cpu, cuda (default: cuda if available)")
    p.add_argument("--backend", default=None, help="gencore backend for the fused ops")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights even where an EMA was kept")
    p.add_argument("--progressive", action="store_true",
                   help="also write FILE-progressive.png: rows = samples, columns = denoising steps (diffusion)")
    return p


def run(args) -> int:
    """The command, with --backend in force for it alone (main() may run in a process that goes on)."""
    import contextlib

    from .. import backends

    with backends.use_backend(args.backend) if args.backend else contextlib.nullcontext():
        return _run(args)


def _run(args) -> int:
    import torch

    from ..training.checkpoint import load_models
    from ..training.generate import sample_from_checkpoint

    suffix = os.path.splitext(args.out)[1].lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise ValueError(f"--out must end in {' or '.join(OUTPUT_SUFFIXES)} (a grid or a tensor file), "
                         f"got {args.out!r}")
    if args.steps is None:
        args.steps = DEFAULT_STEPS[args.sampler]
    device = resolve_device(args.device)
    models, config = load_models(args.checkpoint, device=device, ema=not args.no_ema)  # validates the checkpoint
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
    from ..training.images import save_grid, save_progressive_strip

    if args.progressive:
        from ..training.ddpm import diffusion_sample

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
        from ..training.ddpm import progressive_labels

        strip = os.path.splitext(args.out)[0] + "-progressive.png"
        save_progressive_strip(list(inter), strip, scale=4 if inter[0].shape[-1] <= 16 else 2,
                               column_labels=progressive_labels(config, args.sampler, args.steps, every))
        print(f"progressive generation strip ({n} samples x {len(inter)} stages): {strip}")
        gen.manual_seed(args.seed)
    images = sample_from_checkpoint(args.checkpoint, args.n, batch_size=args.batch_size, device=device,
                                    generator=gen, sampler=args.sampler, steps=args.steps, eta=args.eta,
                                    guidance_scale=args.guidance_scale, class_labels=labels, ema=not args.no_ema)
    if suffix == ".safetensors":
        from ..training.checkpoint import save_tensors

        tmp = f"{args.out}.tmp-{os.getpid()}"
        save_tensors(tmp, {"images": images.detach().float()}, metadata={"format": "images in [-1, 1], NCHW"})
        os.replace(tmp, args.out)
    else:
        nrow = config["data"].get("num_classes") if config.get("conditional") and labels is None else None
        save_grid(images, args.out, nrow=nrow if nrow and args.n >= nrow else None)
    print(f"{args.n} samples ({config.get('kind')}, step {config.get('step')}): {os.path.abspath(args.out)}")
    return 0
