"""pytest-benchmark front end of gencore.benchmarks.

Every bench/test_bench_<op>.py defines `cases(device, quick)` (its op's case list) and a test taking the `case`
fixture; this file parametrizes that fixture over the cases of the benchmarked device: `--bench-device` cuda where a
GPU is present, else cpu, by default (`all` for both). With `--benchmark-disable` (CI: each case runs once) the
quick shapes are used, so the run stays short.
"""
import pytest
import torch


def pytest_addoption(parser):
    parser.addoption("--bench-device", choices=("auto", "cpu", "cuda", "all"), default="auto",
                     help="device whose benchmark cases run (auto: cuda if a GPU is present, else cpu)")


def _devices(config):
    choice = config.getoption("bench_device", default="auto")
    has_cuda = torch.cuda.is_available()
    if choice == "auto":
        return ["cuda"] if has_cuda else ["cpu"]
    if choice == "all":
        return ["cpu"] + (["cuda"] if has_cuda else [])
    if choice == "cuda" and not has_cuda:
        raise pytest.UsageError("--bench-device cuda: no CUDA device is visible")
    return [choice]


def pytest_generate_tests(metafunc):
    if "case" not in metafunc.fixturenames:
        return
    make = getattr(metafunc.module, "cases", None)
    if make is None:
        raise pytest.UsageError(f"{metafunc.module.__name__} takes a `case` fixture but defines no cases()")
    quick = bool(metafunc.config.getoption("benchmark_disable", default=False))
    cases = [c for device in _devices(metafunc.config) for c in make(device=device, quick=quick)]
    metafunc.parametrize("case", cases, ids=[f"{c.mode}-{c.shape}-{c.dtype}-{c.provider}" for c in cases])
