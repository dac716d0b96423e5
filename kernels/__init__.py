"""Triton kernels and their host launchers, one file per op; installed as gencore.kernels. No autograd here.

Each module ``gencore.kernels.<op>`` holds the ``@triton.jit`` kernels of one op and the host launchers that
``gencore/ops/<op>.py`` calls inside its ``torch.library.triton_op`` wrappers. Launchers start kernels through
``torch.library.wrap_triton(kernel)[grid](...)`` so that triton_op can trace them, pick block sizes by heuristics
from the shape (never ``@triton.autotune``: a kernel must compile ahead of time with fixed constexprs and run
unchanged in the interpreter, ``TRITON_INTERPRET=1``), and use no floating-point atomics (deterministic results).

Ahead-of-time compile convention (tests/build/test_triton_aot.py)
------------------------------------------------------------
Every module here that defines Triton kernels exposes::

    def aot_specs() -> list[tuple]:
        return [(label, kernel, signature, constexprs[, options]), ...]

one entry per configuration its launchers can really launch: every dtype they accept times every constexpr value
their heuristics can pick (keep the heuristics' menus short for that reason), where

    label       a unique, readable name, e.g. "fwd_apply-bf16-cl-s8-c128" (shown when it fails to compile);
    kernel      the ``@triton.jit`` function itself;
    signature   {parameter name: Triton type} for every parameter in order: "*fp16" / "*bf16" / "*fp32" / "*fp64" /
                "*i64"... for pointers, "i32" / "i64" / "fp32" for scalars (what the JIT infers: "i32" for ints below
                2**31, "fp32" for Python floats), "constexpr" for ``tl.constexpr`` parameters;
    constexprs  {constexpr parameter name: value};
    options     optional compile options the launcher passes too, e.g. {"num_warps": 4}.

The test discovers the modules with pkgutil, and compiles each spec with
``triton.compile(ASTSource(kernel, signature, constexprs), target=GPUTarget("cuda", cc, 32), options=options)``
for sm_80 and sm_90, in one subprocess without TRITON_INTERPRET (under the interpreter ``@triton.jit`` gives an
InterpretedFunction, which cannot be compiled). No GPU is needed: a kernel that a real GPU would reject (an
unsupported operation for a dtype, too much shared memory for the architecture) fails CI. A module without
``aot_specs`` that defines a Triton kernel fails the test, so a new kernel cannot be forgotten.

Every integer parameter must be listed in ``@triton.jit(do_not_specialize=[...])``: otherwise the JIT turns an
argument equal to 1 into a constexpr, a kernel the AOT test never compiled (and code such as ``S.to(tl.float32)``
that breaks on a constexpr); the test fails on such a parameter. Divisibility by 16 stays specialised (it buys
vectorised loads), so the test compiles every spec twice: with every pointer and integer marked 16-divisible, and
with none. Runtime flags (has_weight, silu, ...) are cheaper to cover than constexprs: one variant instead of two.
"""
