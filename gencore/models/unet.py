"""A time-conditioned UNet denoiser for DDPM/DDIM, built on gencore's fused GroupNorm+SiLU(+time embedding).

Every normalization of the network is gencore.nn's GroupNormSiLU / GroupNorm (gencore.ops.group_norm_silu), so
choosing a backend (`gencore.use_backend("cpu")`, GENCORE_BACKEND, ...) speeds up real training and sampling, not
only a micro-benchmark.

Layout (ADM / diffusers UNet2DModel style):

    x --conv_in--> [level 0: num_res_blocks x ResBlock (+Attention)] --down--> [level 1 ...] ... [last level]
      --> mid (ResBlock, Attention, ResBlock)
      --> [last level: (num_res_blocks + 1) x ResBlock on cat(h, skip) (+Attention)] --up--> ... [level 0]
      --> GroupNorm+SiLU --conv_out--> output

Downsampling is a stride-2 3x3 convolution (ceil division: 28 -> 14 -> 7 -> 4), and upsampling resizes to the exact
size of the matching skip tensor, so any input size works, 28x28 included.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..nn import GroupNorm, GroupNormSiLU

TIME_EMBEDDING_NORMS = ("default", "scale_shift")


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (N,) timesteps (int or float) as (N, dim) float32: [cos(t f_k), sin(t f_k)].

    Frequencies f_k = max_period^(-k / half) for k < half = dim // 2 (the Transformer / DDPM embedding); an odd dim
    gets one zero column at the end.
    """
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    args = timesteps.to(torch.float32)[:, None] * torch.exp(exponent)[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


MAX_AUTO_GROUPS = 32


def _check_norm_groups(norm_groups, channels: list[int], time_embedding_norm: str) -> int:
    """The GroupNorm group count for these channel counts: `norm_groups` checked, or chosen when None."""
    if norm_groups is None:
        # Largest g <= 32 dividing every count with >= 2 channels a group (g = 1 always divides: LayerNorm-like).
        norm_groups = max(g for g in range(1, MAX_AUTO_GROUPS + 1)
                          if all(ch % g == 0 and ch // g >= 2 for ch in channels) or g == 1)
    elif not isinstance(norm_groups, int) or isinstance(norm_groups, bool) or norm_groups < 1:
        raise ValueError(f"norm_groups must be None or a positive int, got {norm_groups!r}")
    for ch in channels:
        if ch % norm_groups:
            raise ValueError(f"norm_groups ({norm_groups}) must divide every channel count; "
                             f"base_channels * channel_mult gives {ch}")
    if time_embedding_norm == "default" and min(channels) // norm_groups < 2:
        raise ValueError(f"norm_groups ({norm_groups}) leaves one channel per group at {min(channels)} channels: "
                         f"the time and class embedding, added per channel before the group statistics, would be "
                         f"normalised away and the model would ignore them. Use at most {min(channels) // 2} "
                         f"groups, norm_groups=None to choose, or time_embedding_norm='scale_shift'"
                         if min(channels) >= 2 else
                         f"base_channels ({min(channels)}) leaves one channel per group: the time and class "
                         f"embedding, added before the group statistics, would be normalised away; use "
                         f"base_channels >= 2 or time_embedding_norm='scale_shift'")
    return norm_groups


class ResBlock(nn.Module):
    """h = conv(norm_silu(x)); h = conv(dropout(norm_silu(h, conditioned on temb))); return h + skip(x).

    time_embedding_norm="default" adds a projection of the embedding to h before the second normalization (inside the
    fused op's statistics); "scale_shift" normalizes h and then applies (1 + scale) and shift from the embedding.
    """

    def __init__(self, in_channels: int, out_channels: int, temb_dim: int, *, norm_groups: int, dropout: float,
                 time_embedding_norm: str):
        super().__init__()
        self.time_embedding_norm = time_embedding_norm
        self.norm1 = GroupNormSiLU(norm_groups, in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        factor = 2 if time_embedding_norm == "scale_shift" else 1
        self.time_proj = nn.Linear(temb_dim, factor * out_channels)
        self.norm2 = GroupNormSiLU(norm_groups, out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.norm1(x))
        cond = self.time_proj(F.silu(temb))
        if self.time_embedding_norm == "scale_shift":
            h = self.norm2(h, scale_shift=cond)
        else:
            h = self.norm2(h, temb=cond)
        h = self.conv2(self.dropout(h))
        return h + self.skip(x)


class Attention(nn.Module):
    """Multi-head self-attention over the spatial positions, residual: x + proj(attn(norm(x)))."""

    def __init__(self, channels: int, *, num_heads: int, norm_groups: int):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"attention_heads ({num_heads}) must divide the channels at an attention level "
                             f"({channels})")
        self.num_heads = num_heads
        self.norm = GroupNorm(norm_groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(n, 3, self.num_heads, c // self.num_heads, h * w)
        q, k, v = (qkv[:, i].transpose(-1, -2) for i in range(3))  # (N, heads, HW, C/heads)
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(-1, -2).reshape(n, c, h, w)
        return x + self.proj(out)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour resize to the skip connection's exact size, then a 3x3 convolution (odd sizes round-trip)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        return self.conv(F.interpolate(x, size=tuple(size), mode="nearest"))


class _Level(nn.Module):
    """The blocks of one resolution level (a ModuleList of ResBlocks and an optional Attention per block)."""

    def __init__(self):
        super().__init__()
        self.res = nn.ModuleList()
        self.attn = nn.ModuleList()


class UNet(nn.Module):
    """Time-conditioned UNet for diffusion models, any input size (28x28 included), optional class conditioning.

    Every argument is keyword-only; `UNet(in_channels=1, out_channels=1)` is a ready MNIST denoiser.

    Parameters:
        in_channels: image channels C of x (default 3).
        out_channels: channels of the prediction; None means in_channels (epsilon, x0 and v prediction). Use
            2 * in_channels for a learned variance.
        base_channels: channels of the first level (default 64).
        channel_mult: channels of level i are base_channels * channel_mult[i]; the number of levels is its length,
            and the input is halved (rounding up) between consecutive levels. Default (1, 2, 2).
        num_res_blocks: residual blocks per level on the way down (the way up has one more). Default 2.
        attention_levels: indices of the levels (0 = full resolution) that get self-attention after each residual
            block; the middle block always has one. Default (1,): for 28x28 input, attention at 14x14.
        attention_heads: heads of every attention layer (must divide its channels). None (the default) means 4, or
            the largest count below 4 that divides the channels of every attention layer.
        dropout: dropout probability inside the residual blocks (before their second convolution). Default 0.
        norm_groups: groups of every GroupNorm: must divide every channel count, and with
            time_embedding_norm="default" leave at least 2 channels in each group of a residual block (the embedding
            is added per channel before the group statistics, so a group of one channel subtracts it again and the
            block would ignore t and the class). None (the default) picks the largest count up to 32 that divides
            every channel count with at least 2 channels per group: 32 for base_channels 64, 16 for 32, 8 for 16.
        time_embedding_norm: "default" (the projected time embedding is added before the second GroupNorm, fused
            into the normalization) or "scale_shift" (GroupNorm, then * (1 + scale) + shift, as in ADM).
        time_embed_dim: width of the time-embedding MLP; None means 4 * base_channels.
        num_classes: None for an unconditional model; otherwise the number of classes K. The label embedding has
            K + 1 rows: row K is the *null class* used for classifier-free guidance (`null_class`), which is also
            what `class_labels=None` means at call time.

    forward(x, timesteps, class_labels=None):
        x: (N, in_channels, H, W) float tensor, any H, W >= 1.
        timesteps: int or float tensor of shape (N,), or a scalar (Python number or 0-dim tensor) used for all N.
        class_labels: (N,) int64 in [0, num_classes] (num_classes = null class), or None (all null). Only for a
            class-conditional model; passing labels to an unconditional one is an error.
        Returns (N, out_channels, H, W) in x's dtype.
    """

    def __init__(
        self,
        *,
        in_channels: int = 3,
        out_channels: int | None = None,
        base_channels: int = 64,
        channel_mult: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 2,
        attention_levels: Sequence[int] = (1,),
        attention_heads: int | None = None,
        dropout: float = 0.0,
        norm_groups: int | None = None,
        time_embedding_norm: str = "default",
        time_embed_dim: int | None = None,
        num_classes: int | None = None,
    ):
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        channel_mult = tuple(int(m) for m in channel_mult)
        attention_levels = tuple(int(i) for i in attention_levels)
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels),
                            ("base_channels", base_channels), ("num_res_blocks", num_res_blocks),
                            ("attention_heads", 1 if attention_heads is None else attention_heads)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not channel_mult or min(channel_mult) < 1:
            raise ValueError(f"channel_mult must be a non-empty sequence of positive ints, got {channel_mult!r}")
        if any(not 0 <= i < len(channel_mult) for i in attention_levels):
            raise ValueError(f"attention_levels must be level indices in [0, {len(channel_mult)}), "
                             f"got {attention_levels!r}")
        if time_embedding_norm not in TIME_EMBEDDING_NORMS:
            raise ValueError(f"time_embedding_norm must be one of {TIME_EMBEDDING_NORMS}, got {time_embedding_norm!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
            raise ValueError(f"num_classes must be None or a positive int, got {num_classes!r}")
        channels = sorted({base_channels * m for m in channel_mult} | {base_channels})
        norm_groups = _check_norm_groups(norm_groups, channels, time_embedding_norm)
        if attention_heads is None:  # the mid block always attends, at the last level's channels
            attended = [base_channels * channel_mult[i] for i in attention_levels] + [base_channels * channel_mult[-1]]
            attention_heads = max(h for h in range(1, 5) if all(ch % h == 0 for ch in attended))
        time_embed_dim = 4 * base_channels if time_embed_dim is None else int(time_embed_dim)

        # Everything needed to rebuild the model (checkpoints store it as JSON).
        self.config = dict(in_channels=in_channels, out_channels=out_channels, base_channels=base_channels,
                           channel_mult=list(channel_mult), num_res_blocks=num_res_blocks,
                           attention_levels=list(attention_levels), attention_heads=attention_heads,
                           dropout=dropout, norm_groups=norm_groups, time_embedding_norm=time_embedding_norm,
                           time_embed_dim=time_embed_dim, num_classes=num_classes)
        self.in_channels, self.out_channels, self.num_classes = in_channels, out_channels, num_classes
        self.base_channels = base_channels

        self.time_mlp = nn.Sequential(nn.Linear(base_channels, time_embed_dim), nn.SiLU(),
                                      nn.Linear(time_embed_dim, time_embed_dim))
        self.class_embedding = None if num_classes is None else nn.Embedding(num_classes + 1, time_embed_dim)

        block = dict(norm_groups=norm_groups, dropout=dropout, time_embedding_norm=time_embedding_norm)
        attn = dict(num_heads=attention_heads, norm_groups=norm_groups)
        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)

        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        skip_channels = [base_channels]
        ch = base_channels
        for level, mult in enumerate(channel_mult):
            lv = _Level()
            for _ in range(num_res_blocks):
                lv.res.append(ResBlock(ch, base_channels * mult, time_embed_dim, **block))
                ch = base_channels * mult
                lv.attn.append(Attention(ch, **attn) if level in attention_levels else nn.Identity())
                skip_channels.append(ch)
            self.down.append(lv)
            if level < len(channel_mult) - 1:
                self.downsample.append(Downsample(ch))
                skip_channels.append(ch)

        self.mid_res1 = ResBlock(ch, ch, time_embed_dim, **block)
        self.mid_attn = Attention(ch, **attn)
        self.mid_res2 = ResBlock(ch, ch, time_embed_dim, **block)

        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for level in reversed(range(len(channel_mult))):
            lv = _Level()
            for _ in range(num_res_blocks + 1):
                lv.res.append(ResBlock(ch + skip_channels.pop(), base_channels * channel_mult[level],
                                       time_embed_dim, **block))
                ch = base_channels * channel_mult[level]
                lv.attn.append(Attention(ch, **attn) if level in attention_levels else nn.Identity())
            self.up.append(lv)
            if level > 0:
                self.upsample.append(Upsample(ch))

        self.norm_out = GroupNormSiLU(norm_groups, ch)
        self.conv_out = nn.Conv2d(ch, out_channels, 3, padding=1)

    @property
    def null_class(self) -> int | None:
        """The label index meaning "no class" (classifier-free guidance), or None for an unconditional model."""
        return self.num_classes

    def _embed(self, x: torch.Tensor, timesteps, class_labels) -> torch.Tensor:
        n = x.shape[0]
        if not torch.is_tensor(timesteps):
            timesteps = torch.tensor(timesteps, device=x.device)
        if timesteps.dim() == 0:
            timesteps = timesteps.reshape(1).expand(n)
        elif timesteps.dim() != 1 or timesteps.shape[0] != n:
            raise ValueError(f"timesteps must be a scalar or of shape ({n},) to match x, got {tuple(timesteps.shape)}")
        emb = timestep_embedding(timesteps.to(x.device), self.base_channels)
        temb = self.time_mlp(emb.to(self.time_mlp[0].weight.dtype))
        if self.class_embedding is not None:
            if class_labels is None:
                class_labels = torch.full((n,), self.num_classes, dtype=torch.long, device=x.device)
            elif class_labels.shape != (n,):
                raise ValueError(f"class_labels must have shape ({n},), got {tuple(class_labels.shape)}")
            temb = temb + self.class_embedding(class_labels.to(device=x.device, dtype=torch.long))
        elif class_labels is not None:
            raise ValueError("class_labels given to an unconditional UNet (build it with num_classes=K)")
        return temb

    def forward(self, x: torch.Tensor, timesteps, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must have shape (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        temb = self._embed(x, timesteps, class_labels)

        h = self.conv_in(x)
        skips = [h]
        for level, lv in enumerate(self.down):
            for res, attn in zip(lv.res, lv.attn):
                h = attn(res(h, temb))
                skips.append(h)
            if level < len(self.downsample):
                h = self.downsample[level](h)
                skips.append(h)

        h = self.mid_res2(self.mid_attn(self.mid_res1(h, temb)), temb)

        for i, lv in enumerate(self.up):
            for res, attn in zip(lv.res, lv.attn):
                h = attn(res(torch.cat([h, skips.pop()], dim=1), temb))
            if i < len(self.upsample):
                h = self.upsample[i](h, skips[-1].shape[-2:])

        return self.conv_out(self.norm_out(h))
