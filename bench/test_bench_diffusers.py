"""Benchmarks of diffusers' models (UNet2DModel, a small SD-like UNet2DConditionModel, the SD VAE decoder at 512x512)
as diffusers builds them, after gencore.nn.convert, under torch.compile, and under gencore.optimize.

    pytest bench/test_bench_diffusers.py --benchmark-only     compare providers (full-size configurations)
    pytest bench --benchmark-disable                          run each case once (tiny configurations; CI)

Nothing runs where diffusers is not installed.
"""
from gencore.benchmarks import bench_case
from gencore.benchmarks.diffusers import cases  # noqa: F401  (bench/conftest.py parametrizes `case` with it)


def test_diffusers(benchmark, case):
    bench_case(benchmark, case)
