"""The `gencore` command.

This module holds every subcommand's arguments and the error policy, and imports neither torch nor the rest of
gencore (only the plain-data gencore.training.options and the argparse helpers), so that `gencore --help` and
`gencore COMMAND --help` answer at once. What a command does lives in gencore/commands/<module>.py as
`run(args) -> int`, imported only when that command runs.
"""
from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys

from .commands._args import (HelpFormatter, ema_decay, int_at_least_2, int_list, non_negative_float,
                             non_negative_int, positive_float, positive_int)
from .training.options import (CLI_UNET, DDPM_LOSS_TYPES, DEFAULT_STEPS, DISCRIMINATORS, GAN_LOSSES, KINDS,
                               LR_SCHEDULES, SAMPLERS, STUDENT_CALLS, STUDENT_TEACHER_SAMPLERS)

# `gencore demo`: (quick, full) settings. The full demo takes ~5 minutes on a quiet 2-core machine; --quick is a
# smoke test. Plain data, read by the parser (its help states the step counts) and by gencore.commands.demo.
DEMO_SETTINGS = {
    "quick": dict(image_size=16, ddpm_steps=12, gan_steps=12, batch_size=32,
                  unet=dict(base_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_levels=()),
                  gan_features=16, sample_steps=5, n_quality=40, timing_steps=2, classifier_epochs=2),
    "full": dict(image_size=16, ddpm_steps=800, gan_steps=1500, batch_size=64,
                 unet=dict(base_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1, attention_levels=()),
                 gan_features=32, sample_steps=50, n_quality=200, timing_steps=10, classifier_epochs=12),
}

# What `gencore sample --out` writes: a PNG grid or the images as one tensor.
SAMPLE_SUFFIXES = (".png", ".safetensors")

# The commands' descriptions, printed as written by `gencore COMMAND --help`.
DEMO_DESCRIPTION = """\
`gencore demo`: the first command to run. Offline, on CPU, in about five minutes on 2 cores: trains a
class-conditional DDPM and a conditional DCGAN on scikit-learn's handwritten digits (16x16) with gencore's fused
backend, samples the DDPM with guided DDIM, and writes sample grids (one column per digit), the labelled
progressive-generation strip and loss curves. It measures how good the samples are (a classifier trained on real
digits reads them, beside its reading of real digits it never saw) and how much faster the fused backend runs the
same DDPM training step than the plain-PyTorch reference.

The budget is a number of steps, so a slow or busy machine takes longer but draws the same pictures for the same
seed."""

TRAIN_DESCRIPTION = """\
`gencore train {ddpm,gan,wgan-gp,cgan} --data {mnist,digits,PATH} --out DIR`: train a model, with sample grids,
loss curves and resumable checkpoints in DIR. Ctrl-C (or SIGTERM) lets the step under way finish and writes a
checkpoint of it (press again to stop at once, without one). Runs under `torchrun --nproc_per_node=K` as is (DDP)."""

SAMPLE_DESCRIPTION = """\
`gencore sample --checkpoint DIR --out FILE`: images from a trained checkpoint (DDIM, DPM-Solver++ or DDPM for
diffusion checkpoints, the generator for GAN ones), as a PNG grid (FILE.png) or as a tensor file (FILE.safetensors:
one float32 tensor "images" (N, C, H, W) in [-1, 1], what `gencore eval --fake` reads), optionally the
progressive-generation strip."""

EVAL_DESCRIPTION = """\
`gencore eval`: FID, Inception Score, class coverage, confidence, diversity, precision and recall of generated
digits.

    gencore eval --fake samples.safetensors                 # against the held-out 2,000 MNIST images
    gencore eval --real mnist --fake out/samples/           # a folder of 28x28 images
    gencore eval --checkpoint runs/ddpm --n 10000           # sample from a trained model first

Features and class probabilities come from the MNIST classifier that ships with gencore (gencore.metrics), so the
numbers are comparable across gencore runs (not with InceptionV3-based numbers in papers). The Inception Score on
this classifier (at most 10) and the class counts tell a model that draws every digit from one that draws a single
digit well (mode collapse): the confidence alone does not."""

DISTILL_DESCRIPTION = """\
`gencore distill --teacher DIR --out DIR --calls K`: train a student of a trained DDPM checkpoint that draws a
picture in K model calls (1, 2, 4 or 8) instead of 20-50. The teacher first draws a pool of ODE trajectories
(DDIM 64 steps by default; written once to DIR/trajectories.safetensors), then the student, started from
the teacher's weights, learns to land each of its K DDIM steps where the teacher did. The student's checkpoint is
an ordinary one: `gencore sample` and `gencore eval` sample it in its K calls. For a class-conditional teacher,
--guidance-scale is folded into the student. Ctrl-C writes a checkpoint; --resume continues. Runs under torchrun."""

_STEPS_HELP = ", ".join(f"{n} for {s}" for s, n in DEFAULT_STEPS.items())


def _sample_out(text: str) -> str:
    if not text.lower().endswith(SAMPLE_SUFFIXES):
        raise argparse.ArgumentTypeError(f"must end in {' or '.join(SAMPLE_SUFFIXES)} (a grid or a tensor file), "
                                         f"got {text!r}")
    return text


def _sampler_arguments(p: argparse.ArgumentParser, *, for_checkpoint: str = "") -> None:
    """--sampler, --steps, --eta, --guidance-scale and --no-ema: how `sample` and `eval --checkpoint` draw images."""
    p.add_argument("--sampler", choices=SAMPLERS, default=None,
                   help=f"diffusion sampler{for_checkpoint}: ddim, dpm++ (DPM-Solver++: as good in 20 steps as ddim "
                        f"in 50), ddpm (default: ddim; a distilled student's own)")
    p.add_argument("--steps", type=positive_int, default=None,
                   help=f"diffusion sampling steps{for_checkpoint} (default: {_STEPS_HELP}; a distilled student's "
                        f"number of calls)")
    p.add_argument("--eta", type=non_negative_float, default=0.0,
                   help=f"DDIM eta{for_checkpoint} (0 deterministic, 1 DDPM-like)")
    p.add_argument("--guidance-scale", type=non_negative_float, default=1.0,
                   help=f"classifier-free guidance scale{for_checkpoint} (class-conditional DDPM; 1: none)")
    p.add_argument("--no-ema", action="store_true", help="sample the raw weights even where an EMA was kept")
    p.add_argument("--optimize", action="store_true",
                   help="compile the model with gencore.optimize first: tens of seconds once, then faster calls")


def _run_output_arguments(p: argparse.ArgumentParser) -> None:
    """What a training run writes and shows: `train`'s and `distill`'s options alike."""
    p.add_argument("--sample-every", type=non_negative_int, default=500,
                   help="steps between sample grids (0: only at the end)")
    p.add_argument("--checkpoint-every", type=non_negative_int, default=500,
                   help="steps between checkpoints (0: only at the end and on Ctrl-C)")
    p.add_argument("--n-samples", type=positive_int, default=64, help="images in each sample grid")
    p.add_argument("--log-every", type=positive_int, default=10, help="steps between loss-history entries")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_demo(sub) -> argparse.ArgumentParser:
    quick, full = DEMO_SETTINGS["quick"], DEMO_SETTINGS["full"]
    p = sub.add_parser("demo", help="train a small DDPM and GAN on embedded digits, write pictures (start here)",
                       description=DEMO_DESCRIPTION,
                       formatter_class=HelpFormatter)
    p.add_argument("--quick", action="store_true", help="a much smaller run (seconds): checks that everything works")
    p.add_argument("--out", default="gencore-demo", help="folder for the pictures and checkpoints")
    p.add_argument("--ddpm-steps", type=positive_int, default=None,
                   help=f"DDPM training steps (default: {full['ddpm_steps']}, or {quick['ddpm_steps']} with --quick)")
    p.add_argument("--gan-steps", type=positive_int, default=None,
                   help=f"GAN training steps (default: {full['gan_steps']}, or {quick['gan_steps']} with --quick)")
    p.add_argument("--seed", type=int, default=0, help="seed of everything")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _add_train(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("train", help="train a DDPM, DCGAN, WGAN-GP or conditional GAN", description=TRAIN_DESCRIPTION,
                       formatter_class=HelpFormatter)
    p.add_argument("kind", choices=KINDS, help="what to train")
    p.add_argument("--data", default="digits",
                   help="'mnist' (first 8,000 images of the MNIST test file, see --mnist-dir), 'digits' "
                        "(scikit-learn's digits, offline) or a folder of images")
    p.add_argument("--mnist-dir", "--mnist-root", dest="mnist_root", metavar="DIR", default=None,
                   help="folder with the MNIST IDX files (default: $GENCORE_MNIST_DIR, else the download cache)")
    p.add_argument("--download", action="store_true", help="download MNIST (checksum-verified) if it is missing")
    p.add_argument("--image-size", type=positive_int, default=None,
                   help="side of a folder's or the digits' images (default: 28; DCGAN models need 16, 28, 32 or 64)")
    p.add_argument("--channels", type=int, choices=(1, 3), default=None,
                   help="channels of a folder's images (default: 1)")
    p.add_argument("--limit", type=positive_int, default=None, help="use only the first N images (default: all)")
    p.add_argument("--out", required=True, help="run folder: checkpoints, samples/, losses.png")
    p.add_argument("--resume", action="store_true",
                   help="continue from the latest checkpoint in --out (the UNet options not given are the run's)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=positive_int, default=1000, help="optimizer steps in total")
    length.add_argument("--epochs", type=positive_int, default=None,
                        help="instead of --steps: passes over the data, converted to steps (default: none, --steps "
                             "counts)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per step and process")
    p.add_argument("--lr", type=positive_float, default=None,
                   help="learning rate (default: 2e-4 for ddpm/gan/cgan, 1e-4 for wgan-gp)")
    p.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="constant",
                   help="after the warm-up, keep the learning rate or decay it to 0 at the last step (diffusers' "
                        "--lr_scheduler)")
    p.add_argument("--lr-warmup-steps", type=non_negative_int, default=0,
                   help="linear learning-rate warm-up over this many steps")
    p.add_argument("--seed", type=int, default=0, help="seed of the model, the data order and the noise")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--backend", default=None, help="gencore backend for the fused ops (default: auto)")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast for forward passes")
    p.add_argument("--grad-clip", type=positive_float, default=None,
                   help="clip gradient norms to this value (default: no clipping)")
    p.add_argument("--ema", type=ema_decay, default=None, metavar="DECAY",
                   help="EMA decay of the (generator) weights (default: 0.999 for ddpm, none for GANs; 0 disables)")
    _run_output_arguments(p)

    g = p.add_argument_group("ddpm", "The UNet's defaults are the MNIST recipes' (docs/results.md), a 1M-parameter "
                                     "model that trains on a CPU; --resume takes the UNet options not given from the "
                                     "run.")
    unet = CLI_UNET
    g.add_argument("--base-channels", type=int_at_least_2, default=None,
                   help=f"channels of the first level (default: {unet['base_channels']})")
    g.add_argument("--channel-mult", type=int_list, default=None,
                   help=f"channel multiplier of each level (default: {','.join(map(str, unet['channel_mult']))})")
    g.add_argument("--num-res-blocks", type=positive_int, default=None,
                   help=f"residual blocks per level (default: {unet['num_res_blocks']})")
    g.add_argument("--attention-levels", type=int_list, default=None,
                   help="levels with self-attention, e.g. 1 (default: "
                        f"{','.join(map(str, unet['attention_levels'])) or 'none'})")
    g.add_argument("--norm-groups", type=positive_int, default=None,
                   help=f"GroupNorm groups; must divide every level's channels (default: {unet['norm_groups']})")
    g.add_argument("--dropout", type=float, default=None, help=f"dropout in the residual blocks "
                                                               f"(default: {unet['dropout']})")
    g.add_argument("--time-embedding-norm", choices=("default", "scale_shift"), default=None,
                   help=f"how the time embedding enters a block (default: {unet['time_embedding_norm']})")
    g.add_argument("--timesteps", type=positive_int, default=1000, help="num_train_timesteps")
    g.add_argument("--beta-schedule", default="linear", help="linear, scaled_linear, squaredcos_cap_v2, sigmoid")
    g.add_argument("--prediction-type", choices=("epsilon", "sample", "v_prediction"), default="epsilon",
                   help="what the UNet predicts")
    g.add_argument("--loss-type", choices=DDPM_LOSS_TYPES, default="l2", help="training loss")
    g.add_argument("--snr-gamma", type=positive_float, default=None,
                   help="min-SNR-gamma loss weighting, e.g. 5 (default: off, uniform weighting)")
    g.add_argument("--class-conditional", action="store_true", help="condition on labels (classifier-free guidance)")
    g.add_argument("--cfg-dropout", type=float, default=0.1, help="label dropout probability for guidance")
    g.add_argument("--sample-steps", type=positive_int, default=50, help="DDIM steps for the sample grids")

    g = p.add_argument_group("gan, wgan-gp, cgan")
    g.add_argument("--loss", choices=GAN_LOSSES, default="bce", help="gan/cgan loss")
    g.add_argument("--latent-dim", type=positive_int, default=100, help="size of the generator's input z")
    g.add_argument("--features", type=positive_int, default=64, help="feature maps of both networks")
    g.add_argument("--extra-layers", type=non_negative_int, default=0,
                   help="stride-1 3x3 conv layers added at the generator's last and the discriminator's first "
                        "resolution (WGAN's DCGAN n_extra_layers)")
    g.add_argument("--n-critic", type=positive_int, default=None, help="critic steps per generator step "
                   "(default: 5 for wgan-gp, 1 otherwise)")
    g.add_argument("--gp-lambda", type=positive_float, default=10.0, help="wgan-gp: gradient-penalty weight")
    g.add_argument("--r1-gamma", type=non_negative_float, default=0.0,
                   help="gan/cgan: R1 penalty weight on the discriminator (StyleGAN's gamma; 0: off)")
    g.add_argument("--spectral-norm", action="store_true", help="spectral norm in the discriminator")
    g.add_argument("--discriminator", choices=DISCRIMINATORS, default="dcgan",
                   help="cgan discriminator: label channel (the tutorial's) or projection")
    return p


def _add_distill(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("distill", help="distil a DDPM checkpoint into a student that samples in 1-8 model calls",
                       description=DISTILL_DESCRIPTION, formatter_class=HelpFormatter)
    p.add_argument("--teacher", required=True, help="the teacher: a DDPM run folder or one of its checkpoint folders")
    p.add_argument("--out", required=True, help="run folder of the student: checkpoints, samples/, losses.png")
    p.add_argument("--calls", type=int, choices=STUDENT_CALLS, default=4, help="the student's model calls per picture")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    p.add_argument("--steps", type=positive_int, default=2000, help="optimizer steps in total")
    p.add_argument("--batch-size", type=positive_int, default=64, help="trajectories per step and process")
    p.add_argument("--lr", type=positive_float, default=1e-4, help="learning rate")
    p.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="constant",
                   help="after the warm-up, keep the learning rate or decay it to 0 at the last step")
    p.add_argument("--lr-warmup-steps", type=non_negative_int, default=0,
                   help="linear learning-rate warm-up over this many steps")
    p.add_argument("--ema", type=ema_decay, default=0.999, metavar="DECAY",
                   help="EMA decay of the weights (0 disables)")
    p.add_argument("--pool", type=positive_int, default=2048,
                   help="teacher trajectories to learn from (each costs --teacher-steps teacher calls, once)")
    p.add_argument("--teacher-sampler", choices=STUDENT_TEACHER_SAMPLERS, default="ddim",
                   help="the ODE solver of the teacher's trajectories (DDIM clips x0 as the teacher's config says)")
    p.add_argument("--teacher-steps", type=positive_int, default=64,
                   help="its steps; a multiple of --calls")
    p.add_argument("--guidance-scale", type=non_negative_float, default=1.0,
                   help="classifier-free guidance of a class-conditional teacher, folded into the student (1: none)")
    p.add_argument("--seed", type=int, default=0, help="seed of the pool's noise, the data order and the segments")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--backend", default=None, help="gencore backend for the fused ops (default: auto)")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast for the student's forward passes")
    p.add_argument("--grad-clip", type=positive_float, default=1.0, help="clip gradient norms to this value")
    _run_output_arguments(p)
    return p


def _add_sample(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("sample", help="sample images from a trained checkpoint", description=SAMPLE_DESCRIPTION,
                       formatter_class=HelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a run's --out folder or one of its checkpoint-* folders")
    p.add_argument("--out", type=_sample_out, default="samples.png",
                   help="FILE.png for a grid of the images, FILE.safetensors for the images as a tensor")
    p.add_argument("--n", type=positive_int, default=64, help="number of images")
    _sampler_arguments(p)
    p.add_argument("--class", dest="class_label", type=non_negative_int, default=None,
                   help="sample only this class of a conditional model (default: all classes in turn)")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise")
    p.add_argument("--batch-size", type=positive_int, default=256, help="images per sampling loop")
    p.add_argument("--device", default=None, help="cpu, cuda (default: cuda if available)")
    p.add_argument("--backend", default=None, help="gencore backend for the fused ops (default: auto)")
    p.add_argument("--progressive", action="store_true",
                   help="also write FILE-progressive.png: rows = samples, columns = denoising steps (diffusion)")
    return p


def _add_eval(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("eval", help="FID, Inception Score, class coverage, precision and recall of generated digits",
                       description=EVAL_DESCRIPTION, formatter_class=HelpFormatter)
    fake = p.add_mutually_exclusive_group(required=True)
    fake.add_argument("--fake", metavar="PATH",
                      help="generated images: a folder of 28x28 images, or a .safetensors / .npz / .npy tensor file "
                           "((N, 28, 28) or (N, 1, 28, 28); uint8 0..255 or float in [-1, 1])")
    fake.add_argument("--checkpoint", metavar="DIR", help="sample --n images from this trained model's checkpoint")
    p.add_argument("--real", metavar="PATH", default="mnist",
                   help="real images, as --fake, or 'mnist': the held-out last 2,000 MNIST test images")
    p.add_argument("--n", type=positive_int, default=10000, help="images to sample with --checkpoint")
    p.add_argument("--mnist-dir", metavar="DIR", default=None,
                   help="folder with the MNIST IDX files (default: $GENCORE_MNIST_DIR, else the download cache)")
    p.add_argument("--download", action="store_true", help="download MNIST (checksum-verified) if it is missing")
    p.add_argument("--device", default="auto", help="cpu, cuda, ... (auto: cuda if available)")
    p.add_argument("--batch-size", type=positive_int, default=500, help="images per classifier or sampler batch")
    p.add_argument("--seed", type=int, default=0, help="sampling seed for --checkpoint")
    _sampler_arguments(p, for_checkpoint=" for --checkpoint")
    p.add_argument("--splits", type=positive_int, default=10, help="Inception Score splits")
    p.add_argument("-k", "--k", type=positive_int, default=3, help="neighbours for precision/recall")
    p.add_argument("--json", metavar="FILE", help="also write the numbers to this JSON file (default: none)")
    return p


def _add_bench(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("bench", help="benchmark the fused ops against eager PyTorch, torch.compile and memcpy",
                       description="`gencore bench`: time every provider of the fused ops and print the markdown ratio "
                                   "table of that one run.", formatter_class=HelpFormatter)
    p.add_argument("--op", action="append", default=None,
                   help="op to benchmark, repeatable (default: every module of gencore/benchmarks)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="device of the tensors (default: cuda if a GPU is present, else cpu)")
    p.add_argument("--quick", action="store_true", help="small shapes only (a smoke test, not a measurement)")
    p.add_argument("--min-time", type=positive_float, default=0.5, help="seconds of timing per case")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="CPU threads for every provider, torch.set_num_threads (default: torch's choice)")
    return p


def _add_info(sub) -> argparse.ArgumentParser:
    return sub.add_parser("info", help="versions and which backends work here, and why not",
                          description="`gencore info`: versions, and each backend available or not, with the reason.")


# Subcommand -> (parser builder, module under gencore.commands that runs it), in the order --help lists them.
COMMANDS = {
    "demo": (_add_demo, "demo"),
    "train": (_add_train, "train"),
    "distill": (_add_distill, "distill"),
    "sample": (_add_sample, "sample"),
    "eval": (_add_eval, "evaluate"),
    "bench": (_add_bench, "bench"),
    "info": (_add_info, "info"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gencore", description="Fast GAN and diffusion training and sampling.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add, _ in COMMANDS.values():
        add(sub)
    return parser


def _one_line(exc: BaseException) -> str:
    """An exception as the one line the user reads: the message, or for an OSError the path and its reason."""
    if isinstance(exc, OSError) and exc.strerror and exc.filename:
        return f"{exc.filename}: {exc.strerror}"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        # Imported here, not at the top: this is where torch and the rest of gencore load (see the module doc).
        command = importlib.import_module(f"gencore.commands.{COMMANDS[args.command][1]}")
        return int(command.run(args) or 0)
    except KeyboardInterrupt as exc:
        # gencore.training.TrainingInterrupted: training stopped at a step boundary on SIGINT or SIGTERM and wrote
        # a checkpoint (rank 0; the other processes of a DDP run have none to report).
        signum = getattr(exc, "signum", signal.SIGINT)
        if getattr(exc, "checkpoint", None):
            resume = " (continue with --resume)" if args.command in ("train", "distill") else ""
            print(f"gencore {args.command}: stopped by {signal.Signals(signum).name} at step {exc.step}; "
                  f"checkpoint of that step: {exc.checkpoint}{resume}", file=sys.stderr)
        elif not hasattr(exc, "checkpoint"):
            print(f"gencore {args.command}: interrupted", file=sys.stderr)
        return 128 + signum
    except BrokenPipeError:  # the reader went away (`gencore info | head -1`): nothing to say, nowhere to say it
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nor at exit, when Python flushes stdout
        return 1
    except (OSError, ValueError) as exc:  # user errors (missing, unreadable, unwritable, bad values): one line
        print(f"gencore {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
