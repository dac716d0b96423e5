"""`gencore eval` (arguments: gencore.cli): FID, Inception Score, class coverage, confidence, diversity, precision
and recall of generated digits, with the MNIST classifier that ships with gencore as the judge."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from ..data import mnist_split, mnist_to_float
from ..metrics import (FID, check_images, class_coverage, diversity_score, inception_score, load_mnist_classifier,
                       precision_recall)
from ..metrics.classifier import classifier_info, classify_in_batches
from ..training.checkpoint import read_config
from ..training.generate import sample_from_checkpoint
from ..training.ddpm import sampling_plan
from ..training.paths import OutputPathError, check_output_file
from ._device import resolve_device

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
EVAL_SHAPE = [1, 28, 28]  # what the shipped MNIST classifier reads


def _to_float_images(array, source: str):
    """numpy/torch uint8 or float images (N, 28, 28) or (N, 1, 28, 28) -> float32 (N, 1, 28, 28) in [-1, 1]."""
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
    if spec == "mnist":
        root = mnist_dir or os.environ.get("GENCORE_MNIST_DIR") or None
        data = mnist_split("reference", root, download=download)
        return mnist_to_float(data.images), "MNIST held-out reference set (test images 8000..9999)"
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"no such file or folder: {spec}")
    if path.is_dir():
        from PIL import Image  # Pillow is optional (the demo extra); only a folder of images needs it

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


def check_checkpoint(checkpoint: str) -> dict:
    """The checkpoint's config, validated (files, checksums), and refused unless it draws what the shipped MNIST
    classifier reads: all before a single image is sampled."""
    config = read_config(checkpoint)
    shape = config["data"]["image_shape"]
    if shape != EVAL_SHAPE:
        raise ValueError(f"{checkpoint} draws {'x'.join(map(str, shape))} images; gencore eval scores 28x28 "
                         f"MNIST-like digits with the shipped MNIST classifier (models trained with --data mnist, or "
                         f"digits at --image-size 28). `gencore demo` judges its 16x16 models itself.")
    return config


def sample_checkpoint(checkpoint: str, n: int, *, batch_size: int, device, seed: int, **sampling):
    """Images (n, 1, 28, 28) in [-1, 1] sampled from a trained model (gencore.training.generate)."""
    generator = torch.Generator(device=device).manual_seed(seed)
    images = sample_from_checkpoint(checkpoint, n, batch_size=batch_size, device=device, generator=generator,
                                    **sampling)
    return _to_float_images(images.detach().float().cpu(), f"samples of {checkpoint}")


def _checkpoint_summary(args, config: dict) -> str:
    """What was sampled: the model kind and step, the seed, and for diffusion models the sampler settings."""
    parts = [f"{config['kind']} at step {config['step']}"]
    parts.append(f"seed {args.seed}" + ("; raw weights, not the EMA" if args.no_ema else ""))
    student = config.get("student")
    if student:
        parts.append(f"a {student['calls']}-call student ({args.sampler}) of {student['teacher']['path']} at step "
                     f"{student['teacher']['step']}, guidance {student['guidance_scale']:g} folded in")
    elif config["kind"] == "ddpm":
        parts.append(f"{args.sampler} {args.steps} steps, eta {args.eta:g}, guidance {args.guidance_scale:g}")
    return "; ".join(parts)


def evaluate(real, fake, *, device="cpu", batch_size: int = 500, splits: int = 10, k: int = 3) -> dict:
    """All metrics of `fake` against `real` (both float (N, 1, 28, 28) in [-1, 1]) with the shipped classifier."""
    model = load_mnist_classifier(device)
    real_features, real_logits = classify_in_batches(model, real, batch_size)
    fake_features, fake_logits = classify_in_batches(model, fake, batch_size)
    fid = FID(lambda x: model.features(x), name=f"gencore-mnist-classifier:{classifier_info()['sha256'][:16]}")
    fid.update_features(real_features, real=True)
    fid.update_features(fake_features, real=False)
    is_mean, is_std = inception_score(fake_logits, splits=min(splits, fake.shape[0]))
    real_is_mean, real_is_std = inception_score(real_logits, splits=min(splits, real.shape[0]))
    pr = precision_recall(real_features, fake_features, k=k)
    coverage = class_coverage(fake_logits)
    # How sure the classifier is of each generated digit (mean max-softmax): legibility only. A model that draws one
    # digit well scores it high; the Inception Score and the class coverage are what such a model fails.
    fake_probs = fake_logits.double().softmax(dim=1)
    real_probs = real_logits.double().softmax(dim=1)
    return {
        "fid": fid.compute(),
        "inception_score": is_mean, "inception_score_std": is_std,
        "class_counts": coverage.counts, "classes_present": coverage.present, "rare_classes": coverage.rare,
        "class_kl_from_uniform": coverage.kl_from_uniform, "effective_classes": coverage.effective_classes,
        "collapsed": coverage.collapsed,
        "confidence": fake_probs.max(dim=1).values.mean().item(),
        "real_confidence": real_probs.max(dim=1).values.mean().item(),
        "diversity": diversity_score(fake),
        "precision": pr.precision, "recall": pr.recall,
        "real_inception_score": real_is_mean, "real_inception_score_std": real_is_std,
        "real_diversity": diversity_score(real),
        "n_real": int(real.shape[0]), "n_fake": int(fake.shape[0]), "splits": splits, "k": k,
    }


def collapse_warning(results: dict) -> str | None:
    """The warning for samples that miss digits or draw some rarely (None when they cover every digit)."""
    if not results["collapsed"]:
        return None
    counts, rare, n = results["class_counts"], results["rare_classes"], results["n_fake"]
    seen = ", ".join(f"{k}: {counts[k]}" for k in rare if counts[k])
    never = " ".join(str(k) for k in rare if not counts[k])
    others = ", ".join(f"{k}: {count}" for k, count in enumerate(counts) if k not in rare) or "none"
    which = "; ".join(part for part in (seen and f"seen {seen}", never and f"never {never}") if part)
    return (f"the {n} generated images cover few digits: {len(rare)} of {len(counts)} are rare or absent (under a "
            f"fifth of an even share, {n / (5 * len(counts)):g} each: {which}); the others: {others}. Mode "
            f"collapse, or too few samples to tell: the confidence rates legibility only, IS and FID count the "
            f"missing digits.")


def run(args) -> int:
    # Arguments and inputs first, MNIST and sampling last: a mistake is reported before anything slow runs.
    if args.json:
        check_output_file(args.json, "--json")
    device = str(resolve_device(args.device))
    for spec in (args.real, args.fake):  # a mistyped path, before reading anything
        if spec is not None and spec != "mnist" and not Path(spec).exists():
            raise FileNotFoundError(f"no such file or folder: {spec}")
    config = None
    if args.checkpoint:
        config = check_checkpoint(args.checkpoint)
        if config["kind"] == "ddpm":  # a distilled student's own sampler and calls; errors for others asked
            args.sampler, args.steps = sampling_plan(config, args.sampler, args.steps, args.guidance_scale, args.eta)
        n_fake = args.n
    else:
        fake, fake_desc = load_images(args.fake, mnist_dir=args.mnist_dir, download=args.download)
        n_fake = fake.shape[0]
    if n_fake <= args.k:
        raise ValueError(f"need more than k={args.k} generated images, got {n_fake}")
    real, real_desc = load_images(args.real, mnist_dir=args.mnist_dir, download=args.download)
    if real.shape[0] <= args.k:
        raise ValueError(f"need more than k={args.k} real images, got {real.shape[0]}")
    if args.checkpoint:
        try:
            fake = sample_checkpoint(args.checkpoint, args.n, batch_size=args.batch_size, device=device,
                                     seed=args.seed, sampler=args.sampler, steps=args.steps, eta=args.eta,
                                     guidance_scale=args.guidance_scale, ema=not args.no_ema,
                                     optimize=args.optimize)
        except RuntimeError as exc:
            print(f"gencore eval: error: {exc}", file=sys.stderr)
            return 2
        fake_desc = f"{fake.shape[0]} samples of {args.checkpoint} ({_checkpoint_summary(args, config)})"
    results = evaluate(real, fake, device=device, batch_size=args.batch_size, splits=args.splits, k=args.k)
    counts = results["class_counts"]
    print(f"real       {real_desc}")
    print(f"generated  {fake_desc}")
    print(f"FID        {results['fid']:.4f}")
    print(f"IS         {results['inception_score']:.4f} ± {results['inception_score_std']:.4f}   "
          f"(real: {results['real_inception_score']:.4f}; {min(args.splits, fake.shape[0])} splits; at most "
          f"{len(counts)}, reached by legible digits of every class equally often; 1 for a single class)")
    print(f"classes    {results['classes_present']} of {len(counts)} present, "
          f"KL from uniform {results['class_kl_from_uniform']:.3f} nats; per digit 0-9: "
          f"{' '.join(str(c) for c in counts)}")
    print(f"confidence {results['confidence']:.4f}   (real: {results['real_confidence']:.4f}; mean max-softmax of the "
          f"MNIST classifier: legibility, blind to missing digits)")
    print(f"diversity  {results['diversity']:.4f}   (real: {results['real_diversity']:.4f})")
    print(f"precision  {results['precision']:.4f}   (k={args.k})")
    print(f"recall     {results['recall']:.4f}")
    warning = collapse_warning(results)
    if warning:
        print(f"gencore eval: warning: {warning}", file=sys.stderr)
    if args.json:
        results.update(real=real_desc, generated=fake_desc, warning=warning)
        tmp = f"{args.json}.tmp-{os.getpid()}"
        try:
            os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
            with open(tmp, "w") as f:
                json.dump(results, f, indent=2)
            os.replace(tmp, args.json)
        except OSError as exc:  # the folder checked at the start went away or filled up
            raise OutputPathError(f"--json {args.json}: cannot be written ({exc.strerror or exc})") from None
    return 0
