"""Datasets: MNIST from its original IDX files, with the project's split (first 8,000 test images to train,
last 2,000 as the held-out reference set)."""
from .mnist import (
    MNIST,
    MNIST_REFERENCE_SIZE,
    MNIST_TRAIN_SIZE,
    MnistArrays,
    MnistDataError,
    download_mnist,
    load_mnist,
    mnist_cache_dir,
    mnist_split,
    mnist_to_float,
)

__all__ = [
    "MNIST",
    "MNIST_REFERENCE_SIZE",
    "MNIST_TRAIN_SIZE",
    "MnistArrays",
    "MnistDataError",
    "download_mnist",
    "load_mnist",
    "mnist_cache_dir",
    "mnist_split",
    "mnist_to_float",
]
