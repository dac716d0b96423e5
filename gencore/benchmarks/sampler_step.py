"""Benchmark cases of gencore.ops.sampler_step: one DDIM update step (epsilon prediction, clip_sample=True), and one
DPM-Solver++ 2M step (the multistep update: the previous step's data prediction is a third input).

Providers: reference (eager PyTorch twin), torch_compile (the twin under torch.compile), diffusers (diffusers'
DDIMScheduler.step() configured the same way, where diffusers is installed), cpu / cuda / triton (gencore's
backends, where they can run here), memcpy (a copy of the same bytes: the roofline).

Modes, all at the same timestep t = 500 of a 50-step schedule out of 1000 (linear betas):
    "ddim eta=0"          deterministic DDIM.
    "ddim eta=1 noise"    stochastic DDIM with the variance noise given as a tensor (diffusers: variance_noise=).
    "ddim eta=1 philox"   stochastic DDIM drawing its own noise: gencore's in-kernel Philox (reference: the Philox
                          twin in plain PyTorch) against diffusers drawing randn from a generator inside step().
    "dpm++ 2M"            step 10 of 20 of DPM-Solver++ 2M (second order: reads the previous data prediction);
                          diffusers: DPMSolverMultistepScheduler.step() with its history set to the same tensor.

Shapes: (64, 1, 28, 28) MNIST, (16, 4, 64, 64) an SD latent batch, (4, 3, 256, 256) pixel space; float32 on CPU,
float16 on CUDA. quick=True: one small shape (CI smoke runs and `gencore bench --quick`).

Bytes moved: reads model_output and sample, writes prev_sample and pred_original_sample (4 x numel), plus the noise
read in "eta=1 noise" or the history in "dpm++ 2M" (5 x). The coefficient table and timesteps are negligible.
"""
from __future__ import annotations

import functools
import math

import torch

from .._rules import NUM_COEFS, accumulation_dtype
from . import Case, memcpy_case

OP = "sampler_step"
SHAPES = [(64, 1, 28, 28), (16, 4, 64, 64), (4, 3, 256, 256)]
QUICK_SHAPES = [(2, 4, 16, 16)]
MODES = ("ddim eta=0", "ddim eta=1 noise", "ddim eta=1 philox", "dpm++ 2M")
DPM_STEPS, DPM_INDEX = 20, 10
NUM_TRAIN_TIMESTEPS = 1000
NUM_INFERENCE_STEPS = 50
TIMESTEP = 500
CLIP_RANGE = 1.0


def _eta(mode: str) -> float:
    return 0.0 if "eta=0" in mode else 1.0


def _alphas_cumprod() -> torch.Tensor:
    """diffusers' "linear" schedule with its default beta range, in float64."""
    betas = torch.linspace(1e-4, 0.02, NUM_TRAIN_TIMESTEPS, dtype=torch.float64)
    return torch.cumprod(1 - betas, 0)


def ddim_table(eta: float, dtype: torch.dtype = torch.float32, device="cpu") -> torch.Tensor:
    """The (T, 11) coefficient table of DDIM with epsilon prediction ("leading" spacing, set_alpha_to_one=True), one
    row per training timestep: what gencore's DDIMScheduler builds, written out here so the benchmark stands alone."""
    abar = _alphas_cumprod()
    t = torch.arange(NUM_TRAIN_TIMESTEPS)
    prev_t = t - NUM_TRAIN_TIMESTEPS // NUM_INFERENCE_STEPS
    abar_t = abar[t]
    abar_prev = torch.where(prev_t >= 0, abar[prev_t.clamp(min=0)], torch.ones_like(abar_t))
    beta_t = 1 - abar_t
    variance = (1 - abar_prev) / beta_t * (1 - abar_t / abar_prev)
    sigma = eta * variance.sqrt()
    table = torch.zeros(NUM_TRAIN_TIMESTEPS, NUM_COEFS, dtype=torch.float64)
    table[:, 0] = 1 / abar_t.sqrt()                 # x0 = (x - sqrt(1 - abar) eps) / sqrt(abar)
    table[:, 1] = -(beta_t.sqrt()) / abar_t.sqrt()
    table[:, 3] = 1.0                               # eps = model_output
    table[:, 5] = abar_prev.sqrt()                  # prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - s^2) eps + s z
    table[:, 7] = (1 - abar_prev - sigma ** 2).clamp(min=0).sqrt()
    table[:, 8] = sigma
    return table.to(dtype=dtype, device=device)


def _providers(device: str, mode: str) -> list[str]:
    from .. import backends
    from ..ops import sampler_step as _  # noqa: F401  (registers the ops)
    import sys

    implemented = sys.modules["gencore.ops.sampler_step"].IMPLEMENTED
    available = backends.available_backends()
    # torch.compile of the reference's Philox twin (ten unrolled rounds of int64 arithmetic) takes inductor minutes
    # to build on a small CPU machine: that mode compares the fused ops with eager and diffusers only.
    providers = ["reference"] if mode.endswith("philox") else ["reference", "torch_compile"]
    try:
        import diffusers  # noqa: F401
        providers.append("diffusers")
    except ImportError:
        pass
    candidates = ("cpu",) if device == "cpu" else ("cuda", "triton")
    providers += [p for p in candidates if p in available and p in implemented]
    return providers


@functools.lru_cache(maxsize=None)
def _compiled_reference():
    """The twin under torch.compile, static shapes; the recompile limit is raised so that every benchmark shape and
    mode stays compiled instead of silently falling back to eager."""
    from ..reference.sampler_step import sampler_step_ref

    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    return torch.compile(sampler_step_ref, dynamic=False)


def _diffusers_scheduler(device):
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, beta_schedule="linear",
                              prediction_type="epsilon", clip_sample=True, clip_sample_range=CLIP_RANGE,
                              set_alpha_to_one=True, timestep_spacing="leading")
    scheduler.set_timesteps(NUM_INFERENCE_STEPS, device=device)
    return scheduler


def _dpm_setup(provider: str, sample, model_output, history):
    """One DPM-Solver++ 2M step at step DPM_INDEX of DPM_STEPS (second order)."""
    if provider == "diffusers":
        from diffusers import DPMSolverMultistepScheduler

        scheduler = DPMSolverMultistepScheduler()
        scheduler.set_timesteps(DPM_STEPS, device=sample.device)
        t = scheduler.timesteps[DPM_INDEX]
        scheduler.lower_order_nums = 2

        def diffusers_step():  # its state rewound so that every call is the same second-order step
            scheduler._step_index = DPM_INDEX
            scheduler.model_outputs = [None, history]
            return scheduler.step(model_output, t, sample, return_dict=False)
        return diffusers_step
    from ..diffusion import DPMSolverMultistepScheduler

    scheduler = DPMSolverMultistepScheduler()
    scheduler.set_timesteps(DPM_STEPS)
    acc = accumulation_dtype(sample.dtype)
    coefs = scheduler.coefficient_table(sample.device, acc)
    rows = torch.full((sample.shape[0],), DPM_INDEX, dtype=torch.long, device=sample.device)
    if provider == "reference":
        from ..reference.sampler_step import sampler_step_ref
        return lambda: sampler_step_ref(model_output, sample, rows, coefs, history1=history)
    if provider == "torch_compile":
        compiled = _compiled_reference()
        return lambda: compiled(model_output, sample, rows, coefs, history1=history)
    from ..ops import sampler_step
    return lambda: sampler_step(model_output, sample, rows, coefs, history1=history, backend=provider)


def _setup(provider: str, shape, dtype: torch.dtype, device: str, mode: str):
    def setup():
        gen = torch.Generator().manual_seed(0)
        sample = torch.randn(shape, generator=gen).to(device=device, dtype=dtype)
        model_output = torch.randn(shape, generator=gen).to(device=device, dtype=dtype)
        if mode.startswith("dpm++"):
            return _dpm_setup(provider, sample, model_output,
                              torch.randn(shape, generator=gen).to(device=device, dtype=dtype))
        noise = torch.randn(shape, generator=gen).to(device=device, dtype=dtype) if mode.endswith("noise") else None
        eta = _eta(mode)
        philox = mode.endswith("philox")
        if provider == "diffusers":
            scheduler = _diffusers_scheduler(device)
            generator = torch.Generator(device=device).manual_seed(0) if philox else None

            def diffusers_step():
                return scheduler.step(model_output, TIMESTEP, sample, eta=eta, variance_noise=noise,
                                      generator=generator, return_dict=False)
            return diffusers_step

        acc = accumulation_dtype(dtype)
        coefs = ddim_table(eta, acc, device)
        timesteps = torch.full((shape[0],), TIMESTEP, dtype=torch.long, device=device)
        kwargs = dict(clip_range=CLIP_RANGE, noise=noise, philox_seed=0 if philox else None, philox_offset=0)
        if provider == "reference":
            from ..reference.sampler_step import sampler_step_ref
            return lambda: sampler_step_ref(model_output, sample, timesteps, coefs, **kwargs)
        if provider == "torch_compile":
            compiled = _compiled_reference()
            return lambda: compiled(model_output, sample, timesteps, coefs, **kwargs)
        from ..ops import sampler_step
        return lambda: sampler_step(model_output, sample, timesteps, coefs, **kwargs, backend=provider)

    return setup


def cases(device: str = "cpu", quick: bool = False) -> list[Case]:
    """Every (shape, mode, provider) case of one DDIM step on `device` ("cpu" or "cuda"), memcpy rows included."""
    device = str(torch.device(device).type)
    dtype = torch.float32 if device == "cpu" else torch.float16
    dname = str(dtype).replace("torch.", "")
    out = []
    for shape in QUICK_SHAPES if quick else SHAPES:
        label = "(" + ",".join(map(str, shape)) + ")"
        numel_bytes = math.prod(shape) * dtype.itemsize
        for mode in MODES:
            nbytes = (5 if mode.endswith("noise") or mode.startswith("dpm++") else 4) * numel_bytes
            for provider in _providers(device, mode):
                out.append(Case(OP, provider, label, dname, mode, nbytes, _setup(provider, shape, dtype, device,
                                                                                     mode)))
            out.append(memcpy_case(OP, label, dname, mode, nbytes, device))
    return out
