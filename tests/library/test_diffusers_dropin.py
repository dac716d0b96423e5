"""gencore's schedulers inside diffusers' own pipelines: `pipe.scheduler = gencore.diffusion.X.from_config(...)`.

A tiny random UNet2DModel from a config (no weights can be downloaded here); the pictures of a pipeline holding
gencore's scheduler are held to the same pipeline holding diffusers' own, from the same generator. Skipped where
diffusers is not installed (it is an optional dependency: `import gencore` never imports it).
"""
from __future__ import annotations

import json

import pytest
import torch

from gencore.diffusion import DDIMScheduler, DDPMScheduler, register_with_diffusers
from gencore.testing import assert_close, assert_equal

diffusers = pytest.importorskip("diffusers")
FrozenDict = pytest.importorskip("diffusers.configuration_utils").FrozenDict


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                 layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4).eval()


def _images(pipe, **kwargs):
    return pipe(batch_size=2, generator=torch.Generator().manual_seed(0), output_type="np", **kwargs).images


@pytest.mark.parametrize("pipeline,ours,theirs", [
    # The coefficients are computed in float64 and rounded once; diffusers' in float32: 10 steps of the UNet compound
    # the difference (DDIM's pictures 2e-5 apart, DDPM's 6e-7).
    ("DDIMPipeline", DDIMScheduler, "DDIMScheduler"),
    ("DDPMPipeline", DDPMScheduler, "DDPMScheduler"),
])
def test_pipeline_with_gencore_scheduler_gives_diffusers_pictures(unet, pipeline, ours, theirs):
    """DDIMPipeline passes use_clipped_model_output=None (diffusers' "not given"), which gencore's step refused with
    a TypeError; DDPMPipeline worked. Both now draw the same pictures as with diffusers' schedulers."""
    pipe = getattr(diffusers, pipeline)(unet=unet, scheduler=getattr(diffusers, theirs)())
    pipe.set_progress_bar_config(disable=True)
    expected = _images(pipe, num_inference_steps=10)
    pipe.scheduler = ours.from_config(pipe.scheduler.config)
    got = _images(pipe, num_inference_steps=10)
    assert got.shape == expected.shape == (2, 8, 8, 1)
    assert_close(got, expected, "float32_compounded")  # [0, 1] pixels


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
        assert_close(got[key], want[key], torch.float32)
        assert got[key] is getattr(got, key)
    assert got[0] is got.prev_sample and len(got.to_tuple()) == 2 and "prev_sample" in got
    with pytest.raises(KeyError):
        got["prev"]
    p = a.previous_timestep(a.timesteps[3])
    assert isinstance(p, torch.Tensor) and int(p) == int(a.timesteps[4])
    assert a.previous_timestep(a.timesteps[-1]).item() == -1 and a.previous_timestep(int(a.timesteps[3])) == int(p)
    if hasattr(b, "previous_timestep"):  # diffusers' DDIM has none
        q = b.previous_timestep(b.timesteps[3])
        assert isinstance(q, torch.Tensor) and int(q) == int(p)


@pytest.mark.parametrize("ours,theirs", [(DDIMScheduler, "DDIMScheduler"), (DDPMScheduler, "DDPMScheduler")])
def test_scheduler_config_files_are_shared_with_diffusers(tmp_path, ours, theirs):
    """save_pretrained writes diffusers' scheduler_config.json: diffusers' class reads gencore's file, and gencore's
    from_pretrained reads diffusers' (the folder layout of a pipeline: subfolder="scheduler")."""
    a = ours(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction", timestep_spacing="trailing")
    a.save_pretrained(tmp_path / "gencore" / "scheduler")
    b = getattr(diffusers, theirs).from_pretrained(tmp_path / "gencore", subfolder="scheduler")
    for key in a._fields:
        assert b.config[key] == a.config[key], key
    b.save_pretrained(tmp_path / "diffusers")
    c = ours.from_pretrained(tmp_path / "diffusers")
    saved = {k: v for k, v in a.config.items() if k != "_use_default_values"}  # not written, as in diffusers
    assert type(c) is ours and {k: v for k, v in c.config.items() if k in a._fields} == {
        k: v for k, v in saved.items() if k in a._fields}
    c2, unused = ours.from_config(b.config, return_unused_kwargs=True, not_an_option=3, steps_offset=1)
    assert unused == {"not_an_option": 3} and c2.config.steps_offset == 1
    with pytest.raises(TypeError, match="not_an_option"):
        ours.from_config(b.config, not_an_option=3)
    with pytest.raises(FileNotFoundError, match="scheduler_config.json"):
        ours.from_pretrained(tmp_path / "nowhere")
    assert ours in a.compatibles and DDIMScheduler in a.compatibles and DDPMScheduler in a.compatibles


def test_config_rewrites_by_pipelines_take_effect():
    """Stable Diffusion's pipelines fix old configs by assigning scheduler._internal_dict = FrozenDict(new) (22
    pipelines do this or call register_to_config). gencore builds its tables from the config, so the change
    rebuilds the scheduler: a steps_offset or clip_sample written that way must change the steps, keeping the
    inference schedule already set. A name that is no constructor argument is kept in the config, as diffusers
    keeps it."""
    s = DDIMScheduler()
    s.set_timesteps(10)
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * 3
    eps = torch.zeros_like(x)  # x0 = x / sqrt(abar_900), far outside [-1, 1]: clipping bites
    clipped = s.step(eps, 900, x).prev_sample
    new = dict(s.config)
    new["clip_sample"] = False
    s._internal_dict = FrozenDict(new)
    assert s.config.clip_sample is False and s.num_inference_steps == 10
    unclipped = s.step(eps, 900, x).prev_sample
    reference = DDIMScheduler(clip_sample=False)
    reference.set_timesteps(10)
    assert torch.equal(unclipped, reference.step(eps, 900, x).prev_sample) and not torch.equal(unclipped, clipped)
    s.register_to_config(steps_offset=1)
    assert s.timesteps.tolist() == reference.timesteps.tolist()  # the schedule set before is kept
    s.set_timesteps(10)
    assert s.timesteps[0] == 901
    s.register_to_config(not_a_field=1)
    assert s.config.not_a_field == 1 and s.timesteps[0] == 901


def test_pipeline_with_gencore_scheduler_saves_and_loads_back(unet, tmp_path):
    """Without help diffusers saves a non-diffusers scheduler as [null, null]; after register_with_diffusers() the
    pipeline folder holds gencore's scheduler, and from_pretrained gives it back, drawing the same pictures."""
    pipe = diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler())
    pipe.scheduler = DDPMScheduler(beta_schedule="squaredcos_cap_v2")
    pipe.set_progress_bar_config(disable=True)
    register_with_diffusers()
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["scheduler"] == ["gencore.diffusion.schedulers", "DDPMScheduler"]
    loaded = diffusers.DDPMPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    fields = DDPMScheduler._fields
    assert type(loaded.scheduler) is DDPMScheduler
    assert {k: loaded.scheduler.config[k] for k in fields} == {k: pipe.scheduler.config[k] for k in fields}
    assert_equal(torch.from_numpy(_images(loaded, num_inference_steps=5)),
                 torch.from_numpy(_images(pipe, num_inference_steps=5)))


def test_defaults_travel_between_scheduler_classes_as_in_diffusers():
    """diffusers' config records which fields were left at their default (_use_default_values), and a class built
    from another's config takes its own defaults for them: Euler from a DDIM config gets Euler's "linspace", not
    DDIM's "leading". gencore's configs carry the key, and gencore's from_config honours it."""
    for source in (DDIMScheduler(), diffusers.DDIMScheduler()):
        euler = diffusers.EulerDiscreteScheduler.from_config(source.config)
        assert euler.config.timestep_spacing == "linspace"
        assert "timestep_spacing" in source.config["_use_default_values"]
    ours = DDIMScheduler.from_config(diffusers.EulerDiscreteScheduler().config)
    theirs = diffusers.DDIMScheduler.from_config(diffusers.EulerDiscreteScheduler().config)
    assert ours.config.timestep_spacing == theirs.config.timestep_spacing == "leading"
    explicit = DDIMScheduler(timestep_spacing="trailing")
    assert diffusers.EulerDiscreteScheduler.from_config(explicit.config).config.timestep_spacing == "trailing"
