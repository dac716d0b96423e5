"""`gencore train {ddpm,gan,wgan-gp,cgan} --data {mnist,digits,PATH} --out DIR`: train a model, with sample grids,
loss curves and resumable checkpoints in DIR. Runs under `torchrun --nproc_per_node=K` as is (DDP)."""
from __future__ import annotations

import os

from ._args import (HelpFormatter, int_at_least_2, int_list, non_negative_float, non_negative_int, positive_float,
                    positive_int, resolve_device)

KINDS = ("ddpm", "gan", "wgan-gp", "cgan")


def add_parser(sub, name):
    p = sub.add_parser(name, help="train a DDPM, DCGAN, WGAN-GP or conditional GAN",
                       description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("kind", choices=KINDS, help="what to train")
    p.add_argument("--data", default="digits",
                   help="'mnist' (first 8,000 images of the MNIST test file, see --mnist-dir), 'digits' "
                        "(scikit-learn's digits, offline) or a folder of images")
    p.add_argument("--mnist-dir", "--mnist-root", dest="mnist_root", metavar="DIR", default=None,
                   help="folder with the MNIST IDX files (default: $GENCORE_MNIST_DIR, else the download cache)")
    p.add_argument("--download", action="store_true", help="download MNIST (checksum-verified) if it is missing")
    p.add_argument("--image-size", type=positive_int, default=None,
                   help="side of a folder's or the digits' images (default 28; DCGAN models need 16, 28, 32 or 64)")
    p.add_argument("--channels", type=int, choices=(1, 3), default=None, help="channels of a folder's images")
    p.add_argument("--limit", type=positive_int, default=None, help="use only the first N images")
    p.add_argument("--out", required=True, help="run folder: checkpoints, samples/, losses.png")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    p.add_argument("--steps", type=positive_int, default=None, help="optimizer steps in total")
    p.add_argument("--epochs", type=positive_int, default=None,
                   help="alternative to --steps: passes over the data (converted to steps)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per step and process")
    p.add_argument("--lr", type=positive_float, default=None,
                   help="learning rate (default: 2e-4 for ddpm/gan/cgan, 1e-4 for wgan-gp)")
    p.add_argument("--lr-schedule", choices=("constant", "cosine", "linear"), default="constant",
                   help="after the warm-up, keep the learning rate or decay it to 0 at the last step (diffusers' "
                        "--lr_scheduler)")
    p.add_argument("--lr-warmup-steps", type=non_negative_int, default=0,
                   help="linear learning-rate warm-up over this many steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--backend", default=None, help="gencore backend for the fused ops (default: auto)")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast for forward passes")
    p.add_argument("--grad-clip", type=positive_float, default=None, help="clip gradient norms to this value")
    p.add_argument("--ema", type=float, default=None, metavar="DECAY",
                   help="EMA decay of the (generator) weights (default: 0.999 for ddpm, none for GANs; 0 disables)")
    p.add_argument("--sample-every", type=non_negative_int, default=500, help="steps between sample grids")
    p.add_argument("--checkpoint-every", type=non_negative_int, default=500, help="steps between checkpoints")
    p.add_argument("--n-samples", type=positive_int, default=64, help="images in each sample grid")
    p.add_argument("--log-every", type=positive_int, default=10, help="steps between loss-history entries")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("ddpm")
    g.add_argument("--base-channels", type=int_at_least_2, default=64)
    g.add_argument("--channel-mult", type=int_list, default=[1, 2, 2])
    g.add_argument("--num-res-blocks", type=positive_int, default=2)
    g.add_argument("--attention-levels", type=int_list, default=[1])
    g.add_argument("--norm-groups", type=positive_int, default=None,
                   help="GroupNorm groups (default: the largest count up to 32 that leaves >= 2 channels a group)")
    g.add_argument("--dropout", type=float, default=0.0)
    g.add_argument("--time-embedding-norm", choices=("default", "scale_shift"), default="default")
    g.add_argument("--timesteps", type=positive_int, default=1000, help="num_train_timesteps")
    g.add_argument("--beta-schedule", default="linear", help="linear, scaled_linear, squaredcos_cap_v2, sigmoid")
    g.add_argument("--prediction-type", choices=("epsilon", "sample", "v_prediction"), default="epsilon")
    g.add_argument("--loss-type", choices=("l2", "l1", "huber"), default="l2")
    g.add_argument("--snr-gamma", type=positive_float, default=None, help="min-SNR-gamma weighting (e.g. 5)")
    g.add_argument("--class-conditional", action="store_true", help="condition on labels (classifier-free guidance)")
    g.add_argument("--cfg-dropout", type=float, default=0.1, help="label dropout probability for guidance")
    g.add_argument("--sample-steps", type=positive_int, default=50, help="DDIM steps for the sample grids")
    g = p.add_argument_group("gan, wgan-gp, cgan")
    g.add_argument("--loss", choices=("bce", "non_saturating", "hinge"), default="bce", help="gan/cgan loss")
    g.add_argument("--latent-dim", type=positive_int, default=100)
    g.add_argument("--features", type=positive_int, default=64)
    g.add_argument("--extra-layers", type=non_negative_int, default=0,
                   help="stride-1 3x3 conv layers added at the generator's last and the discriminator's first "
                        "resolution (WGAN's DCGAN n_extra_layers)")
    g.add_argument("--n-critic", type=positive_int, default=None, help="critic steps per generator step "
                   "(default 5 for wgan-gp, 1 otherwise)")
    g.add_argument("--gp-lambda", type=positive_float, default=10.0)
    g.add_argument("--r1-gamma", type=non_negative_float, default=0.0,
                   help="gan/cgan: R1 penalty weight on the discriminator (StyleGAN's gamma; 0: off)")
    g.add_argument("--spectral-norm", action="store_true", help="spectral norm in the discriminator")
    g.add_argument("--discriminator", choices=("dcgan", "projection"), default="dcgan",
                   help="cgan discriminator: label channel (the tutorial's) or projection")
    return p


def build(args):
    """(trainer class, config) from parsed arguments (also used by tests)."""

    from ..training import DDPMConfig, GANConfig, WGANGPConfig

    device = str(resolve_device(args.device))
    common = dict(batch_size=args.batch_size, lr_schedule=args.lr_schedule, lr_warmup_steps=args.lr_warmup_steps,
                  seed=args.seed, device=device, amp=args.bf16,
                  grad_clip=args.grad_clip, sample_every=args.sample_every, checkpoint_every=args.checkpoint_every,
                  log_every=args.log_every, n_samples=args.n_samples, out_dir=args.out, progress=not args.no_progress)
    if args.lr is not None:
        common["lr"] = args.lr
    if args.ema is not None:
        common["ema_decay"] = args.ema or None
    if args.kind == "ddpm":
        unet = dict(base_channels=args.base_channels, channel_mult=args.channel_mult,
                    num_res_blocks=args.num_res_blocks, attention_levels=args.attention_levels,
                    norm_groups=args.norm_groups, dropout=args.dropout,
                    time_embedding_norm=args.time_embedding_norm)
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
    import contextlib

    from .. import backends

    with backends.use_backend(args.backend) if args.backend else contextlib.nullcontext():
        return _run(args)


def _run(args) -> int:
    from ..data import load_dataset
    from ..training import TRAINERS
    from ..training.checkpoint import has_checkpoint

    kind, config = build(args)
    data = load_dataset(args.data, root=args.mnist_root, image_size=args.image_size, channels=args.channels,
                        download=args.download)
    if args.limit:
        data = data.subset(args.limit)
    if args.epochs is not None:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        config.steps = max(1, args.epochs * (len(data) // world // config.batch_size))
    elif args.steps is not None:
        config.steps = args.steps
    if args.resume and not has_checkpoint(args.out):
        raise FileNotFoundError(f"--resume: no checkpoint in {args.out} (latest.json missing)")
    if not args.resume and has_checkpoint(args.out):
        raise ValueError(f"{args.out} already holds a checkpoint: pass --resume to continue it, or another --out")
    trainer_cls = TRAINERS[kind][0]
    trainer = trainer_cls(data, config)
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
