"""Benchmarks of the WGAN-GP gradient penalty: the fused machinery per provider, and a full critic step.

    pytest bench/test_bench_gradient_penalty.py --benchmark-only      compare providers (full shapes)
    pytest bench --benchmark-disable                                  run each case once (quick shapes; CI)
"""
from gencore.benchmarks import bench_case
from gencore.benchmarks.gradient_penalty import cases  # noqa: F401  (bench/conftest.py parametrizes `case` with it)


def test_gradient_penalty(benchmark, case):
    bench_case(benchmark, case)
