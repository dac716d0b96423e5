"""argparse value types shared by the subcommands: each rejects a bad value with a message saying what was expected
(argparse then names the flag)."""
from __future__ import annotations

import argparse
from typing import Callable


def _number(convert: Callable[[str], float], accept: Callable[[float], bool], expected: str):
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not accept(value):  # NaN fails every comparison, so it is rejected too
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    parse.__name__ = expected.replace(" ", "_")  # argparse's "invalid <name> value" fallback
    return parse


positive_int = _number(int, lambda v: v >= 1, "a positive integer")
int_at_least_2 = _number(int, lambda v: v >= 2, "an integer >= 2")
non_negative_int = _number(int, lambda v: v >= 0, "a non-negative integer")
positive_float = _number(float, lambda v: v > 0, "a positive number")
non_negative_float = _number(float, lambda v: v >= 0, "a non-negative number")


def int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip() != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 1,2,2, got {text!r}") from None


def resolve_device(spec: str | None, *, flag: str = "--device"):
    """The torch device for a --device value: None or "auto" means cuda when available, else cpu. A device that
    this machine does not have is a ValueError (one line from the CLI) instead of torch's AssertionError later."""
    import torch

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


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """argparse's defaults formatter (descriptions kept as written), except that it adds nothing where the help already says its default, or where
    the default is None or False (a flag, or a value chosen later): no "(default: 100, ...) (default: None)"."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "(default" in text or action.default is None or action.default is False:
            return text
        return super()._get_help_string(action)
