"""Sampling loops on the GPU, eager against one captured CUDA graph (gencore.diffusion.capture_sample).

Run by bench/gpu.sh; prints a markdown table: gencore's UNet (MNIST size and a CIFAR-like size), DDIM 50 steps and
DPM-Solver++ 20 steps, milliseconds per whole loop (median of 5 after a warm-up), and what the capture saves. On a
CPU-only machine it prints one line and exits 0.
"""
from __future__ import annotations

import statistics
import time

import torch

from gencore.diffusion import DDIMScheduler, DPMSolverMultistepScheduler, capture_sample, sample
from gencore.models import UNet

MODELS = {
    "mnist-unet b64 (64,1,28,28)": (dict(in_channels=1, out_channels=1, base_channels=32, channel_mult=(1, 2, 2),
                                         num_res_blocks=1, attention_levels=(), norm_groups=8), (64, 1, 28, 28)),
    "cifar-unet b16 (16,3,32,32)": (dict(in_channels=3, out_channels=3, base_channels=64, channel_mult=(1, 2, 2),
                                         num_res_blocks=2, attention_levels=(1,), norm_groups=32), (16, 3, 32, 32)),
}


def _median_ms(fn, repeats=5):
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to time")
        return 0
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}\n")
    print("| model | sampler | eager ms | captured ms | eager / captured |")
    print("|---|---|---|---|---|")
    for label, (config, shape) in MODELS.items():
        torch.manual_seed(0)
        model = UNet(**config).cuda().eval()
        noise = torch.randn(shape, device="cuda")
        for name, scheduler, steps in (("DDIM 50", DDIMScheduler(beta_schedule="squaredcos_cap_v2"), 50),
                                       ("DPM++ 20", DPMSolverMultistepScheduler(beta_schedule="squaredcos_cap_v2"),
                                        20)):
            eager = _median_ms(lambda: sample(model, scheduler, noise, steps, progress=False))
            graph = capture_sample(model, scheduler, noise, steps)
            captured = _median_ms(lambda: graph(noise))
            print(f"| {label} | {name} | {eager:.1f} | {captured:.1f} | {eager / captured:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
