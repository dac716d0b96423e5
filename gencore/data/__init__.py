"""Datasets: MNIST from its original IDX files, with the project's split (first 8,000 test images to train, last 2,000
as the held-out reference set); scikit-learn's digits as the offline default (gencore.data.digits); any folder of
images (gencore.data.folder); and `load_dataset("mnist" | "digits" | PATH)` for the trainers."""
from .dataset import ImageDataset
from .digits import load_digits
from .folder import load_image_folder
from .load import load_dataset
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
    "ImageDataset",
    "MNIST",
    "MNIST_REFERENCE_SIZE",
    "MNIST_TRAIN_SIZE",
    "MnistArrays",
    "MnistDataError",
    "download_mnist",
    "load_dataset",
    "load_digits",
    "load_image_folder",
    "load_mnist",
    "mnist_cache_dir",
    "mnist_split",
    "mnist_to_float",
]
