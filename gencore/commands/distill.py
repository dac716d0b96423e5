"""`gencore distill --teacher DIR --out DIR --calls K` (arguments: gencore.cli): train a K-call student of a DDPM
checkpoint (gencore.training.distillation)."""
from __future__ import annotations

import contextlib
import os

from .. import backends
from ..training.checkpoint import CheckpointError, has_checkpoint, resolve_checkpoint
from ..training.distillation import DistillConfig, DistillTrainer
from ..training.paths import check_output_folder
from ._device import resolve_device


def run(args) -> int:
    """The command, with --backend in force for it alone (main() may run in a process that goes on)."""
    with backends.use_backend(args.backend) if args.backend else contextlib.nullcontext():
        return _run(args)


def _run(args) -> int:
    # Everything that can be checked without the teacher is checked first: a mistake costs no trajectories.
    if int(os.environ.get("RANK", "0")) == 0:
        check_output_folder(args.out, "--out")
    try:  # a missing or incomplete teacher
        resolve_checkpoint(args.teacher)
    except (OSError, CheckpointError) as exc:
        raise type(exc)(f"--teacher: {exc}") from None
    if args.resume and not has_checkpoint(args.out):
        raise FileNotFoundError(f"--resume: no checkpoint in {args.out} (latest.json missing)")
    if not args.resume and has_checkpoint(args.out):
        raise ValueError(f"{args.out} already holds a checkpoint: pass --resume to continue it, or another --out")
    if args.teacher_steps % args.calls:
        raise ValueError(f"--teacher-steps must be a multiple of --calls ({args.calls}), got {args.teacher_steps}")
    config = DistillConfig(
        teacher=args.teacher, calls=args.calls, teacher_sampler=args.teacher_sampler, teacher_steps=args.teacher_steps,
        pool=args.pool, guidance_scale=args.guidance_scale, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
        lr_schedule=args.lr_schedule, lr_warmup_steps=args.lr_warmup_steps, seed=args.seed,
        device=str(resolve_device(args.device)), amp=args.bf16, grad_clip=args.grad_clip, ema_decay=args.ema or None,
        sample_every=args.sample_every, checkpoint_every=args.checkpoint_every, log_every=args.log_every,
        n_samples=args.n_samples, out_dir=args.out, progress=not args.no_progress)
    config.validate()
    trainer = DistillTrainer(config, resume_from=args.out if args.resume else None)
    if args.resume and trainer.is_main:
        print(f"resumed the {args.calls}-call student from step {trainer.step} in {args.out}")
    trainer.train()
    if trainer.is_main:
        print(f"distilled a {args.calls}-call student of {args.teacher} in {trainer.step} steps: loss "
              f"{trainer.history['loss'][-1]:.4f}")
        print(f"checkpoint, samples/ and losses.png in {os.path.abspath(args.out)}; sample it with "
              f"gencore sample --checkpoint {args.out}")
    return 0
