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
