"""Benchmarks of the cpu backend's output cache (csrc/cpu_output_pool.h): the speed it keeps and the memory it holds.

CPU only, float32 group_norm_silu with weight, bias and temb, 32 groups. Two groups of rows:

    varied shapes     forward calls on fresh inputs of random shapes (N 1-16, C 128, H = W 16-63: the largest input
                      33 MB), the same seeded shapes for every provider: what a run over many image sizes does.
                      Providers reference and cpu. Figure "peak RSS growth MB": how far the workload raises the peak
                      resident set of a fresh Python process (VmHWM after the workload minus before it, one warm-up
                      call at the smallest shape included in the before; Linux only), so that buffers the cache keeps
                      show against the reference, which keeps none. Timed by one call (the workload is
                      long).
    repeated shapes   a training loop's body: forward+backward of the three GroupNorm sizes of Stable Diffusion's
                      UNet at batch 8, (8,320,64,64), (8,640,32,32) and (8,1280,16,16). Providers cpu (the cache on)
                      and cpu_no_cache (the same calls with the cache turned off during them). Figure "page faults":
                      the minor page faults of one loop body (resource.getrusage's ru_minflt), what the cache saves.
                      glibc's malloc serves blocks below 32 MB again from its heap once one was freed (its mmap
                      threshold rises to the largest freed block, up to 32 MB), so without the cache only the 42 MB
                      outputs of (8,320,64,64) fault, on every call.

quick=True: 30 varied calls and the smallest loop shape, for CI smoke runs.
"""
from __future__ import annotations

import resource
import subprocess
import sys

import torch

from . import Case

OP = "group_norm_silu"
CHANNELS, GROUPS = 128, 32
VARIED_CALLS, QUICK_VARIED_CALLS = 300, 30
LOOP_SHAPES = [(8, 320, 64, 64), (8, 640, 32, 32), (8, 1280, 16, 16)]
QUICK_LOOP_SHAPES = [(2, 320, 64, 64)]


def varied_shapes(calls: int, backend: str, seed: int = 0) -> None:
    """The varied-shape workload: `calls` forward calls of group_norm_silu on `backend`, each on a fresh input."""
    from ..ops.group_norm_silu import group_norm_silu

    gen = torch.Generator().manual_seed(seed)
    weight, bias = torch.randn(CHANNELS, generator=gen), torch.randn(CHANNELS, generator=gen)
    with torch.no_grad():
        for _ in range(calls):
            n = int(torch.randint(1, 17, (1,), generator=gen))
            h = int(torch.randint(16, 64, (1,), generator=gen))
            x = torch.randn(n, CHANNELS, h, h, generator=gen)
            temb = torch.randn(n, CHANNELS, generator=gen)
            group_norm_silu(x, GROUPS, weight, bias, temb=temb, backend=backend)


def peak_rss_mb() -> float:
    """This process's peak resident set in MB: VmHWM of /proc/self/status. Not getrusage's ru_maxrss: Linux carries
    that over from the forked copy of the parent into an exec'd child, so a child of a large process would start at
    the parent's size and show no growth."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def peak_rss_growth_mb(calls: int, backend: str) -> float:
    """MB by which the varied-shape workload raises the peak RSS of this process (run it in a fresh one)."""
    from ..ops.group_norm_silu import group_norm_silu

    # The first call's one-time costs (libraries, thread pool) are not the workload's: one call at the smallest shape.
    group_norm_silu(torch.randn(1, CHANNELS, 16, 16), GROUPS, backend=backend)
    before = peak_rss_mb()
    varied_shapes(calls, backend)
    return peak_rss_mb() - before


def _rss_figure(calls: int, backend: str):
    def figures(fn) -> dict[str, str]:
        proc = subprocess.run([sys.executable, "-m", __name__, str(calls), backend], capture_output=True, text=True,
                              check=True)
        return {"peak RSS growth MB": f"{float(proc.stdout.split()[-1]):.0f}"}
    return figures


def _page_faults(fn) -> dict[str, str]:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    fn()
    return {"page faults": str(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)}


def _loop_setup(shapes, cache: bool):
    def setup():
        from .. import backends
        from ..ops.group_norm_silu import group_norm_silu

        gen = torch.Generator().manual_seed(0)
        blocks = []
        for n, c, h, w in shapes:
            inputs = [torch.randn(*size, generator=gen).requires_grad_() for size in ((n, c, h, w), (c,), (c,), (n, c))]
            blocks.append((inputs, torch.randn(n, c, h, w, generator=gen)))

        def body():
            for (x, weight, bias, temb), grad_out in blocks:
                y = group_norm_silu(x, GROUPS, weight, bias, temb=temb, backend="cpu")
                torch.autograd.grad(y, (x, weight, bias, temb), grad_out)

        if cache:
            return body

        def body_without_cache():
            limit = backends.cpu_output_cache()["limit_mb"]
            backends.cpu_output_cache(limit_mb=0)
            try:
                body()
            finally:
                backends.cpu_output_cache(limit_mb=limit)
        return body_without_cache

    return setup


def cases(device: str = "cpu", quick: bool = False) -> list[Case]:
    """The cases above on the CPU with the cpu backend built; none on another device or without it."""
    from .. import backends

    if torch.device(device).type != "cpu" or "cpu" not in backends.available_backends():
        return []
    calls = QUICK_VARIED_CALLS if quick else VARIED_CALLS
    varied_label = f"{calls} calls, N 1-16, C {CHANNELS}, H=W 16-63"
    out = [Case(OP, provider, varied_label, "float32", "varied shapes, forward", 0,
                lambda provider=provider: (lambda: varied_shapes(calls, provider)), repeat=False,
                figures=_rss_figure(calls, provider))
           for provider in ("reference", "cpu")]
    shapes = QUICK_LOOP_SHAPES if quick else LOOP_SHAPES
    loop_label = " + ".join(f"({n},{c},{h},{w})" for n, c, h, w in shapes) + f" G={GROUPS}"
    out += [Case(OP, provider, loop_label, "float32", "repeated shapes, forward+backward", 0,
                 _loop_setup(shapes, cache=provider == "cpu"), figures=_page_faults)
            for provider in ("cpu_no_cache", "cpu")]
    return out


if __name__ == "__main__":  # python -m gencore.benchmarks.cpu_output_cache CALLS BACKEND: the RSS figure's process
    print(peak_rss_growth_mb(int(sys.argv[1]), sys.argv[2]))
