"""The torch device a command runs on, from its --device value."""
from __future__ import annotations

import torch


def resolve_device(spec: str | None, *, flag: str = "--device"):
    """The torch device for a --device value: None or "auto" means cuda when available, else cpu. A device that
    this machine does not have is a ValueError (one line from the CLI) instead of torch's AssertionError later."""
    if spec is None or spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        raise ValueError(f"{flag}: {spec!r} is not a device (expected cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{flag} {spec}: no CUDA device here (this torch {torch.__version__} "
                             f"{'has no CUDA support' if torch.version.cuda is None else 'finds no GPU'}); "
                             f"use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"{flag} {spec}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type not in ("cpu", "mps", "xpu"):
        raise ValueError(f"{flag}: unsupported device {spec!r}")
    return device
