"""`gencore demo` (arguments and settings: gencore.cli): trains a class-conditional DDPM and a conditional DCGAN on
scikit-learn's digits, writes sample grids, the progressive-generation strip and loss curves, and measures sample
quality and the fused backend's speed-up; see gencore.cli.DEMO_DESCRIPTION."""
from __future__ import annotations

import os
import statistics
import time

import torch

from .. import _extension, backends
from ..cli import DEMO_SETTINGS
from ..data import load_digits
from ..metrics.classifier import train_classifier
from ..training import DDPMConfig, DDPMTrainer, GANConfig, GANTrainer
from ..training.ddpm import diffusion_sample, progressive_labels
from ..training.images import save_grid, save_progressive_strip
from ..training.paths import check_output_folder

TRAIN_IMAGES = 1500      # the generative models and the judging classifier learn from these digits ...
GUIDANCE_SCALE = 2.0     # classifier-free guidance of the DDPM samples
CONFIDENT = 0.9          # a sample counts as read when the classifier gives the asked digit this probability


def _time_interleaved(factories: dict, steps: int) -> dict[str, float]:
    """Median seconds per DDPM training step of each backend, from fresh identical trainers whose steps alternate
    (A, B, A, B, ...), so that a change in the machine's load hits both alike. One warm-up step each first."""
    trainers, times = {}, {name: [] for name in factories}
    for name, factory in factories.items():
        with backends.use_backend(name):
            trainers[name] = factory()
            trainers[name].train_step(0)
    for i in range(steps):
        for name, trainer in trainers.items():
            with backends.use_backend(name):
                t0 = time.perf_counter()
                trainer.train_step(i + 1)
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def _read_share(classifier, images, labels) -> tuple[float, float, list[int]]:
    """(share of images read as their label with probability >= CONFIDENT, mean probability of the label,
    images per predicted digit)."""
    with torch.no_grad():
        probs = torch.softmax(classifier(images.float().clamp(-1, 1)), dim=1)
    p = probs[torch.arange(len(labels)), labels]
    counts = torch.bincount(probs.argmax(dim=1), minlength=10).tolist()
    return (p >= CONFIDENT).double().mean().item(), p.double().mean().item(), counts


def run(args) -> int:
    t_start = time.perf_counter()
    out = args.out
    check_output_folder(out, "--out")  # before minutes of training
    s = dict(DEMO_SETTINGS["quick" if args.quick else "full"])
    s["ddpm_steps"] = args.ddpm_steps or s["ddpm_steps"]
    s["gan_steps"] = args.gan_steps or s["gan_steps"]
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(args.seed)

    status = {st.name: st for st in backends.status()}
    reason = status["cpu"].reason
    if status["cpu"].available and not _extension.has_kernel("group_norm_silu_fwd", "CPU"):
        reason = "gencore._C has no CPU group_norm_silu kernel"
    fused = "cpu" if status["cpu"].available and reason == status["cpu"].reason else None
    if fused is None:
        print(f"note: the fused cpu backend is unavailable ({reason}); using the reference backend")
    # "auto" runs every op on its fastest backend here: the cpu kernels where an op has one, else the reference.
    backend = "auto" if fused else "reference"
    digits = load_digits(image_size=s["image_size"])
    train = digits.subset(TRAIN_IMAGES)
    held_images, held_labels = digits.images[TRAIN_IMAGES:], digits.labels[TRAIN_IMAGES:]
    side = s["image_size"]
    print(f"data: {len(digits)} scikit-learn digits at {side}x{side}: {len(train)} to train on, "
          f"{len(held_images)} held out; backend: {fused or 'reference'}; {torch.get_num_threads()} CPU threads")

    def ddpm_config(run_dir, steps):
        return DDPMConfig(steps=steps, batch_size=s["batch_size"], unet=dict(s["unet"]), seed=args.seed,
                          class_conditional=True, cfg_dropout=0.1, snr_gamma=5.0, lr=2e-3, lr_schedule="cosine",
                          lr_warmup_steps=min(50, steps // 10), grad_clip=1.0, ema_decay=0.995,
                          sample_steps=s["sample_steps"], n_samples=60, out_dir=run_dir, sample_every=0,
                          checkpoint_every=0, log_every=max(1, steps // 100), progress=not args.no_progress)

    # 1. Fused vs reference: the same DDPM training step, interleaved, on both backends in this run.
    speedup = None
    if fused:
        factory = lambda: DDPMTrainer(train, ddpm_config(None, s["ddpm_steps"]))  # noqa: E731
        t = _time_interleaved({"reference": factory, backend: factory}, s["timing_steps"])
        t_ref, t_fused = t["reference"], t[backend]
        speedup = t_ref / t_fused
        print(f"speed: one DDPM training step (batch {s['batch_size']}, {side}x{side} UNet: forward, backward, "
              f"AdamW), median of {s['timing_steps']} interleaved steps per backend: reference "
              f"{t_ref * 1e3:.0f} ms, fused {t_fused * 1e3:.0f} ms -> {speedup:.2f}x")

    results = {}
    with backends.use_backend(backend):
        # 2. Class-conditional DDPM; samples with guided DDIM.
        ddpm_dir = os.path.join(out, "ddpm")
        trainer = DDPMTrainer(train, ddpm_config(ddpm_dir, s["ddpm_steps"]))
        trainer.train()
        results["ddpm_losses"] = os.path.join(ddpm_dir, "losses.png")
        model = trainer.sample_model().eval()
        config = {"scheduler": dict(trainer.scheduler.config), "data": {"image_shape": [1, side, side]}}
        gen = torch.Generator().manual_seed(args.seed)
        t0 = time.perf_counter()
        asked = torch.arange(s["n_quality"]) % 10
        with torch.no_grad():
            ddpm_images = diffusion_sample(model, config, s["n_quality"], sampler="ddim", steps=s["sample_steps"],
                                           generator=gen, class_labels=asked, guidance_scale=GUIDANCE_SCALE)
        t_sample = time.perf_counter() - t0
        results["ddpm_samples"] = save_grid(ddpm_images[:60], os.path.join(out, "ddpm_samples.png"), nrow=10,
                                            scale=4)
        every = max(1, s["sample_steps"] // 10)
        with torch.no_grad():
            _, inter = diffusion_sample(model, config, 10, sampler="ddim", steps=s["sample_steps"],
                                        generator=torch.Generator().manual_seed(args.seed),
                                        class_labels=torch.arange(10), guidance_scale=GUIDANCE_SCALE,
                                        return_intermediates=every)
        results["ddpm_progressive"] = save_progressive_strip(
            list(inter), os.path.join(out, "ddpm_progressive.png"), scale=4,
            column_labels=progressive_labels(config, "ddim", s["sample_steps"], every))

        # 3. Conditional DCGAN (the tutorial's BCE losses, labels as an input channel).
        gan_dir = os.path.join(out, "gan")
        gan = GANTrainer(train, GANConfig(steps=s["gan_steps"], batch_size=s["batch_size"], conditional=True,
                                          features=s["gan_features"], seed=args.seed, n_samples=60,
                                          out_dir=gan_dir, sample_every=0, checkpoint_every=0,
                                          log_every=max(1, s["gan_steps"] // 100), progress=not args.no_progress,
                                          ema_decay=0.99))
        gan.train()
        results["gan_losses"] = os.path.join(gan_dir, "losses.png")
        gan_images = gan.sample_images(s["n_quality"], torch.Generator().manual_seed(args.seed), class_labels=asked)
        results["gan_samples"] = save_grid(gan_images[:60], os.path.join(out, "gan_samples.png"), nrow=10, scale=4)

    # 4. Quality: a classifier fitted to the training digits reads the samples and the held-out real digits.
    classifier = train_classifier(train.images, train.labels, epochs=s["classifier_epochs"], seed=args.seed)
    real_share, real_p, _ = _read_share(classifier, held_images, held_labels)
    accuracy = (classifier(held_images).argmax(1) == held_labels).double().mean().item()
    ddpm_share, ddpm_p, ddpm_counts = _read_share(classifier, ddpm_images, asked)
    gan_share, gan_p, gan_counts = _read_share(classifier, gan_images, asked)

    print(f"DDPM: {trainer.step} steps in {trainer.elapsed:.0f}s, final loss {trainer.history['loss'][-1]:.4f}; "
          f"guided DDIM ({s['sample_steps']} steps, w={GUIDANCE_SCALE:g}) drew {s['n_quality']} digits in "
          f"{t_sample:.1f}s")
    print(f"GAN:  {gan.step} steps in {gan.elapsed:.0f}s, d_loss {gan.history['d_loss'][-1]:.3f}, "
          f"g_loss {gan.history['g_loss'][-1]:.3f}")
    print(f"quality: a classifier trained on the {len(train)} training digits ({accuracy:.1%} right on the "
          f"{len(held_images)} held out) reads the asked digit with probability >= {CONFIDENT:g} in")
    print(f"  {real_share:6.1%}  of the held-out real digits      (mean probability {real_p:.3f})")
    print(f"  {ddpm_share:6.1%}  of {s['n_quality']} DDPM samples            (mean probability {ddpm_p:.3f}; "
          f"read as 0-9: {' '.join(map(str, ddpm_counts))})")
    print(f"  {gan_share:6.1%}  of {s['n_quality']} GAN samples             (mean probability {gan_p:.3f}; "
          f"read as 0-9: {' '.join(map(str, gan_counts))})")
    print("wrote:")
    for k, v in results.items():
        print(f"  {k:<17} {os.path.abspath(v)}")
    print(f"  checkpoints       {os.path.abspath(ddpm_dir)}, {os.path.abspath(gan_dir)}")
    print(f"more samples: gencore sample --checkpoint {ddpm_dir} --out more.png --progressive --guidance-scale 2")
    if speedup is not None:
        print(f"fused backend ({fused}) vs reference on this run: {speedup:.2f}x faster per DDPM training step")
    print(f"demo finished in {time.perf_counter() - t_start:.0f}s")
    return 0
