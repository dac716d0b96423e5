"""`gencore bench` (arguments: gencore.cli): time every provider of the fused ops and print the markdown ratio table of
that one run."""
from __future__ import annotations

import importlib
import os
import platform
import pkgutil
import sys

import torch

from .. import benchmarks
from ._device import resolve_device


def _ops() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(benchmarks.__path__) if not m.name.startswith("_"))


def run(args) -> int:
    # The CPU memory column runs torch.profiler, whose kineto library prints a "profiler_start"/"profiler_stop"
    # line for every profiled call into the progress lines and the table; level 6 keeps it quiet (read when the
    # profiler first starts; a value the user set wins).
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    known = _ops()
    ops = args.op or known
    for op in ops:
        if op not in known:
            raise ValueError(f"unknown op {op!r}; benchmarked ops: {', '.join(known)}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = str(resolve_device(args.device))
    cases = []
    for op in ops:
        cases += importlib.import_module(f"gencore.benchmarks.{op}").cases(device=device, quick=args.quick)
    print(f"# {len(cases)} cases on {device} ({torch.get_num_threads()} threads)", file=sys.stderr)
    results = benchmarks.run(cases, min_time=args.min_time)
    name = torch.cuda.get_device_name() if device == "cuda" else _cpu_name()
    print(f"device: {name}, torch {torch.__version__}, {torch.get_num_threads()} threads"
          + (" (quick shapes)" if args.quick else ""))
    print()
    print(benchmarks.table(results))
    return 0


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} ({platform.machine()})"
    except OSError:
        pass
    return platform.processor() or platform.machine()
