"""Test configuration.

The Triton backend runs on CPU tensors only in the interpreter, and Triton reads TRITON_INTERPRET when a kernel is
decorated, so it is set here before gencore (and its kernels) are imported. On a machine with a CUDA device the
interpreter is left off and the `gpu`-marked tests run the real kernels.
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import gencore  # noqa: E402

HAS_CUDA = torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def _find_mnist_dir():
    """The MNIST test files: $GENCORE_MNIST_DIR, else ../shared/data/mnist from the repository root, looking one
    level further up too (a git worktree such as /work/wt/<name> sits one level below the main checkout)."""
    from pathlib import Path

    if os.environ.get("GENCORE_MNIST_DIR"):
        return Path(os.environ["GENCORE_MNIST_DIR"])
    root = Path(__file__).resolve().parent.parent
    for base in (root.parent, root.parent.parent):
        candidate = base / "shared" / "data" / "mnist"
        if (candidate / "t10k-images-idx3-ubyte.gz").is_file():
            return candidate
    return None


MNIST_DIR = _find_mnist_dir()


@pytest.fixture(scope="session")
def mnist_dir():
    """Folder with the original MNIST test-set IDX files; the test is skipped (with the reason) where absent."""
    if MNIST_DIR is None:
        pytest.skip("MNIST not found: set GENCORE_MNIST_DIR or put the IDX files in ../shared/data/mnist")
    return MNIST_DIR


@pytest.fixture(autouse=True)
def _fused_path_at_every_size(request, monkeypatch):
    """The tests' tensors are small: without this, gencore.nn's size gate would hand them to torch's own kernels and
    the tests of the fused modules would test torch. A test of the gate itself asks for `size_gate`."""
    if "size_gate" in request.fixturenames:
        return
    import gencore.nn.size_gate as gate

    monkeypatch.setattr(gate, "MIN_NUMEL_FORWARD", 0)
    monkeypatch.setattr(gate, "MIN_NUMEL_TRAINING", 0)


@pytest.fixture
def size_gate():
    """gencore.nn.size_gate with its shipped thresholds."""
    import gencore.nn.size_gate as gate

    return gate
