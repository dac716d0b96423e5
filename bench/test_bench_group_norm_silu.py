"""Benchmarks of group_norm_silu: every provider side by side per (mode, shape, dtype) group.

    pytest bench/test_bench_group_norm_silu.py --benchmark-only       compare providers (full shapes)
    pytest bench --benchmark-disable                                  run each case once (quick shapes; CI)
"""
from gencore.benchmarks import bench_case
from gencore.benchmarks.group_norm_silu import cases  # noqa: F401  (bench/conftest.py parametrizes `case` with it)


def test_group_norm_silu(benchmark, case):
    bench_case(benchmark, case)
