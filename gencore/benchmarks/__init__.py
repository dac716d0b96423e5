"""The benchmark harness shared by every gencore op: cases, timing, and the markdown ratio table.

Each op has a module gencore/benchmarks/<op>.py with ``cases(device="cpu", quick=False) -> list[Case]``. A case
names its op, provider (``reference`` = eager PyTorch, ``torch_compile`` = the reference under torch.compile,
``cpu`` / ``cuda`` / ``triton`` = gencore's backends, ``memcpy`` = a copy of the same bytes as the roofline, or
another named baseline such as ``diffusers``), shape label, dtype, mode and the bytes the op moves; its ``setup()``
builds every input *outside* the timed region and returns the closure to time.

Three front ends use the same cases:
    run(cases) + table(results)      `gencore bench`: one run, the ratios of that run.
    bench_case(benchmark, case)      bench/test_bench_<op>.py under pytest-benchmark (`pytest bench --benchmark-only`
                                     compares providers per group; `--benchmark-disable` runs each case once).

Timing: torch.utils.benchmark.Timer.blocked_autorange with the process's thread count (Timer defaults to one
thread), after warm-up calls (torch.compile compiles there); the median over blocks is reported. CUDA work is
synchronized by the Timer.

A case with repeat=False is timed by exactly one call with no warm-up: a first call that compiles (the next call would
not). A case may carry `figures`: further measures taken from one more call of its closure (e.g. the share of time
some ops take in it), reported beside the time.

Peak memory (fusing is also about memory): after timing, one more call of each op row (bytes > 0; whole-model rows
are not measured) records the most memory it held at once beyond what existed before the call, outputs included.
CUDA: torch.cuda.max_memory_allocated. CPU: the profiler's allocation events (torch.profiler, profile_memory=True)
summed in time order, with gencore's CPU output cache off for that call so that every provider's outputs count.
"""
from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch

# Providers whose speed the table reports as ratios against the baselines, in this order.
FUSED = ("cpu", "cuda", "triton")
# Baselines and the column title of a fused provider's speed-up over each. "torch" is what a user writes without
# gencore (e.g. F.silu(F.group_norm(x + temb))): torch's own native kernels, which the reference twin is not.
BASELINES = {"reference": "vs eager", "torch": "vs torch", "torch_compile": "vs compile", "diffusers": "vs diffusers",
             "cpu_no_cache": "vs no cache",  # cpu_no_cache: the cpu backend with its output cache off
             "model_calls": "vs its model calls"}  # a sampling loop's model calls alone (benchmarks/few_call.py)


@dataclass
class Case:
    """One benchmark: an op on one provider, shape, dtype and mode.

    bytes: bytes the op must move at least (inputs read + outputs written), for GB/s; 0 if not meaningful.
    setup: builds the inputs (outside the timed region) and returns the zero-argument closure that is timed.
    repeat: False times one single call, without warm-up (what a first call costs, compilation included).
    figures: given the closure, calls it and returns further measures of that call as {column title: text}.
    """

    op: str
    provider: str
    shape: str
    dtype: str
    mode: str
    bytes: int
    setup: Callable[[], Callable[[], object]]
    repeat: bool = True
    figures: Callable[[Callable[[], object]], dict[str, str]] | None = None

    @property
    def name(self) -> str:
        return f"{self.op}[{self.mode}|{self.shape}|{self.dtype}|{self.provider}]"

    @property
    def key(self) -> tuple[str, str, str, str]:
        """The comparison group: every provider of one (op, shape, dtype, mode)."""
        return (self.op, self.shape, self.dtype, self.mode)


@dataclass
class Result:
    case: Case
    seconds: float  # median time per call
    times: list[float] = field(default_factory=list)  # per-call time of each block
    peak_bytes: int | None = None  # most memory held at once during one call (see the module doc); None: not measured
    figures: dict[str, str] = field(default_factory=dict)  # the case's further measures (Case.figures)

    @property
    def gbps(self) -> float:
        return self.case.bytes / self.seconds / 1e9 if self.case.bytes and self.seconds > 0 else 0.0


def memcpy_case(op: str, shape: str, dtype: str, mode: str, nbytes: int, device: str | torch.device) -> Case:
    """The roofline row: a copy that reads nbytes/2 and writes nbytes/2, i.e. moves the same bytes as the op."""

    def setup():
        n = max(1, nbytes // 2)
        src = torch.empty(n, dtype=torch.uint8, device=device).fill_(1)
        dst = torch.empty_like(src)
        return lambda: dst.copy_(src)

    return Case(op, "memcpy", shape, dtype, mode, nbytes, setup)


def _sync(device_used: bool) -> None:
    if device_used and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def time_closure(fn: Callable[[], object], min_time: float = 0.5, warmup: int = 2) -> tuple[float, list[float]]:
    """Median seconds per call of fn over blocks of calls lasting about min_time in total, after warm-up calls."""
    from torch.utils.benchmark import Timer

    for _ in range(warmup):
        fn()
    _sync(True)
    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    m = timer.blocked_autorange(min_run_time=min_time)
    return m.median, list(m.times)


def time_once(fn: Callable[[], object]) -> float:
    """Seconds of one call of fn, to completion (no warm-up: this is the first call)."""
    import time

    _sync(True)
    start = time.perf_counter()
    fn()
    _sync(True)
    return time.perf_counter() - start


def peak_memory(fn: Callable[[], object], device: torch.device | str) -> int:
    """Bytes of the most memory held at once during one call of fn, beyond what was allocated before it (outputs
    included: they are dropped only after the call)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        out = fn()
        torch.cuda.synchronize(device)
        del out
        return max(0, torch.cuda.max_memory_allocated(device) - before)
    from torch.profiler import ProfilerActivity, profile

    from .. import backends

    cache = backends.cpu_output_cache()
    if cache is not None:
        backends.cpu_output_cache(limit_mb=0)  # a cached output would not count as memory the call needs
    try:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            out = fn()
            del out
    finally:
        if cache is not None:
            backends.cpu_output_cache(limit_mb=cache["limit_mb"])
    held = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        held += event.self_cpu_memory_usage  # each allocation and free counted once, in its innermost op
        peak = max(peak, held)
    return peak


def run(cases: Iterable[Case], min_time: float = 0.5, warmup: int = 2, progress: bool = True,
        memory: bool = True) -> list[Result]:
    """Time every case (and with memory=True measure its peak memory, op rows only); inputs are built by
    case.setup() before timing, and dropped right after."""
    results = []
    for case in cases:
        if progress:
            print(f"  {case.name} ...", end="", file=sys.stderr, flush=True)
        fn = case.setup()
        if case.repeat:
            seconds, times = time_closure(fn, min_time=min_time, warmup=warmup)
        else:
            seconds = time_once(fn)
            times = [seconds]
        peak = peak_memory(fn, _device_in_use()) if memory and _measures_memory(case) else None
        figures = case.figures(fn) if case.figures else {}
        del fn
        results.append(Result(case, seconds, times, peak, figures))
        if progress:
            print(f" {seconds * 1e3:.3f} ms" + ("" if peak is None else f", peak {peak / 2**20:.1f} MB")
                  + "".join(f", {k} {v}" for k, v in figures.items()), file=sys.stderr, flush=True)
    return results


def _measures_memory(case: Case) -> bool:
    """Op rows get a peak-memory figure; whole-model rows (bytes 0) and the memcpy roofline do not."""
    return bool(case.bytes) and case.provider != "memcpy"


def _device_in_use() -> torch.device:
    """The device the cases run on: CUDA once the process uses it, else the CPU (a run does not mix devices)."""
    return torch.device("cuda") if torch.cuda.is_available() and torch.cuda.is_initialized() else torch.device("cpu")


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1e3:.3f}" if seconds < 1 else f"{seconds * 1e3:.0f}"


def table(results: list[Result]) -> str:
    """Markdown: one row per (op, shape, dtype, mode): ms per provider, then for each fused provider its speed-up
    over each baseline present (BASELINES: baseline time / fused time), its achieved GB/s as a fraction of memcpy's,
    peak memory where measured, and a column per figure title (Case.figures) with the providers that report it."""
    groups: dict[tuple, dict[str, Result]] = {}
    for r in results:
        groups.setdefault(r.case.key, {})[r.case.provider] = r
    providers = []
    for g in groups.values():
        for p in g:
            if p not in providers:
                providers.append(p)
    order = list(BASELINES) + list(FUSED)
    providers.sort(key=lambda p: (order.index(p) if p in order else len(order) if p != "memcpy" else len(order) + 1))
    fused = [p for p in providers if p in FUSED]
    bases = [b for b in BASELINES if b in providers]
    head = ["op", "shape", "dtype", "mode"] + [f"{p} ms" for p in providers]
    for p in fused:
        head += [f"{p} {BASELINES[b]}" for b in bases] + [f"{p} GB/s / memcpy"]
    measured = [p for p in providers if any(p in g and g[p].peak_bytes is not None for g in groups.values())]
    if measured:
        head.append("peak MB: " + " / ".join(measured))
    titles = []
    for g in groups.values():
        for r in g.values():
            titles += [t for t in r.figures if t not in titles]
    head += titles
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (op, shape, dtype, mode), g in groups.items():
        row = [op, shape, dtype, mode] + [_ms(g[p].seconds) if p in g else "-" for p in providers]
        for p in fused:
            f = g.get(p)
            for base in bases:
                b = g.get(base)
                row.append(f"{b.seconds / f.seconds:.2f}x" if f and b else "-")
            mem = g.get("memcpy")
            if f and mem and f.gbps and mem.gbps:
                row.append(f"{f.gbps:.1f} / {mem.gbps:.1f} = {f.gbps / mem.gbps:.0%}")
            else:
                row.append("-")
        if measured:
            row.append(" / ".join(f"{g[p].peak_bytes / 2**20:.3g}" if p in g and g[p].peak_bytes is not None
                                  else "-" for p in measured))
        for title in titles:
            row.append(", ".join(f"{p}: {g[p].figures[title]}" for p in providers
                                 if p in g and title in g[p].figures) or "-")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def bench_case(benchmark, case: Case) -> None:
    """Run one case under pytest-benchmark, grouped so that `--benchmark-only` compares its providers."""
    benchmark.group = f"{case.op} {case.mode} {case.shape} {case.dtype}"
    benchmark.extra_info.update(op=case.op, provider=case.provider, shape=case.shape, dtype=case.dtype,
                                mode=case.mode, bytes=case.bytes)
    fn = case.setup()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        def timed():  # CUDA work is asynchronous: time it to completion
            out = fn()
            torch.cuda.synchronize()
            return out
    else:
        timed = fn
    if not case.repeat:  # one call, no warm-up: the first call is what is measured
        benchmark.pedantic(timed, rounds=1, iterations=1, warmup_rounds=0)
        return
    if not getattr(benchmark, "disabled", False):
        fn()  # warm-up outside the measurement (torch.compile compiles here)
        if _measures_memory(case):
            benchmark.extra_info["peak_mb"] = round(peak_memory(fn, _device_in_use()) / 2**20, 3)
        if case.figures:
            benchmark.extra_info.update(case.figures(fn))
    benchmark(timed)
