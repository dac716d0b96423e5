"""`gencore bench`: time every provider of the fused ops and print the markdown ratio table of that one run."""
from __future__ import annotations

import importlib
import pkgutil
import sys

from ._args import resolve_device


def _ops() -> list[str]:
    import gencore.benchmarks as pkg

    return sorted(m.name for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_"))


def add_parser(sub, name):
    p = sub.add_parser(name, help="benchmark the fused ops against eager PyTorch, torch.compile and memcpy")
    p.add_argument("--op", action="append", default=None,
                   help="op to benchmark (repeatable; default: all of gencore/benchmarks/*.py)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="device of the tensors (default: cuda if a GPU is present, else cpu)")
    p.add_argument("--quick", action="store_true", help="small shapes only (a smoke test, not a measurement)")
    p.add_argument("--min-time", type=float, default=0.5, help="seconds of timing per case (default 0.5)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for every provider (torch.set_num_threads; default: torch's choice)")
    return p


def run(args) -> int:
    import torch

    from gencore.benchmarks import run as run_cases
    from gencore.benchmarks import table

    known = _ops()
    ops = args.op or known
    for op in ops:
        if op not in known:
            raise ValueError(f"unknown op {op!r}; benchmarked ops: {', '.join(known)}")
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    device = str(resolve_device(args.device))
    cases = []
    for op in ops:
        cases += importlib.import_module(f"gencore.benchmarks.{op}").cases(device=device, quick=args.quick)
    print(f"# {len(cases)} cases on {device} ({torch.get_num_threads()} threads)", file=sys.stderr)
    results = run_cases(cases, min_time=args.min_time)
    name = torch.cuda.get_device_name() if device == "cuda" else _cpu_name()
    print(f"device: {name}, torch {torch.__version__}, {torch.get_num_threads()} threads"
          + (" (quick shapes)" if args.quick else ""))
    print()
    print(table(results))
    return 0


def _cpu_name() -> str:
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} ({platform.machine()})"
    except OSError:
        pass
    return platform.processor() or platform.machine()
