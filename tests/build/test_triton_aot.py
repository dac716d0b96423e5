"""Every Triton kernel of gencore.kernels compiles ahead of time for sm_80 (A100) and sm_90 (H100), no GPU needed.

The kernels run in the interpreter in the other tests (no GPU here); the interpreter accepts things a GPU compiler
rejects. So each module's `aot_specs()` (the convention is in gencore.kernels' docstring) lists every configuration
its launchers can pick, and each is compiled to a cubin for both targets, its shared memory checked against the
architecture's limit. Each spec is compiled twice, as the JIT would for two kinds of launch: "aligned" (every pointer
16-byte aligned and every integer a multiple of 16: the usual case, with vectorised loads) and "unaligned" (no
divisibility known: odd sizes or offset views, scalar loads): different code paths of the compiler.

The compilation runs in one subprocess without TRITON_INTERPRET: conftest.py sets it before gencore is imported,
and under it `@triton.jit` returns an InterpretedFunction, which cannot be compiled. Specs compile in parallel
(GENCORE_AOT_JOBS, default the CPU count); Triton's cache makes reruns fast.
"""
from __future__ import annotations

import concurrent.futures
import importlib
import inspect
import json
import multiprocessing
import os
import pkgutil
import subprocess
import sys

import pytest

triton = pytest.importorskip("triton")

from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

import gencore.kernels  # noqa: E402
from gencore.kernels import group_norm_silu as tk  # noqa: E402

TARGETS = (80, 90)
# Largest shared memory a block can opt into: A100 (sm_80) 163 KiB, H100 (sm_90) 227 KiB.
MAX_SHARED_BYTES = {80: 166912, 90: 232448}


# ---------------------------------------------------------------------------------------------------------------------
# The subprocess side (python tests/build/test_triton_aot.py): compile everything, one JSON line per (spec, target).


def _modules():
    """(module name, module) for every module of gencore.kernels."""
    for info in sorted(pkgutil.iter_modules(gencore.kernels.__path__), key=lambda i: i.name):
        yield info.name, importlib.import_module(f"gencore.kernels.{info.name}")


def _jit_functions(module):
    return [name for name, obj in vars(module).items() if isinstance(obj, JITFunction) and obj.__module__ ==
            module.__name__]


def _all_specs():
    specs = []
    for name, module in _modules():
        if not hasattr(module, "aot_specs"):
            if _jit_functions(module):
                specs.append((name, None, "aot_specs() is missing but the module defines Triton kernels"))
            continue
        for spec in module.aot_specs():
            specs.append((name, spec, None))
    return specs


def _specialised_scalars(kernel, signature) -> list[str]:
    """Integer parameters the JIT would turn into a constexpr when they equal 1 (a kernel aot_specs never built)."""
    return [p.name for p in kernel.params if signature.get(p.name) in ("i32", "i64") and not p.do_not_specialize]


def _compile(task):
    index, cc, aligned = task
    module, spec, error = _SPECS[index]
    if error is not None:
        return dict(module=module, label="<module>", cc=cc, aligned=aligned, ok=False, error=error)
    label, kernel, signature, constexprs = spec[:4]
    options = spec[4] if len(spec) > 4 else {}
    result = dict(module=module, label=label, cc=cc, aligned=aligned)
    try:
        specialised = _specialised_scalars(kernel, signature)
        if specialised:
            raise RuntimeError(f"integer parameters {specialised} are not do_not_specialize: the JIT would compile a "
                               "constexpr variant when they equal 1 that this test never sees")
        attrs = None
        if aligned:  # what the JIT records for 16-byte-aligned pointers and integers divisible by 16
            attrs = {(i,): [["tt.divisibility", 16]] for i, kind in enumerate(signature.values())
                     if kind.startswith("*") or kind in ("i32", "i64")}
        src = triton.compiler.ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
        compiled = triton.compile(src, target=GPUTarget("cuda", cc, 32), options=options)
        if "cubin" not in compiled.asm:
            raise RuntimeError("no cubin was produced")
        shared = compiled.metadata.shared
        if shared > MAX_SHARED_BYTES[cc]:
            raise RuntimeError(f"needs {shared} bytes of shared memory; sm_{cc} allows {MAX_SHARED_BYTES[cc]}")
        result.update(ok=True, shared=shared, num_warps=compiled.metadata.num_warps)
    except Exception as exc:  # every failure is reported, with its spec, by the test
        result.update(ok=False, error=f"{type(exc).__name__}: {exc}"[-3000:])
    return result


_SPECS: list = []


def _main() -> None:
    _SPECS.extend(_all_specs())
    tasks = [(i, cc, aligned) for i in range(len(_SPECS)) for cc in TARGETS for aligned in (True, False)]
    jobs = int(os.environ.get("GENCORE_AOT_JOBS", "0")) or os.cpu_count() or 1
    if jobs == 1:
        results = map(_compile, tasks)
    else:  # forked workers inherit _SPECS (kernels are not picklable); nothing here touches CUDA
        pool = concurrent.futures.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork"))
        results = pool.map(_compile, tasks, chunksize=4)
    for result in results:
        print(json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------------------------------------
# The pytest side


@pytest.fixture(scope="module")
def aot_results():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, os.path.abspath(__file__)], env=env, capture_output=True, text=True,
                          timeout=1500)
    if proc.returncode != 0:
        pytest.fail(f"the AOT compile subprocess failed (exit {proc.returncode}):\n{proc.stderr[-5000:]}")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def test_every_kernel_compiles_for_sm80_and_sm90(aot_results):
    assert aot_results, "no aot_specs() found under gencore.kernels"
    failures = [f"{r['module']}:{r['label']} sm_{r['cc']} {'aligned' if r['aligned'] else 'unaligned'}: "
                f"{r['error']}" for r in aot_results if not r["ok"]]
    assert not failures, f"{len(failures)} of {len(aot_results)} compilations failed:\n" + "\n".join(failures)
    for cc in TARGETS:
        assert any(r["cc"] == cc for r in aot_results)


def test_specs_are_well_formed():
    """Unique labels; signatures name every kernel parameter, with every constexpr given a value."""
    for name, module in _modules():
        if not hasattr(module, "aot_specs"):
            continue
        labels = set()
        for spec in module.aot_specs():
            label, kernel, signature, constexprs = spec[:4]
            assert label not in labels, f"{name}: duplicate label {label}"
            labels.add(label)
            params = list(inspect.signature(kernel.fn).parameters)
            assert list(signature) == params, f"{name}:{label}: signature {list(signature)} != parameters {params}"
            wanted = {p for p, t in signature.items() if t == "constexpr"}
            assert set(constexprs) == wanted, f"{name}:{label}: constexprs {sorted(constexprs)} != {sorted(wanted)}"


def test_group_norm_silu_launch_plans_are_compiled_ahead_of_time():
    """Whatever shape comes in, launch_plan picks a tile configuration that aot_specs compiles."""
    compiled = {(c["BLOCK_S"], c["BLOCK_C"], c["CHANNELS_LAST"]) for c in tk.tile_configs()}
    specs = {spec[0] for spec in tk.aot_specs()}
    for n in (1, 2, 64):
        for c in (1, 3, 12, 64, 160, 320, 512, 1280, 4096):
            for spatial in (1, 2, 15, 196, 561, 784, 4096, 65536):
                for channels_last in (False, True):
                    plan = tk.launch_plan(n, c, spatial, channels_last)
                    key = (plan["BLOCK_S"], plan["BLOCK_C"], plan["CHANNELS_LAST"])
                    assert key in compiled, (n, c, spatial, channels_last, plan)
                    assert 1 <= plan["SPLIT"] <= tk.MAX_SPLIT and plan["SPLIT"] * plan["CHUNK_S"] >= spatial
                    assert (plan["SPLIT"] - 1) * plan["CHUNK_S"] < spatial  # no empty chunk
                    assert plan["CHUNK_S"] % plan["BLOCK_S"] == 0
    for dtype in ("fp16", "bf16", "fp32", "fp64"):
        assert f"fwd_merge-{dtype}" in specs and f"bwd_merge-{dtype}" in specs


if __name__ == "__main__":
    _main()
