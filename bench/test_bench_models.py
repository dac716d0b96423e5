"""Benchmarks of the models end to end (DDPM training step, 50-step DDIM sampling, GAN and WGAN-GP steps), reference
vs fused backends.

    pytest bench/test_bench_models.py --benchmark-only       compare providers (MNIST-sized models)
    pytest bench --benchmark-disable                         run each case once (tiny models; CI)
"""
from gencore.benchmarks import bench_case
from gencore.benchmarks.models import cases  # noqa: F401  (bench/conftest.py parametrizes `case` with it)


def test_models(benchmark, case):
    bench_case(benchmark, case)
