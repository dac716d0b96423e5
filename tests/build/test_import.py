"""What `import gencore` costs and binds: no TorchDynamo, Inductor or Triton until they are needed; every public
subpackage reachable as an attribute, loaded on first access; the Triton ops registered on first use, inside a
torch.compile trace too. (The time it takes is a benchmark: bench/test_bench_import.py.)

The checks that depend on what a process has imported run in a fresh interpreter: this one has imported everything.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

import gencore
from gencore import backends

# Modules `import gencore` must leave unimported: it imports nothing (so `gencore --help` answers at once), and
# neither do gencore's ops import TorchDynamo and Inductor (~2 s) or Triton and its kernels (~0.3 s).
HEAVY = ("torch", "torch._dynamo", "torch._inductor", "triton", "gencore.kernels", "gencore.ops", "gencore._C")
LAZY = ("gencore.data", "gencore.diffusion", "gencore.gan", "gencore.metrics", "gencore.models", "gencore.training")


def _run(code: str) -> str:
    """Run `code` in a fresh interpreter (this one's environment, TRITON_INTERPRET included) and return its stdout."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_import_gencore_leaves_the_heavy_modules_unimported_and_binds_subpackages_on_access():
    """Nothing of HEAVY or LAZY after `import gencore`; then the README's `gencore.diffusion.
    DPMSolverMultistepScheduler()` works, and loads that subpackage alone."""
    out = _run(textwrap.dedent(f"""
        import json, sys
        import gencore

        print(json.dumps([m for m in {HEAVY + LAZY!r} if m in sys.modules]))
        import torch
        import gencore.ops
        print(json.dumps([[m for m in {HEAVY[1:5]!r} if m in sys.modules],
                          hasattr(torch.ops.gencore, "group_norm_silu_fwd")]))
        scheduler = gencore.diffusion.DPMSolverMultistepScheduler()
        print(json.dumps([type(scheduler).__module__, "gencore.models" in sys.modules]))
    """))
    loaded, (loaded_by_ops, registered), (module, models_loaded) = map(json.loads, out.splitlines())
    assert loaded == [], f"import gencore imported {loaded}"
    assert loaded_by_ops == [] and registered, f"import gencore.ops imported {loaded_by_ops}"
    assert module == "gencore.diffusion.dpm_solver" and not models_loaded


def test_dir_and_all_list_what_resolves():
    names = set(dir(gencore))
    for name in gencore.__all__:
        assert name in names, name
        assert getattr(gencore, name) is not None, name
    for name in gencore._LAZY_SUBMODULES:
        assert getattr(gencore, name).__name__ == f"gencore.{name}"
    with pytest.raises(AttributeError, match="no_such_thing"):
        gencore.no_such_thing  # noqa: B018


@pytest.mark.skipif(backends._triton_error() is not None, reason="triton is not importable")
def test_triton_ops_register_inside_a_fullgraph_compile_trace():
    """A compiled region whose first gencore call chooses the triton backend registers the Triton ops while
    TorchDynamo traces it, without a graph break (fullgraph=True would raise). The ops' kernels compile on a GPU
    only; here the registration call is traced on its own."""
    out = _run(textwrap.dedent("""
        import torch
        from gencore.ops import _triton_ops

        def region(x):
            _triton_ops.register_triton_ops()
            return x + 1

        before = _triton_ops.triton_ops_registered()
        y = torch.compile(region, fullgraph=True, backend="eager")(torch.zeros(2))
        print(before, _triton_ops.triton_ops_registered(), hasattr(torch.ops.gencore, "sampler_step_triton"),
              y.sum().item())
    """))
    assert out.split() == ["False", "True", "True", "2.0"]


@pytest.mark.skipif(backends._can_serve("triton", torch.device("cpu")) is not None,
                    reason="the triton backend cannot serve CPU tensors here (TRITON_INTERPRET=1 is not set)")
def test_first_triton_call_registers_the_triton_ops():
    out = _run(textwrap.dedent("""
        import torch
        import gencore
        from gencore.ops import _triton_ops
        from gencore.testing import tolerance

        before = _triton_ops.triton_ops_registered()
        x = torch.randn(2, 4, 3)
        y = gencore.ops.group_norm_silu(x, 2, backend="triton")
        ref = gencore.ops.group_norm_silu(x, 2, backend="reference")
        print(before, _triton_ops.triton_ops_registered(), torch.allclose(y, ref, **tolerance(torch.float32)))
    """))
    assert out.split() == ["False", "True", "True"]
