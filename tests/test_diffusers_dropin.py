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
