"""Optional InceptionV3 features, for users who have torchvision and InceptionV3 weights on disk.

gencore never downloads anything here and imports torchvision only when `load_inception_v3` is called. The
weights are torchvision's ImageNet InceptionV3 state_dict (``inception_v3_google-*.pth``, or the same tensors as
.safetensors). Note that pytorch-fid and torch-fidelity use a different port of the 2015 TensorFlow graph, so FIDs
computed with these features are close to, but not the same numbers as, published FIDs. For MNIST, the shipped
classifier (load_mnist_classifier) is the better feature extractor; this exists for RGB or larger images.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

__all__ = ["InceptionFeatures", "load_inception_v3"]


class InceptionFeatures(nn.Module):
    """InceptionV3 as a feature extractor: images (N, 1 or 3, H, W) in [-1, 1] are resized to 299x299 (bilinear),
    grey images repeated to 3 channels; `features(images)` -> (N, 2048) pool features (FID), `forward` -> (N, 1000)
    ImageNet logits (Inception Score)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.fc = net.fc
        net.fc = nn.Identity()
        self.net = net

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"images must have shape (N, 1 or 3, H, W), got {tuple(images.shape)}")
        if images.shape[1] == 1:
            images = images.repeat(1, 3, 1, 1)
        # The network was trained (in TensorFlow) on inputs in [-1, 1]; transform_input=False keeps them so.
        return F.interpolate(images.float(), size=(299, 299), mode="bilinear", align_corners=False)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(self._prepare(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(images))


def load_inception_v3(weights: str | os.PathLike, device: str | torch.device = "cpu") -> InceptionFeatures:
    """Build torchvision's InceptionV3 from a local weights file (never a download), in eval mode on `device`.

    Raises ImportError (with the reason) without torchvision, FileNotFoundError if `weights` does not exist,
    RuntimeError if the file does not hold InceptionV3 weights.
    """
    try:
        from torchvision.models import inception_v3  # optional: only InceptionV3 features need torchvision
    except ImportError as exc:
        raise ImportError(f"InceptionV3 features need torchvision ({exc}); install it, or use the shipped MNIST "
                          f"classifier (gencore.metrics.load_mnist_classifier)") from exc
    path = os.fspath(weights)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"InceptionV3 weights not found: {path} (gencore does not download them)")
    if path.endswith(".safetensors"):
        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)  # no pickle code execution
    net = inception_v3(weights=None, aux_logits=True, init_weights=False, transform_input=False)
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise RuntimeError(f"{path} does not hold torchvision InceptionV3 weights: {exc}") from exc
    net.AuxLogits = None  # only used in training
    net.aux_logits = False
    return InceptionFeatures(net).to(device).eval().requires_grad_(False)
