"""DDPM training: the UNet learns the diffusion objective (gencore.diffusion.training_loss); samples with DDIM."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..diffusion import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, sample, training_loss
from ..diffusion.sampling import intermediate_timesteps
from ..models import UNet
from .options import DDPM_LOSS_TYPES, DEFAULT_STEPS, SAMPLERS  # noqa: F401 (DEFAULT_STEPS: re-exported)
from .trainer import TrainConfig, Trainer, make_ema


@dataclass
class DDPMConfig(TrainConfig):
    """DDPM options (on top of TrainConfig).

    Parameters:
        unet: UNet keyword arguments (in_channels/out_channels default to the data's channels; num_classes is set
            from the data when class_conditional).
        num_train_timesteps, beta_schedule, beta_start, beta_end, prediction_type: the DDPMScheduler config
            (diffusers' names and meanings).
        loss_type: "l2" (default), "l1" or "huber".
        snr_gamma: min-SNR-gamma loss weighting (Hang et al. 2023; 5.0 is the paper's value), None for uniform.
        class_conditional: train with the data's labels (needs a labelled dataset).
        cfg_dropout: probability of replacing a label with the null class during training, so the same model also
            learns the unconditional score and supports classifier-free guidance at sampling time.
        sample_steps, sample_eta: the DDIM sampler used for the sample grids.
        ema_decay: default 0.999 for DDPM (None disables the EMA).
    """

    lr: float | None = 2e-4
    ema_decay: float | None = 0.999
    unet: dict = field(default_factory=dict)
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"
    beta_start: float = 0.0001
    beta_end: float = 0.02
    prediction_type: str = "epsilon"
    loss_type: str = "l2"
    snr_gamma: float | None = None
    class_conditional: bool = False
    cfg_dropout: float = 0.1
    sample_steps: int = 50
    sample_eta: float = 0.0

    def validate(self) -> None:
        super().validate()
        if self.loss_type not in DDPM_LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {DDPM_LOSS_TYPES}, got {self.loss_type!r}")
        if not 0.0 <= self.cfg_dropout < 1.0:
            raise ValueError(f"cfg_dropout must be in [0, 1), got {self.cfg_dropout!r}")
        if self.snr_gamma is not None and not self.snr_gamma > 0:
            raise ValueError(f"snr_gamma must be positive, got {self.snr_gamma!r}")


def make_scheduler(config: dict, sampler: str = "ddpm"):
    """A gencore.diffusion scheduler (one of SAMPLERS) from a checkpoint's stored scheduler config."""
    classes = {"ddim": DDIMScheduler, "dpm++": DPMSolverMultistepScheduler, "ddpm": DDPMScheduler}
    if sampler not in classes:
        raise ValueError(f"sampler must be one of {', '.join(map(repr, SAMPLERS))}, got {sampler!r}")
    return classes[sampler].from_config(dict(config))


def check_guidance(config: dict, guidance_scale: float) -> None:
    """Classifier-free guidance mixes the model's conditional and unconditional (null-class) predictions, so it
    needs a class-conditional DDPM that learned the null class: one trained with cfg_dropout > 0. Raises otherwise;
    without this check a cfg_dropout 0 model would mix in the output of a null-class embedding never trained."""
    if guidance_scale == 1.0:
        return
    if not config.get("conditional"):
        raise ValueError("guidance_scale needs a class-conditional DDPM (train with --class-conditional)")
    if config.get("trainer", {}).get("cfg_dropout") == 0:
        raise ValueError("guidance_scale needs a model that learned the unconditional (null-class) prediction: this "
                         "checkpoint was trained with cfg_dropout 0; train with --cfg-dropout above 0, or sample "
                         "without a guidance scale")


def sampling_plan(config: dict, sampler: str | None = None, steps: int | None = None,
                  guidance_scale: float = 1.0, eta: float = 0.0) -> tuple[str, int]:
    """(sampler, steps) for a diffusion checkpoint's config: those asked for, else the defaults (ddim, and
    DEFAULT_STEPS). A distilled student (config["student"], gencore.training.distillation) samples only as it was
    trained: its deterministic sampler (eta 0) in its number of calls, with the guidance folded into it; asking
    otherwise is an error."""
    student = config.get("student")
    if not student:
        check_guidance(config, guidance_scale)
        sampler = sampler or "ddim"
        if sampler not in DEFAULT_STEPS:
            raise ValueError(f"sampler must be one of {', '.join(map(repr, SAMPLERS))}, got {sampler!r}")
        return sampler, steps or DEFAULT_STEPS[sampler]
    calls, own = student["calls"], student["sampler"]
    if sampler not in (None, own):
        raise ValueError(f"this checkpoint is a {calls}-call student: it samples with {own}, not {sampler}")
    if steps not in (None, calls):
        raise ValueError(f"this checkpoint is a {calls}-call student: it samples in {calls} steps, not {steps}")
    if guidance_scale != 1.0:
        raise ValueError(f"this student has its teacher's guidance ({student['guidance_scale']:g}) folded in: sample "
                         f"it without a guidance scale")
    if eta != 0.0:
        # the student learned the deterministic (eta 0) step that lands on its teacher's ODE trajectory
        raise ValueError(f"this checkpoint is a {calls}-call student: it samples deterministically (eta 0), not with "
                         f"eta {eta:g}")
    return own, calls


def progressive_labels(config: dict, sampler: str, steps: int, every: int) -> list[str]:
    """Column labels of a progressive strip from diffusion_sample(..., return_intermediates=every): "t=<timestep>"
    of each state, "x_0" for the result."""
    sched = make_scheduler(config["scheduler"], sampler)
    sched.set_timesteps(steps)
    return ["x_0" if t is None else f"t={t}" for t in intermediate_timesteps(sched.timesteps.tolist(), every)]


def diffusion_sample(model: nn.Module, config: dict, n: int, *, sampler: str = "ddim", steps: int = 50,
                     eta: float = 0.0, generator=None, class_labels=None, guidance_scale: float = 1.0,
                     device="cpu", progress: bool = False, return_intermediates: int | None = None,
                     noise: torch.Tensor | None = None):
    """Sample n images from a UNet with the scheduler config of `config["scheduler"]` (a sampler of SAMPLERS), from
    `noise` (n, C, H, W) when given, else from noise drawn first from `generator`."""
    sched = make_scheduler(config["scheduler"], sampler)
    c, h, w = config["data"]["image_shape"] if "data" in config else (model.in_channels, 28, 28)
    kwargs = dict(generator=generator, class_labels=class_labels, progress=progress)
    if sampler == "ddim":
        kwargs["eta"] = eta
    if guidance_scale != 1.0:
        if getattr(model, "num_classes", None) is None:
            raise ValueError("guidance_scale needs a class-conditional model (train with --class-conditional)")
        kwargs["guidance_scale"] = guidance_scale
    if return_intermediates:
        kwargs["return_intermediates"] = return_intermediates
    if noise is not None and tuple(noise.shape) != (n, c, h, w):
        raise ValueError(f"noise must have shape {(n, c, h, w)}, got {tuple(noise.shape)}")
    return sample(model, sched, (n, c, h, w) if noise is None else noise, steps, **kwargs)


class DDPMTrainer(Trainer):
    """Trains a UNet denoiser with the DDPM objective. models: {"model": UNet}; EMA of its weights by default."""

    kind = "ddpm"

    def __init__(self, dataset, config: DDPMConfig, model: nn.Module | None = None):
        self._given_model = model
        super().__init__(dataset, config)

    def build(self) -> None:
        cfg: DDPMConfig = self.config
        c = self.dataset.images.shape[1]
        self.conditional = cfg.class_conditional
        if self.conditional and self.dataset.labels is None:
            raise ValueError("class_conditional needs a labelled dataset (mnist, digits, or a folder of class "
                             "sub-folders)")
        if self._given_model is not None:
            model = self._given_model
        else:
            kw = {"in_channels": c, "out_channels": c, **cfg.unet}
            if self.conditional:
                kw["num_classes"] = self.dataset.num_classes
            model = UNet(**kw)
        model = model.to(self.device)
        self.scheduler = DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
                                       beta_start=cfg.beta_start, beta_end=cfg.beta_end,
                                       prediction_type=cfg.prediction_type)
        if self.world > 1:
            ddp = nn.parallel.DistributedDataParallel(model, device_ids=[self.device.index]
                                                      if self.device.type == "cuda" else None)
            self.models = {"model": ddp}
        else:
            self.models = {"model": model}
        self.optimizers = {"model": torch.optim.AdamW(model.parameters(), lr=cfg.lr or 2e-4, weight_decay=0.0)}
        if cfg.ema_decay:
            self.ema = {"model": make_ema(model, cfg.ema_decay)}

    def checkpoint_config(self) -> dict:
        return {"scheduler": dict(self.scheduler.config)}

    def check_resumable(self, path: str, config: dict) -> None:
        if config.get("student"):
            raise ValueError(f"{path} holds a {config['student']['calls']}-call student: continue it with "
                             f"gencore distill --resume")

    def train_step(self, step: int) -> dict[str, float]:
        cfg: DDPMConfig = self.config
        x0, labels = self.batch(step)
        model = self.models["model"]
        if self.conditional:  # classifier-free guidance: some labels become the null class
            drop = torch.rand(labels.shape, device=labels.device) < cfg.cfg_dropout
            labels = torch.where(drop, torch.full_like(labels, self.raw("model").null_class), labels)
        with self.autocast():
            loss = training_loss(model, x0, self.scheduler, loss_type=cfg.loss_type, snr_gamma=cfg.snr_gamma,
                                 class_labels=labels if self.conditional else None)
        self.optimizer_step("model", loss)
        return {"loss": loss.item()}

    def sample_model(self) -> nn.Module:
        return self.ema["model"].module if self.ema else self.raw("model")

    @torch.no_grad()
    def sample_images(self, n: int, generator: torch.Generator, class_labels=None, **kwargs) -> torch.Tensor:
        model = self.sample_model()
        was_training = model.training
        model.eval()
        try:
            cfg: DDPMConfig = self.config
            if self.conditional and class_labels is None:
                class_labels = torch.arange(n, device=self.device) % self.dataset.num_classes
            config = {"scheduler": dict(self.scheduler.config),
                      "data": {"image_shape": list(self.dataset.images.shape[1:])}}
            return diffusion_sample(model, config, n, sampler="ddim", steps=cfg.sample_steps, eta=cfg.sample_eta,
                                    generator=generator, class_labels=class_labels, device=self.device, **kwargs)
        finally:
            model.train(was_training)
