"""Benchmark cases of diffusers' own models on gencore: what `gencore.nn.convert` / `gencore.optimize` buy a
diffusers user (random weights from configs; nothing is downloaded). No cases where diffusers is not installed.

Ops:
    unet2d            UNet2DModel with google/ddpm-cifar10-32's configuration, batch 8 at 32x32 (mode forward,
                      forward+backward).
    unet2d_condition  a small Stable-Diffusion-like UNet2DConditionModel (3 levels, cross-attention to 77 tokens of
                      width 256), batch 2 at 32x32 latents.
    vae_decoder       Stable Diffusion's VAE decoder configuration decoding (1, 4, 64, 64) latents to 512x512, where
                      diffusers' GroupNorm tensors are largest ((1, 128, 512, 512) and up); forward only.
Modes: forward (eval, no_grad), forward+backward (train mode, a mean-square loss), and "first call" (repeat=False:
one call timed from the compile wrapper's creation to the first forward's output, under fresh Inductor caches, i.e.
what the first compile costs a user; eager torch beside it for scale).
Providers: torch (the model as diffusers builds it: torch's own kernels), cpu / cuda (after gencore.nn.convert: every
ResnetBlock2D's GroupNorm + SiLU + time embedding on the fused op, except the calls gencore/nn/size_gate.py leaves to
torch's kernels on the CPU), torch_compile (torch.compile of the original), optimize (gencore.optimize: convert +
channels_last + torch.compile with gencore's backend). bytes = 0: these are whole models.
Figure "GN+SiLU+temb share" (torch rows): the share of the original model's time in ATen ops that GroupNorm, SiLU
(forward and backward) and the time-embedding add take, from the profiler: the most any fusion of them can save.
quick=True: tiny configurations of the same classes, no compiling providers (CI smoke runs).
"""
from __future__ import annotations

import torch
from torch.profiler import ProfilerActivity, profile

from .. import backends
from ..nn import convert
from .._optimize import optimize
from . import Case

CIFAR10_UNET = dict(sample_size=32, in_channels=3, out_channels=3, layers_per_block=2,
                    block_out_channels=(128, 256, 256, 256), norm_num_groups=32,
                    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"))
SD_LIKE_UNET = dict(sample_size=32, in_channels=4, out_channels=4, layers_per_block=1,
                    block_out_channels=(64, 128, 256), norm_num_groups=32, cross_attention_dim=256,
                    attention_head_dim=8,
                    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))
SD_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32,
              block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
              up_block_types=("UpDecoderBlock2D",) * 4)
TINY_UNET = dict(sample_size=16, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(16, 32),
                 norm_num_groups=8, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                 up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=8)
TINY_CONDITION = dict(sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
                      norm_num_groups=8, cross_attention_dim=16, attention_head_dim=8,
                      down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                      up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
TINY_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8,
                block_out_channels=(16, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                up_block_types=("UpDecoderBlock2D",) * 2)


def _models(quick: bool):
    """(op, build, inputs(device), modes, shape label) of each model."""
    import diffusers

    def unet_inputs(batch, size, channels, context=None):
        def make(device):
            g = torch.Generator().manual_seed(0)
            args = [torch.randn(batch, channels, size, size, generator=g).to(device),
                    torch.full((batch,), 500, dtype=torch.long, device=device)]
            kwargs = {}
            if context is not None:
                kwargs["encoder_hidden_states"] = torch.randn(batch, context[0], context[1], generator=g).to(device)
            return args, kwargs
        return make

    unet, cond, vae = (TINY_UNET, TINY_CONDITION, TINY_VAE) if quick else (CIFAR10_UNET, SD_LIKE_UNET, SD_VAE)
    b_unet, b_cond = (2, 2) if quick else (8, 2)
    s_unet, s_cond, s_vae = (16, 16, 8) if quick else (32, 32, 64)
    tokens = 5 if quick else 77

    def decoder():
        return diffusers.AutoencoderKL(**vae).decoder

    def vae_inputs(device):
        g = torch.Generator().manual_seed(0)
        return [torch.randn(1, 4, s_vae, s_vae, generator=g).to(device)], {}

    return [
        ("unet2d", lambda: diffusers.UNet2DModel(**unet), unet_inputs(b_unet, s_unet, unet["in_channels"]),
         ("forward", "forward+backward"), f"({b_unet},{unet['in_channels']},{s_unet},{s_unet})"),
        ("unet2d_condition", lambda: diffusers.UNet2DConditionModel(**cond),
         unet_inputs(b_cond, s_cond, cond["in_channels"], (tokens, cond["cross_attention_dim"])),
         ("forward", "forward+backward"), f"({b_cond},{cond['in_channels']},{s_cond},{s_cond})"),
        ("vae_decoder", decoder, vae_inputs, ("forward",),
         f"(1,4,{s_vae},{s_vae}) -> {s_vae * 2 ** (len(vae['block_out_channels']) - 1)}px"),
    ]


def _built(build, device: str):
    torch.manual_seed(0)
    return build().to(device)


def _prepared(provider: str, model):
    if provider in ("cpu", "cuda"):
        convert(model)
    elif provider == "torch_compile":
        model = torch.compile(model)
    elif provider == "optimize":
        model = optimize(model)
    return model


def _fresh_compile_caches():
    """Inductor's context of a fresh on-disk cache (and cleared in-memory caches), so that a first call compiles
    everything, as on a user's first run."""
    # Imported here: loading Inductor takes seconds, and only the first-call rows need it (torch.compile loads it
    # itself when it first compiles).
    from torch._inductor import utils as inductor_utils

    fresh = getattr(inductor_utils, "fresh_cache", None) or inductor_utils.fresh_inductor_cache
    return fresh()


def _first_call_setup(provider: str, build, inputs, device: str):
    def setup():
        model = _built(build, device).eval()
        args, kwargs = inputs(device)

        def first_call():
            torch._dynamo.reset()
            with _fresh_compile_caches(), torch.no_grad():
                return _prepared(provider, model)(*args, **kwargs)
        return first_call
    return setup


# ATen ops whose time a fused GroupNorm + SiLU (+ time embedding) replaces, by self time in the profiler.
_NORM_ACTIVATION_OPS = frozenset({"aten::group_norm", "aten::native_group_norm", "aten::native_group_norm_backward",
                                  "aten::silu", "aten::silu_", "aten::silu_backward"})


def _is_embedding_add(event) -> bool:
    """x + temb[:, :, None, None]: an add of a 4-D tensor and its (N, C, 1, 1) broadcast."""
    if event.name not in ("aten::add", "aten::add_"):
        return False
    shapes = [s for s in (event.input_shapes or []) if s]
    return (len(shapes) >= 2 and len(shapes[0]) == 4 and len(shapes[1]) == 4 and shapes[1][2:] == [1, 1]
            and shapes[0][2:] != [1, 1])


def norm_activation_share(fn) -> dict[str, str]:
    """Profile one call of fn: the share of its time in ATen ops (self time, on the device that ran them) taken by
    GroupNorm, SiLU and the time-embedding add: the ceiling of what fusing them can save."""
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities, record_shapes=True) as prof:
        fn()
        if cuda:
            torch.cuda.synchronize()

    def self_time(e):
        return e.self_device_time_total if cuda else e.self_cpu_time_total

    events = [e for e in prof.events() if e.name.startswith("aten::")]
    total = sum(self_time(e) for e in events)
    fusable = sum(self_time(e) for e in events if e.name in _NORM_ACTIVATION_OPS or _is_embedding_add(e))
    return {"GN+SiLU+temb share": f"{fusable / total:.0%}" if total else "-"}


def _setup(provider: str, build, inputs, mode: str, device: str):
    def setup():
        model = _prepared(provider, _built(build, device))
        args, kwargs = inputs(device)
        if mode == "forward":
            model.eval()

            def forward():
                with torch.no_grad():
                    return model(*args, **kwargs)
            return forward
        model.train()
        x = args[0].requires_grad_()

        def forward_backward():
            out = model(x, *args[1:], **kwargs)
            out = out.sample if hasattr(out, "sample") else out
            out.float().square().mean().backward()
        return forward_backward
    return setup


def cases(device: str = "cpu", quick: bool = False) -> list[Case]:
    try:
        import diffusers  # noqa: F401
    except ImportError:
        return []
    device = str(torch.device(device).type)
    fused = [p for p in (("cpu",) if device == "cpu" else ("cuda",)) if p in backends.available_backends()]
    providers = ["torch"] + fused + ([] if quick else ["torch_compile", "optimize"])
    out = []
    for op, build, inputs, modes, label in _models(quick):
        for mode in modes:
            for provider in providers:
                out.append(Case(op, provider, label, "float32", mode, 0, _setup(provider, build, inputs, mode, device),
                                figures=norm_activation_share if provider == "torch" else None))
        if not quick:
            for provider in ("torch", "torch_compile", "optimize"):
                out.append(Case(op, provider, label, "float32", "first call", 0,
                                _first_call_setup(provider, build, inputs, device), repeat=False))
    return out

