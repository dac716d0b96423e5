"""Benchmarks of sampler_step (one DDIM step): every provider side by side per (mode, shape, dtype) group.

    pytest bench/test_bench_sampler_step.py --benchmark-only       compare providers (full shapes)
    pytest bench --benchmark-disable                               run each case once (quick shapes; CI)
"""
from gencore.benchmarks import bench_case
from gencore.benchmarks.sampler_step import cases  # noqa: F401  (bench/conftest.py parametrizes `case` with it)


def test_sampler_step(benchmark, case):
    bench_case(benchmark, case)
