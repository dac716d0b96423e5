"""The fused diffusion ops: one pass for a whole DDPM/DDIM update step, one pass for the training inputs.

Layers:
    gencore::sampler_step, gencore::diffusion_training_inputs, gencore::philox_uint32
                                            C++ schemas (csrc/gencore.cpp); CPU and CUDA kernels.
    gencore::<op>_triton                    triton_op wrappers around gencore.kernels.sampler_step, registered on
                                            first use (gencore/ops/_triton_ops.py).
    sampler_step(...), diffusion_training_inputs(...), philox_uint32(...)
                                            the public functions: checks, pick a backend, dispatch.

Arguments are checked once, by the public functions. The registered Triton ops, which torch.compile graphs and
direct callers reach without them, check again what their kernels index by (the tensors' shapes, dtypes and
devices: check_step_kernel_args, check_training_kernel_args), as the C++ kernels do; scalars (guidance_scale,
clip_range, the Philox key, the training target) are trusted below the public functions.

The math of both ops is in gencore.reference.sampler_step (their pure-PyTorch twins), the noise generator in
gencore.reference.philox. Coefficients are gathered *inside* the kernels from a table on the sample's device, indexed
by each sample's timestep, so a step never synchronises with the host and a sampling loop can be captured in a CUDA
graph.

The C++/Triton diffusion_training_inputs op takes `velocity: bool` and returns (noisy, velocity), the velocity being a
0-element tensor unless asked for: the "epsilon" and "sample" targets are the inputs themselves, which the public
function returns without a copy.

Layout and dtype: the rules of gencore/_rules.py (a contiguous sample gives contiguous outputs, a channels-last
sample channels-last ones, other strides are copied first, and the other per-element inputs are brought to the
sample's layout; coefficients and math in the accumulation dtype). Philox noise is keyed on each element's *logical*
index, so it does not depend on the layout.
"""
from __future__ import annotations

import math

import torch
from torch.library import triton_op

from .. import _extension, backends
from .._rules import NUM_COEFS, TARGETS, accumulation_dtype, check_philox_args, is_channels_last, output_like, to_layout
from ..reference.philox import philox_uint32 as philox_uint32_ref
from ..reference.sampler_step import diffusion_training_inputs_ref, sampler_step_ref
from ._checks import check_fake_devices, check_float_tensor, check_like
from ._triton_ops import on_first_use, register_triton_ops

IMPLEMENTED = ("reference", "cpu", "cuda", "triton")


def _check_timesteps(timesteps, n: int, sample: torch.Tensor) -> None:
    if not isinstance(timesteps, torch.Tensor):
        raise TypeError(f"timesteps must be a torch.Tensor of shape ({n},), got {type(timesteps).__name__}")
    if timesteps.dtype != torch.int64:
        raise TypeError(f"timesteps must be an int64 tensor (one training timestep per sample), got {timesteps.dtype}")
    if timesteps.shape != (n,):
        raise ValueError(f"timesteps must have shape ({n},) (one per sample), got {tuple(timesteps.shape)}")
    if timesteps.device != sample.device:
        raise ValueError(f"timesteps is on {timesteps.device} but sample is on {sample.device}; "
                         "they must be on the same device")


def _check_coefs(coefs, columns: int, sample: torch.Tensor, sample_name: str) -> None:
    want = accumulation_dtype(sample.dtype)
    if not isinstance(coefs, torch.Tensor):
        raise TypeError(f"coefs must be a torch.Tensor of shape (T, {columns}), got {type(coefs).__name__}")
    if coefs.dim() != 2 or coefs.shape[1] != columns or coefs.shape[0] < 1:
        raise ValueError(f"coefs must have shape (T, {columns}) with T >= 1, got {tuple(coefs.shape)}")
    if coefs.dtype != want:
        raise TypeError(f"coefs must be {want} for {sample.dtype} {sample_name} (the kernels' compute dtype), "
                        f"got {coefs.dtype}")
    if coefs.device != sample.device:
        raise ValueError(f"coefs is on {coefs.device} but {sample_name} is on {sample.device}; "
                         "they must be on the same device")


def _check_same(name: str, t, ref: torch.Tensor, ref_name: str) -> None:
    check_like(name, t, ref, ref_name, ref.shape)


def _check_real(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def check_sampler_step_args(model_output, sample, timesteps, coefs, model_output_uncond, guidance_scale, clip_range,
                            threshold, noise, philox_seed, philox_offset, history1=None, history2=None) -> None:
    """Every argument of sampler_step."""
    check_step_kernel_args(model_output, sample, timesteps, coefs, model_output_uncond, threshold, noise,
                           history1, history2)
    _check_real("guidance_scale", guidance_scale)
    if clip_range is not None and not _check_real("clip_range", clip_range) > 0:
        raise ValueError(f"clip_range must be positive (x0 is clamped to [-clip_range, clip_range]), got {clip_range}")
    if noise is not None and philox_seed is not None:
        raise ValueError("give either noise or philox_seed, not both")
    if philox_seed is not None:
        check_philox_args(philox_seed, philox_offset, sample.shape[0], sample[0].numel())
    elif isinstance(philox_offset, bool) or not isinstance(philox_offset, int):
        raise TypeError(f"philox_offset must be an int, got {type(philox_offset).__name__}")
    inputs = (("model_output", model_output), ("sample", sample), ("model_output_uncond", model_output_uncond),
              ("noise", noise), ("history1", history1), ("history2", history2))
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for _, t in inputs):
        for name, t in inputs:
            if t is not None and t.requires_grad:
                raise RuntimeError(f"sampler_step is an inference op and does not support autograd, but {name} "
                                   f"requires grad: call it under torch.no_grad() or pass {name}.detach()")


def check_step_kernel_args(model_output, sample, timesteps, coefs, model_output_uncond, threshold, noise, history1,
                           history2) -> None:
    """What the sampler_step kernels index by: every tensor's shape, dtype and device agree with sample's."""
    check_float_tensor("sample", sample, min_dim=1)
    _check_same("model_output", model_output, sample, "sample")
    n = sample.shape[0]
    _check_timesteps(timesteps, n, sample)
    _check_coefs(coefs, NUM_COEFS, sample, "sample")
    if model_output_uncond is not None:
        _check_same("model_output_uncond", model_output_uncond, sample, "sample")
    if threshold is not None:
        if not isinstance(threshold, torch.Tensor):
            raise TypeError(f"threshold must be a torch.Tensor of shape ({n},) or None, got {type(threshold).__name__}")
        if threshold.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"threshold must be a float32 or float64 tensor, got {threshold.dtype}")
        if tuple(threshold.shape) != (n,):
            raise ValueError(f"threshold must have shape ({n},) (one per sample), got {tuple(threshold.shape)}")
        if threshold.device != sample.device:
            raise ValueError(f"threshold is on {threshold.device} but sample is on {sample.device}; "
                             "they must be on the same device")
    if noise is not None:
        _check_same("noise", noise, sample, "sample")
    if history1 is not None:
        _check_same("history1", history1, sample, "sample")
    if history2 is not None:
        if history1 is None:
            raise ValueError("history2 is given without history1 (a multistep history fills history1 first)")
        _check_same("history2", history2, sample, "sample")


def check_training_args(x0, noise, timesteps, coefs, target) -> None:
    """Every argument of diffusion_training_inputs."""
    check_training_kernel_args(x0, noise, timesteps, coefs)
    if target not in TARGETS:
        raise ValueError(f"target must be one of {', '.join(TARGETS)}; got {target!r}")


def check_training_kernel_args(x0, noise, timesteps, coefs) -> None:
    """What the diffusion_training_inputs kernels index by: noise, timesteps and coefs agree with x0."""
    check_float_tensor("x0", x0, min_dim=1)
    _check_same("noise", noise, x0, "x0")
    _check_timesteps(timesteps, x0.shape[0], x0)
    _check_coefs(coefs, 2, x0, "x0")


def _assert_timesteps_in_range(timesteps: torch.Tensor, num_rows: int) -> None:
    """Out-of-range timesteps: an immediate error on CPU; on CUDA a device-side assert (no host sync). The kernels
    also clamp the row index, so they never read outside coefs."""
    if timesteps.device.type != "cpu" or torch.compiler.is_compiling():
        torch._assert_async(((timesteps >= 0) & (timesteps < num_rows)).all(),
                            "gencore: timesteps out of range of the coefficient table")
    elif timesteps.numel():
        lo, hi = int(timesteps.min()), int(timesteps.max())
        if lo < 0 or hi >= num_rows:
            raise IndexError(f"timesteps must be in [0, {num_rows}) (the rows of coefs), got {lo if lo < 0 else hi}")


# ---------------------------------------------------------------------------------------------------------------------
# Fake (meta) implementations: shapes, dtypes and strides of what the kernels return, for torch.compile / export.


def _sampler_step_fake(model_output, sample, timesteps, coefs, model_output_uncond, guidance_scale, clip_range,
                       threshold, noise, philox_seed, philox_offset, history1=None, history2=None):
    check_fake_devices("sample", sample, model_output=model_output, timesteps=timesteps, coefs=coefs,
                       model_output_uncond=model_output_uncond, threshold=threshold, noise=noise, history1=history1,
                       history2=history2)
    return output_like(sample), output_like(sample)


def _training_fake(x0, noise, timesteps, coefs, velocity):
    check_fake_devices("x0", x0, noise=noise, timesteps=timesteps, coefs=coefs)
    return output_like(x0), (output_like(x0) if velocity else x0.new_empty((0,)))


def _philox_fake(sample, seed, offset):
    numel_per_sample = math.prod(sample.shape[1:])  # defined for an empty batch too (sample[0] is not)
    return sample.new_empty((sample.shape[0], numel_per_sample), dtype=torch.int64)


# ---------------------------------------------------------------------------------------------------------------------
# Autograd of diffusion_training_inputs (linear): noisy = c0 x0 + c1 noise, velocity = c0 noise - c1 x0.


def _training_setup_context(ctx, inputs, output):
    x0, noise, timesteps, coefs, velocity = inputs
    ctx.save_for_backward(timesteps, coefs)
    ctx.velocity = velocity
    ctx.x0_dtype, ctx.noise_dtype = x0.dtype, noise.dtype


def _training_backward(ctx, grad_noisy, grad_velocity):
    timesteps, coefs = ctx.saved_tensors
    dt = coefs.dtype
    rows = coefs[timesteps]
    shape = (-1,) + (1,) * (grad_noisy.dim() - 1)
    c0, c1 = rows[:, 0].reshape(shape), rows[:, 1].reshape(shape)
    g = grad_noisy.to(dt)
    grad_x0, grad_noise = c0 * g, c1 * g
    if ctx.velocity and grad_velocity is not None and grad_velocity.numel():
        gv = grad_velocity.to(dt)
        grad_x0, grad_noise = grad_x0 - c1 * gv, grad_noise + c0 * gv
    need = ctx.needs_input_grad
    return (grad_x0.to(ctx.x0_dtype) if need[0] else None, grad_noise.to(ctx.noise_dtype) if need[1] else None,
            None, None, None)


# ---------------------------------------------------------------------------------------------------------------------
# Registration


def _register_cpp_ops() -> None:
    """Fake implementations and autograd for the schemas that csrc/gencore.cpp declared (needs the extension)."""
    if not _extension.loaded():
        return
    torch.library.register_fake("gencore::sampler_step")(_sampler_step_fake)
    torch.library.register_fake("gencore::diffusion_training_inputs")(_training_fake)
    torch.library.register_fake("gencore::philox_uint32")(_philox_fake)
    torch.library.register_autograd("gencore::diffusion_training_inputs", _training_backward,
                                    setup_context=_training_setup_context)


@on_first_use
def _register_triton_ops() -> None:
    from ..kernels import sampler_step as tk  # needs triton, an optional dependency

    @triton_op("gencore::sampler_step_triton", mutates_args=())
    def sampler_step_triton(model_output: torch.Tensor, sample: torch.Tensor, timesteps: torch.Tensor,
                            coefs: torch.Tensor, model_output_uncond: torch.Tensor | None, guidance_scale: float,
                            clip_range: float | None, threshold: torch.Tensor | None, noise: torch.Tensor | None,
                            philox_seed: int | None, philox_offset: int, history1: torch.Tensor | None = None,
                            history2: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        check_step_kernel_args(model_output, sample, timesteps, coefs, model_output_uncond, threshold, noise,
                               history1, history2)
        return tk.sampler_step(model_output, sample, timesteps, coefs, model_output_uncond, guidance_scale,
                               clip_range, threshold, noise, philox_seed, philox_offset, history1, history2)

    @triton_op("gencore::diffusion_training_inputs_triton", mutates_args=())
    def diffusion_training_inputs_triton(x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
                                         coefs: torch.Tensor, velocity: bool) -> tuple[torch.Tensor, torch.Tensor]:
        check_training_kernel_args(x0, noise, timesteps, coefs)
        return tk.diffusion_training_inputs(x0, noise, timesteps, coefs, velocity)

    @triton_op("gencore::philox_uint32_triton", mutates_args=())
    def philox_uint32_triton(sample: torch.Tensor, seed: int, offset: int) -> torch.Tensor:
        return tk.philox_uint32(sample, seed, offset)

    diffusion_training_inputs_triton.register_autograd(_training_backward, setup_context=_training_setup_context)


_register_cpp_ops()


# ---------------------------------------------------------------------------------------------------------------------
# Public ops


def sampler_step(
    model_output: torch.Tensor,
    sample: torch.Tensor,
    timesteps: torch.Tensor,
    coefs: torch.Tensor,
    *,
    model_output_uncond: torch.Tensor | None = None,
    guidance_scale: float = 1.0,
    clip_range: float | None = None,
    threshold: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    philox_seed: int | None = None,
    philox_offset: int = 0,
    history1: torch.Tensor | None = None,
    history2: torch.Tensor | None = None,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One fused DDPM/DDIM/DPM-Solver++ update: guidance, x0 and epsilon, clipping, posterior mean, a multistep
    history and noise in a single pass.

    Per element of sample n, with c = coefs[timesteps[n]] (math in float32; float64 for float64 samples):

        m    = model_output_uncond + guidance_scale * (model_output - model_output_uncond)   (or model_output)
        x0   = c0 * sample + c1 * m
        x0   = clamp(x0, -threshold[n], threshold[n]) / threshold[n]  if threshold, elif clip_range: clamp(x0, +-clip)
        eps  = c2 * sample + c3 * m + c4 * x0
        prev = c5 * x0 + c6 * sample + c7 * eps + c8 * z + c9 * history1 + c10 * history2

    Args:
        model_output: (N, *) the model's prediction (epsilon, x0 or v: the scheduler encodes which in coefs);
            float16, bfloat16, float32 or float64.
        sample: (N, *) x_t, same shape, dtype and device as model_output. Contiguous and channels-last samples are
            read in place; other strides are copied first.
        timesteps: (N,) int64 on sample's device: each sample's row of coefs (different per sample allowed). Out of
            [0, T): IndexError on CPU; on CUDA a device-side assert (no host sync), the kernels clamp the index.
        coefs: (T, 11) float32 (float64 for float64 samples) on sample's device; columns x0_from_sample,
            x0_from_model, eps_from_sample, eps_from_model, eps_from_x0, prev_from_x0, prev_from_sample,
            prev_from_eps, noise_std, prev_from_history1, prev_from_history2
            (gencore._rules.COEF_COLUMNS). Built by the schedulers.
        model_output_uncond: (N, *) unconditional prediction for classifier-free guidance, or None.
        guidance_scale: the guidance weight (used only with model_output_uncond).
        clip_range: clamp x0 to [-clip_range, clip_range] (diffusers' clip_sample), or None.
        threshold: (N,) float32/float64 per-sample dynamic-threshold values s > 0 (the quantile reduction is the
            scheduler's): x0 = clamp(x0, -s, s) / s. Takes precedence over clip_range.
        noise: (N, *) the variance noise z, same shape, dtype and device as sample; or None.
        philox_seed, philox_offset: draw z inside the kernel instead (ints in [0, 2^63)): Philox4x32-10 keyed on
            (seed, sample index, offset = the step counter, element index), so a sample's noise does not depend on
            the batch size, the layout or the backend (definition: gencore.reference.philox). Exclusive with noise.
            With neither, z = 0.
        history1, history2: (N, *) a multistep solver's earlier x0 predictions (DPM-Solver++: the previous step's,
            and the one before), like sample; or None (0). history2 needs history1.
        backend: "reference", "cpu" (CPU tensors), "cuda" (CUDA tensors), "triton" (CUDA tensors; CPU tensors under
            TRITON_INTERPRET=1), "auto", or None to use gencore.use_backend / set_backend / GENCORE_BACKEND / auto.

    Returns:
        (prev_sample, pred_original_sample): sample's shape, dtype and layout (pred_original_sample is x0 after
        clipping/thresholding).

    Not differentiable (an inference op): inputs that require grad raise while grad mode is on.
    """
    check_sampler_step_args(model_output, sample, timesteps, coefs, model_output_uncond, guidance_scale, clip_range,
                            threshold, noise, philox_seed, philox_offset, history1, history2)
    name = backends.resolve(backend, sample.device, IMPLEMENTED)
    if name == "reference":
        return sampler_step_ref(model_output, sample, timesteps, coefs, model_output_uncond=model_output_uncond,
                                guidance_scale=guidance_scale, clip_range=clip_range, threshold=threshold,
                                noise=noise, philox_seed=philox_seed, philox_offset=philox_offset,
                                history1=history1, history2=history2)
    channels_last = is_channels_last(sample)
    sample = to_layout(sample, channels_last)
    model_output = to_layout(model_output, channels_last)
    if model_output_uncond is not None:
        model_output_uncond = to_layout(model_output_uncond, channels_last)
    if noise is not None:
        noise = to_layout(noise, channels_last)
    if history1 is not None:
        history1 = to_layout(history1, channels_last)
    if history2 is not None:
        history2 = to_layout(history2, channels_last)
    if threshold is not None:
        threshold = threshold.to(coefs.dtype).contiguous()
    if name != "cpu":  # the CPU kernel checks the range itself, naming the offending sample
        _assert_timesteps_in_range(timesteps, coefs.shape[0])
    if name == "triton":
        register_triton_ops()
    op = torch.ops.gencore.sampler_step_triton if name == "triton" else torch.ops.gencore.sampler_step
    return op.default(model_output, sample, timesteps, coefs.contiguous(), model_output_uncond, float(guidance_scale),
                      None if clip_range is None else float(clip_range), threshold, noise, philox_seed, philox_offset,
                      history1, history2)


def diffusion_training_inputs(
    x0: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    coefs: torch.Tensor,
    target: str = "epsilon",
    *,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The noisy sample and the training target of the DDPM objective, in one pass.

    With c = coefs[timesteps[n]] = (sqrt(abar_t), sqrt(1 - abar_t)) for sample n:
        noisy  = c0 * x0 + c1 * noise
        target = noise ("epsilon"), x0 ("sample"), or c0 * noise - c1 * x0 ("v_prediction")

    Args:
        x0: (N, *) clean samples; float16, bfloat16, float32 or float64. Contiguous or channels-last read in place.
        noise: (N, *) standard normal noise, same shape, dtype and device as x0.
        timesteps: (N,) int64 on x0's device, each sample's row of coefs (IndexError on CPU when out of [0, T);
            a device-side assert on CUDA).
        coefs: (T, 2) float32 (float64 for float64 x0) on x0's device: [sqrt(abar_t), sqrt(1 - abar_t)].
        target: "epsilon", "sample" or "v_prediction".
        backend: as for sampler_step.

    Returns:
        (noisy, target) in x0's dtype, shape and layout. For "epsilon" and "sample" the target *is* the noise / x0
        tensor passed in (no copy).

    Differentiable with respect to x0 and noise (the op is linear in them; any order).
    """
    check_training_args(x0, noise, timesteps, coefs, target)
    name = backends.resolve(backend, x0.device, IMPLEMENTED)
    if name == "reference":
        return diffusion_training_inputs_ref(x0, noise, timesteps, coefs, target)
    channels_last = is_channels_last(x0)
    x0_in, noise_in = to_layout(x0, channels_last), to_layout(noise, channels_last)
    if name != "cpu":
        _assert_timesteps_in_range(timesteps, coefs.shape[0])
    if name == "triton":
        register_triton_ops()
    op = (torch.ops.gencore.diffusion_training_inputs_triton if name == "triton"
          else torch.ops.gencore.diffusion_training_inputs)
    noisy, velocity = op(x0_in, noise_in, timesteps, coefs.contiguous(), target == "v_prediction")
    if target == "epsilon":
        return noisy, noise
    if target == "sample":
        return noisy, x0
    return noisy, velocity


def philox_uint32(sample: torch.Tensor, seed: int, offset: int = 0, *, backend: str | None = None) -> torch.Tensor:
    """The raw Philox words a backend draws for a batch shaped like `sample` (N, *): (N, numel per sample) int64
    holding uint32 values, element e of sample n in column e (gencore.reference.philox defines them). For tests and
    for checking that two backends draw bit-identical noise."""
    if not isinstance(sample, torch.Tensor) or sample.dim() < 1:
        raise TypeError("sample must be a torch.Tensor with a batch dimension (N, *)")
    check_philox_args(seed, offset, sample.shape[0], sample[0].numel() if sample.shape[0] else 0)
    name = backends.resolve(backend, sample.device, IMPLEMENTED)
    if name == "reference":
        return philox_uint32_ref(sample.shape[0], math.prod(sample.shape[1:]), seed, offset, sample.device)
    if name == "triton":
        register_triton_ops()
    op = torch.ops.gencore.philox_uint32_triton if name == "triton" else torch.ops.gencore.philox_uint32
    return op(sample, seed, offset)
