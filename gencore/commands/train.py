"""`gencore train KIND --data ... --out DIR` (arguments: gencore.cli): train a model, with sample grids, loss curves
and resumable checkpoints in DIR. Runs under `torchrun --nproc_per_node=K` as is (DDP)."""
from __future__ import annotations

import contextlib
import os

from .. import backends
from ..data import load_dataset
from ..training import TRAINERS, DDPMConfig, GANConfig, WGANGPConfig
from ..training.checkpoint import has_checkpoint, read_config
from ..training.options import CLI_UNET
from ..training.paths import check_output_folder
from ._device import resolve_device


def unet_options(args) -> dict:
    """The UNet's keyword arguments: the flags given, the rest from the run being resumed (so a run made with other
    defaults resumes as it was built) or else the command line's defaults (CLI_UNET)."""
    given = {name: getattr(args, name) for name in CLI_UNET if getattr(args, name) is not None}
    base = dict(CLI_UNET)
    if args.resume and has_checkpoint(args.out):
        stored = read_config(args.out).get("trainer", {}).get("unet")
        if isinstance(stored, dict):
            base.update({k: v for k, v in stored.items() if k in CLI_UNET})
    return {**base, **given}


def build(args):
    """(kind, config) from parsed arguments (also used by tests)."""
    device = str(resolve_device(args.device))
    common = dict(steps=args.steps, batch_size=args.batch_size, lr_schedule=args.lr_schedule,
                  lr_warmup_steps=args.lr_warmup_steps, seed=args.seed, device=device, amp=args.bf16,
                  grad_clip=args.grad_clip, sample_every=args.sample_every, checkpoint_every=args.checkpoint_every,
                  log_every=args.log_every, n_samples=args.n_samples, out_dir=args.out, progress=not args.no_progress)
    if args.lr is not None:
        common["lr"] = args.lr
    if args.ema is not None:
        common["ema_decay"] = args.ema or None
    if args.kind == "ddpm":
        unet = unet_options(args)
        unet["channel_mult"], unet["attention_levels"] = list(unet["channel_mult"]), list(unet["attention_levels"])
        return "ddpm", DDPMConfig(unet=unet, num_train_timesteps=args.timesteps, beta_schedule=args.beta_schedule,
                                  prediction_type=args.prediction_type, loss_type=args.loss_type,
                                  snr_gamma=args.snr_gamma, class_conditional=args.class_conditional,
                                  cfg_dropout=args.cfg_dropout, sample_steps=args.sample_steps, **common)
    gan = dict(latent_dim=args.latent_dim, features=args.features, extra_layers=args.extra_layers,
               r1_gamma=args.r1_gamma, spectral_norm=args.spectral_norm, discriminator=args.discriminator)
    if args.n_critic is not None:
        gan["n_critic"] = args.n_critic
    if args.kind == "wgan-gp":
        return "wgan-gp", WGANGPConfig(gp_lambda=args.gp_lambda, **gan, **common)
    return args.kind, GANConfig(loss=args.loss, conditional=args.kind == "cgan", **gan, **common)


def run(args) -> int:
    """The command, with --backend in force for it alone (main() may run in a process that goes on)."""
    with backends.use_backend(args.backend) if args.backend else contextlib.nullcontext():
        return _run(args)


def _run(args) -> int:
    # Everything that can be checked without the data or a model is checked first: a mistake costs no training.
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun only rank 0 writes
        check_output_folder(args.out, "--out")
    if args.resume and not has_checkpoint(args.out):
        raise FileNotFoundError(f"--resume: no checkpoint in {args.out} (latest.json missing)")
    if not args.resume and has_checkpoint(args.out):
        raise ValueError(f"{args.out} already holds a checkpoint: pass --resume to continue it, or another --out")
    kind, config = build(args)
    config.validate()
    data = load_dataset(args.data, root=args.mnist_root, image_size=args.image_size, channels=args.channels,
                        download=args.download)
    if args.limit:
        data = data.subset(args.limit)
    if args.epochs is not None:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        config.steps = max(1, args.epochs * (len(data) // world // config.batch_size))
    trainer = TRAINERS[kind][0](data, config)
    if args.resume:
        step = trainer.resume(args.out)
        if trainer.is_main:
            print(f"resumed {kind} from step {step} in {args.out}")
    trainer.train()
    if trainer.is_main:
        last = {k: v[-1] for k, v in trainer.history.items() if k != "step" and v}
        print(f"trained {kind} on {getattr(data, 'name', args.data)} for {trainer.step} steps: "
              + ", ".join(f"{k} {v:.4f}" for k, v in last.items()))
        print(f"checkpoint, samples/ and losses.png in {os.path.abspath(args.out)}")
    return 0
