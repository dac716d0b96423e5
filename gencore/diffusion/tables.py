"""The coefficient tables of the fused step: their columns, and the cache that builds each table once.

A scheduler turns its configuration and its schedule into a table with one row per timestep (DDPM, DDIM) or per
step (DPM-Solver++) and the columns of gencore.ops.sampler_step's contract (gencore._rules
.COEF_COLUMNS: x_0 and epsilon from the sample and the model output, x_{t-1} from x_0, the sample, epsilon, the
noise and the solver's history). Tables are computed in float64 on the host and rounded once into the sample's
accumulation dtype (gencore._rules) on its device, so a step only gathers rows inside the kernel and never reads a
value back to the host.
"""
from __future__ import annotations

from collections.abc import Callable, Hashable

import numpy as np
import torch

from .._rules import COEF_COLUMNS, NUM_COEFS

COLUMN = {name: i for i, name in enumerate(COEF_COLUMNS)}
X0_FROM_SAMPLE, X0_FROM_MODEL = COLUMN["x0_from_sample"], COLUMN["x0_from_model"]
EPS_FROM_SAMPLE, EPS_FROM_MODEL, EPS_FROM_X0 = COLUMN["eps_from_sample"], COLUMN["eps_from_model"], COLUMN["eps_from_x0"]
PREV_FROM_X0, PREV_FROM_SAMPLE, PREV_FROM_EPS = COLUMN["prev_from_x0"], COLUMN["prev_from_sample"], COLUMN["prev_from_eps"]
NOISE_STD = COLUMN["noise_std"]
PREV_FROM_HISTORY1, PREV_FROM_HISTORY2 = COLUMN["prev_from_history1"], COLUMN["prev_from_history2"]

# 1 / sqrt(alphas_cumprod) where alphas_cumprod = 0 (zero terminal SNR, epsilon prediction): see the DDPM/DDIM
# schedulers' _x0_eps_columns.
ZERO_SNR_INV_SQRT_ABAR = 2.0**64

__all__ = ["COLUMN", "NUM_COEFS", "TableCache", "table_device"]


def table_device(device) -> torch.device:
    """A canonical device key: None is the CPU, "cuda" is the current CUDA device (what tensors report)."""
    device = torch.device("cpu") if device is None else torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


class TableCache:
    """Tables built once per key on the host (float64 numpy, by `build(key)`) and copied once per (key, device,
    dtype): every table a scheduler's steps read (a new schedule makes a new cache)."""

    def __init__(self, build: Callable[[Hashable], np.ndarray]):
        self._build = build
        self._host: dict = {}
        self._on_device: dict = {}

    def host(self, key: Hashable = None) -> np.ndarray:
        table = self._host.get(key)
        if table is None:
            table = self._host[key] = self._build(key)
        return table

    def get(self, key: Hashable, device, dtype: torch.dtype) -> torch.Tensor:
        device = table_device(device)
        table = self._on_device.get((key, device, dtype))
        if table is None:
            table = torch.from_numpy(self.host(key)).to(device=device, dtype=dtype)
            self._on_device[(key, device, dtype)] = table
        return table
