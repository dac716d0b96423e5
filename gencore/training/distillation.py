"""Few-step students: distil a trained diffusion checkpoint into a model that samples in K in {1, 2, 4, 8} calls.

The method (trajectory distillation, the one-phase form of Salimans & Ho's progressive distillation):

1. The teacher draws a pool of P trajectories with a fine ODE solver (default DDIM, 64 steps, "trailing" timesteps,
   the teacher's x0 clipping; with classifier-free guidance w for a class-conditional teacher) and keeps each
   trajectory's states at the student's K timesteps t_0 > ... > t_{K-1} (DDIM's "trailing" timesteps, t_0 = T - 1)
   and its endpoint: z_{t_0} (the initial noise), ..., z_{t_{K-1}}, x_end. They are written once to
   OUT/trajectories.safetensors.
2. The student starts from the teacher's weights and learns, for each segment k, the one DDIM step that lands where
   the teacher did. With alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t), a = t_k and b = t_{k+1} (for the last
   segment alpha_b = 1, sigma_b = 0 and z_b = x_end), a deterministic DDIM step from z_a with data prediction x0
   reaches z_b = alpha_b x0 + (sigma_b / sigma_a) (z_a - alpha_a x0), so the x0 the step needs is

       x0* = (z_b - (sigma_b / sigma_a) z_a) / (alpha_b - (sigma_b / sigma_a) alpha_a)

   The student predicts v (as progressive distillation does: epsilon cannot give x0 from pure noise, where alpha_a
   is ~1e-2 or less), and the loss is |v - v*|^2 with v* = (alpha_a z_a - x0*) / sigma_a, the v whose x0 is x0*
   (x0 = alpha_a z_a - sigma_a v). That is an x0 loss weighted by 1 / sigma_a^2 = SNR + 1, progressive
   distillation's "SNR+1" weighting.
3. The student's checkpoint is an ordinary DDPM checkpoint whose scheduler is DDIM with prediction_type
   "v_prediction", "trailing" timesteps, no clipping (the step is the linear map above), and whose config says
   `student: {calls, sampler, guidance_scale, teacher}`: `gencore sample`, `gencore eval` and sample_from_checkpoint
   sample it in its K calls and refuse other step counts; a guided teacher's scale is folded into the student (one
   call a step, labels as usual, no guidance batch).

Why one phase, not log2(T/K) halvings: each progressive halving costs two teacher calls per training example, on
data-noised inputs that are not the states the sampler meets; here the teacher runs once per pool trajectory, and a
training step costs one student forward and backward, like a DDPM step. docs/distill.md says what was measured.
"""
from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from ..diffusion import DDIMScheduler, sample
from . import checkpoint as ckpt
from .ddpm import check_guidance, diffusion_sample, make_scheduler
from .options import STUDENT_CALLS, STUDENT_TEACHER_SAMPLERS
from .paths import check_output_folder
from .trainer import TrainConfig, Trainer, init_distributed, make_ema

POOL_FILE = "trajectories.safetensors"


@dataclass
class DistillConfig(TrainConfig):
    """Options of a distillation run (on top of TrainConfig).

    Parameters:
        teacher: the teacher's checkpoint (a run folder or one checkpoint folder) of a DDPM (unconditional or
            class-conditional); its EMA weights when it has them.
        calls: K, the student's number of model calls per picture: 1, 2, 4 or 8.
        teacher_sampler, teacher_steps: the ODE solver whose trajectories the student learns ("ddim" or "dpm++",
            with "trailing" timesteps); teacher_steps must be a multiple of calls, so that the student's timesteps are
            on the teacher's schedule. DDIM by default: it clips x0 as the teacher's config says, while DPM-Solver++
            from t = T - 1 multiplies an epsilon-model's error by 1 / alpha_{T-1} (156 on the linear schedule), which
            an under-trained teacher's trajectories do not survive (docs/distill.md).
        pool: trajectories in the pool (each costs teacher_steps teacher calls, once).
        guidance_scale: classifier-free guidance of a class-conditional teacher, folded into the student.
        lr, ema_decay, grad_clip: defaults 1e-4, 0.999 and 1.0, the command's.
    """

    teacher: str = ""
    calls: int = 4
    teacher_sampler: str = "ddim"
    teacher_steps: int = 64
    pool: int = 2048
    guidance_scale: float = 1.0
    lr: float | None = 1e-4
    ema_decay: float | None = 0.999
    grad_clip: float | None = 1.0
    steps: int = 2000

    def validate(self) -> None:
        super().validate()
        if not self.teacher:
            raise ValueError("teacher must name a trained DDPM checkpoint")
        if self.calls not in STUDENT_CALLS:
            raise ValueError(f"calls must be one of {', '.join(map(str, STUDENT_CALLS))}, got {self.calls!r}")
        if self.teacher_sampler not in STUDENT_TEACHER_SAMPLERS:
            raise ValueError(f"teacher_sampler must be one of {', '.join(STUDENT_TEACHER_SAMPLERS)}, "
                             f"got {self.teacher_sampler!r}")
        if not isinstance(self.teacher_steps, int) or self.teacher_steps < 1 or self.teacher_steps % self.calls:
            raise ValueError(f"teacher_steps must be a positive multiple of calls ({self.calls}), got "
                             f"{self.teacher_steps!r}")
        if not isinstance(self.pool, int) or self.pool < self.batch_size:
            raise ValueError(f"pool must be an int of at least batch_size ({self.batch_size}), got {self.pool!r}")
        if not self.guidance_scale >= 0:
            raise ValueError(f"guidance_scale must be >= 0, got {self.guidance_scale!r}")


def load_teacher(path: str, device) -> tuple[nn.Module, dict]:
    """The teacher's model (EMA weights where kept) and config, refusing what cannot be distilled."""
    models, config = ckpt.load_models(path, device=device, ema=True)
    if config["kind"] != "ddpm":
        raise ValueError(f"teacher {path} is a {config['kind']!r} checkpoint: only diffusion (ddpm) checkpoints can be "
                         f"distilled")
    if config.get("student"):
        raise ValueError(f"teacher {path} is already a {config['student']['calls']}-call student: distil from the "
                         f"teacher it was distilled from ({config['student']['teacher']['path']})")
    return models["model"], config


def student_scheduler_config(teacher_scheduler: dict) -> dict:
    """The teacher's noise schedule with the student's sampler settings (see the module doc)."""
    config = dict(DDIMScheduler.from_config(dict(teacher_scheduler)).config)
    config.pop("_use_default_values", None)  # from_config would reset the values it lists, ours included
    config.update(prediction_type="v_prediction", timestep_spacing="trailing", steps_offset=0, clip_sample=False,
                  thresholding=False, set_alpha_to_one=True)
    config["_class_name"] = "DDIMScheduler"
    return config


def student_timesteps(scheduler_config: dict, calls: int) -> list[int]:
    sched = DDIMScheduler.from_config(dict(scheduler_config))
    sched.set_timesteps(calls)
    return sched.timesteps.tolist()


def segment_coefficients(scheduler_config: dict, calls: int) -> torch.Tensor:
    """(K, 4) float64: alpha_a, sigma_a, alpha_b, sigma_b of each segment k (a = t_k, b = t_{k+1}; the last b is
    the clean sample: alpha 1, sigma 0)."""
    abar = DDIMScheduler.from_config(dict(scheduler_config)).alphas_cumprod.double()
    ts = student_timesteps(scheduler_config, calls)
    a = abar[ts]
    b = torch.cat([a[1:], a.new_ones(1)])
    return torch.stack([a.sqrt(), (1 - a).sqrt(), b.sqrt(), (1 - b).sqrt()], dim=1)


def v_targets(z_a: torch.Tensor, z_b: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    """v* of each row (the module doc's formula); coef: (B, 4) rows of segment_coefficients."""
    alpha_a, sigma_a, alpha_b, sigma_b = (c.view(-1, *([1] * (z_a.dim() - 1))) for c in coef.double().unbind(1))
    ratio = sigma_b / sigma_a
    x0 = (z_b.double() - ratio * z_a.double()) / (alpha_b - ratio * alpha_a)
    return ((alpha_a * z_a.double() - x0) / sigma_a).to(z_a.dtype)


@torch.no_grad()
def teacher_trajectories(teacher: nn.Module, teacher_config: dict, calls: int, noise: torch.Tensor, *,
                         sampler: str = "ddim", steps: int = 64, class_labels=None, guidance_scale: float = 1.0,
                         ) -> torch.Tensor:
    """(N, K+1, C, H, W): each noise sample's teacher ODE trajectory at the student's K timesteps, then its endpoint
    (the teacher's `sampler` in `steps` "trailing" steps)."""
    own = {k: v for k, v in teacher_config["scheduler"].items() if k != "_use_default_values"}
    sched = make_scheduler({**own, "timestep_spacing": "trailing", "steps_offset": 0}, sampler)
    sched.set_timesteps(steps)
    schedule = sched.timesteps.tolist()
    wanted = student_timesteps(student_scheduler_config(teacher_config["scheduler"]), calls)
    missing = [t for t in wanted if t not in schedule]
    if missing:
        raise ValueError(f"the teacher's {steps}-step schedule lacks the student's timesteps {missing}")
    states = {schedule[0]: noise}

    def keep(i, t, out):
        if i + 1 < len(schedule) and schedule[i + 1] in wanted:
            states[schedule[i + 1]] = out.prev_sample

    kwargs = {"eta": 0.0} if sampler == "ddim" else {}
    end = sample(teacher, sched, noise, steps, class_labels=class_labels, guidance_scale=guidance_scale,
                 callback=keep, progress=False, **kwargs)
    return torch.stack([states[t] for t in wanted] + [end], dim=1)


class TrajectoryPool:
    """The teacher's trajectories as the trainer's dataset: `images` are the endpoints (what the student should
    draw), `states` (P, K+1, C, H, W) the whole trajectories, `labels` the classes (or None)."""

    name = "teacher trajectories"

    def __init__(self, states: torch.Tensor, labels: torch.Tensor | None, num_classes: int | None):
        self.states, self.labels, self.num_classes = states, labels, num_classes
        self.images = states[:, -1]

    def __len__(self) -> int:
        return self.states.shape[0]


class DistillTrainer(Trainer):
    """Trains a K-call student of a DDPM checkpoint (module doc). models: {"model": the student UNet}; EMA kept."""

    kind = "ddpm"  # what the checkpoint holds: a diffusion model, sampled as every DDPM checkpoint is
    label = "distill"

    def __init__(self, config: DistillConfig, *, resume_from: str | None = None):
        """resume_from: a checkpoint of this run to continue (its out_dir, or one of its checkpoint folders). It is
        checked against the teacher and these settings before the pool is drawn, so a refused resume costs no
        teacher calls, then restored as resume() restores it."""
        config.validate()
        self.config = config  # check_resumable reads it before Trainer.__init__ sets it
        if config.out_dir and int(os.environ.get("RANK", "0")) == 0:  # before the teacher draws its pool
            check_output_folder(config.out_dir, "out_dir")
        # The process's own device before the teacher loads: under torchrun each GPU process takes cuda:LOCAL_RANK
        # (Trainer.__init__ calls this again; it initialises the process group once).
        rank, world, device = init_distributed(config.device)
        device = torch.device(device)
        self.teacher, self.teacher_config = load_teacher(config.teacher, device)
        self.conditional = bool(self.teacher_config.get("conditional"))
        check_guidance(self.teacher_config, config.guidance_scale)
        self.teacher_path = os.path.abspath(ckpt.resolve_checkpoint(config.teacher))
        # What the pool and a resumed student are keyed by: the teacher's weights themselves, so a teacher moved to
        # another folder still resumes and one retrained in place does not reuse a pool it did not draw.
        self.teacher_sha256 = ckpt.file_sha256(ckpt.weights_file(self.teacher_path, "model"))
        self.scheduler_config = student_scheduler_config(self.teacher_config["scheduler"])
        self.coefficients = segment_coefficients(self.scheduler_config, config.calls)
        self.timesteps = torch.tensor(student_timesteps(self.scheduler_config, config.calls))
        total = self.teacher_config["scheduler"]["num_train_timesteps"]
        if config.teacher_steps > total:
            raise ValueError(f"teacher_steps must be at most the teacher's {total} training timesteps, got "
                             f"{config.teacher_steps}")
        if resume_from is not None:
            self.resumable_checkpoint(resume_from)
        pool = self._pool(config, device, rank, world)
        super().__init__(pool, config)
        if resume_from is not None:
            self.resume(resume_from)

    # -- the pool -----------------------------------------------------------------------------------------------------
    def _pool_description(self, config: DistillConfig) -> dict:
        return {"teacher_sha256": self.teacher_sha256, "teacher_step": self.teacher_config["step"],
                "calls": config.calls, "sampler": config.teacher_sampler, "steps": config.teacher_steps,
                "pool": config.pool, "seed": config.seed, "guidance_scale": config.guidance_scale}

    def _pool(self, config: DistillConfig, device, rank: int, world: int) -> TrajectoryPool:
        """The pool: read from OUT/trajectories.safetensors when it was made for these settings, else drawn (in
        batches of batch_size, from a generator seeded by config.seed) and written there once, atomically."""
        description = self._pool_description(config)
        path = os.path.join(config.out_dir, POOL_FILE) if config.out_dir else None
        num_classes = self.teacher_config["data"].get("num_classes") if self.conditional else None
        if path and os.path.isfile(path):
            meta = ckpt.tensor_metadata(path)
            if json.loads(meta.get("pool", "null")) != description:
                raise ckpt.CheckpointError(f"{path} was drawn with other settings ({meta.get('pool')}); use another "
                                           f"--out, or delete it to draw the pool again")
            tensors = ckpt.load_tensors(path, finite=True)
            return TrajectoryPool(tensors["states"], tensors.get("labels"), num_classes)
        shape = self.teacher_config["data"]["image_shape"]
        generator = torch.Generator(device=device).manual_seed(config.seed + 271828)
        noise = torch.randn((config.pool, *shape), generator=generator, device=device)
        labels = torch.arange(config.pool) % num_classes if num_classes else None
        # Under torchrun each process draws every world-th batch and sends it to the others: the pool costs each
        # process 1 / world of the teacher calls and is the same pool a single process draws.
        starts = list(range(0, config.pool, config.batch_size))
        mine = [i for i in range(len(starts)) if i % world == rank]
        drawn = {}
        with tqdm(total=sum(noise[starts[i]:starts[i] + config.batch_size].shape[0] for i in mine),
                  desc="teacher trajectories", unit="img", disable=not config.progress or rank != 0,
                  dynamic_ncols=True, leave=False) as bar:
            for i in mine:
                batch = slice(starts[i], starts[i] + config.batch_size)
                lab = None if labels is None else labels[batch].to(device)
                drawn[i] = teacher_trajectories(
                    self.teacher, self.teacher_config, config.calls, noise[batch], sampler=config.teacher_sampler,
                    steps=config.teacher_steps, class_labels=lab, guidance_scale=config.guidance_scale)
                bar.update(drawn[i].shape[0])
        chunks = []
        for i, start in enumerate(starts):
            part = drawn.pop(i, None)
            if world > 1:
                if part is None:
                    n = min(config.batch_size, config.pool - start)
                    part = torch.empty((n, config.calls + 1, *shape), device=device)
                torch.distributed.broadcast(part, src=i % world)
            chunks.append(part.cpu())
        states = torch.cat(chunks)
        if not torch.isfinite(states).all():
            raise ValueError(f"the teacher's {config.teacher_sampler} trajectories hold NaN or infinite values: the "
                             f"teacher diverges with this sampler (DDIM, the default, clips its x0)")
        if path and rank == 0:
            os.makedirs(config.out_dir, exist_ok=True)
            tensors = {"states": states} if labels is None else {"states": states, "labels": labels}
            ckpt.save_tensors_atomic(path, tensors, metadata={"pool": json.dumps(description)})
        return TrajectoryPool(states, labels, num_classes)

    # -- the trainer --------------------------------------------------------------------------------------------------
    def build(self) -> None:
        student = copy.deepcopy(self.teacher).to(self.device)
        student.requires_grad_(True)
        if self.world > 1:
            self.models = {"model": nn.parallel.DistributedDataParallel(
                student, device_ids=[self.device.index] if self.device.type == "cuda" else None)}
        else:
            self.models = {"model": student}
        self.optimizers = {"model": torch.optim.AdamW(student.parameters(), lr=self.config.lr or 1e-4,
                                                      weight_decay=0.0)}
        if self.config.ema_decay:
            self.ema = {"model": make_ema(student, self.config.ema_decay)}
        self.teacher = None  # its trajectories are in the pool; free its memory

    def checkpoint_config(self) -> dict:
        cfg: DistillConfig = self.config
        return {"scheduler": self.scheduler_config,
                "student": {"calls": cfg.calls, "sampler": "ddim", "guidance_scale": cfg.guidance_scale,
                            "timesteps": self.timesteps.tolist(), "pool": cfg.pool, "seed": cfg.seed,
                            "teacher": {"path": self.teacher_path, "sha256": self.teacher_sha256,
                                        "step": self.teacher_config["step"], "sampler": cfg.teacher_sampler,
                                        "steps": cfg.teacher_steps}}}

    def check_resumable(self, path: str, config: dict) -> None:
        student = config.get("student")
        if not student:
            raise ckpt.CheckpointError(f"{path} holds a DDPM, not a student: gencore distill --resume continues a "
                                       f"distillation run")
        if student["calls"] != self.config.calls:
            raise ckpt.CheckpointError(f"{path} holds a {student['calls']}-call student, not {self.config.calls}")
        # The pool file guards these only while it exists: a student goes on only from the teacher and settings
        # that started it.
        own = self.checkpoint_config()["student"]
        theirs = student.get("teacher", {})
        # the teacher by its weights (by its path for a student written before the weights' SHA-256 was kept); the
        # pool's size and seed where kept (a student written before they were lacks them)
        identity = "sha256" if "sha256" in theirs else "path"
        kept = ("guidance_scale",) + tuple(key for key in ("pool", "seed") if key in student)
        differ = [(key, student.get(key), own[key]) for key in kept if student.get(key) != own[key]]
        differ += [(f"teacher {key}", theirs.get(key), own["teacher"][key])
                   for key in (identity, "step", "sampler", "steps") if theirs.get(key) != own["teacher"][key]]
        if differ:
            raise ckpt.CheckpointError(f"{path} was distilled with other settings: "
                                       + "; ".join(f"{key} {a} there, {b} now" for key, a, b in differ))

    def train_step(self, step: int) -> dict[str, float]:
        idx = self.batch_indices(step)
        k = torch.randint(0, self.config.calls, (idx.shape[0],))  # the segment of each example (checkpointed RNG)
        z_a = self.dataset.states[idx, k].to(self.device)
        z_b = self.dataset.states[idx, k + 1].to(self.device)
        target = v_targets(z_a, z_b, self.coefficients[k].to(self.device))
        t = self.timesteps[k].to(self.device)
        self.images_seen += idx.shape[0] * self.world
        with self.autocast():
            args = (z_a, t) if self.dataset.labels is None else (z_a, t, self.dataset.labels[idx].to(self.device))
            pred = self.models["model"](*args)
            loss = torch.nn.functional.mse_loss(pred.float(), target)
        self.optimizer_step("model", loss)
        return {"loss": loss.item()}

    @torch.no_grad()
    def sample_images(self, n: int, generator: torch.Generator, class_labels=None, **kwargs) -> torch.Tensor:
        model = self.ema["model"].module if self.ema else self.raw("model")
        was_training = model.training
        model.eval()
        try:
            if self.conditional and class_labels is None:
                class_labels = torch.arange(n, device=self.device) % self.dataset.num_classes
            config = {"scheduler": self.scheduler_config, "data": {"image_shape": list(self.dataset.images.shape[1:])}}
            return diffusion_sample(model, config, n, sampler="ddim", steps=self.config.calls, generator=generator,
                                    class_labels=class_labels, device=self.device, **kwargs)
        finally:
            model.train(was_training)


def distill(config: DistillConfig, *, resume: bool = False) -> DistillTrainer:
    """Train a student as `config` says (resuming from config.out_dir's latest checkpoint when `resume`); returns
    the trainer (its .step, .history; the student is trainer.ema["model"].module, or trainer.models["model"])."""
    trainer = DistillTrainer(config, resume_from=config.out_dir if resume else None)
    trainer.train()
    return trainer


__all__ = ["DistillConfig", "DistillTrainer", "distill", "load_teacher", "student_scheduler_config",
           "teacher_trajectories", "v_targets"]
