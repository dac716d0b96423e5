"""diffusers' residual blocks on gencore's fused GroupNorm + SiLU, found by class, without importing diffusers.

diffusers' ResnetBlock2D.forward calls norm1, the activation, conv1, adds the projected time embedding, then norm2
(or scale/shift after it) and the activation again: twice exactly gencore.ops.group_norm_silu, but inline in a
forward rather than as modules in a Sequential, so convert()'s module swap cannot see it. fuse_resnet_block gives
such a block a subclass of its own class whose forward is the same computation on the fused op:

    h = SiLU(GroupNorm_1(x))                                       one fused pass
    h = conv1(up/down(h));  t = time_emb_proj(SiLU(temb))
    h = SiLU(GroupNorm_2(h + t))                (default)          one fused pass, t added inside
    h = SiLU(GroupNorm_2(h) * (1 + scale) + shift)  (scale_shift)  one fused pass
    out = (shortcut(up/down(x)) + conv2(dropout(h))) / output_scale_factor

Parameters, buffers, state_dict keys and isinstance(block, ResnetBlock2D) stay; only the class's forward changes.
A block whose options the fused op does not cover (another activation, a 4-D temb without time_emb_proj, a
non-affine norm) is left alone, so nothing changes meaning. The UNets' and VAEs' closing conv_norm_out + conv_act
pair becomes GroupNormSiLU + Identity, as in a Sequential.
"""
from __future__ import annotations

import torch
from torch import nn

from ..ops.group_norm_silu import group_norm_silu
from .size_gate import torch_group_norm_silu, torch_is_faster

_FUSED_CLASSES: dict[type, type] = {}


def _is_diffusers(module: nn.Module, class_name: str) -> bool:
    cls = type(module)
    return cls.__name__ == class_name and cls.__module__.split(".")[0] == "diffusers"


def _affine_group_norm(m) -> bool:
    return isinstance(m, nn.GroupNorm) and m.affine


def can_fuse_resnet_block(block: nn.Module) -> bool:
    """Whether `block` is a diffusers ResnetBlock2D whose forward fused_resnet_forward computes exactly."""
    return (_is_diffusers(block, "ResnetBlock2D") and type(getattr(block, "nonlinearity", None)) is nn.SiLU
            and _affine_group_norm(getattr(block, "norm1", None)) and _affine_group_norm(getattr(block, "norm2", None))
            and (getattr(block, "time_embedding_norm", None) in ("default", "scale_shift")
                 or getattr(block, "time_emb_proj", 0) is None))  # e.g. the VAE's "group" blocks: no temb at all


def _gn_silu(norm: nn.GroupNorm, x: torch.Tensor, temb=None, scale_shift=None) -> torch.Tensor:
    weight, bias = norm.weight, norm.bias
    if torch_is_faster(x, weight, bias, temb, scale_shift, "silu"):
        return torch_group_norm_silu(x, norm.num_groups, weight, bias, norm.eps, temb, scale_shift)
    dtype = x.dtype
    if weight.dtype != dtype:  # a model cast by hand, or autocast: the op takes one dtype
        weight, bias = weight.to(dtype), bias.to(dtype)
    if temb is not None and temb.dtype != dtype:
        temb = temb.to(dtype)
    if scale_shift is not None and scale_shift.dtype != dtype:
        scale_shift = scale_shift.to(dtype)
    return group_norm_silu(x, norm.num_groups, weight, bias, norm.eps, temb=temb, scale_shift=scale_shift,
                           activation="silu")


def fused_resnet_forward(self, input_tensor: torch.Tensor, temb: torch.Tensor | None, *args, **kwargs):
    """diffusers' ResnetBlock2D.forward with both GroupNorm + SiLU (and the time embedding) in the fused op."""
    if self.time_emb_proj is None and temb is not None:
        # diffusers adds such a temb as given (any broadcastable shape): keep its own code for it.
        return super(type(self), self).forward(input_tensor, temb, *args, **kwargs)
    hidden = _gn_silu(self.norm1, input_tensor)
    if self.upsample is not None:
        if hidden.shape[0] >= 64:  # diffusers' workaround: upsample_nearest_nhwc fails on large batches
            input_tensor, hidden = input_tensor.contiguous(), hidden.contiguous()
        input_tensor, hidden = self.upsample(input_tensor), self.upsample(hidden)
    elif self.downsample is not None:
        input_tensor, hidden = self.downsample(input_tensor), self.downsample(hidden)
    hidden = self.conv1(hidden)
    t = None
    if self.time_emb_proj is not None and temb is not None:
        t = self.time_emb_proj(temb if self.skip_time_act else self.nonlinearity(temb))
    if self.time_embedding_norm == "scale_shift":
        if t is None:
            raise ValueError(f" `temb` should not be None when `time_embedding_norm` is {self.time_embedding_norm}")
        hidden = _gn_silu(self.norm2, hidden, scale_shift=t)
    else:  # "default" adds t; other modes have no time_emb_proj (diffusers refuses one), so t is None: plain norm
        hidden = _gn_silu(self.norm2, hidden, temb=t)
    hidden = self.conv2(self.dropout(hidden))
    if self.conv_shortcut is not None:
        if self.training:
            input_tensor = input_tensor.contiguous()
        input_tensor = self.conv_shortcut(input_tensor)
    return (input_tensor + hidden) / self.output_scale_factor


def fuse_resnet_block(block: nn.Module) -> bool:
    """Give a diffusers ResnetBlock2D the fused forward (in place); False, and no change, if it cannot be fused."""
    if not can_fuse_resnet_block(block):
        return False
    cls = type(block)
    if cls not in _FUSED_CLASSES.values():
        fused = _FUSED_CLASSES.get(cls)
        if fused is None:
            fused = type(cls.__name__, (cls,), {"forward": fused_resnet_forward, "__module__": cls.__module__,
                                                "__doc__": f"{cls.__doc__ or ''}\n(gencore: fused GroupNorm + SiLU)"})
            _FUSED_CLASSES[cls] = fused
        block.__class__ = fused
    return True


def is_fused(block: nn.Module) -> bool:
    return type(block) in _FUSED_CLASSES.values()


def has_closing_norm_pair(model: nn.Module) -> bool:
    """Whether `model` is a diffusers model (UNet2DModel, UNet2DConditionModel, the VAE's encoder and decoder) whose
    forward calls conv_norm_out (an affine GroupNorm) and then conv_act (SiLU) back to back."""
    norm, act = getattr(model, "conv_norm_out", None), getattr(model, "conv_act", None)
    return (type(model).__module__.split(".")[0] == "diffusers" and _affine_group_norm(norm)
            and type(act) is nn.SiLU)
