"""gencore.nn drop-ins: torch's signature, parameter names, state_dict keys, and the same numbers."""
import pytest
import torch
from torch import nn

import gencore
import gencore.nn as gnn
from gencore.testing import assert_close

BACKENDS = ["reference"] + [b for b in ("cpu",) if b in gencore.available_backends()]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("affine", [True, False])
def test_group_norm_matches_torch(backend, affine):
    torch.manual_seed(0)
    ref = nn.GroupNorm(4, 12, eps=1e-4, affine=affine)
    if affine:
        with torch.no_grad():
            ref.weight.uniform_(0.5, 1.5)
            ref.bias.normal_()
    ours = gnn.GroupNorm(4, 12, eps=1e-4, affine=affine)
    ours.load_state_dict(ref.state_dict())
    assert list(ours.state_dict().keys()) == list(ref.state_dict().keys())
    assert repr(ours) == repr(ref).replace("GroupNorm", "GroupNorm")
    x = torch.randn(3, 12, 7, 5, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    with gencore.use_backend(backend):
        y = ours(x)
    y_ref = ref(x2)
    assert_close(y, y_ref.double(), torch.float32)
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    assert_close(x.grad, x2.grad.double(), torch.float32, kind="grad")
    if affine:
        assert_close(ours.weight.grad, ref.weight.grad.double(), torch.float32, kind="grad")


def test_group_norm_silu_module():
    torch.manual_seed(0)
    m = gnn.GroupNormSiLU(2, 8)
    assert "activation=silu" in repr(m) and "GroupNormSiLU(2, 8" in repr(m)
    x, temb, ss = torch.randn(2, 8, 4, 4), torch.randn(2, 8), torch.randn(2, 16)
    expected = nn.functional.silu(nn.functional.group_norm(x + temb[..., None, None], 2, m.weight, m.bias))
    assert_close(m(x, temb), expected.double(), torch.float32)
    gn = nn.functional.group_norm(x, 2, m.weight, m.bias)
    scale, shift = ss.chunk(2, 1)
    expected = nn.functional.silu(gn * (1 + scale[..., None, None]) + shift[..., None, None])
    assert_close(m(x, scale_shift=ss), expected.double(), torch.float32)


def test_constructor_matches_torch():
    m = gnn.GroupNorm(2, 4, device="cpu", dtype=torch.float64)
    assert m.weight.dtype == torch.float64 and m.eps == 1e-5 and m.affine
    assert isinstance(m, nn.GroupNorm)
    with pytest.raises(ValueError):
        gnn.GroupNorm(3, 4)  # torch's own check: groups must divide channels


def test_convert_in_place_keeps_outputs_and_keys():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.GroupNorm(4, 8),
        nn.SiLU(),
        nn.Sequential(nn.Conv2d(8, 8, 1), nn.GroupNorm(2, 8), nn.ReLU()),
        nn.GroupNorm(8, 8),
    )
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.GroupNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_()
    x = torch.randn(2, 3, 9, 9)
    before = model(x)
    keys = list(model.state_dict().keys())
    params = [p for p in model.parameters()]
    out = gnn.convert(model)
    assert out is model
    assert isinstance(model[1], gnn.GroupNormSiLU) and isinstance(model[2], nn.Identity)
    assert type(model[3][1]) is gnn.GroupNorm and type(model[4]) is gnn.GroupNorm
    assert list(model.state_dict().keys()) == keys
    assert all(a is b for a, b in zip(params, model.parameters()))  # shared, so optimizers keep working
    assert_close(model(x), before.double(), torch.float32)
    # Converting twice changes nothing.
    gnn.convert(model)
    assert isinstance(model[1], gnn.GroupNormSiLU) and isinstance(model[2], nn.Identity)


def test_convert_top_level_group_norm():
    gn = nn.GroupNorm(2, 4)
    new = gnn.convert(gn)
    assert type(new) is gnn.GroupNorm and new.weight is gn.weight


def test_autocast_matches_torch_policy():
    m_ref = nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(4, 8))
    m = gnn.convert(nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(4, 8)))
    m.load_state_dict(m_ref.state_dict())
    x = torch.randn(2, 3, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_ref, y = m_ref(x), m(x)
    assert y.dtype == y_ref.dtype  # CPU autocast keeps group_norm in the input dtype (bfloat16 here)
    assert_close(y, y_ref.double(), torch.bfloat16)


def test_small_tensors_keep_torchs_kernels(size_gate):
    """Below the gate's sizes the module computes exactly torch's F.silu(F.group_norm(...)); above it, gencore's
    fused op; an explicit backend always gets what it asks for."""
    import torch.nn.functional as F

    from gencore.nn import GroupNormSiLU
    from gencore.ops import group_norm_silu

    m = GroupNormSiLU(4, 16).eval()
    small = torch.randn(2, 16, 8, 8)  # 2,048 elements
    temb = torch.randn(2, 16)
    with torch.no_grad():
        torch_out = F.silu(F.group_norm(small + temb[:, :, None, None], 4, m.weight, m.bias, m.eps))
        assert torch.equal(m(small, temb), torch_out)
        with gencore.use_backend("cpu"):
            assert torch.equal(m(small, temb), group_norm_silu(small, 4, m.weight, m.bias, m.eps, temb=temb,
                                                               backend="cpu"))
        large = torch.randn(4, 16, 64, 64)  # 262,144 elements
        assert torch.equal(m(large), group_norm_silu(large, 4, m.weight, m.bias, m.eps, backend="cpu"))
    assert size_gate.torch_is_faster(torch.randn(2, 16, 32, 32, requires_grad=True))  # 32,768: training-size gate
    assert not size_gate.torch_is_faster(torch.randn(2, 16, 32, 32))  # inference: fused
