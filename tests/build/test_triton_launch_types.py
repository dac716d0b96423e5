"""Every Triton launch the launchers really make is one that tests/build/test_triton_aot.py compiles, typed as the JIT types it.

The AOT test compiles the signatures of each module's `aot_specs()`; a hand-written signature can disagree with what
the JIT infers from the values a launcher really passes (an int argument is i32 or i64 by its value: the sampler
step's float bit patterns were declared i64 while 0.0 arrives as i32, a kernel no test ever compiled). So here the
launchers run under the interpreter over every option they take, each launch is recorded at `wrap_triton`, every
argument is typed with Triton's own `mangle_type` (the JIT's rule), and each launch must equal, parameter for
parameter, a spec of `aot_specs()` with the same kernel and constexprs. The AOT test then compiles exactly these.
"""
from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest
import torch

triton = pytest.importorskip("triton")

from triton.runtime.interpreter import InterpretedFunction  # noqa: E402
from triton.runtime.jit import KernelParam, mangle_type  # noqa: E402

import gencore.kernels  # noqa: E402
from gencore import backends  # noqa: E402
from gencore._rules import accumulation_dtype  # noqa: E402
from gencore.diffusion import DDIMScheduler, DDPMScheduler  # noqa: E402
from gencore.ops import (diffusion_training_inputs, gradient_norm_penalty, gradient_penalty_interpolate,  # noqa: E402
                         group_norm_silu, philox_uint32, sampler_step)

pytestmark = pytest.mark.skipif(backends._can_serve("triton", torch.device("cpu")) is not None,
                                reason="the Triton interpreter (TRITON_INTERPRET=1) is not active")

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def _kernel_modules():
    for info in pkgutil.iter_modules(gencore.kernels.__path__):
        module = importlib.import_module(f"gencore.kernels.{info.name}")
        if hasattr(module, "wrap_triton") and hasattr(module, "aot_specs"):
            yield module


class _Recorder:
    def __init__(self, real):
        self.real, self.launches = real, []

    def __call__(self, kernel):
        launcher = self.real(kernel)
        recorder = self

        class Grid:
            def __getitem__(self, grid):
                launch = launcher[grid]

                def call(*args, **kwargs):
                    recorder.launches.append((kernel, args, kwargs))
                    return launch(*args, **kwargs)
                return call
        return Grid()


@pytest.fixture
def record(monkeypatch):
    recorders = []
    for module in _kernel_modules():
        rec = _Recorder(module.wrap_triton)
        monkeypatch.setattr(module, "wrap_triton", rec)
        recorders.append(rec)

    def launches():
        return [launch for rec in recorders for launch in rec.launches]
    return launches


def _jit_typing(kernel, args, kwargs):
    """(signature, constexprs, options) of one launch, as the JIT derives them: a parameter's annotation
    (e.g. `tl.int64`) if it has one, else the type of its value (Triton's own mangle_type)."""
    params = list(inspect.signature(kernel.fn).parameters.items())
    annotated = {name: KernelParam(i, param, False, False).annotation_type for i, (name, param) in enumerate(params)}
    values = dict(zip([name for name, _ in params], args))
    values.update({k: v for k, v in kwargs.items() if k in dict(params)})
    options = {k: v for k, v in kwargs.items() if k not in dict(params)}
    signature, constexprs = {}, {}
    for name, param in params:
        if "constexpr" in str(param.annotation):
            signature[name] = "constexpr"
            constexprs[name] = values[name]
        else:
            signature[name] = annotated[name] or mangle_type(values[name])
    return signature, constexprs, options


def _check_covered(launches):
    specs = [spec for module in _kernel_modules() for spec in module.aot_specs()]
    assert launches, "no Triton launch was recorded"
    problems, seen = [], set()
    for kernel, args, kwargs in launches:
        signature, constexprs, options = _jit_typing(kernel, args, kwargs)
        key = (kernel.fn.__name__, tuple(signature.items()), tuple(sorted(constexprs.items())))
        if key in seen:
            continue
        seen.add(key)
        same_config = [s for s in specs if s[1] is kernel and s[3] == constexprs]
        if not same_config:
            problems.append(f"{kernel.fn.__name__} {constexprs}: no aot_specs entry with these constexprs")
            continue
        # The spec of this dtype is the one closest to the launch (the dtypes' specs differ in their pointers).
        nearest = min(same_config, key=lambda s: sum(s[2].get(k) != v for k, v in signature.items()))
        label, _, spec_signature, _, *spec_options = nearest
        if spec_signature != signature:
            diff = {k: (spec_signature.get(k), v) for k, v in signature.items() if spec_signature.get(k) != v}
            problems.append(f"{label}: (spec, launched) types differ: {diff}")
        if (spec_options[0] if spec_options else {}) != options:
            problems.append(f"{label}: launch options {options} != spec options {spec_options}")
    assert not problems, "\n".join(problems)
    return seen


def test_group_norm_silu_launches_are_compiled_ahead_of_time(record):
    gen = torch.Generator().manual_seed(0)
    for dtype in DTYPES:
        for channels_last in (False, True):
            for full in (False, True):
                x = torch.randn(2, 8, 5, 6, generator=gen).to(dtype)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                x.requires_grad_()
                extra = {}
                if full:
                    extra = dict(weight=torch.randn(8, generator=gen).to(dtype).requires_grad_(),
                                 bias=torch.randn(8, generator=gen).to(dtype).requires_grad_(),
                                 temb=torch.randn(2, 8, generator=gen).to(dtype).requires_grad_(),
                                 scale_shift=torch.randn(2, 16, generator=gen).to(dtype).requires_grad_())
                y = group_norm_silu(x, 4, activation="silu" if full else None, backend="triton", **extra)
                y.sum().backward()
    _check_covered(record())


def test_sampler_step_launches_are_compiled_ahead_of_time(record):
    gen = torch.Generator().manual_seed(0)
    for dtype in DTYPES:
        acc = accumulation_dtype(dtype)
        for scheduler in (DDPMScheduler(), DDIMScheduler()):
            scheduler.set_timesteps(10)
            coefs = scheduler.coefficient_table(dtype=acc)
            for channels_last in (False, True):
                x = torch.randn(3, 4, 5, 6, generator=gen).to(dtype)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                m = torch.randn(x.shape, generator=gen).to(dtype)
                t = torch.tensor([900, 500, 0])
                # The defaults (every float 0 or absent), then each option, with the values users pass.
                options = [{}, dict(model_output_uncond=m, guidance_scale=0.0),
                           dict(model_output_uncond=m, guidance_scale=2.5), dict(clip_range=1.0),
                           dict(threshold=torch.rand(3, generator=gen) + 0.5), dict(noise=torch.randn_like(x)),
                           dict(philox_seed=0), dict(philox_seed=2**40 + 3, philox_offset=2**33 + 5)]
                for kw in options:
                    sampler_step(m, x, t, coefs, backend="triton", **kw)
                # The scheduler's own route to the op (t a 0-d tensor, expanded per sample).
                scheduler.step(m, torch.tensor(500), x, philox_seed=7)
            train = DDPMScheduler().noise_coefficients(dtype=acc)
            for target in ("epsilon", "sample", "v_prediction"):
                diffusion_training_inputs(x, m, t, train, target, backend="triton")
        philox_uint32(torch.empty(3, 50, dtype=dtype), 5, 2**33 + 1, backend="triton")
    _check_covered(record())


def test_gradient_penalty_launches_are_compiled_ahead_of_time(record):
    gen = torch.Generator().manual_seed(0)
    for dtype in DTYPES:
        for shape in ((4, 3, 5, 5), (3, 7)):
            real, fake = torch.randn(shape, generator=gen).to(dtype), torch.randn(shape, generator=gen).to(dtype)
            alpha = torch.rand(shape[0], generator=gen).to(dtype)
            gradient_penalty_interpolate(real.requires_grad_(), fake, alpha, backend="triton").sum().backward()
            for center, one_sided, scale in ((1.0, False, 1.0), (0.0, False, 1.0), (1.0, True, 0.5), (1, False, 1)):
                g = torch.randn(shape, generator=gen).to(dtype).requires_grad_()
                gradient_norm_penalty(g, center, one_sided, grad_scale=scale, backend="triton").backward()
    _check_covered(record())


def test_interpreted_kernels_launch_where_wrap_triton_refuses_them(monkeypatch):
    """torch 2.11 (the supported floor) raises in wrap_triton for the interpreter's kernels; torch 2.13 hands them back.
    The launchers take the kernel itself under the interpreter, so the interpreter route works on both."""
    real = torch.library.wrap_triton

    def torch_2_11_wrap_triton(kernel):
        if isinstance(kernel, InterpretedFunction):
            raise RuntimeError("wrap_triton only works on functions annotated with triton.jit or triton.autotune")
        return real(kernel)

    monkeypatch.setattr(torch.library, "wrap_triton", torch_2_11_wrap_triton)
    x = torch.randn(2, 8, 3, 3)
    group_norm_silu(x, 4, backend="triton")
    s = DDIMScheduler()
    s.set_timesteps(10)
    sampler_step(x, x, torch.tensor([900, 0]), s.coefficient_table(), backend="triton")
    gradient_norm_penalty(x, backend="triton")
