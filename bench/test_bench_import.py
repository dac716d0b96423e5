"""What gencore's ops cost on top of `import torch`, each in a fresh interpreter. (`import gencore` alone imports
nothing: its names load on first access; `import gencore.ops` is what a program using the fused ops pays.)

    pytest bench/test_bench_import.py --benchmark-only --benchmark-json=import.json   # figures: extra_info

The timed rounds import gencore.ops; before each, un-timed, a fresh interpreter imports torch alone, so the two
alternate and share the machine's state. The row's extra_info holds the fastest of each, timed inside the
interpreter in wall-clock and in CPU seconds (the steadier of the two where other work shares the CPUs), and their
differences: gencore's own cost (the extension, the ops and their registration with
torch.library, gencore.nn), which should stay under 0.3 s on a machine without a GPU. TorchDynamo, Inductor and
Triton are not part of it: the Triton ops register on first use (gencore/ops/_triton_ops.py), and
tests/build/test_import.py fails if gencore's ops import them. A wall-clock bound is a benchmark, not a test: on a
shared machine it would fail at random.
"""
from __future__ import annotations

import os
import subprocess
import sys

ROUNDS = 5
_CODE = ("import time; wall, cpu = time.perf_counter(), time.process_time(); import {module}; "
         "print(time.perf_counter() - wall, time.process_time() - cpu)")


def import_seconds(module: str) -> tuple[float, float]:
    """(wall-clock, CPU) seconds a fresh interpreter spends in `import module` (its own start-up excluded)."""
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "GENCORE_BACKEND")}
    out = subprocess.run([sys.executable, "-c", _CODE.format(module=module)], env=env, capture_output=True,
                         text=True, check=True, timeout=300)
    wall, cpu = out.stdout.split()[-2:]
    return float(wall), float(cpu)


def test_import_gencore_over_import_torch(benchmark):
    seconds = {"torch": [], "gencore": []}

    def import_torch_first():
        seconds["torch"].append(import_seconds("torch"))

    def import_gencore():
        seconds["gencore"].append(import_seconds("gencore.ops"))

    benchmark.pedantic(import_gencore, setup=import_torch_first, rounds=ROUNDS, iterations=1)
    for i, clock in enumerate(("wall", "cpu")):
        fastest = {module: min(s[i] for s in runs) for module, runs in seconds.items()}
        benchmark.extra_info[f"import torch {clock} s"] = round(fastest["torch"], 3)
        benchmark.extra_info[f"import gencore.ops {clock} s"] = round(fastest["gencore"], 3)
        benchmark.extra_info[f"gencore - torch {clock} s"] = round(fastest["gencore"] - fastest["torch"], 3)
