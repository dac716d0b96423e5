"""pytest-benchmark front end of gencore.benchmarks.

Every bench/test_bench_<op>.py defines `cases(device, quick)` (its op's case list) and a test taking the `case`
fixture; this file parametrizes that fixture over the cases of every device present (CPU, plus CUDA where there is
one). With `--benchmark-disable` (CI: each case runs once) the quick shapes are used, so the run stays short.
"""
import pytest
import torch


def _devices():
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def pytest_generate_tests(metafunc):
    if "case" not in metafunc.fixturenames:
        return
    make = getattr(metafunc.module, "cases", None)
    if make is None:
        raise pytest.UsageError(f"{metafunc.module.__name__} takes a `case` fixture but defines no cases()")
    quick = bool(metafunc.config.getoption("benchmark_disable", default=False))
    cases = [c for device in _devices() for c in make(device=device, quick=quick)]
    metafunc.parametrize("case", cases, ids=[f"{c.mode}-{c.shape}-{c.dtype}-{c.provider}" for c in cases])
