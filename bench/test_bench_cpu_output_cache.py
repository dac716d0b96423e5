"""Benchmarks of the cpu backend's output cache: peak RSS over varied shapes (cpu vs reference) and a repeated-shape
training loop's time with the cache on and off (gencore/benchmarks/cpu_output_cache.py says what each row measures).

    pytest bench/test_bench_cpu_output_cache.py --benchmark-only     the figures are in each row's extra_info
"""
from gencore.benchmarks import bench_case
from gencore.benchmarks.cpu_output_cache import cases  # noqa: F401  (bench/conftest.py parametrizes `case` with it)


def test_cpu_output_cache(benchmark, case):
    bench_case(benchmark, case)
