"""The training loop shared by every trainer: data order, RNG, EMA, mixed precision, gradient clipping, DDP, logging,
pictures and checkpoints. Subclasses (DDPMTrainer, GANTrainer, WGANGPTrainer) define the models and `train_step`.

Determinism and resume: the batches of step k are a pure function of (seed, k) (a DistributedSampler reshuffled per
epoch with set_epoch), the per-step randomness (noise, timesteps, latents, dropout) comes from the global torch RNG
whose state is saved in every checkpoint (one per process under DDP), and sample grids use their own fixed
generator. So a run resumed from the checkpoint at step k reaches exactly the state of an uninterrupted run.
"""
from __future__ import annotations

import dataclasses
import math
import os
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DistributedSampler
from tqdm.auto import tqdm

from ..models import describe, unwrap
from . import checkpoint as ckpt
from .images import plot_losses, save_grid
from .options import LR_SCHEDULES
from .paths import check_output_folder


def lr_factor(step: int, total: int, schedule: str, warmup: int) -> float:
    """The multiplier of the base learning rate at optimizer step `step` (0-based) of `total`."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / (total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress)) if schedule == "cosine" else 1.0 - progress


@dataclass
class TrainConfig:
    """Options every trainer shares.

    Parameters:
        steps: optimizer steps to train in total (a resumed run continues up to this number).
        batch_size: images per step and per process (under DDP the global batch is batch_size * world size).
        lr: learning rate (None: the trainer's default).
        lr_schedule: "constant" (default), "cosine" or "linear": after the warm-up, the learning rate decays from
            lr to 0 at `steps` (diffusers' training scripts' --lr_scheduler). A pure function of the step, so a
            resumed run continues on the same curve.
        lr_warmup_steps: linear warm-up from lr / lr_warmup_steps to lr over this many steps (0: none).
        seed: seeds model initialisation, data order and noise (the trainer re-seeds the global torch, random and
            numpy RNGs of the process from it: the per-step randomness is drawn from them and checkpointed).
        device: "cpu", "cuda", "cuda:1", ...; under torchrun on GPUs each process uses cuda:LOCAL_RANK.
        amp: run forward passes under bfloat16 autocast (parameters and optimizer stay float32).
        grad_clip: clip each model's gradient norm to this value (None: no clipping).
        ema_decay: keep an exponential moving average of the (generator) weights with this decay (None: no EMA).
        log_every: record losses in the history every this many steps.
        sample_every: write a sample grid every this many steps (0: only at the end).
        checkpoint_every: write a checkpoint every this many steps (0: only at the end).
        n_samples: images in each sample grid.
        out_dir: where grids, loss curves and checkpoints go (None: nowhere).
        progress: show a tqdm progress bar (rank 0 only).
    """

    steps: int = 1000
    batch_size: int = 64
    lr: float | None = None
    lr_schedule: str = "constant"
    lr_warmup_steps: int = 0
    seed: int = 0
    device: str = "cpu"
    amp: bool = False
    grad_clip: float | None = None
    ema_decay: float | None = None
    log_every: int = 10
    sample_every: int = 0
    checkpoint_every: int = 0
    n_samples: int = 64
    out_dir: str | None = None
    progress: bool = True

    def validate(self) -> None:
        for name in ("steps", "batch_size", "log_every", "n_samples"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        for name in ("sample_every", "checkpoint_every", "lr_warmup_steps"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be a non-negative int, got {v!r}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be positive, got {self.grad_clip!r}")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), got {self.ema_decay!r}")


# ---------------------------------------------------------------------------------------------------------------------
# Distributed helpers


def init_distributed(device: str) -> tuple[int, int, str]:
    """(rank, world_size, device). Under torchrun (WORLD_SIZE > 1) initialise the process group once: NCCL for
    CUDA, gloo on CPU; each GPU process takes cuda:LOCAL_RANK."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 and not dist.is_initialized():
        return 0, 1, device
    if device.startswith("cuda"):
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def all_reduce_gradients(modules: list[nn.Module], world: int) -> None:
    """Average parameter gradients over processes: what DDP does, for the GAN trainers, whose steps run several
    forwards per backward and a double backward (gradient penalty), which DDP's reducer does not support."""
    if world <= 1:
        return
    for m in modules:
        for p in m.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad.div_(world)


def broadcast_state(modules: list[nn.Module]) -> None:
    """Make every process hold rank 0's parameters and buffers (start of training; buffers such as BatchNorm's
    running statistics after each step)."""
    for m in modules:
        for t in list(m.parameters()) + list(m.buffers()):
            dist.broadcast(t.data, src=0)


# ---------------------------------------------------------------------------------------------------------------------
# EMA


def ema_decay_at(decay: float, num_averaged: int | torch.Tensor) -> torch.Tensor:
    """The decay of the EMA's update number num_averaged (0 for the first): min(decay, (1 + n) / (10 + n)), as a
    float64 0-dim tensor on num_averaged's device (AveragedModel keeps its count there: no host sync per update).

    The warm-up is diffusers' EMAModel's default. Without it the EMA keeps decay^steps of its first (nearly random)
    weights: 13% of them after 2,000 steps at decay 0.999, enough to turn a DDPM's samples into noise."""
    n = torch.as_tensor(num_averaged, dtype=torch.float64)
    return ((1.0 + n) / (10.0 + n)).clamp(max=decay)


def make_ema(model: nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel:
    """An exponential moving average of model's parameters and buffers (torch's AveragedModel), with the decay
    warm-up of ema_decay_at."""
    @torch.no_grad()
    def update(ema_params, params, num_averaged):
        # AveragedModel copies the weights on its first update and calls this from the second on (num_averaged >= 1).
        weight = 1.0 - ema_decay_at(decay, num_averaged)
        for ema_param, param in zip(ema_params, params):
            if ema_param.is_floating_point():
                ema_param.lerp_(param.to(ema_param.dtype), weight.to(ema_param.dtype))
            else:  # integer buffers (BatchNorm's num_batches_tracked) are counts, not weights
                ema_param.copy_(param)

    ema = AveragedModel(model, multi_avg_fn=update, use_buffers=True)
    ema.requires_grad_(False)
    return ema


# ---------------------------------------------------------------------------------------------------------------------
# Stopping on a signal


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped Trainer.train() after a whole step, of which it wrote a checkpoint.

    Attributes: signum (signal.SIGINT or SIGTERM), step (the step reached), checkpoint (its folder; None on the
    processes other than rank 0, which do not write)."""

    def __init__(self, signum: int, step: int, checkpoint: str | None):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        super().__init__(f"{signal.Signals(signum).name} at step {step}; checkpoint: {checkpoint}")


class StopSignals:
    """While active, SIGINT and SIGTERM only record that the run should stop (`signum`), so the training loop can
    finish its step and write a checkpoint. The first signal restores the previous handlers: a second one acts as
    it would without this (Ctrl-C: KeyboardInterrupt at once; SIGTERM: the process ends). Python lets only the main
    thread install handlers; elsewhere (or with enabled=False) this does nothing."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, *, enabled: bool = True, announce: bool = True):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.announce = announce
        self.signum = 0
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if self.enabled:
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._record)
        return self

    def __exit__(self, *exc) -> None:
        self._restore()

    def _record(self, signum, frame) -> None:
        self.signum = signum
        self._restore()
        if self.announce:  # os.write, not print: a handler may interrupt a print under way
            again = "Ctrl-C" if signum == signal.SIGINT else "the signal"
            os.write(2, f"\n{signal.Signals(signum).name}: stopping after this step with a checkpoint "
                        f"({again} again stops at once, without one)\n".encode())

    def _restore(self) -> None:
        for s, handler in self._previous.items():
            # None: a handler installed outside Python, which cannot be put back; the default is the nearest.
            signal.signal(s, signal.SIG_DFL if handler is None else handler)
        self._previous.clear()


# ---------------------------------------------------------------------------------------------------------------------
# Trainer


class Trainer:
    """Base class. Subclasses set `kind`, build `self.models` ({role: module}), `self.optimizers`, `self.ema`
    ({role: AveragedModel}) in `build()`, and implement `train_step(step) -> {loss name: float}` and
    `sample_images(n, generator) -> (n, C, H, W)`.
    """

    kind = "base"  # config.json's "kind": what the checkpoint holds, and so how it is sampled
    batches_per_step = 1  # real batches consumed per optimizer step (WGAN-GP: n_critic)

    @property
    def label(self) -> str:
        """The run's name on its progress bar and loss curve."""
        return self.kind

    def __init__(self, dataset, config: TrainConfig):
        config.validate()
        self.config = config
        self.dataset = dataset
        self.rank, self.world, self.device = init_distributed(config.device)
        self.device = torch.device(self.device)
        if config.out_dir and self.is_main:  # refuse an unwritable run folder now, not at the first checkpoint
            check_output_folder(config.out_dir, "out_dir")
        self.step = 0
        self._saved = (None, None)  # (step, folder) of the last checkpoint this trainer wrote
        self.history: dict[str, list[float]] = {"step": []}
        self.models: dict[str, nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.ema: dict[str, nn.Module] = {}
        self.images_seen = 0

        self.sampler = DistributedSampler(dataset, num_replicas=self.world, rank=self.rank, shuffle=True,
                                          seed=config.seed, drop_last=True)
        self.steps_per_epoch = len(self.sampler) // config.batch_size
        if self.steps_per_epoch < 1:
            raise ValueError(f"the dataset has {len(dataset)} images, fewer than one batch of {config.batch_size} "
                             f"per process ({self.world} process(es)); lower --batch-size")
        self._epoch_indices: tuple[int, list[int]] | None = None

        torch.manual_seed(config.seed)  # identical model initialisation on every process
        self.build()
        if self.world > 1:
            broadcast_state(list(self.models.values()))
        # Per-process randomness from here on (noise, latents, dropout differ between processes).
        torch.manual_seed(config.seed + 1000003 * (self.rank + 1))
        random.seed(config.seed + self.rank)
        np.random.seed((config.seed + self.rank) % 2**32)

    # -- to implement -------------------------------------------------------------------------------------------------
    def build(self) -> None:
        raise NotImplementedError

    def train_step(self, step: int) -> dict[str, float]:
        raise NotImplementedError

    def sample_images(self, n: int, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def checkpoint_config(self) -> dict:
        """Extra entries of config.json (e.g. the scheduler config)."""
        return {}

    def check_resumable(self, path: str, config: dict) -> None:
        """Raise CheckpointError when the checkpoint at `path` (config.json: `config`), of this trainer's kind,
        is not one this trainer continues."""

    # -- helpers for subclasses ---------------------------------------------------------------------------------------
    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.amp)

    def batch_indices(self, index: int) -> torch.Tensor:
        """The dataset indices of the index-th batch of the run (index = step * batches_per_step + i) for this
        process: a pure function of (seed, index, rank, world size)."""
        bs = self.config.batch_size
        epoch, within = divmod(index, self.steps_per_epoch)
        if self._epoch_indices is None or self._epoch_indices[0] != epoch:
            self.sampler.set_epoch(epoch)
            self._epoch_indices = (epoch, list(iter(self.sampler)))
        return torch.tensor(self._epoch_indices[1][within * bs:(within + 1) * bs])

    def batch(self, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The index-th batch of the run (index = step * batches_per_step + i) for this process: (images, labels)."""
        idx = self.batch_indices(index)
        images = self.dataset.images[idx].to(self.device, non_blocking=True)
        labels = None if self.dataset.labels is None else self.dataset.labels[idx].to(self.device)
        self.images_seen += images.shape[0] * self.world
        return images, labels

    def optimizer_step(self, role: str, loss: torch.Tensor, *, retain_graph: bool = False) -> None:
        """Backward, (gradient averaging across processes), clipping, and the optimizer step of one model."""
        opt = self.optimizers[role]
        opt.zero_grad(set_to_none=True)
        loss.backward(retain_graph=retain_graph)
        model = self.models[role]
        if not isinstance(model, nn.parallel.DistributedDataParallel):
            all_reduce_gradients([model], self.world)
        if self.config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), self.config.grad_clip)
        cfg = self.config
        if cfg.lr_schedule != "constant" or cfg.lr_warmup_steps:
            factor = lr_factor(self.step, cfg.steps, cfg.lr_schedule, cfg.lr_warmup_steps)
            for group in opt.param_groups:
                group["lr"] = group.setdefault("initial_lr", group["lr"]) * factor
        opt.step()

    def update_ema(self) -> None:
        for role, ema in self.ema.items():
            ema.update_parameters(self.raw(role))

    def raw(self, role: str) -> nn.Module:
        return unwrap(self.models[role])

    # -- the loop -----------------------------------------------------------------------------------------------------
    def train(self, steps: int | None = None) -> dict[str, list[float]]:
        """Train up to `steps` total steps (default config.steps): a number of steps, never a time limit, so that
        the same config and seed give the same model on a fast or a slow machine. Writes the final checkpoint,
        grid and loss curve when config.out_dir is set. Returns the loss history.

        With config.out_dir set, SIGINT (Ctrl-C) or SIGTERM lets the step under way finish, writes a checkpoint of
        it and raises TrainingInterrupted (a KeyboardInterrupt) naming the step and the checkpoint folder; a second
        signal acts at once, as it would without this (the checkpoint then is the last one written). Under DDP the
        processes agree after each step on whether one of them was signalled, so all stop at the same step."""
        cfg = self.config
        total = cfg.steps if steps is None else steps
        bar = None
        if cfg.progress and self.is_main and self.step < total:
            bar = tqdm(total=total, initial=self.step, desc=self.label, unit="step", dynamic_ncols=True,
                       file=sys.stderr)
        for m in self.models.values():
            m.train()
        t0, seen0 = time.perf_counter(), self.images_seen
        try:
            with StopSignals(enabled=bool(cfg.out_dir), announce=self.is_main) as stop:
                while self.step < total:
                    losses = self.train_step(self.step)
                    self.update_ema()
                    self.step += 1
                    last = self.step == total
                    if self.step % cfg.log_every == 0 or last:
                        self.history["step"].append(self.step)
                        for k, v in losses.items():
                            self.history.setdefault(k, []).append(float(v))
                    if bar is not None:
                        dt = time.perf_counter() - t0
                        rate = (self.images_seen - seen0) / dt if dt > 0 else 0.0
                        bar.set_postfix({**{k: f"{v:.4f}" for k, v in losses.items()}, "img/s": f"{rate:.0f}"},
                                        refresh=False)
                        bar.update(1)
                    if cfg.out_dir and cfg.sample_every and self.step % cfg.sample_every == 0 and not last:
                        self.write_samples()
                    if cfg.out_dir and cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                        self.save_checkpoint()
                    signum = self._agreed_stop(stop) if cfg.out_dir else 0
                    if signum and not last:  # at the last step the run ends as usual, with its final outputs
                        raise TrainingInterrupted(signum, self.step, self._checkpoint_of_this_step())
        finally:
            if bar is not None:
                bar.close()
        self.elapsed = time.perf_counter() - t0
        if cfg.out_dir:
            self._checkpoint_of_this_step()
            self.last_grid = self.write_samples()
            if self.is_main:
                plot_losses(self.history, os.path.join(cfg.out_dir, "losses.png"), title=self.label)
        return self.history

    def _agreed_stop(self, stop: StopSignals) -> int:
        """The signal number that asks this run to stop (0: none), the same on every process: under DDP the
        largest over the processes (a signal may reach only some of them)."""
        if self.world == 1:
            return stop.signum
        flag = torch.tensor([stop.signum], dtype=torch.int64, device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())

    def _checkpoint_of_this_step(self) -> str | None:
        """The checkpoint folder of the current step: the one already written, else a new one."""
        step, path = self._saved
        return path if step == self.step else self.save_checkpoint()

    # -- outputs ------------------------------------------------------------------------------------------------------
    def samples_generator(self) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(self.config.seed + 12345)

    @torch.no_grad()
    def write_samples(self, path: str | None = None) -> str | None:
        """A grid of n_samples images from the (EMA) model with fixed noise, so grids over a run are comparable."""
        if not self.is_main or not (path or self.config.out_dir):
            return None
        path = path or os.path.join(self.config.out_dir, "samples", f"step-{self.step:08d}.png")
        # Sampling must not touch the training RNG (resume equality): it draws from its own generator only.
        images = self.sample_images(self.config.n_samples, self.samples_generator())
        # Conditional models draw the classes in turn: one column per class.
        classes = getattr(self.dataset, "num_classes", None) if getattr(self, "conditional", False) else None
        return save_grid(images, path, nrow=classes if classes and images.shape[0] >= classes else None)

    def state_dicts(self) -> dict[str, dict[str, torch.Tensor]]:
        out = {role: self.raw(role).state_dict() for role in self.models}
        for role, ema in self.ema.items():
            out[f"{role}_ema"] = ema.module.state_dict()
        return out

    def save_checkpoint(self) -> str | None:
        """Write a checkpoint of the current step to config.out_dir (rank 0 writes; every process takes part in
        gathering the RNG states)."""
        cfg = self.config
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        py_rng = {"python": ckpt.jsonable(random.getstate()), "numpy": ckpt.jsonable(np.random.get_state())}
        if self.world > 1:
            gathered = [None] * self.world
            dist.all_gather_object(gathered, ({k: v.cpu() for k, v in rng.items()}, py_rng))
        else:
            gathered = [(rng, py_rng)]
        path = None
        if self.is_main:
            tensors, opt_json = {}, {}
            for role, opt in self.optimizers.items():
                t, j = ckpt.flatten_optimizer_state(opt.state_dict())
                tensors.update({f"optimizer.{role}.{k}": v for k, v in t.items()})
                opt_json[role] = j
            for r, (rt, _) in enumerate(gathered):
                tensors.update({f"rng.{r}.{k}": v for k, v in rt.items()})
            state_json = {"step": self.step, "history": self.history, "optimizers": opt_json,
                          "rng": [p for _, p in gathered], "world_size": self.world, "images_seen": self.images_seen}
            config = {"kind": self.kind, "conditional": bool(getattr(self, "conditional", False)),
                      "models": {role: describe(m) for role, m in self.models.items()},
                      "trainer": dataclasses.asdict(cfg),
                      "data": {"name": getattr(self.dataset, "name", "images"),
                               "image_shape": list(self.dataset.images.shape[1:]),
                               "num_classes": getattr(self.dataset, "num_classes", None)},
                      **self.checkpoint_config()}
            path = ckpt.write_checkpoint(cfg.out_dir, self.step, config, self.state_dicts(), tensors, state_json)
        if self.world > 1:
            dist.barrier()
        self._saved = (self.step, path)
        return path

    def resumable_checkpoint(self, path: str | None = None) -> tuple[str, dict]:
        """The checkpoint folder resume() would restore and its config, refused (CheckpointError) where this trainer
        cannot continue it: another kind, or check_resumable's settings."""
        path = ckpt.resolve_checkpoint(path or self.config.out_dir)
        config = ckpt.read_config(path)
        if config.get("kind") != self.kind:
            raise ckpt.CheckpointError(f"{path} is a {config.get('kind')!r} checkpoint, not {self.kind!r}")
        self.check_resumable(path, config)
        return path, config

    def resume(self, path: str | None = None) -> int:
        """Restore models, EMA, optimizers, step, history and RNG from a checkpoint (default: config.out_dir's
        latest). Returns the restored step."""
        path, config = self.resumable_checkpoint(path)
        for stem in self.state_dicts():
            state = ckpt.load_tensors(os.path.join(path, f"{stem}.safetensors"), self.device, finite=True)
            target = self.ema[stem[:-4]].module if stem.endswith("_ema") else self.raw(stem)
            try:
                target.load_state_dict(state)
            except RuntimeError as exc:
                raise ckpt.CheckpointError(f"{path}/{stem}.safetensors does not fit this model (were the model "
                                           f"options changed?): {str(exc).splitlines()[0]}") from None
        for ema in self.ema.values():  # AveragedModel counts updates; a restored EMA has been updated
            ema.n_averaged.fill_(max(1, int(config["step"])))
        tensors = ckpt.load_tensors(os.path.join(path, "trainer_state.safetensors"), finite=False)
        where = os.path.join(path, "trainer_state.json")
        state = ckpt._read_json(where)
        step = ckpt.expect(state, "step", int, where)
        history = ckpt.expect(state, "history", dict, where)
        for key, values in history.items():
            if not isinstance(values, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                       for v in values):
                raise ckpt.CheckpointError(f"{where}: history {key!r} must be a list of numbers")
        rng = ckpt.expect(state, "rng", list, where)
        optimizers = ckpt.expect(state, "optimizers", dict, where)
        images_seen = ckpt.expect(state, "images_seen", int, where, optional=True) or 0
        for role, opt in self.optimizers.items():
            prefix = f"optimizer.{role}."
            flat = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            try:
                loaded = ckpt.unflatten_optimizer_state(flat, ckpt.expect(optimizers, role, dict, f"{where} [optimizers]"))
                ckpt.check_optimizer_state(opt, loaded)
                opt.load_state_dict(loaded)
            except (KeyError, ValueError, TypeError) as exc:
                raise ckpt.CheckpointError(f"{path}: optimizer state of {role!r} does not fit ({exc})") from None
        self.step = step
        self.history = {k: list(v) for k, v in history.items()}
        self.images_seen = int(images_seen)
        r = self.rank
        if f"rng.{r}.torch" in tensors and r < len(rng):
            try:
                torch.set_rng_state(tensors[f"rng.{r}.torch"])
                if self.device.type == "cuda" and f"rng.{r}.cuda" in tensors:
                    torch.cuda.set_rng_state(tensors[f"rng.{r}.cuda"], self.device)
                random.setstate(ckpt.python_rng_state(ckpt.expect(rng[r], "python", list, f"{where} [rng.{r}]")))
                np.random.set_state(ckpt.numpy_rng_state(ckpt.expect(rng[r], "numpy", list, f"{where} [rng.{r}]")))
            except (TypeError, ValueError, IndexError, RuntimeError) as exc:
                raise ckpt.CheckpointError(f"{where}: random-number state of process {r} is malformed ({exc})") \
                    from None
        else:  # resumed with more processes than saved: fresh, but still deterministic, streams
            torch.manual_seed(self.config.seed + 1000003 * (r + 1) + self.step)
        return self.step
