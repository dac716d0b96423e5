"""gencore.fusion: the torch.compile pass that turns GroupNorm + SiLU patterns into the fused op, by graph shape alone.

Each test compiles a model through a recording backend that runs the pass and then the graph itself (no Inductor,
so the tests are quick), counts what was rewritten and what SiLU calls on 4-D tensors are left, and holds the
outputs to the eager model's. One test runs the real "gencore" backend (the pass, then Inductor).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import gencore
import gencore.fusion as fusion
from gencore.models import UNet
from gencore.testing import assert_close

pytestmark = pytest.mark.skipif("cpu" not in gencore.available_backends(), reason="needs the C++ extension")


class Recorder:
    """A torch.compile backend: the fusion pass, then the (rewritten) graph as it is."""

    def __init__(self):
        self.rewritten = 0
        self.unfused_silu = 0
        self.fused_calls = 0

    def __call__(self, gm, example_inputs):
        if not fusion._is_training(example_inputs):
            self.rewritten += fusion.fuse_group_norm_silu(gm)
        for node in gm.graph.nodes:
            if node.op != "call_function":
                continue
            if node.target is F.silu:
                v = fusion._value(node.args[0])
                self.unfused_silu += int(v is not None and v.dim() == 4)
            if node.target in (torch.ops.gencore.group_norm_silu_fwd, torch.ops.gencore.group_norm_silu_fwd.default):
                self.fused_calls += 1
        return gm.forward


def compiled(model, *inputs, grad=False):
    torch._dynamo.reset()
    rec = Recorder()
    with torch.set_grad_enabled(grad):
        out = torch.compile(model, backend=rec, fullgraph=False)(*inputs)
    return out, rec


@pytest.fixture
def every_size(monkeypatch):
    monkeypatch.setattr(fusion, "MIN_GROUP_ELEMENTS", 0)  # the tests' shapes are small


class SeedBlock(nn.Module):
    """The seed UNet's residual block: Sequential(GroupNorm, SiLU, Conv) twice, h + temb between them."""

    def __init__(self, c=32, t=16, scale_shift=False):
        super().__init__()
        self.block1 = nn.Sequential(nn.GroupNorm(8, c), nn.SiLU(), nn.Conv2d(c, c, 3, padding=1))
        self.norm2, self.act2, self.conv2 = nn.GroupNorm(8, c), nn.SiLU(), nn.Conv2d(c, c, 3, padding=1)
        self.proj = nn.Linear(t, 2 * c if scale_shift else c)
        self.scale_shift = scale_shift

    def forward(self, x, t):
        h = self.block1(x)
        e = self.proj(t)[:, :, None, None]
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.act2(self.norm2(h) * (1 + scale) + shift)
        else:
            h = self.act2(self.norm2(h + e))
        return self.conv2(h) + x


@pytest.mark.parametrize("scale_shift", [False, True], ids=["temb-add", "scale-shift"])
def test_seed_block_patterns_are_fused(every_size, scale_shift):
    torch.manual_seed(0)
    m = SeedBlock(scale_shift=scale_shift).eval()
    x, t = torch.randn(2, 32, 8, 8), torch.randn(2, 16)
    with torch.no_grad():
        ref = m(x, t)
    out, rec = compiled(m, x, t)
    assert rec.rewritten == 2 and rec.unfused_silu == 0 and rec.fused_calls == 2
    assert_close(out, ref, torch.float32)


def test_temb_add_before_a_converted_block_is_folded(every_size):
    m = gencore.nn.convert(SeedBlock().eval())
    x, t = torch.randn(2, 32, 8, 8), torch.randn(2, 16)
    with torch.no_grad():
        ref = m(x, t)
    out, rec = compiled(m, x, t)
    assert rec.rewritten == 1 and rec.fused_calls == 2  # the second block's add went into its fused op
    assert_close(out, ref, torch.float32)


def test_an_intermediate_read_elsewhere_is_left_alone(every_size):
    class Tap(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = nn.GroupNorm(4, 16)

        def forward(self, x):
            g = self.norm(x)
            return F.silu(g) + g  # group_norm's output has two users: rewriting would compute it twice

    m = Tap().eval()
    x = torch.randn(2, 16, 6, 6)
    out, rec = compiled(m, x)
    assert rec.rewritten == 0 and rec.unfused_silu == 1
    assert_close(out, m(x).detach(), torch.float32)


def test_training_graphs_and_small_groups_stay_with_inductor(monkeypatch):
    m = SeedBlock().train()
    x, t = torch.randn(2, 32, 8, 8), torch.randn(2, 16)
    monkeypatch.setattr(fusion, "MIN_GROUP_ELEMENTS", 0)
    _, rec = compiled(m, x, t, grad=True)
    assert rec.rewritten == 0, "a graph with a backward stays with Inductor's own fusion"
    monkeypatch.setattr(fusion, "MIN_GROUP_ELEMENTS", 4 * 64 + 1)  # one element more than a group holds here
    _, rec = compiled(m.eval(), x, t)
    assert rec.rewritten == 0
    monkeypatch.setattr(fusion, "MIN_GROUP_ELEMENTS", 4 * 64)
    _, rec = compiled(m, x, t)
    assert rec.rewritten == 2


def test_gencore_unet_compiles_with_the_pass(every_size):
    m = UNet(in_channels=1, out_channels=1, base_channels=16, channel_mult=(1, 2), num_res_blocks=1,
             attention_levels=(), norm_groups=4).eval()
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([10, 500])
    with torch.no_grad():
        ref = m(x, t)
    out, rec = compiled(m, x, t)
    assert rec.unfused_silu == 0 and rec.fused_calls > 0
    assert_close(out, ref, torch.float32)


diffusers = pytest.importorskip("diffusers", reason="diffusers is optional")


@pytest.mark.parametrize("kind", ["UNet2DModel", "UNet2DConditionModel"])
def test_diffusers_unets_have_no_unfused_silu(every_size, kind):
    torch.manual_seed(0)
    if kind == "UNet2DModel":
        m = diffusers.UNet2DModel(sample_size=16, in_channels=3, out_channels=3, block_out_channels=(32, 64),
                                  down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                  up_block_types=("AttnUpBlock2D", "UpBlock2D"), layers_per_block=1,
                                  norm_num_groups=8, resnet_time_scale_shift="scale_shift").eval()
        inputs = (torch.randn(2, 3, 16, 16), torch.tensor([10, 900]))
    else:
        m = diffusers.UNet2DConditionModel(sample_size=16, in_channels=4, out_channels=4,
                                           block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
                                           cross_attention_dim=32, attention_head_dim=8,
                                           down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                           up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")).eval()
        inputs = (torch.randn(2, 4, 16, 16), torch.tensor([10, 900]), torch.randn(2, 7, 32))
    with torch.no_grad():
        ref = m(*inputs).sample
    out, rec = compiled(lambda *a: m(*a).sample, *inputs)
    assert rec.rewritten > 0 and rec.unfused_silu == 0
    assert_close(out, ref, torch.float32, kind="grad")  # a whole UNet: the scaled tolerance


def test_the_gencore_backend_runs_inductor_on_the_rewritten_graph(every_size):
    m = SeedBlock().eval()
    x, t = torch.randn(2, 32, 8, 8), torch.randn(2, 16)
    torch._dynamo.reset()
    with torch.no_grad():
        ref = m(x, t)
        out = torch.compile(m, backend="gencore")(x, t)  # the torch_dynamo_backends entry point
    assert_close(out, ref, torch.float32)
