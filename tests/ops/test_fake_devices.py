"""The registered ops themselves (torch.ops.gencore.*, what torch.compile and direct callers reach) refuse tensors
on mixed devices: an argument on "meta" sends the call to the fake implementation, which must raise like the
kernels do instead of returning uninitialised memory on the other device. And the fakes agree with the kernels on
edge shapes (an empty batch)."""
import pytest
import torch

import gencore  # noqa: F401  (registers the ops)
from gencore import _extension
from gencore.diffusion import DDIMScheduler
from gencore.reference.philox import philox_uint32

pytestmark = pytest.mark.skipif(not _extension.loaded(), reason="gencore._C is not built")
META = torch.device("meta")


def _gn_args(on_meta: str):
    args = dict(x=torch.randn(2, 4, 3, 3), weight=torch.ones(4), bias=torch.zeros(4), temb=torch.randn(2, 4))
    args[on_meta] = args[on_meta].to(META)
    return args


@pytest.mark.parametrize("on_meta", ["weight", "bias", "temb"])
def test_group_norm_silu_fwd_refuses_mixed_devices(on_meta):
    a = _gn_args(on_meta)
    with pytest.raises(RuntimeError, match=f"{on_meta} is on meta"):
        torch.ops.gencore.group_norm_silu_fwd(a["x"], a["weight"], a["bias"], a["temb"], None, 2, 1e-5, "silu")


def test_group_norm_silu_bwd_refuses_mixed_devices():
    x = torch.randn(2, 4, 3, 3)
    mean, rstd = torch.zeros(2, 2, device=META), torch.ones(2, 2)
    with pytest.raises(RuntimeError, match="mean is on meta"):
        torch.ops.gencore.group_norm_silu_bwd(torch.randn_like(x), x, None, None, None, None, mean, rstd, 2, "silu")


@pytest.mark.parametrize("on_meta", ["timesteps", "coefs"])
def test_sampler_step_refuses_mixed_devices(on_meta):
    sched = DDIMScheduler()
    sched.set_timesteps(10)
    sample = torch.randn(2, 1, 4, 4)
    args = dict(timesteps=torch.full((2,), int(sched.timesteps[0])), coefs=sched.coefficient_table())
    args[on_meta] = args[on_meta].to(META)
    with pytest.raises(RuntimeError, match=f"{on_meta} is on meta"):
        torch.ops.gencore.sampler_step(torch.randn_like(sample), sample, args["timesteps"], args["coefs"], None,
                                       1.0, None, None, None, None, 0)


def test_gradient_norm_penalty_bwd_refuses_mixed_devices():
    grad = torch.randn(3, 5)
    with pytest.raises(RuntimeError, match="norms is on meta"):
        torch.ops.gencore.gradient_norm_penalty_bwd(torch.tensor(1.0), grad, torch.ones(3, device=META), 1.0, False, 1.0)


def test_philox_uint32_on_an_empty_batch_agrees_everywhere():
    sample = torch.empty(0, 3, 5)
    expected = philox_uint32(0, 15, 7, 3)
    assert expected.shape == (0, 15)
    assert torch.ops.gencore.philox_uint32(sample, 7, 3).shape == (0, 15)            # the cpu kernel
    assert torch.ops.gencore.philox_uint32(sample.to(META), 7, 3).shape == (0, 15)   # the fake
