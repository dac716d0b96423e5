"""Datasets: MNIST (gencore.data.mnist), scikit-learn's digits as the offline default (gencore.data.digits), any
folder of images (gencore.data.folder), and `load_dataset("mnist" | "digits" | PATH)` for the trainers."""
from .dataset import ImageDataset, load_dataset
from .digits import load_digits
from .folder import load_image_folder

__all__ = ["ImageDataset", "load_dataset", "load_digits", "load_image_folder"]
