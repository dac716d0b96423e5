"""`gencore demo`: the first command to run. Offline, on CPU, in a few minutes: trains a small DDPM and a small DCGAN
on scikit-learn's handwritten digits with gencore's fused backend, samples the DDPM with DDIM, and writes sample
grids, the progressive-generation strip and loss curves; it also times the fused backend against the plain-PyTorch
reference on the same model in this run, and prints the ratio."""
from __future__ import annotations

import argparse
import os
import shutil
import time

# (quick, full) settings. The full demo is sized for ~3-5 minutes on 2 CPU cores; --quick is a smoke test.
SETTINGS = {
    "quick": dict(ddpm_steps=12, gan_steps=12, batch_size=32, unet=dict(base_channels=16, channel_mult=(1, 2),
                  num_res_blocks=1, attention_levels=(), norm_groups=8), gan_features=16, sample_steps=5,
                  n_samples=16, timing_steps=2, budget_s=15.0),
    "full": dict(ddpm_steps=1500, gan_steps=1500, batch_size=64, unet=dict(base_channels=32, channel_mult=(1, 2),
                 num_res_blocks=1, attention_levels=(1,), norm_groups=8), gan_features=32, sample_steps=50,
                 n_samples=64, timing_steps=5, budget_s=100.0),
}


def add_parser(sub, name):
    p = sub.add_parser(name, help="train a small DDPM and GAN on embedded digits, write pictures (start here)",
                       description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a much smaller run (seconds): checks that everything works")
    p.add_argument("--out", default="gencore-demo", help="folder for the pictures and checkpoints")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds of training per model at most (default: 100, or 20 with --quick)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    return p


def _time_ddpm_steps(trainer_factory, backend: str, steps: int) -> float:
    """Seconds per DDPM training step on `backend` (after one warm-up step), with a fresh identical trainer."""
    from .. import backends

    with backends.use_backend(backend):
        trainer = trainer_factory()
        trainer.train_step(0)
        t0 = time.perf_counter()
        for i in range(steps):
            trainer.train_step(i + 1)
        return (time.perf_counter() - t0) / steps


def run(args) -> int:
    import torch

    from .. import backends
    from ..data import load_digits
    from ..training import DDPMConfig, DDPMTrainer, GANConfig, GANTrainer
    from ..training.ddpm import diffusion_sample
    from ..training.images import save_progressive_strip

    s = SETTINGS["quick" if args.quick else "full"]
    budget = args.budget if args.budget is not None else s["budget_s"]
    out = args.out
    os.makedirs(out, exist_ok=True)
    from .. import _extension

    status = {st.name: st for st in backends.status()}
    reason = status["cpu"].reason
    if status["cpu"].available and not _extension.has_kernel("group_norm_silu_fwd", "CPU"):
        reason = "gencore._C has no CPU group_norm_silu kernel"
    fused = "cpu" if status["cpu"].available and reason == status["cpu"].reason else None
    if fused is None:
        print(f"note: the fused cpu backend is unavailable ({reason}); using the reference backend")
    # "auto" runs every op on its fastest backend here: the cpu kernels where an op has one, else the reference.
    backend = "auto" if fused else "reference"
    data = load_digits()
    print(f"data: {len(data)} digits (scikit-learn, upsampled to 28x28); backend: {fused or 'reference'}; "
          f"{torch.get_num_threads()} CPU threads")

    def ddpm_config(run_dir, steps):
        return DDPMConfig(steps=steps, batch_size=s["batch_size"], unet=dict(s["unet"]), seed=args.seed,
                          sample_steps=s["sample_steps"], n_samples=s["n_samples"], out_dir=run_dir,
                          sample_every=0, checkpoint_every=0, log_every=max(1, steps // 100),
                          progress=not args.no_progress, lr=1e-3 if not args.quick else 2e-4, ema_decay=0.995)

    # 1. Fused vs reference: the same DDPM training step, timed on both backends in this run.
    speedup = None
    if fused:
        factory = lambda: DDPMTrainer(data, ddpm_config(None, 1))  # noqa: E731
        t_ref = _time_ddpm_steps(factory, "reference", s["timing_steps"])
        t_fused = _time_ddpm_steps(factory, backend, s["timing_steps"])
        speedup = t_ref / t_fused
        print(f"DDPM training step (batch {s['batch_size']}): reference {t_ref * 1e3:.0f} ms, "
              f"fused {t_fused * 1e3:.0f} ms -> {speedup:.2f}x")

    results = {}
    with backends.use_backend(backend):
        # 2. DDPM, within the time budget.
        ddpm_dir = os.path.join(out, "ddpm")
        trainer = DDPMTrainer(data, ddpm_config(ddpm_dir, s["ddpm_steps"]))
        _train_within(trainer, s["ddpm_steps"], budget)
        results["ddpm_losses"] = os.path.join(ddpm_dir, "losses.png")
        gen = torch.Generator().manual_seed(args.seed)
        t0 = time.perf_counter()
        model = trainer.sample_model().eval()
        config = {"scheduler": dict(trainer.scheduler.config), "data": {"image_shape": [1, 28, 28]}}
        with torch.no_grad():
            final, inter = diffusion_sample(model, config, 8, sampler="ddim", steps=s["sample_steps"],
                                            generator=gen, return_intermediates=max(1, s["sample_steps"] // 10))
        t_sample = time.perf_counter() - t0
        results["ddpm_samples"] = shutil.copyfile(trainer.last_grid, os.path.join(out, "ddpm_samples.png"))
        results["ddpm_progressive"] = save_progressive_strip(list(inter),
                                                             os.path.join(out, "ddpm_progressive.png"))

        # 3. DCGAN at 28x28 (the tutorial's losses), within the time budget.
        gan_dir = os.path.join(out, "gan")
        gan = GANTrainer(data, GANConfig(steps=s["gan_steps"], batch_size=s["batch_size"], features=s["gan_features"],
                                         seed=args.seed, n_samples=s["n_samples"], out_dir=gan_dir, sample_every=0,
                                         checkpoint_every=0, log_every=max(1, s["gan_steps"] // 100),
                                         progress=not args.no_progress, ema_decay=0.99))
        _train_within(gan, s["gan_steps"], budget)
        results["gan_losses"] = os.path.join(gan_dir, "losses.png")
        with torch.no_grad():
            results["gan_samples"] = shutil.copyfile(gan.last_grid, os.path.join(out, "gan_samples.png"))

    print(f"DDPM: {trainer.step} steps in {trainer.elapsed:.0f}s, final loss {trainer.history['loss'][-1]:.4f}; "
          f"DDIM {s['sample_steps']} steps for 8 images in {t_sample:.1f}s")
    print(f"GAN:  {gan.step} steps in {gan.elapsed:.0f}s, d_loss {gan.history['d_loss'][-1]:.3f}, "
          f"g_loss {gan.history['g_loss'][-1]:.3f}")
    print("wrote:")
    for k, v in results.items():
        print(f"  {k:<17} {os.path.abspath(v)}")
    print(f"  checkpoints       {os.path.abspath(ddpm_dir)}, {os.path.abspath(gan_dir)}")
    print(f"more samples: gencore sample --checkpoint {ddpm_dir} --out more.png --progressive")
    if speedup is not None:
        print(f"fused backend ({fused}) vs reference on this run: {speedup:.2f}x faster per DDPM training step")
    return 0


def _train_within(trainer, steps: int, budget_s: float) -> None:
    """Train up to `steps`, stopping early (with a note) once `budget_s` seconds have passed."""
    trainer.train(steps, time_budget=budget_s)
    if trainer.stopped_early:
        print(f"{trainer.kind}: time budget of {budget_s:.0f}s reached at step {trainer.step} of {steps}")
