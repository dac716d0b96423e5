"""gencore.nn.convert on diffusers' models: every ResnetBlock2D and the closing norm run on the fused op, with the
original's outputs, gradients, parameters and state_dict keys. Random models from small configs (nothing can be
downloaded here); skipped where diffusers is absent."""
from __future__ import annotations

import copy

import pytest
import torch

import gencore
import gencore.nn as gnn
import gencore.nn.diffusers_blocks as blocks
from gencore.nn.diffusers_blocks import is_fused
from gencore.testing import assert_close

diffusers = pytest.importorskip("diffusers")


def _unet2d(time_norm="default", dropout=0.0):
    torch.manual_seed(0)
    return diffusers.UNet2DModel(
        sample_size=16, in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8, resnet_time_scale_shift=time_norm, dropout=dropout, attention_head_dim=8)


def _unet2d_condition(time_norm="default"):
    torch.manual_seed(0)
    return diffusers.UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        norm_num_groups=8, cross_attention_dim=24, attention_head_dim=8, resnet_time_scale_shift=time_norm)


def _inputs(model, n=2, seed=1, size=16):
    g = torch.Generator().manual_seed(seed)
    c = model.config.in_channels
    x = torch.randn(n, c, size, size, generator=g)
    t = torch.tensor([10, 500])[:n]
    extra = {}
    if "cross_attention_dim" in model.config:
        extra["encoder_hidden_states"] = torch.randn(n, 5, model.config.cross_attention_dim, generator=g)
    return x, t, extra


def _silu_4d_calls(model, *args, **kwargs):
    """How many 4-D tensors go through SiLU in one forward (torch's F.silu, which nn.SiLU calls)."""
    real, calls = torch.nn.functional.silu, []

    def counting(x, *a, **k):
        calls.append(x.dim())
        return real(x, *a, **k)
    torch.nn.functional.silu = counting
    try:
        model(*args, **kwargs)
    finally:
        torch.nn.functional.silu = real
    return sum(d == 4 for d in calls)


@pytest.mark.parametrize("build", [_unet2d, _unet2d_condition], ids=["UNet2DModel", "UNet2DConditionModel"])
@pytest.mark.parametrize("time_norm", ["default", "scale_shift"])
def test_converted_unet_matches_the_original(build, time_norm):
    original = build(time_norm)
    converted = gencore.nn.convert(copy.deepcopy(original))
    blocks = [m for m in converted.modules() if type(m).__name__ == "ResnetBlock2D"]
    assert blocks and all(is_fused(b) for b in blocks)
    assert all(isinstance(b, diffusers.models.resnet.ResnetBlock2D) for b in blocks)
    assert list(converted.state_dict()) == list(original.state_dict())
    x, t, extra = _inputs(original)
    assert _silu_4d_calls(original, x, t, **extra) > 0
    assert _silu_4d_calls(converted, x, t, **extra) == 0, "a 4-D SiLU was left unfused"
    # Outputs and every parameter's gradient, in training mode.
    xs = [x.clone().requires_grad_(), x.clone().requires_grad_()]
    outs = [m(xi, t, **extra).sample for m, xi in zip((original, converted), xs)]
    assert_close(outs[1], outs[0], torch.float32)
    for out in outs:
        out.square().mean().backward()
    assert_close(xs[1].grad, xs[0].grad, torch.float32, kind="grad")
    for (name, p), q in zip(original.named_parameters(), converted.parameters()):
        if p.grad is not None:
            assert_close(q.grad, p.grad, torch.float32, kind="grad", msg=name)


def test_dropout_in_training_and_eval_mode():
    """Dropout sits between norm2+SiLU and conv2, as in diffusers: the same mask for the same RNG state."""
    original = _unet2d(dropout=0.3).train()
    converted = gencore.nn.convert(copy.deepcopy(original))
    x, t, _ = _inputs(original)
    torch.manual_seed(5)
    a = original(x, t).sample
    torch.manual_seed(5)
    b = converted(x, t).sample
    torch.testing.assert_close(b, a, rtol=1e-4, atol=2e-5)
    original.eval(), converted.eval()
    torch.testing.assert_close(converted(x, t).sample, original(x, t).sample, rtol=1e-4, atol=2e-5)


def test_vae_decoder_and_optimize():
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1,
                                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                                  norm_num_groups=8, latent_channels=4).eval()
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = vae.decode(z).sample
        fast = gencore.optimize(copy.deepcopy(vae), compile=False)
        assert _silu_4d_calls(fast.decoder, z) == 0
        torch.testing.assert_close(fast.decode(z).sample, expected, rtol=1e-4, atol=2e-5)


def test_blocks_it_cannot_fuse_are_left_alone():
    block = diffusers.models.resnet.ResnetBlock2D(in_channels=8, out_channels=8, temb_channels=None, groups=4,
                                                  non_linearity="mish")
    gencore.nn.convert(block)
    assert not is_fused(block)  # another activation: its own forward, unchanged
    block = diffusers.models.resnet.ResnetBlock2D(in_channels=8, out_channels=16, temb_channels=None, groups=4)
    x = torch.randn(2, 8, 6, 6)
    expected = block(x, None)
    gencore.nn.convert(block)
    assert is_fused(block)
    torch.testing.assert_close(block(x, None), expected, rtol=1e-4, atol=1e-5)  # no time embedding at all


def _count_paths(monkeypatch):
    """How many GroupNorm calls of the converted model take the fused op and how many torch's ops."""
    counts = {"fused": 0, "torch": 0}

    def counting(name, fn):
        def wrapped(*args, **kwargs):
            counts[name] += 1
            return fn(*args, **kwargs)
        return wrapped
    for module in (gnn, blocks):
        monkeypatch.setattr(module, "group_norm_silu", counting("fused", module.group_norm_silu))
        monkeypatch.setattr(module, "torch_group_norm_silu", counting("torch", module.torch_group_norm_silu))
    return counts


@pytest.mark.parametrize("build", [_unet2d, _unet2d_condition], ids=["UNet2DModel", "UNet2DConditionModel"])
def test_shipped_gate_leaves_small_models_to_torch_exactly(build, size_gate, monkeypatch):
    """Under the shipped size gate every call of a tiny model is torch's own: the converted model computes what the
    original does, op for op, so outputs and every gradient are bit for bit the same."""
    original = build()
    converted = gencore.nn.convert(copy.deepcopy(original))
    counts = _count_paths(monkeypatch)
    x, t, extra = _inputs(original)
    xs = [x.clone().requires_grad_(), x.clone().requires_grad_()]
    outs = [m(xi, t, **extra).sample for m, xi in zip((original, converted), xs)]
    assert counts["torch"] > 0 and counts["fused"] == 0
    assert torch.equal(outs[1], outs[0])
    for out in outs:
        out.square().mean().backward()
    assert torch.equal(xs[1].grad, xs[0].grad)
    for (name, p), q in zip(original.named_parameters(), converted.parameters()):
        if p.grad is not None:
            assert torch.equal(q.grad, p.grad), name


def test_shipped_gate_mixes_both_paths_within_tolerance(size_gate, monkeypatch):
    """At 64x64 the shipped gate sends the residual blocks' GroupNorm + SiLU + temb (131,072 elements) to the fused
    op and the rest (the first norm and the closing one without an add, the attention's plain GroupNorm) to torch:
    the mix gives the original's outputs within the float32 tolerance."""
    original = _unet2d_condition().eval()
    converted = gencore.nn.convert(copy.deepcopy(original))
    counts = _count_paths(monkeypatch)
    x, t, extra = _inputs(original, size=64)
    with torch.no_grad():
        expected = original(x, t, **extra).sample
        actual = converted(x, t, **extra).sample
    assert counts["fused"] > 0 and counts["torch"] > 0
    assert_close(actual, expected, torch.float32)
