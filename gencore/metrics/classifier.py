"""The MNIST classifier that ships with gencore: the feature extractor of FID and the p(y|x) of the Inception Score.

Why a classifier of our own: InceptionV3 features (what FID and IS mean for natural images) are trained on
ImageNet photos; on 28x28 digits they measure mostly the upsampling. A small CNN trained on MNIST digits has
features that separate digit shapes, which is what a digit generator should be judged on. FID/IS numbers computed
with it are comparable across gencore runs, not with papers that use InceptionV3.

Training: scripts/train_mnist_classifier.py (seed 0, 8 epochs), on the first 8,000 images of the MNIST test file
only (the project's training part). Accuracy on the last 2,000 (the held-out reference set it never saw): 98.80%
(1976 / 2000). Both are recorded next to the weights in metrics/weights/mnist_classifier.json, with the SHA-256 of
the weights file, and tests/library/test_metrics.py re-measures the accuracy from the shipped weights.
"""
from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

__all__ = ["MnistClassifier", "check_images", "classifier_info", "classifier_weights_path", "classify_in_batches",
           "load_mnist_classifier"]

WEIGHTS_NAME = "mnist_classifier"


def check_images(images, name: str = "images", *, range_tol: float = 1e-3) -> torch.Tensor:
    """Validate a batch of MNIST-like images: a float tensor (N, 1, 28, 28), N >= 1, finite, in [-1, 1].

    The range check allows `range_tol` of slack (rounding of generator outputs through tanh/float16). Images in
    [0, 1] or [0, 255] fail with a message saying how to rescale. Returns the tensor unchanged.
    """
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(images).__name__}")
    if not images.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor scaled to [-1, 1], got {images.dtype} "
                        f"(uint8 MNIST images: use gencore.data.mnist_to_float)")
    if images.dim() != 4 or tuple(images.shape[1:]) != (1, 28, 28):
        raise ValueError(f"{name} must have shape (N, 1, 28, 28), got {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    if not bool(torch.isfinite(images).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    lo, hi = float(images.min()), float(images.max())
    if lo < -1 - range_tol or hi > 1 + range_tol:
        hint = " (looks like 0..255: divide by 127.5 and subtract 1)" if hi > 2 else ""
        raise ValueError(f"{name} must be scaled to [-1, 1], got values in [{lo:.4g}, {hi:.4g}]{hint}")
    return images


class MnistClassifier(nn.Module):
    """A small CNN for 28x28 digits: (N, 1, 28, 28) images in [-1, 1] -> (N, 10) logits.

    Layout: 3x3 convolutions with BatchNorm + ReLU, 16-16 channels at 28x28, 2x2 max-pool, 32-32 at 14x14, max-pool,
    128 at 7x7, global average pooling to a 128-wide feature vector, a linear layer to 10 logits. The features are
    `features(images)`: the pooled 128-vector, the classifier's penultimate layer (the analogue of InceptionV3's
    pool3 features that FID uses). 55 k parameters (0.22 MB in float32), ~6 M multiply-adds per image: small
    enough to train on 2 CPU cores in minutes and to evaluate 10,000 samples in seconds.
    """

    feature_dim = 128
    num_classes = 10

    def __init__(self):
        super().__init__()

        def block(cin, cout):
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.body = nn.Sequential(
            *block(1, 16), *block(16, 16), nn.MaxPool2d(2),      # 28 -> 14
            *block(16, 32), *block(32, 32), nn.MaxPool2d(2),     # 14 -> 7
            *block(32, 128),
        )
        self.head = nn.Linear(self.feature_dim, self.num_classes)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 1, 28, 28) in [-1, 1] -> float32 (N, 128) penultimate features (after ReLU and global mean pooling)."""
        return self.body(images).mean(dim=(2, 3))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 1, 28, 28) in [-1, 1] -> (N, 10) logits."""
        return self.head(self.features(images))


def classifier_weights_path() -> Path:
    """Path of the shipped weights (gencore/metrics/weights/mnist_classifier.safetensors)."""
    return Path(str(resources.files("gencore.metrics").joinpath("weights", f"{WEIGHTS_NAME}.safetensors")))


def classifier_info() -> dict:
    """The training record shipped with the weights (seed, epochs, held-out accuracy, sha256, ...)."""
    path = classifier_weights_path().with_suffix(".json")
    return json.loads(path.read_text())


def load_mnist_classifier(device: str | torch.device = "cpu", *, verify: bool = True) -> MnistClassifier:
    """The shipped MNIST classifier, in eval mode, float32, on `device`.

    Input (N, 1, 28, 28) float images scaled to [-1, 1]; output (N, 10) logits; `.features(images)` gives the
    (N, 128) penultimate features used by FID and precision/recall. With `verify`, the weights file's SHA-256 is
    checked against the shipped JSON record first (a damaged install fails loudly instead of giving wrong numbers).
    Raises FileNotFoundError if the weights are not installed.
    """
    path = classifier_weights_path()
    if not path.is_file():
        raise FileNotFoundError(f"the MNIST classifier weights are missing: {path} (train them with "
                                f"scripts/train_mnist_classifier.py, or reinstall gencore)")
    if verify:
        expected = classifier_info().get("sha256")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if expected != digest:
            raise RuntimeError(f"{path}: SHA-256 {digest} does not match the shipped record {expected}")
    state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(path)).items()}
    model = MnistClassifier()
    model.load_state_dict(state)
    return model.to(device).eval().requires_grad_(False)


@torch.no_grad()
def classify_in_batches(model: nn.Module, images: torch.Tensor, batch_size: int = 500,
                        features: bool = True) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Run `model` over `images` in batches on the model's device: returns (features (N, D) or None, logits (N, 10)),
    both float32 on the images' device."""
    device = next(model.parameters()).device
    feats, logits = [], []
    for start in range(0, images.shape[0], batch_size):
        x = images[start:start + batch_size].to(device=device, dtype=torch.float32)
        if features and hasattr(model, "features") and hasattr(model, "head"):
            f = model.features(x)
            feats.append(f.to(images.device))
            logits.append(model.head(f).to(images.device))
        else:
            logits.append(model(x).to(images.device))
            if features:
                feats.append(model.features(x).to(images.device))
    return (torch.cat(feats) if features else None), torch.cat(logits)



def train_classifier(images: torch.Tensor, labels: torch.Tensor, *, epochs: int = 12, batch_size: int = 64,
                     lr: float = 2e-3, seed: int = 0) -> MnistClassifier:
    """A fresh MnistClassifier fitted to (images, labels), for judging generated images of a data set that has no
    shipped classifier (`gencore demo`'s digits). Its pooling is global, so any square size from 4x4 up works.

    images: (N, 1, S, S) float in [-1, 1]; labels: (N,) int64 in 0..9. AdamW with a cosine decay, seeded shuffling:
    the same inputs and seed give the same classifier. Returns it in eval mode, without gradients.
    """
    if images.dim() != 4 or images.shape[1] != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(f"images must be (N, 1, S, S) with one label each, got {tuple(images.shape)} and "
                         f"{tuple(labels.shape)} labels")
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MnistClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    steps_per_epoch = max(1, images.shape[0] // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(images.shape[0], generator=generator)
        for i in range(steps_per_epoch):
            idx = order[i * batch_size:(i + 1) * batch_size]
            loss = nn.functional.cross_entropy(model(images[idx]), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval().requires_grad_(False)
