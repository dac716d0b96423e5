"""Drop-in modules backed by gencore's fused ops.

    GroupNorm       torch.nn.GroupNorm, running on gencore.ops.group_norm_silu with activation=None
    GroupNormSiLU   GroupNorm followed by SiLU in one fused pass; forward(x, temb=None, scale_shift=None)
    convert(module) swaps them into an existing model in place

Both subclass torch.nn.GroupNorm: same constructor, defaults, parameter names and state_dict keys, so a
torch.nn.GroupNorm checkpoint loads as is and isinstance checks keep working. On the CPU with backend "auto", calls
for which a separate fused call does not pay run on torch's own kernels instead (gencore/nn/size_gate.py: tensors
too small for the passes the fused call saves to repay its fixed cost; a plain GroupNorm, which saves no pass, below
millions of elements).
"""
from __future__ import annotations

import torch
from torch import nn

from ..ops.group_norm_silu import group_norm_silu
from .diffusers_blocks import fuse_resnet_block, has_closing_norm_pair
from .size_gate import torch_group_norm_silu, torch_is_faster

__all__ = ["GroupNorm", "GroupNormSiLU", "convert"]


class _FusedGroupNormBase(nn.GroupNorm):
    _activation: str | None = None

    def _params_for(self, x: torch.Tensor):
        weight, bias = self.weight, self.bias
        if weight is not None and weight.dtype != x.dtype:
            # Half-precision activations with float32 parameters (a model cast by hand): the op wants one dtype.
            weight, bias = weight.to(x.dtype), bias.to(x.dtype)
        return weight, bias

    def _forward(self, x, temb=None, scale_shift=None, backend=None):
        weight, bias = self.weight, self.bias
        if torch_is_faster(x, weight, bias, temb, scale_shift, self._activation, backend):
            # torch's ops on the module's own tensors, as torch.nn.GroupNorm (+ SiLU) computes them.
            return torch_group_norm_silu(x, self.num_groups, weight, bias, self.eps, temb, scale_shift,
                                         self._activation)
        if x.device.type == "cuda" and torch.is_autocast_enabled("cuda"):
            # CUDA autocast runs torch's group_norm in float32 (its "fp32" op list); do the same so results and
            # output dtype match torch. CPU autocast keeps the input dtype, which the path below already does.
            x = x.float()
            temb = None if temb is None else temb.float()
            scale_shift = None if scale_shift is None else scale_shift.float()
            with torch.autocast(x.device.type, enabled=False):
                weight, bias = self._params_for(x)
                return group_norm_silu(x, self.num_groups, weight, bias, self.eps, temb=temb,
                                       scale_shift=scale_shift, activation=self._activation, backend=backend)
        weight, bias = self._params_for(x)
        return group_norm_silu(x, self.num_groups, weight, bias, self.eps, temb=temb, scale_shift=scale_shift,
                               activation=self._activation, backend=backend)


class GroupNorm(_FusedGroupNormBase):
    """torch.nn.GroupNorm on gencore's fused kernels.

    Parameters:
        num_groups (int): number of groups to separate the channels into; must divide num_channels.
        num_channels (int): C, the channel count of the (N, C, *) input.
        eps (float): added to the variance for numerical stability. Default 1e-5.
        affine (bool): learnable per-channel weight (ones) and bias (zeros). Default True.
        device, dtype: where and in which dtype to create the parameters.
    """

    _activation = None

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self._forward(input)


class GroupNormSiLU(_FusedGroupNormBase):
    """SiLU(GroupNorm(x + temb)) in one fused pass: the normalization of a diffusion-UNet residual block.

    Parameters are those of torch.nn.GroupNorm (num_groups, num_channels, eps=1e-5, affine=True, device, dtype), and
    the state_dict keys are the same (weight, bias).

    forward(x, temb=None, scale_shift=None):
        x: (N, C, *spatial). temb: (N, C), added to x per channel before the statistics. scale_shift: (N, 2C), applied
        after the affine as y = norm * (1 + scale) + shift (diffusers' time_embedding_norm="scale_shift").
    """

    _activation = "silu"

    def forward(self, input: torch.Tensor, temb: torch.Tensor | None = None,
                scale_shift: torch.Tensor | None = None) -> torch.Tensor:
        return self._forward(input, temb, scale_shift)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", activation=silu"


def _fused_copy(cls, gn: nn.GroupNorm) -> nn.GroupNorm:
    new = cls(gn.num_groups, gn.num_channels, eps=gn.eps, affine=gn.affine,
              device=gn.weight.device if gn.affine else None, dtype=gn.weight.dtype if gn.affine else None)
    if gn.affine:
        new.weight = gn.weight  # share the Parameter objects: optimizers holding them keep working
        new.bias = gn.bias
    new.train(gn.training)
    return new


def convert(module: nn.Module) -> nn.Module:
    """Swap torch's GroupNorm (and GroupNorm + SiLU pairs) for gencore's fused modules, in place.

    Inside every nn.Sequential, a torch.nn.GroupNorm immediately followed by nn.SiLU becomes GroupNormSiLU +
    nn.Identity (indices, and so state_dict keys, stay the same); every other torch.nn.GroupNorm becomes
    gencore.nn.GroupNorm. diffusers' models (recognised by class; diffusers is not imported): every ResnetBlock2D
    runs both of its GroupNorm + SiLU and its time-embedding add (or scale/shift) in the fused op, and a closing
    conv_norm_out + conv_act pair becomes GroupNormSiLU + Identity (gencore/nn/diffusers_blocks.py). Parameters are
    shared, not copied. Returns the module (a new one only when `module` itself is a GroupNorm).
    """
    if type(module) is nn.GroupNorm:
        return _fused_copy(GroupNorm, module)
    for parent in list(module.modules()):
        if fuse_resnet_block(parent):
            continue  # its norm1 / norm2 are read by the fused forward; they stay torch GroupNorm modules
        if has_closing_norm_pair(parent):
            parent.conv_norm_out = _fused_copy(GroupNormSiLU, parent.conv_norm_out)
            parent.conv_act = nn.Identity()
        names = list(parent._modules.keys())
        if isinstance(parent, nn.Sequential):
            for i in range(len(names) - 1):
                first, second = parent._modules[names[i]], parent._modules[names[i + 1]]
                if type(first) is nn.GroupNorm and type(second) is nn.SiLU:
                    parent._modules[names[i]] = _fused_copy(GroupNormSiLU, first)
                    parent._modules[names[i + 1]] = nn.Identity()
        for name in names:
            child = parent._modules[name]
            if type(child) is nn.GroupNorm:
                parent._modules[name] = _fused_copy(GroupNorm, child)
    return module
