"""`gencore eval`: FID, Inception Score, diversity, precision and recall of generated digits.

    gencore eval --fake samples.safetensors                 # against the held-out 2,000 MNIST images
    gencore eval --real mnist --fake out/samples/           # a folder of 28x28 images
    gencore eval --checkpoint runs/ddpm --n 10000           # sample from a trained model first

Features and class probabilities come from the MNIST classifier that ships with gencore (gencore.metrics), so the
numbers are comparable across gencore runs (not with InceptionV3-based numbers in papers).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from ..training.ddpm import DEFAULT_STEPS, SAMPLERS
from ._args import non_negative_float, positive_int, resolve_device

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def add_parser(sub, name):
    p = sub.add_parser(name, help="FID, Inception Score, diversity, precision and recall of generated digits",
                       description=__doc__.split("\n\n")[0])
    fake = p.add_mutually_exclusive_group(required=True)
    fake.add_argument("--fake", metavar="PATH",
                      help="generated images: a folder of 28x28 images, or a .safetensors / .npz / .npy tensor file "
                           "((N, 28, 28) or (N, 1, 28, 28); uint8 0..255 or float in [-1, 1])")
    fake.add_argument("--checkpoint", metavar="DIR", help="sample --n images from this trained model's checkpoint")
    p.add_argument("--real", metavar="PATH", default="mnist",
                   help="real images, as --fake, or 'mnist' (default): the held-out last 2,000 MNIST test images")
    p.add_argument("--n", type=int, default=10000, help="images to sample with --checkpoint (default 10000)")
    p.add_argument("--mnist-dir", metavar="DIR", default=None,
                   help="folder with the MNIST IDX files (default: $GENCORE_MNIST_DIR, else the download cache)")
    p.add_argument("--download", action="store_true", help="download MNIST (checksum-verified) if it is missing")
    p.add_argument("--device", default="auto", help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--seed", type=int, default=0, help="sampling seed for --checkpoint")
    p.add_argument("--sampler", choices=SAMPLERS, default="ddim",
                   help="diffusion sampler for --checkpoint: ddim, dpm++ (DPM-Solver++: as good in 20 steps as ddim "
                        "in 50), ddpm")
    p.add_argument("--steps", type=positive_int, default=None,
                   help="diffusion sampling steps for --checkpoint (default: 50 for ddim, 20 for dpm++, 1000 for ddpm)")
    p.add_argument("--eta", type=non_negative_float, default=0.0, help="DDIM eta for --checkpoint (default 0)")
    p.add_argument("--guidance-scale", type=non_negative_float, default=1.0,
                   help="classifier-free guidance scale for a class-conditional DDPM checkpoint (default 1)")
    p.add_argument("--no-ema", action="store_true",
                   help="sample --checkpoint's raw weights even where an EMA of them was kept")
    p.add_argument("--splits", type=int, default=10, help="Inception Score splits (default 10)")
    p.add_argument("-k", "--k", type=int, default=3, help="neighbours for precision/recall (default 3)")
    p.add_argument("--json", metavar="FILE", help="also write the numbers to this JSON file")
    return p


def _to_float_images(array, source: str):
    """numpy/torch uint8 or float images (N, 28, 28) or (N, 1, 28, 28) -> float32 (N, 1, 28, 28) in [-1, 1]."""
    import numpy as np
    import torch

    from gencore.metrics import check_images

    t = torch.from_numpy(np.ascontiguousarray(array)) if isinstance(array, np.ndarray) else array
    if t.dim() == 3:
        t = t.unsqueeze(1)
    if t.dtype == torch.uint8:
        t = t.float() / 127.5 - 1
    elif not t.is_floating_point():
        raise ValueError(f"{source}: images must be uint8 (0..255) or float in [-1, 1], got {t.dtype}")
    try:
        return check_images(t.float(), name=source)
    except TypeError as exc:
        raise ValueError(str(exc)) from exc


def _single_tensor(named: dict, source: str):
    if len(named) == 1:
        return next(iter(named.values()))
    if "images" in named:
        return named["images"]
    raise ValueError(f"{source}: holds {sorted(named)}; expected one tensor or one named 'images'")


def load_images(spec: str, *, mnist_dir=None, download: bool = False):
    """Images for evaluation from `spec`: 'mnist' (the held-out 2,000), a folder of images, or a tensor file.
    Returns (float32 (N, 1, 28, 28) in [-1, 1], description)."""
    import numpy as np
    import torch

    if spec == "mnist":
        from gencore.data import mnist_split, mnist_to_float

        root = mnist_dir or os.environ.get("GENCORE_MNIST_DIR") or None
        data = mnist_split("reference", root, download=download)
        return mnist_to_float(data.images), "MNIST held-out reference set (test images 8000..9999)"
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"no such file or folder: {spec}")
    if path.is_dir():
        from PIL import Image

        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"{spec}: no image files ({', '.join(IMAGE_SUFFIXES)})")
        arrays = []
        for f in files:
            with Image.open(f) as im:
                if im.size != (28, 28):
                    raise ValueError(f"{f}: image is {im.size[0]}x{im.size[1]}, expected 28x28")
                arrays.append(np.asarray(im.convert("L"), dtype=np.uint8))
        return _to_float_images(np.stack(arrays), spec), f"{spec} ({len(files)} image files)"
    suffix = path.suffix.lower()
    if suffix not in (".safetensors", ".npz", ".npy"):
        raise ValueError(f"{spec}: unknown format (expected a folder, .safetensors, .npz or .npy)")
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            loaded = load_file(str(path))
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                loaded = {k: npz[k] for k in npz.files}
        else:
            loaded = np.load(path, allow_pickle=False)
    except Exception as exc:  # safetensors, numpy and zipfile each have their own error for a damaged file
        first_line = str(exc).splitlines()[0] if str(exc) else "corrupt"
        raise ValueError(f"{spec}: cannot be read as a {suffix} tensor file ({type(exc).__name__}: "
                         f"{first_line})") from None
    tensor = loaded if suffix == ".npy" else _single_tensor(loaded, spec)
    if isinstance(tensor, torch.Tensor) and tensor.dtype == torch.bfloat16:
        tensor = tensor.float()
    images = _to_float_images(tensor, spec)
    return images, f"{spec} ({images.shape[0]} images)"


def sample_checkpoint(checkpoint: str, n: int, *, batch_size: int, device, seed: int, **sampling):
    """Images (n, 1, 28, 28) in [-1, 1] sampled from a trained model (gencore.training.generate)."""
    import torch

    from gencore.training.generate import sample_from_checkpoint

    generator = torch.Generator(device=device).manual_seed(seed)
    images = sample_from_checkpoint(checkpoint, n, batch_size=batch_size, device=device, generator=generator,
                                    **sampling)
    if tuple(images.shape[1:]) != (1, 28, 28):
        raise ValueError(f"{checkpoint} draws {'x'.join(map(str, images.shape[1:]))} images; gencore eval scores "
                         f"28x28 MNIST-like digits with the shipped MNIST classifier (models trained with --data "
                         f"mnist, or digits at --image-size 28). `gencore demo` judges its 16x16 models itself.")
    return _to_float_images(images.detach().float().cpu(), f"samples of {checkpoint}")


def _checkpoint_summary(args) -> str:
    """What was sampled: the model kind and step, the seed, and for diffusion models the sampler settings."""
    try:
        from gencore.training.checkpoint import read_config
        config = read_config(args.checkpoint)
    except (ImportError, OSError, ValueError):  # the sampler already read it; this is only a description
        config = {}
    parts = [f"{config['kind']} at step {config.get('step')}"] if "kind" in config else []
    parts.append(f"seed {args.seed}" + ("; raw weights, not the EMA" if args.no_ema else ""))
    if config.get("kind", "ddpm") == "ddpm":
        parts.append(f"{args.sampler} {args.steps} steps, eta {args.eta:g}, guidance {args.guidance_scale:g}")
    return "; ".join(parts)


def evaluate(real, fake, *, device="cpu", batch_size: int = 500, splits: int = 10, k: int = 3) -> dict:
    """All metrics of `fake` against `real` (both float (N, 1, 28, 28) in [-1, 1]) with the shipped classifier."""
    import torch

    from gencore.metrics import FID, diversity_score, inception_score, load_mnist_classifier, precision_recall
    from gencore.metrics.classifier import classifier_info, classify_in_batches

    model = load_mnist_classifier(device)
    real_features, real_logits = classify_in_batches(model, real, batch_size)
    fake_features, fake_logits = classify_in_batches(model, fake, batch_size)
    fid = FID(lambda x: model.features(x), name=f"gencore-mnist-classifier:{classifier_info()['sha256'][:16]}")
    fid.update_features(real_features, real=True)
    fid.update_features(fake_features, real=False)
    is_mean, is_std = inception_score(fake_logits, splits=min(splits, fake.shape[0]))
    real_is_mean, real_is_std = inception_score(real_logits, splits=min(splits, real.shape[0]))
    pr = precision_recall(real_features, fake_features, k=k)
    # The quality bar of the project: how sure the classifier is of each generated digit (mean max-softmax), and
    # which digits come out (a confident but collapsed model draws one class only).
    fake_probs = fake_logits.double().softmax(dim=1)
    real_probs = real_logits.double().softmax(dim=1)
    return {
        "confidence": fake_probs.max(dim=1).values.mean().item(),
        "real_confidence": real_probs.max(dim=1).values.mean().item(),
        "class_counts": torch.bincount(fake_probs.argmax(dim=1), minlength=fake_probs.shape[1]).tolist(),
        "fid": fid.compute(),
        "inception_score": is_mean, "inception_score_std": is_std,
        "diversity": diversity_score(fake),
        "precision": pr.precision, "recall": pr.recall,
        "real_inception_score": real_is_mean, "real_inception_score_std": real_is_std,
        "real_diversity": diversity_score(real),
        "n_real": int(real.shape[0]), "n_fake": int(fake.shape[0]), "splits": splits, "k": k,
    }


def run(args) -> int:
    if args.steps is None:
        args.steps = DEFAULT_STEPS[args.sampler]
    device = str(resolve_device(args.device))
    for name in ("n", "batch_size", "splits", "k"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    for spec in (args.real, args.fake):  # fail on a mistyped path before loading or sampling anything
        if spec is not None and spec != "mnist" and not Path(spec).exists():
            raise FileNotFoundError(f"no such file or folder: {spec}")
    real, real_desc = load_images(args.real, mnist_dir=args.mnist_dir, download=args.download)
    if args.checkpoint:
        try:
            fake = sample_checkpoint(args.checkpoint, args.n, batch_size=args.batch_size, device=device,
                                     seed=args.seed, sampler=args.sampler, steps=args.steps, eta=args.eta,
                                     guidance_scale=args.guidance_scale, ema=not args.no_ema)
        except RuntimeError as exc:
            print(f"gencore eval: error: {exc}", file=sys.stderr)
            return 2
        fake_desc = f"{fake.shape[0]} samples of {args.checkpoint} ({_checkpoint_summary(args)})"
    else:
        fake, fake_desc = load_images(args.fake, mnist_dir=args.mnist_dir, download=args.download)
    if min(real.shape[0], fake.shape[0]) <= args.k:
        raise ValueError(f"need more than k={args.k} real and generated images, got {real.shape[0]} and "
                         f"{fake.shape[0]}")
    results = evaluate(real, fake, device=device, batch_size=args.batch_size, splits=args.splits, k=args.k)
    print(f"real       {real_desc}")
    print(f"generated  {fake_desc}")
    print(f"FID        {results['fid']:.4f}")
    print(f"IS         {results['inception_score']:.4f} ± {results['inception_score_std']:.4f}   "
          f"(real: {results['real_inception_score']:.4f}; {min(args.splits, fake.shape[0])} splits)")
    print(f"diversity  {results['diversity']:.4f}   (real: {results['real_diversity']:.4f})")
    print(f"precision  {results['precision']:.4f}   (k={args.k})")
    print(f"recall     {results['recall']:.4f}")
    print(f"confidence {results['confidence']:.4f}   (real: {results['real_confidence']:.4f}; mean max-softmax of the "
          f"MNIST classifier)")
    print(f"classes    {' '.join(str(c) for c in results['class_counts'])}   (generated images per digit 0-9)")
    if args.json:
        results.update(real=real_desc, generated=fake_desc)
        tmp = f"{args.json}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(results, f, indent=2)
        os.replace(tmp, args.json)
    return 0
