"""Benchmark cases of a few-call sampling loop: what a 1-8 call student's picture costs beyond its model calls.

Op few_call_sample (mode "sample"): `gencore.diffusion.sample` of a distilled student's sampler (DDIM, v-prediction,
"trailing" timesteps, no clipping, gencore.training.distillation) in K = 1, 2, 4 and 8 calls of the README's MNIST UNet
(base 32, mults 1,2,2, one res block a level, no attention, 8 groups; random weights: the time does not depend on
them), 64 digits at 28x28. Providers:
    cpu (or reference where the extension is not built)   the whole loop: set_timesteps and the coefficient table,
                                                          the progress bar (progress=True, sample()'s default),
                                                          each step's fused update
    model_calls                                           the same K model calls and nothing else (the loop's floor)
"vs its model calls" is model_calls' time / the loop's time: 1 for a loop as cheap as its calls (0.95 = 5% more).
quick=True: a tiny UNet and 4 images (CI smoke runs).
"""
from __future__ import annotations

import contextlib
import io

import torch

from .. import _extension, backends
from ..diffusion import DDIMScheduler, sample
from ..models import UNet
from ..training.distillation import student_scheduler_config, student_timesteps
from ..training.options import CLI_UNET, STUDENT_CALLS
from . import Case

TINY_UNET = dict(base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(), norm_groups=4)


def _model(quick: bool, device: str):
    torch.manual_seed(0)
    options = TINY_UNET if quick else CLI_UNET
    return UNet(in_channels=1, out_channels=1, **options).to(device).eval()


def _loop(device: str, quick: bool, calls: int):
    def setup():
        model = _model(quick, device)
        noise = torch.randn((4, 1, 16, 16) if quick else (64, 1, 28, 28), device=device)
        scheduler = DDIMScheduler.from_config(student_scheduler_config(DDIMScheduler().config))
        sink = io.StringIO()  # the progress bar is drawn, as a user's, but not onto the benchmark's report

        def run():
            with contextlib.redirect_stderr(sink):  # tqdm draws on sys.stderr as it is when the bar starts
                return sample(model, scheduler, noise, calls, progress=True)

        return run

    return setup


def _calls(device: str, quick: bool, calls: int):
    def setup():
        model = _model(quick, device)
        noise = torch.randn((4, 1, 16, 16) if quick else (64, 1, 28, 28), device=device)
        timesteps = [torch.full((noise.shape[0],), t, dtype=torch.int64, device=device)
                     for t in student_timesteps(student_scheduler_config(DDIMScheduler().config), calls)]

        @torch.no_grad()
        def run():
            for t in timesteps:
                out = model(noise, t)
            return out

        return run

    return setup


def cases(device: str = "cpu", quick: bool = False) -> list[Case]:
    if device != "cpu":
        return []
    loop = "cpu" if _extension.has_kernel("sampler_step", "CPU") else "reference"
    shape = "tiny-unet-4x16x16" if quick else "mnist-unet-b32-64x28x28"
    out = []
    for calls in STUDENT_CALLS:
        label = f"{shape}-{calls}calls"
        for provider, make in ((loop, _loop), ("model_calls", _calls)):
            fn = make(device, quick, calls)

            def selected(fn=fn, provider=provider):
                run = fn()

                def timed():
                    with backends.use_backend("auto" if provider in ("cpu", "model_calls") else provider):
                        return run()

                return timed

            out.append(Case("few_call_sample", provider, label, "float32", "sample", 0, selected))
    return out
