"""Benchmarks of a few-call (distilled student's) sampling loop against its model calls alone
(gencore/benchmarks/few_call.py says what each row measures).

    pytest bench/test_bench_few_call.py --benchmark-only
"""
from gencore.benchmarks import bench_case
from gencore.benchmarks.few_call import cases  # noqa: F401  (bench/conftest.py parametrizes `case` with it)


def test_few_call_sample(benchmark, case):
    bench_case(benchmark, case)
