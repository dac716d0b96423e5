"""gencore's schedulers inside diffusers' own pipelines: `pipe.scheduler = gencore.diffusion.X.from_config(...)`.

A tiny random UNet2DModel from a config (no weights can be downloaded here); the pictures of a pipeline holding
gencore's scheduler are held to the same pipeline holding diffusers' own, from the same generator. Skipped where
diffusers is not installed (it is an optional dependency: `import gencore` never imports it).
"""
from __future__ import annotations

import pytest
import torch

from gencore.diffusion import DDIMScheduler, DDPMScheduler

diffusers = pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                 layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4).eval()


def _images(pipe, **kwargs):
    return pipe(batch_size=2, generator=torch.Generator().manual_seed(0), output_type="np", **kwargs).images


@pytest.mark.parametrize("pipeline,ours,theirs,atol", [
    # DDIM's coefficients are computed in float64 and rounded once; diffusers' in float32: 1e-5 apart over 10 steps.
    ("DDIMPipeline", DDIMScheduler, "DDIMScheduler", 5e-5),
    ("DDPMPipeline", DDPMScheduler, "DDPMScheduler", 5e-6),
])
def test_pipeline_with_gencore_scheduler_gives_diffusers_pictures(unet, pipeline, ours, theirs, atol):
    """DDIMPipeline passes use_clipped_model_output=None (diffusers' "not given"), which gencore's step refused with
    a TypeError; DDPMPipeline worked. Both now draw the same pictures as with diffusers' schedulers."""
    pipe = getattr(diffusers, pipeline)(unet=unet, scheduler=getattr(diffusers, theirs)())
    pipe.set_progress_bar_config(disable=True)
    expected = _images(pipe, num_inference_steps=10)
    pipe.scheduler = ours.from_config(pipe.scheduler.config)
    got = _images(pipe, num_inference_steps=10)
    assert got.shape == expected.shape == (2, 8, 8, 1)
    assert abs(got - expected).max() <= atol


@pytest.mark.parametrize("ours,theirs", [(DDIMScheduler, "DDIMScheduler"), (DDPMScheduler, "DDPMScheduler")])
def test_step_output_and_previous_timestep_read_like_diffusers(ours, theirs):
    """diffusers' step output is an ordered dict (out["prev_sample"], out[0], keys, iteration over keys), and
    previous_timestep of a scheduled tensor timestep is a tensor: code written against diffusers reads gencore's."""
    a, b = ours(), getattr(diffusers, theirs)()
    a.set_timesteps(10)
    b.set_timesteps(10)
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    got = a.step(x, a.timesteps[1], x, generator=torch.Generator().manual_seed(1))
    want = b.step(x, b.timesteps[1], x, generator=torch.Generator().manual_seed(1))
    assert list(got.keys())[:2] == list(want.keys())[:2] == list(got)
    for key in got.keys():
        assert torch.allclose(got[key], want[key], atol=1e-5) and got[key] is getattr(got, key)
    assert got[0] is got.prev_sample and len(got.to_tuple()) == 2 and "prev_sample" in got
    with pytest.raises(KeyError):
        got["prev"]
    p = a.previous_timestep(a.timesteps[3])
    assert isinstance(p, torch.Tensor) and int(p) == int(a.timesteps[4])
    assert a.previous_timestep(a.timesteps[-1]).item() == -1 and a.previous_timestep(int(a.timesteps[3])) == int(p)
    if hasattr(b, "previous_timestep"):  # diffusers' DDIM has none
        q = b.previous_timestep(b.timesteps[3])
        assert isinstance(q, torch.Tensor) and int(q) == int(p)
