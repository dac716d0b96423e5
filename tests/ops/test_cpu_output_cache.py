"""What the cpu backend's output cache keeps (csrc/cpu_output_pool.h): only buffers a loop reuses.

A freed output is kept only when its size was asked for before, and only while that size is among the 16 sizes asked
for most recently; so a loop gets its buffers back from its second pass on, while a run over varied shapes leaves
nothing behind. Speed and peak RSS: bench/test_bench_cpu_output_cache.py.
"""
from __future__ import annotations

import gc
import os

import pytest
import torch

import gencore
from gencore.ops.group_norm_silu import group_norm_silu

RECENT_SIZES = 16  # kRecentSizes in csrc/cpu_output_pool.cpp

pytestmark = [
    pytest.mark.skipif("cpu" not in gencore.available_backends(), reason="needs the C++ extension"),
    pytest.mark.skipif(os.environ.get("GENCORE_CPU_CACHE_MB", "") == "0", reason="the output cache is turned off"),
]


def _x(h: int) -> torch.Tensor:
    """An input of 8 * h * 128 float32 values, h >= 256: an output of at least 1 MiB (the sizes the cache takes), one
    size per h."""
    return torch.randn(1, 8, h, 128, generator=torch.Generator().manual_seed(h))


def _cached_bytes() -> int:
    return int(gencore.cpu_output_cache()["cached_mb"] * 2**20)


@pytest.fixture(autouse=True)
def fresh_cache():
    """An empty cache that follows only sizes asked for once (so earlier calls in this process cannot matter)."""
    gc.collect()  # pooled outputs of earlier tests that only a collection frees would land in the cache mid-test
    for h in range(600, 600 + RECENT_SIZES):
        group_norm_silu(_x(h), 4, backend="cpu")
    torch.ops.gencore.cpu_empty_cache()
    yield
    torch.ops.gencore.cpu_empty_cache()


def test_a_size_asked_for_once_is_not_kept():
    y = group_norm_silu(_x(263), 4, backend="cpu")  # not exactly 1 MiB: a size no earlier test asks for
    del y
    assert _cached_bytes() == 0


def test_a_repeated_size_is_kept_and_its_buffer_reused():
    x = _x(257)
    first = group_norm_silu(x, 4, backend="cpu")
    del first                                   # asked for once: back to the system
    y = group_norm_silu(x, 4, backend="cpu")    # asked for again: its buffer is kept when freed ...
    ptr, nbytes = y.data_ptr(), y.numel() * y.element_size()
    del y
    assert _cached_bytes() == nbytes
    y = group_norm_silu(x, 4, backend="cpu")    # ... and serves the next output of that size
    assert y.data_ptr() == ptr
    assert _cached_bytes() == 0


def test_buffers_of_sizes_not_asked_for_recently_are_released():
    x = _x(258)
    for _ in range(2):
        y = group_norm_silu(x, 4, backend="cpu")
        del y
    assert _cached_bytes() > 0
    for h in range(300, 300 + RECENT_SIZES - 1):  # sizes asked for since: the cached one is still followed
        y = group_norm_silu(_x(h), 4, backend="cpu")
        del y
    assert _cached_bytes() > 0
    y = group_norm_silu(_x(300 + RECENT_SIZES), 4, backend="cpu")  # one more: it is the oldest, and dropped
    del y
    assert _cached_bytes() == 0


def test_a_loop_over_several_sizes_keeps_all_of_them():
    """A loop body asking for RECENT_SIZES sizes, two outputs of each alive at once, gets every buffer back."""
    xs = [_x(400 + i) for i in range(RECENT_SIZES)]
    for _ in range(2):
        for x in xs:
            a, b = group_norm_silu(x, 4, backend="cpu"), group_norm_silu(x, 4, backend="cpu")
            del a, b
    held = _cached_bytes()
    assert held == sum(2 * x.numel() * 4 for x in xs)
    for x in xs:
        a, b = group_norm_silu(x, 4, backend="cpu"), group_norm_silu(x, 4, backend="cpu")
        assert _cached_bytes() < held  # served from the cache
        del a, b
    assert _cached_bytes() == held
