"""The sampling loop for DDPM, DDIM and DPM-Solver++: noise -> sample, with guidance, a progress bar, callbacks and
intermediates."""
from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

from .dpm_solver import DPMSolverMultistepScheduler
from .noise import randn
from .scheduler_config import SchedulerMixin, SchedulerOutput, check_guidance_scale
from .schedulers import DiscreteScheduler

__all__ = ["CapturedSampling", "capture_sample", "intermediate_timesteps", "sample"]


def _model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def _as_tensor_output(out) -> torch.Tensor:
    """Model outputs as tensors: a tensor, diffusers' UNet2DOutput (.sample), or a tuple whose first item it is."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "sample") and isinstance(out.sample, torch.Tensor):
        return out.sample
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"the model must return a tensor (or an object with .sample), got {type(out).__name__}")


def _null_label(model, null_class_label):
    if null_class_label is not None:
        return null_class_label
    for name in ("null_class_label", "num_classes"):
        value = getattr(model, name, None)
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return int(value)
    raise ValueError("classifier-free guidance needs the null class: pass null_class_label, or give the model a "
                     "null_class_label (or num_classes, whose index is then the null class) attribute")


def _model_labels(model, class_labels, guidance_scale: float, null_class_label, n: int, device):
    """(the labels the model is called with, whether guided): the N labels, then N null labels when guided."""
    if class_labels is None:
        if guidance_scale != 1.0:
            raise ValueError("guidance_scale != 1 needs class_labels (classifier-free guidance on class labels)")
        return None, False
    labels = torch.as_tensor(class_labels, device=device)
    if labels.shape != (n,):
        raise ValueError(f"class_labels must have shape ({n},), got {tuple(labels.shape)}")
    guided = guidance_scale != 1.0
    if guided:
        null = torch.as_tensor(_null_label(model, null_class_label), device=device, dtype=labels.dtype)
        labels = torch.cat([labels, null.expand(n)])
    return labels, guided


def intermediate_timesteps(timesteps: Sequence[int], every: int) -> list[int | None]:
    """The timestep of each state that `sample(..., return_intermediates=every)` returns, for labelling them:
    timesteps[0] for the starting noise, then the timestep each kept state will be denoised at next, and None for the
    final (clean) samples. `timesteps` is the schedule the loop ran (scheduler.timesteps after sample())."""
    ts = [int(t) for t in timesteps]
    out: list[int | None] = [ts[0]] if ts else []
    for i in range(len(ts)):
        if (i + 1) % every == 0 or i + 1 == len(ts):
            out.append(ts[i + 1] if i + 1 < len(ts) else None)
    return out


@torch.no_grad()
def sample(
    model: Callable,
    scheduler: DiscreteScheduler | DPMSolverMultistepScheduler,
    shape_or_noise: Sequence[int] | torch.Tensor,
    num_inference_steps: int | None = None,
    *,
    eta: float | None = None,
    use_clipped_model_output: bool | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
    class_labels: torch.Tensor | Sequence[int] | None = None,
    guidance_scale: float = 1.0,
    null_class_label: int | torch.Tensor | None = None,
    callback: Callable[[int, int, SchedulerOutput], None] | None = None,
    return_intermediates: bool | int = False,
    progress: bool = True,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    philox_seed: int | None = None,
    cuda_graph: bool = False,
):
    """Generate samples: start from noise and apply scheduler.step at every timestep of the schedule.

    Args:
        model: called as model(x, t) or, with class_labels, model(x, t, class_labels), where x is (B, ...) and t an
            int64 tensor (B,); returns the prediction the scheduler's prediction_type expects (a tensor, or an
            object with .sample such as diffusers' UNet2DOutput). Run under torch.no_grad; put it in eval mode
            yourself.
        scheduler: a DDPMScheduler, DDIMScheduler or DPMSolverMultistepScheduler (its set_timesteps is called here).
        shape_or_noise: the shape (N, C, H, W) of the batch to generate, or the initial noise x_T itself.
        num_inference_steps: the number of steps (default: num_train_timesteps for DDPM, 50 for DDIM, 20 for
            DPM-Solver++).
        eta: DDIM's noise weight (default 0.0, deterministic); DDPM takes none.
        use_clipped_model_output: DDIM only. None (the default) re-derives epsilon from the clipped or thresholded
            x_0 whenever the scheduler clips or thresholds, so that every x_{t-1} is built from one consistent
            (x_0, epsilon) pair, as the original implementations (improved-diffusion, GLIDE) do. diffusers'
            pipelines and `DDIMScheduler.step` default to the raw epsilon instead: whenever x_0 leaves the range
            (classifier-free guidance extrapolates it far out) the two disagree and each step pushes background up
            and strokes down. Pass False for diffusers' behaviour.
        generator: the torch.Generator (or one per sample) for the initial noise and each step's noise, so the same
            seed gives the same samples.
        class_labels: (N,) int64 labels for a class-conditional model.
        guidance_scale: classifier-free guidance weight w (1 = plain conditional sampling). With w != 1 every step
            calls the model once on a batch of 2N (the labels, then the null class) and the fused step combines
            uncond + w * (cond - uncond).
        null_class_label: the label of the null (unconditional) class; default model.null_class_label, else
            model.num_classes.
        callback: called after every step as callback(step_index, timestep, output) with the SchedulerOutput
            (output.prev_sample, output.pred_original_sample).
        return_intermediates: False for the final samples only; True to also return the sample after every step;
            an int k to keep every k-th step (the progressive-generation view). The list starts with x_T and ends
            with the final samples.
        progress: show a tqdm progress bar.
        device, dtype: where and in which dtype to create the noise when a shape is given (default: the model's
            device, float32).
        philox_seed: draw each step's noise inside the fused kernel from Philox keyed on (seed, sample, step)
            instead of the generator (the initial noise still comes from the generator).
        cuda_graph: capture the whole loop, model included, in one CUDA graph and replay it (see capture_sample,
            which keeps the graph for repeated calls: a single call captures and replays once, so it is no faster).

    Returns:
        The samples x_0, (N, ...) tensor; with return_intermediates, (samples, list of tensors).
    """
    _check_scheduler(scheduler)
    if isinstance(return_intermediates, bool):
        every = 1 if return_intermediates else 0
    elif isinstance(return_intermediates, numbers.Integral) and return_intermediates > 0:
        every = int(return_intermediates)
    else:
        raise ValueError(f"return_intermediates must be a bool or a positive int, got {return_intermediates!r}")
    guidance_scale = check_guidance_scale(guidance_scale)

    if isinstance(shape_or_noise, torch.Tensor):
        x = shape_or_noise
        device = x.device
    else:
        shape = tuple(int(s) for s in shape_or_noise)
        device = torch.device(device) if device is not None else _model_device(model)
        x = randn(shape, generator, device, dtype) * scheduler.init_noise_sigma
    n = x.shape[0]

    labels, guided = _model_labels(model, class_labels, guidance_scale, null_class_label, n, device)
    loop = _prepare_loop(model, scheduler, x, num_inference_steps, eta=eta,
                         use_clipped_model_output=use_clipped_model_output, generator=generator, labels=labels,
                         guided=guided, guidance_scale=guidance_scale, philox_seed=philox_seed)
    if cuda_graph:
        if callback is not None or every:
            raise ValueError("cuda_graph=True replays the captured loop as a whole: no callback or intermediates")
        return CapturedSampling(loop, x)()
    return loop(x, callback=callback, every=every, progress=progress)


def _check_scheduler(scheduler) -> None:
    if not isinstance(scheduler, SchedulerMixin):
        raise TypeError("scheduler must be a gencore DDPMScheduler, DDIMScheduler or DPMSolverMultistepScheduler, "
                        f"got {type(scheduler).__name__}")


def _prepare_loop(model, scheduler, x, num_inference_steps, *, eta, use_clipped_model_output, generator, labels,
                  guided, guidance_scale: float, philox_seed):
    """Everything of the loop that touches the host (the schedule, its tables on the device), done once; returns
    loop(x, callback, every, progress), whose steps only launch work on x's device. What differs between schedulers
    (the default number of steps, the options every step takes, a history to forget, whether steps draw noise)
    the scheduler answers."""
    n, device = x.shape[0], x.device
    if num_inference_steps is None:
        num_inference_steps = scheduler.default_inference_steps
    options = scheduler.loop_step_options(eta=eta, use_clipped_model_output=use_clipped_model_output)
    scheduler.set_timesteps(num_inference_steps, device=device)
    schedule = scheduler.timesteps.tolist()  # host copy: the loop never reads the device
    step_kwargs = dict(options)
    if philox_seed is None:
        step_kwargs["generator"] = generator

    def loop(x, callback=None, every=0, progress=False):
        scheduler.restart()  # a multistep history from an earlier run of this loop (a warm-up) is not ours
        intermediates = [x] if every else None
        for i, t in enumerate(tqdm(schedule, disable=not progress, desc="sampling", leave=False)):
            x_in = scheduler.scale_model_input(x, t)
            if guided:
                t_in = torch.full((2 * n,), t, dtype=torch.int64, device=device)
                out = _as_tensor_output(model(torch.cat([x_in, x_in]), t_in, labels))
                cond, uncond = out[:n], out[n:]  # learned variance: step() takes its channels from cond
                extra = {"model_output_uncond": uncond, "guidance_scale": guidance_scale}
            else:
                t_in = torch.full((n,), t, dtype=torch.int64, device=device)
                out = _as_tensor_output(model(x_in, t_in) if labels is None else model(x_in, t_in, labels))
                cond, extra = out, {}
            if philox_seed is not None:
                extra.update(philox_seed=philox_seed, philox_offset=i)
            output = scheduler.step(cond, t, x, **step_kwargs, **extra)
            x = output.prev_sample
            if callback is not None:
                callback(i, t, output)
            if every and ((i + 1) % every == 0 or i + 1 == len(schedule)):
                intermediates.append(x)
        return (x, intermediates) if every else x

    loop.scheduler = scheduler
    loop.deterministic = not scheduler.draws_noise(**options)
    return loop


class CapturedSampling:
    """A sampling loop captured in one CUDA graph, model included: calling it copies new initial noise into the
    graph's input and replays every step with no Python and no launch overhead per step.

    Build it with capture_sample(). The graph reads the model's parameters and the scheduler's tables where they
    were at capture time: update weights in place (load_state_dict does), and do not call set_timesteps on the
    scheduler again while the graph is in use (capture another one instead).
    """

    def __init__(self, loop, noise: torch.Tensor, warmup: int = 2):
        if noise.device.type != "cuda":
            raise ValueError(f"a CUDA graph needs the sampling loop on a CUDA device, got noise on {noise.device}")
        if not loop.deterministic:
            raise ValueError("a captured loop replays the same per-step noise every time; capture deterministic "
                             "loops only (DDIM with eta=0, DPM-Solver with algorithm_type 'dpmsolver++' or "
                             "'dpmsolver')")
        self.noise = noise.clone()  # the graph's input: replays read it here
        self._loop = loop
        stream = torch.cuda.Stream(device=noise.device)
        stream.wait_stream(torch.cuda.current_stream(noise.device))
        with torch.cuda.stream(stream):  # warm-up (cuDNN/cuBLAS plans, lazily built tables) outside the capture
            for _ in range(warmup):
                loop(self.noise)
        torch.cuda.current_stream(noise.device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.output = loop(self.noise)
        # Everything the graph reads by address stays alive with it: the scheduler's tables of this schedule.
        self._keep = dict(vars(loop.scheduler))

    def __call__(self, noise: torch.Tensor | None = None) -> torch.Tensor:
        """The samples for `noise` (default: the noise given at capture), as a new tensor."""
        if noise is not None:
            if noise.shape != self.noise.shape:
                raise ValueError(f"noise must have the captured shape {tuple(self.noise.shape)}, got "
                                 f"{tuple(noise.shape)}")
            self.noise.copy_(noise)
        self.graph.replay()
        return self.output.clone()


@torch.no_grad()
def capture_sample(model: Callable, scheduler, noise: torch.Tensor, num_inference_steps: int | None = None, *,
                   class_labels=None, guidance_scale: float = 1.0, null_class_label=None,
                   use_clipped_model_output: bool | None = None) -> CapturedSampling:
    """sample()'s loop for this model, scheduler, noise shape and options, captured in a CUDA graph.

        graph = capture_sample(model, DDIMScheduler(...), torch.randn(16, 3, 32, 32, device="cuda"), 50)
        images = graph(torch.randn(16, 3, 32, 32, device="cuda"))     # each call: one replay of all 50 steps

    Deterministic loops only (DDIM with eta=0, DPM-Solver in its ODE forms): the graph would replay the same
    per-step noise every time. The model must be capturable (no host synchronisation, no data-dependent Python
    control flow); gencore's models and ops and diffusers' UNets are. Outputs equal sample()'s for the same noise.
    """
    if not isinstance(noise, torch.Tensor):
        raise TypeError("noise must be the initial noise tensor x_T on a CUDA device (its shape fixes the graph's)")
    _check_scheduler(scheduler)
    guidance_scale = check_guidance_scale(guidance_scale)
    labels, guided = _model_labels(model, class_labels, guidance_scale, null_class_label, noise.shape[0], noise.device)
    loop = _prepare_loop(model, scheduler, noise, num_inference_steps, eta=None,
                         use_clipped_model_output=use_clipped_model_output, generator=None, labels=labels,
                         guided=guided, guidance_scale=guidance_scale, philox_seed=None)
    return CapturedSampling(loop, noise)
