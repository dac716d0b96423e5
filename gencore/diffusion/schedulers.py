"""DDPM and DDIM schedulers with diffusers' configuration, defaults and step() semantics, and a fused step.

    from gencore.diffusion import DDIMScheduler
    scheduler = DDIMScheduler.from_config(diffusers_pipe.scheduler.config)   # a diffusers config loads as is
    scheduler.set_timesteps(50, device="cuda")
    for t in scheduler.timesteps:
        x = scheduler.step(model(x, t), t, x, eta=0.0).prev_sample

What is the same as diffusers' DDPMScheduler / DDIMScheduler (0.30 .. 0.42): the constructor's argument names, order
and defaults; betas and alphas_cumprod bit for bit; set_timesteps' three spacings and steps_offset; step()'s
arguments and its output's prev_sample / pred_original_sample; add_noise, get_velocity, scale_model_input,
_get_variance; the configuration API (gencore/diffusion/scheduler_config.py). Numbers: gencore computes each step's
coefficients in float64 from diffusers' float32 alphas_cumprod and rounds them once; diffusers computes them in
float32, which at small t loses digits to cancellation (1 - abar_t / abar_{t-1} at t = 1 is 1e-4 relative low), so
steps agree to float32 rounding except there (tests/library/test_schedulers.py holds the steps to diffusers run in float64).
What differs on purpose, with the diffusers tests each difference fails, is listed once in docs/scheduler-parity.md;
the two a user meets most: DDIM and DDPM step from a timestep of the schedule to the schedule's previous timestep
(diffusers' DDIM takes t - num_train_timesteps // num_inference_steps, which for "linspace" and "trailing" spacing
lands beside the schedule), and step() also takes a timestep per sample, classifier-free guidance and in-kernel
Philox noise, all in one fused pass.

How a step runs: set_timesteps builds a coefficient table (T, 11) on the device (see gencore.ops.sampler_step for
the columns), one row per training timestep, for the schedule in use. step() gathers each sample's row inside the
fused op, so it never reads a value back to the host: a sampling loop on CUDA can be captured in a CUDA graph once
the tables it uses exist (a new eta or use_clipped_model_output value builds its table on its first step) and the
timestep is a device tensor updated in place (a Python int would be baked into the graph). The rows of DDIM's
timesteps off the schedule hold diffusers' step from t to t - num_train_timesteps // num_inference_steps (code
written for diffusers steps from any timestep); DDPM's are NaN, and a timestep off its schedule is an error (in
diffusers too): a ValueError on the CPU, a device-side assertion (torch._assert_async) for CUDA tensors.
"""
from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np
import torch

from .._rules import accumulation_dtype
from ..ops.sampler_step import sampler_step
from .noise import step_noise
from .scheduler_config import (LEARNED_VARIANCE_TYPES, PREDICTION_TYPES, TIMESTEP_SPACINGS, VARIANCE_TYPES,
                               SchedulerMixin, SchedulerOutput, check_bool, check_choice, check_float,
                               check_guidance_scale, check_int)
from .schedules import BETA_SCHEDULES, make_betas, rescale_zero_terminal_snr
from .tables import (EPS_FROM_MODEL, EPS_FROM_SAMPLE, NUM_COEFS, ZERO_SNR_INV_SQRT_ABAR, TableCache, table_device)
from .thresholding import threshold_levels

# diffusers clamps the DDPM posterior variance below at 1e-20 before its square root or log.
MIN_POSTERIOR_VARIANCE = 1e-20


# ---------------------------------------------------------------------------------------------------------------------
# The shared machinery


class DiscreteScheduler(SchedulerMixin):
    """Betas, config, timestep schedule, coefficient tables and the fused step shared by DDPM and DDIM."""

    order = 1
    init_noise_sigma = 1.0
    _compatibles = ("DDPMScheduler", "DDIMScheduler")

    # -- construction and config -------------------------------------------------------------------------------

    def _setup(self, values: dict) -> None:
        """Validate the constructor's values, store the config, build betas and the default schedule."""
        v = dict(values)
        v["num_train_timesteps"] = check_int("num_train_timesteps", v["num_train_timesteps"], 1)
        v["beta_start"] = check_float("beta_start", v["beta_start"])
        v["beta_end"] = check_float("beta_end", v["beta_end"])
        check_choice("beta_schedule", v["beta_schedule"], BETA_SCHEDULES)
        check_choice("prediction_type", v["prediction_type"], PREDICTION_TYPES)
        check_choice("timestep_spacing", v["timestep_spacing"], TIMESTEP_SPACINGS)
        v["clip_sample"] = check_bool("clip_sample", v["clip_sample"])
        v["thresholding"] = check_bool("thresholding", v["thresholding"])
        v["rescale_betas_zero_snr"] = check_bool("rescale_betas_zero_snr", v["rescale_betas_zero_snr"])
        v["clip_sample_range"] = check_float("clip_sample_range", v["clip_sample_range"], positive=True)
        v["sample_max_value"] = check_float("sample_max_value", v["sample_max_value"], positive=True)
        v["dynamic_thresholding_ratio"] = check_float("dynamic_thresholding_ratio", v["dynamic_thresholding_ratio"],
                                                 low=0.0, high=1.0)
        v["steps_offset"] = check_int("steps_offset", v["steps_offset"], 0)
        tb = v["trained_betas"]
        if tb is not None:
            if isinstance(tb, torch.Tensor):
                tb = tb.detach().cpu().to(torch.float64).numpy()
            v["trained_betas"] = [float(b) for b in np.asarray(tb, dtype=np.float64).reshape(-1)]
        self._store_config(v)

        betas = make_betas(v["num_train_timesteps"], v["beta_start"], v["beta_end"], v["beta_schedule"], tb)
        if v["rescale_betas_zero_snr"]:
            betas = rescale_zero_terminal_snr(betas)
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.one = torch.tensor(1.0)
        # Coefficients are computed in float64 from the float32 alphas_cumprod diffusers uses, then rounded once.
        self._abar = self.alphas_cumprod.to(torch.float64).numpy()
        self._noise_tables = TableCache(self._build_noise_table)
        self.num_inference_steps = None
        self.custom_timesteps = False
        self._use_schedule(np.arange(v["num_train_timesteps"] - 1, -1, -1, dtype=np.int64), device=None)

    def __len__(self) -> int:
        return self._config["num_train_timesteps"]

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={self._config[k]!r}" for k in self._fields if k != "trained_betas")
        return f"{type(self).__name__}({fields})"

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        """The model input for `sample` at `timestep`: the sample itself (DDPM/DDIM need no input scaling)."""
        return sample

    def draws_noise(self, **step_options) -> bool:
        """Whether a loop stepping with `step_options` draws noise after x_T (ancestral sampling does)."""
        return True

    # -- the timestep schedule ----------------------------------------------------------------------------------

    def _spaced_timesteps(self, n: int) -> np.ndarray:
        cfg, T = self._config, self._config["num_train_timesteps"]
        spacing = cfg["timestep_spacing"]
        if spacing == "linspace":
            return np.linspace(0, T - 1, n).round()[::-1].copy().astype(np.int64)
        if spacing == "leading":
            step_ratio = T // n
            return (np.arange(0, n) * step_ratio).round()[::-1].copy().astype(np.int64) + cfg["steps_offset"]
        step_ratio = T / n  # trailing
        return np.round(np.arange(T, 0, -step_ratio)).astype(np.int64) - 1

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None,
                      timesteps: Sequence[int] | None = None) -> None:
        """Choose the inference schedule and build its coefficient table on `device`.

        Args:
            num_inference_steps: how many steps to sample with (1 .. num_train_timesteps); the timesteps follow
                config.timestep_spacing ("leading" adds config.steps_offset).
            device: where self.timesteps and the coefficient table live (default CPU); use the sample's device so
                step() never copies.
            timesteps: instead of num_inference_steps, an explicit strictly decreasing list of timesteps in
                [0, num_train_timesteps).

        Raises:
            ValueError: both or neither of num_inference_steps and timesteps; more steps than num_train_timesteps;
                a schedule that leaves [0, num_train_timesteps) (e.g. steps_offset pushing the first step to T).
        """
        T = self._config["num_train_timesteps"]
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError("set_timesteps takes exactly one of num_inference_steps and timesteps")
        if timesteps is not None:
            ts = np.asarray([int(t) for t in timesteps], dtype=np.int64)
            if ts.size == 0:
                raise ValueError("timesteps must not be empty")
            if np.any(np.diff(ts) >= 0):
                raise ValueError(f"timesteps must be strictly decreasing, got {ts.tolist()}")
            custom = True
        else:
            n = check_int("num_inference_steps", num_inference_steps, 1)
            if n > T:
                raise ValueError(f"num_inference_steps ({n}) cannot be larger than num_train_timesteps ({T}): the "
                                 f"model was trained on {T} timesteps only")
            ts = self._spaced_timesteps(n)
            if np.any(np.diff(ts) >= 0):  # cannot happen for n <= T, kept as a guard for the lookup below
                raise ValueError(f"the {self._config['timestep_spacing']} spacing gave repeated timesteps {ts}")
            custom = False
        if ts.max() >= T or ts.min() < 0:
            raise ValueError(f"the schedule {ts.tolist()} leaves [0, num_train_timesteps={T}) (steps_offset="
                             f"{self._config['steps_offset']}); use fewer steps or a smaller steps_offset")
        self.custom_timesteps = custom
        self.num_inference_steps = len(ts)
        self._use_schedule(ts, device)

    def _use_schedule(self, ts: np.ndarray, device) -> None:
        T = self._config["num_train_timesteps"]
        self.timesteps = torch.from_numpy(ts.copy()).to(device)
        self._schedule = ts.tolist()
        self._position = {t: i for i, t in enumerate(self._schedule)}
        prev = np.full(T, -2, dtype=np.int64)  # -2: no step from t; -1: the step to x_0
        off_schedule = self._off_schedule_previous()
        if off_schedule is not None:
            prev[:] = off_schedule
        prev[ts] = np.append(ts[1:], -1)
        self._prev = prev
        self._tables = TableCache(self._build_table)  # variant -> (T, 11): the step's coefficients
        self._on_schedule = TableCache(self._build_step_mask)
        # Build now what step() reads on this device, so the steps themselves only gather.
        self._table(self._default_variant(), table_device(device), torch.float32)
        self._valid_mask(table_device(device))

    def _off_schedule_previous(self) -> np.ndarray | None:
        """(T,) the timestep a step from each training timestep goes to when it is not on the schedule (-1: to
        x_0), or None where such a step is refused."""
        return None

    def _build_noise_table(self, _key) -> np.ndarray:
        """(T, 2) [sqrt(abar_t), sqrt(1 - abar_t)]: the forward process (noise_coefficients)."""
        return np.stack([np.sqrt(self._abar), np.sqrt(1.0 - self._abar)], axis=1)

    def _build_step_mask(self, _key) -> np.ndarray:
        """(T,) bool: whether step() takes a step from timestep t (the device-side check of a CUDA timestep)."""
        return self._prev != -2

    def previous_timestep(self, timestep):
        """The timestep a step from `timestep` goes to: the one the schedule visits next (-1 after the last one;
        DDIM: diffusers' t - num_train_timesteps // num_inference_steps for a timestep off the schedule). A 0-d
        int64 tensor on the timestep's device for a tensor timestep (as diffusers returns), an int for an int."""
        prev = int(self._prev[self._host_timestep(timestep)])
        if isinstance(timestep, torch.Tensor):
            return torch.tensor(prev, dtype=torch.int64, device=timestep.device)
        return prev

    def _host_timestep(self, timestep) -> int:
        if isinstance(timestep, torch.Tensor):
            timestep = timestep.item()
        t = int(timestep)
        T = self._config["num_train_timesteps"]
        if not 0 <= t < T or self._prev[t] == -2:
            raise self._timestep_error(t)
        return t

    def _timestep_error(self, t: int) -> ValueError:
        T = self._config["num_train_timesteps"]
        if not 0 <= t < T:
            return ValueError(f"timestep {t} is outside [0, num_train_timesteps={T})")
        return ValueError(f"timestep {t} is not on the schedule in use ({self._describe_schedule()})")

    def _describe_schedule(self) -> str:
        s = self._schedule
        head = ", ".join(map(str, s[:4])) + (", ..., " + str(s[-1]) if len(s) > 4 else "")
        how = "set_timesteps" if self.num_inference_steps is not None else "the default full schedule"
        return f"{len(s)} steps from {how}: [{head}]"

    # -- coefficient tables -------------------------------------------------------------------------------------

    def _default_variant(self):
        raise NotImplementedError

    def _rows(self, variant, t: np.ndarray, a_t: np.ndarray, a_prev: np.ndarray) -> np.ndarray:
        """The 9 coefficients (len(t), 9) of schedule timesteps t, from abar_t and abar_prev; per scheduler."""
        raise NotImplementedError

    def _final_alpha_cumprod(self) -> float:
        return 1.0

    def _x0_eps_columns(self, a_t: np.ndarray) -> np.ndarray:
        """Columns 0..3: x0 and epsilon as linear combinations of the sample and the model output."""
        sa, sb = np.sqrt(a_t), np.sqrt(1.0 - a_t)
        zero, one = np.zeros_like(a_t), np.ones_like(a_t)
        pred = self._config["prediction_type"]
        if pred == "epsilon":  # x0 = (x - sqrt(1-abar) eps) / sqrt(abar)
            # At zero terminal SNR (abar = 0) that is (x - eps) / 0: diffusers gets +-inf and clips it to the range,
            # while inf * x - inf * eps would be NaN here. So 1/0 is taken as 2**64 (a power of two: x0 = 2**64
            # (x - eps) keeps the sign exactly), which clipping and thresholding bring to diffusers' values.
            inv_sa = np.divide(1.0, sa, out=np.full_like(sa, ZERO_SNR_INV_SQRT_ABAR), where=sa > 0)
            cols = (inv_sa, -sb * inv_sa, zero, one)
        elif pred == "sample":  # eps = (x - sqrt(abar) x0) / sqrt(1-abar), from x0 before clipping (as diffusers)
            cols = (zero, one, 1.0 / sb, -sa / sb)
        else:  # v = sqrt(abar) eps - sqrt(1-abar) x0
            cols = (sa, -sb, sb, sa)
        return np.stack(cols, axis=1)

    def _build_table(self, variant) -> np.ndarray:
        """The (T, 11) float64 table of one step variant under the schedule in use (NaN rows where no step is)."""
        T = self._config["num_train_timesteps"]
        ts = np.flatnonzero(self._prev != -2)
        prev = self._prev[ts]
        a_t = self._abar[ts]
        a_prev = np.where(prev >= 0, self._abar[np.maximum(prev, 0)], self._final_alpha_cumprod())
        table = np.full((T, NUM_COEFS), np.nan, dtype=np.float64)
        table[ts] = 0.0  # the history columns: DDPM and DDIM are one-step methods
        with np.errstate(divide="ignore", invalid="ignore"):
            rows = self._rows(variant, ts, a_t, a_prev)
        table[ts, :rows.shape[1]] = rows
        return table

    def _table(self, variant, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        return self._tables.get(variant, device, dtype)

    def coefficient_table(self, device=None, dtype: torch.dtype = torch.float32, **step_options) -> torch.Tensor:
        """The (num_train_timesteps, 11) table step() passes to gencore.ops.sampler_step for these step options.

        Row t holds the coefficients for timestep t under the current schedule (NaN for timesteps it does not
        visit); the columns are documented in gencore.ops.sampler_step. step_options are DDIM's eta and
        use_clipped_model_output (none for DDPM).
        """
        return self._table(self._variant(**step_options), table_device(device), dtype)

    def _variant(self, **step_options):
        raise NotImplementedError

    def noise_coefficients(self, device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(num_train_timesteps, 2) table [sqrt(alphas_cumprod), sqrt(1 - alphas_cumprod)] on `device`.

        The forward process is x_t = c[t, 0] * x_0 + c[t, 1] * noise; gencore.ops.diffusion_training_inputs takes
        this table (float32) as its `coefs`.
        """
        return self._noise_tables.get(None, device, dtype)

    def _valid_mask(self, device) -> torch.Tensor:
        return self._on_schedule.get(None, device, torch.bool)

    # -- step machinery -----------------------------------------------------------------------------------------

    def _timesteps_tensor(self, timestep, sample: torch.Tensor) -> torch.Tensor:
        """timestep (int, 0-d or (N,) integer tensor) -> (N,) int64 on sample.device, checked against the schedule.

        Host values (ints, CPU tensors) are checked on the host; CUDA tensors with a device-side assertion, so the
        step does not synchronise.
        """
        n = sample.shape[0]
        if isinstance(timestep, torch.Tensor):
            if timestep.dtype.is_floating_point or timestep.dtype.is_complex or timestep.dtype == torch.bool:
                raise TypeError(f"timestep must be an integer tensor, got dtype {timestep.dtype}")
            # Under torch.compile the tensor is not readable on the host: every device takes the device-side check.
            host_check = timestep.device.type == "cpu" and not torch.compiler.is_compiling()
            if timestep.dim() == 0 or (timestep.dim() == 1 and timestep.numel() == 1):
                if host_check:  # reading a CPU scalar costs nothing: take the int path
                    return self._timesteps_tensor(int(timestep.reshape(())), sample)
                timestep = timestep.reshape(1).expand(n)
            elif timestep.dim() != 1 or timestep.numel() != n:
                raise ValueError(f"timestep must be an int, a 0-d tensor or a tensor of shape ({n},) (one per "
                                 f"sample); got shape {tuple(timestep.shape)}")
            if host_check:
                self._check_host_timesteps(timestep)
                return timestep.to(device=sample.device, dtype=torch.int64, non_blocking=True).contiguous()
            t = timestep.to(device=sample.device, dtype=torch.int64).contiguous()
            T = self._config["num_train_timesteps"]
            inside = (t >= 0) & (t < T)
            on_schedule = self._valid_mask(t.device)[t.clamp(0, T - 1)] & inside
            torch._assert_async(on_schedule.all(), "timestep is not on the schedule in use (see set_timesteps)")
            return t
        if isinstance(timestep, bool) or not isinstance(timestep, numbers.Integral):
            raise TypeError(f"timestep must be an int or an integer tensor, got {type(timestep).__name__}")
        t = self._host_timestep(timestep)
        return torch.full((n,), t, dtype=torch.int64, device=sample.device)

    def _check_host_timesteps(self, t: torch.Tensor) -> None:
        T = self._config["num_train_timesteps"]
        values = t.to(torch.int64)
        inside = (values >= 0) & (values < T)
        ok = inside & torch.from_numpy(self._prev != -2)[values.clamp(0, T - 1)]
        if not bool(ok.all()):
            raise self._timestep_error(int(values[~ok][0]))

    def _check_inputs(self, model_output, sample, *, learned: bool = False):
        if not isinstance(sample, torch.Tensor) or not sample.dtype.is_floating_point:
            raise TypeError(f"sample must be a floating-point tensor, got "
                            f"{sample.dtype if isinstance(sample, torch.Tensor) else type(sample).__name__}")
        if sample.dim() < 1 or sample.numel() == 0:
            raise ValueError(f"sample must be a non-empty (N, ...) tensor, got shape {tuple(sample.shape)}")
        if not isinstance(model_output, torch.Tensor) or not model_output.dtype.is_floating_point:
            raise TypeError("model_output must be a floating-point tensor")
        if model_output.device != sample.device:
            raise ValueError(f"model_output is on {model_output.device} but sample is on {sample.device}")
        if model_output.shape != sample.shape and not learned:
            raise ValueError(f"model_output has shape {tuple(model_output.shape)} but sample has shape "
                             f"{tuple(sample.shape)}; they must match")

    def _threshold(self, model_output, sample, ts, coefs, uncond, guidance_scale) -> torch.Tensor:
        return threshold_levels(model_output, sample, ts, coefs, uncond, guidance_scale, self._config)

    def _fused_step(self, model_output, sample, ts, coefs, *, noise, uncond, guidance_scale, philox_seed,
                    philox_offset, return_dict):
        cfg = self._config
        if uncond is not None:
            if not isinstance(uncond, torch.Tensor) or uncond.shape != model_output.shape:
                raise ValueError(f"model_output_uncond must be a tensor shaped like model_output "
                                 f"{tuple(model_output.shape)}, got "
                                 f"{tuple(uncond.shape) if isinstance(uncond, torch.Tensor) else type(uncond)}")
            uncond = uncond.to(sample.dtype)
        model_output = model_output.to(sample.dtype)
        threshold = clip_range = None
        if cfg["thresholding"]:
            threshold = self._threshold(model_output, sample, ts, coefs, uncond, guidance_scale)
        elif cfg["clip_sample"]:
            clip_range = cfg["clip_sample_range"]
        kwargs = {}
        if philox_seed is not None:
            kwargs = dict(philox_seed=philox_seed, philox_offset=philox_offset)
        prev, x0 = sampler_step(model_output, sample, ts, coefs, model_output_uncond=uncond,
                                 guidance_scale=guidance_scale, clip_range=clip_range, threshold=threshold,
                                 noise=noise, **kwargs)
        out = SchedulerOutput(prev_sample=prev, pred_original_sample=x0)
        return out if return_dict else out.to_tuple()

    def _philox_offset(self, timestep, philox_offset):
        if philox_offset is not None:
            return check_int("philox_offset", philox_offset, 0)
        if isinstance(timestep, torch.Tensor) and timestep.numel() != 1:
            raise ValueError("philox_offset (the step counter) must be given when timestep is a per-sample tensor")
        if isinstance(timestep, torch.Tensor) and (timestep.device.type != "cpu" or torch.compiler.is_compiling()):
            # Looking the step up would read the timestep back to the host: a sync per step, and an error inside a
            # CUDA-graph capture. gencore.diffusion.sample passes the step counter itself.
            raise ValueError(f"philox_offset (the step counter) must be given when timestep is a {timestep.device} "
                             "tensor: finding it from the timestep would synchronise with the device")
        t = self._host_timestep(timestep)
        if t not in self._position:
            raise ValueError(f"philox_offset (the step counter) must be given for timestep {t}, which is not on the "
                             "schedule (its position there would be the offset)")
        return self._position[t]

    # -- forward process ----------------------------------------------------------------------------------------

    def _gather(self, timesteps, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        T = self._config["num_train_timesteps"]
        if not isinstance(timesteps, torch.Tensor):
            if isinstance(timesteps, bool) or not isinstance(timesteps, numbers.Integral):
                raise TypeError(f"timesteps must be an int or an integer tensor, got {type(timesteps).__name__}")
            timesteps = torch.tensor([int(timesteps)])
        if timesteps.dtype.is_floating_point or timesteps.dtype == torch.bool:
            raise TypeError(f"timesteps must be an integer tensor, got dtype {timesteps.dtype}")
        if timesteps.device.type == "cpu" and timesteps.numel():
            lo, hi = int(timesteps.min()), int(timesteps.max())
            if lo < 0 or hi >= T:
                raise ValueError(f"timesteps must lie in [0, num_train_timesteps={T}); got values in [{lo}, {hi}]")
        t = timesteps.to(like.device).reshape(-1)
        if t.numel() not in (1, like.shape[0]):
            raise ValueError(f"timesteps must hold 1 or {like.shape[0]} (batch size) values, got {t.numel()}")
        c = self.noise_coefficients(like.device, like.dtype)[t]
        view = (-1,) + (1,) * (like.dim() - 1)
        return c[:, 0].reshape(view), c[:, 1].reshape(view)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        """The forward process: x_t = sqrt(abar_t) * x_0 + sqrt(1 - abar_t) * noise.

        Args:
            original_samples: x_0, (N, ...) floating point.
            noise: shaped like original_samples.
            timesteps: int, or an integer tensor with 1 or N values in [0, num_train_timesteps).
        """
        if noise.shape != original_samples.shape:
            raise ValueError(f"noise has shape {tuple(noise.shape)} but original_samples has shape "
                             f"{tuple(original_samples.shape)}; they must match")
        sa, sb = self._gather(timesteps, original_samples)
        return sa * original_samples + sb * noise

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        """The v-prediction target: v = sqrt(abar_t) * noise - sqrt(1 - abar_t) * sample (sample is x_0)."""
        if noise.shape != sample.shape:
            raise ValueError(f"noise has shape {tuple(noise.shape)} but sample has shape {tuple(sample.shape)}; "
                             f"they must match")
        sa, sb = self._gather(timesteps, sample)
        return sa * noise - sb * sample


# ---------------------------------------------------------------------------------------------------------------------
# DDPM


class DDPMScheduler(DiscreteScheduler):
    """Denoising diffusion probabilistic models (Ho et al. 2020): ancestral sampling from q(x_{t-1} | x_t, x_0).

    Parameters (diffusers' names, order and defaults):
        num_train_timesteps (int, 1000): T, the number of training timesteps.
        beta_start (float, 0.0001), beta_end (float, 0.02): range of the "linear", "scaled_linear", "sigmoid" betas.
        beta_schedule (str, "linear"): "linear", "scaled_linear", "squaredcos_cap_v2" or "sigmoid".
        trained_betas (sequence of T floats or None): explicit betas, overriding beta_schedule.
        variance_type (str, "fixed_small"): the noise added at each step: "fixed_small" (posterior variance
            beta~_t), "fixed_small_log" (the same, through its log), "fixed_large" (beta_t), "fixed_large_log"
            (beta_t, see the module doc), "learned" (the model's extra C channels are the variance),
            "learned_range" (they interpolate the log-variance between beta~_t and beta_t: frac = (v + 1) / 2).
        clip_sample (bool, True): clamp the predicted x_0 to [-clip_sample_range, clip_sample_range].
        prediction_type (str, "epsilon"): what the model predicts: "epsilon", "sample" (x_0) or "v_prediction".
        thresholding (bool, False): dynamic thresholding of x_0 (replaces clip_sample when on).
        dynamic_thresholding_ratio (float, 0.995): the quantile of |x_0| used as the threshold.
        clip_sample_range (float, 1.0): see clip_sample.
        sample_max_value (float, 1.0): the largest dynamic threshold.
        timestep_spacing (str, "leading"): "leading", "linspace" or "trailing" (Lin et al. 2023, table 2).
        steps_offset (int, 0): added to the "leading" timesteps.
        rescale_betas_zero_snr (bool, False): rescale betas to zero terminal SNR (use with v_prediction).

    Before set_timesteps the schedule is every training timestep, T-1 .. 0 (as in diffusers, where DDPM may step
    without set_timesteps).
    """

    _fields = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "variance_type",
               "clip_sample", "prediction_type", "thresholding", "dynamic_thresholding_ratio", "clip_sample_range",
               "sample_max_value", "timestep_spacing", "steps_offset", "rescale_betas_zero_snr")

    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas=None, variance_type: str = "fixed_small",
                 clip_sample: bool = True, prediction_type: str = "epsilon", thresholding: bool = False,
                 dynamic_thresholding_ratio: float = 0.995, clip_sample_range: float = 1.0,
                 sample_max_value: float = 1.0, timestep_spacing: str = "leading", steps_offset: int = 0,
                 rescale_betas_zero_snr: bool = False):
        # None, which a DPM-Solver config carries, is diffusers' "not given": the default, fixed_small.
        check_choice("variance_type", variance_type, (None,) + VARIANCE_TYPES)
        self.variance_type = variance_type
        values = dict(locals())
        self._setup({k: values[k] for k in self._fields})

    @property
    def default_inference_steps(self) -> int:
        """The steps a sampling loop takes unless told: every training timestep."""
        return len(self)

    def _default_variant(self):
        return None

    def _variant(self):
        return None

    def _get_variance(self, t: int, predicted_variance: torch.Tensor | None = None,
                      variance_type: str | None = None) -> torch.Tensor:
        """diffusers' DDPMScheduler._get_variance, for code written against it: the quantity diffusers' step turns
        into the noise's scale at timestep t (the posterior variance beta~_t for "fixed_small"; its square root for
        "fixed_small_log"; beta_t, log beta_t, the model's variance, or the interpolated log-variance for the
        others), computed in float64 and returned as float32 (predicted_variance's dtype for the learned types).
        step() does not call it: its noise scale is a column of the coefficient table."""
        t = self._host_timestep(t)
        prev = int(self._prev[t])
        a_t = self._abar[t]
        a_prev = self._abar[prev] if prev >= 0 else 1.0
        _, beta_t, var = self._posterior(np.float64(a_t), np.float64(a_prev))
        vt = variance_type if variance_type is not None else (self.variance_type or "fixed_small")
        if vt == "learned":
            return predicted_variance
        if vt == "learned_range":
            frac = (predicted_variance + 1) / 2
            return frac * float(np.log(beta_t)) + (1 - frac) * float(np.log(var))
        value = {"fixed_small": var, "fixed_small_log": np.sqrt(var), "fixed_large": beta_t,
                 "fixed_large_log": np.log(beta_t)}[vt]
        return torch.tensor(float(value), dtype=torch.float32)

    def _posterior(self, a_t, a_prev):
        """Per-timestep beta_t, alpha_t and the clamped posterior variance beta~_t of the schedule in use."""
        alpha_t = a_t / a_prev
        beta_t = 1.0 - alpha_t
        var = np.maximum(_posterior_variance(a_t, a_prev), MIN_POSTERIOR_VARIANCE)
        return alpha_t, beta_t, var

    def _rows(self, variant, t, a_t, a_prev):
        alpha_t, beta_t, var = self._posterior(a_t, a_prev)
        vt = self.variance_type
        if vt in (None, "fixed_small", "fixed_small_log"):
            std = np.sqrt(var)
        elif vt in ("fixed_large", "fixed_large_log"):
            std = np.sqrt(beta_t)
        else:  # learned: step() scales the noise per element and passes it with a unit std
            std = np.ones_like(a_t)
        zero = np.zeros_like(a_t)
        x0_eps = self._x0_eps_columns(a_t)
        x0_eps[:, 2:] = 0.0                                    # epsilon is unused by DDPM
        return np.concatenate([x0_eps, np.stack([
            zero,                                              # eps_from_x0
            np.sqrt(a_prev) * beta_t / (1.0 - a_t),            # prev_from_x0: posterior mean coefficient of x_0
            np.sqrt(alpha_t) * (1.0 - a_prev) / (1.0 - a_t),   # prev_from_sample: ... and of x_t
            zero,                                              # prev_from_eps
            np.where(t > 0, std, 0.0),                         # noise_std: no noise on the step from t = 0
        ], axis=1)], axis=1)

    def _use_schedule(self, ts: np.ndarray, device) -> None:
        self._variance_bounds = TableCache(self._build_variance_bounds)
        super()._use_schedule(ts, device)

    def _build_variance_bounds(self, _key) -> np.ndarray:
        """(T, 2) [log beta~_t, log beta_t] for "learned_range" (NaN off the schedule)."""
        T = self._config["num_train_timesteps"]
        ts = np.asarray(self._schedule, dtype=np.int64)
        prev = self._prev[ts]
        a_t = self._abar[ts]
        a_prev = np.where(prev >= 0, self._abar[np.maximum(prev, 0)], 1.0)
        _, beta_t, var = self._posterior(a_t, a_prev)
        host = np.full((T, 2), np.nan)
        with np.errstate(divide="ignore"):
            host[ts] = np.stack([np.log(var), np.log(beta_t)], axis=1)
        return host

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor,
             generator: torch.Generator | None = None, return_dict: bool = True, *,
             variance_noise: torch.Tensor | None = None, model_output_uncond: torch.Tensor | None = None,
             guidance_scale: float = 1.0, philox_seed: int | None = None, philox_offset: int | None = None):
        """One ancestral step x_t -> x_{t-1}, fused (gencore.ops.sampler_step).

        Args:
            model_output: (N, C, ...) the model's prediction (config.prediction_type), or (N, 2C, ...) for the
                "learned"/"learned_range" variance types (the second half is the variance output).
            timestep: the current timestep: an int, a 0-d tensor, or an int64 tensor of shape (N,) (one per sample).
                Each must be on the schedule in use; the step goes to that schedule's previous timestep.
            sample: x_t, (N, C, ...), float16/bfloat16/float32/float64.
            generator: torch.Generator (or a list, one per sample) for the noise, as diffusers draws it.
            return_dict: False returns (prev_sample, pred_original_sample).
            variance_noise: the standard normal noise to use instead of drawing it (shaped like sample).
            model_output_uncond: classifier-free guidance: the unconditional prediction, shaped like model_output;
                the step uses uncond + guidance_scale * (model_output - uncond) (learned variance: the variance
                channels come from model_output).
            philox_seed, philox_offset: draw the noise inside the kernel from Philox keyed on (seed, sample index,
                philox_offset, element); philox_offset defaults to the step's position in the schedule (which
                reads a CUDA timestep back to the host: pass it explicitly in a graph-captured loop).

        Noise is drawn from the generator unless every timestep is known on the host to be 0 (an int, or a CPU
        tensor); for CUDA timestep tensors it is always drawn, and the table's zero std at t = 0 removes it.

        Returns:
            SchedulerOutput(prev_sample, pred_original_sample), or the tuple.
        """
        guidance_scale = check_guidance_scale(guidance_scale)
        vt = self.variance_type
        learned = vt in LEARNED_VARIANCE_TYPES
        self._check_inputs(model_output, sample, learned=learned)
        predicted_variance = None
        if learned:
            c = sample.shape[1] if sample.dim() > 1 else None
            expected = (sample.shape[0], 2 * c) + tuple(sample.shape[2:]) if c is not None else None
            if expected is None or tuple(model_output.shape) != expected:
                raise ValueError(f"variance_type={vt!r} needs model_output of shape {expected} (the prediction and "
                                 f"the variance, 2*C channels); got {tuple(model_output.shape)}")
            model_output, predicted_variance = torch.split(model_output, c, dim=1)
            if model_output_uncond is not None:
                if model_output_uncond.shape != expected:
                    raise ValueError(f"model_output_uncond must have shape {expected}, got "
                                     f"{tuple(model_output_uncond.shape)}")
                model_output_uncond = model_output_uncond[:, :c]
        ts = self._timesteps_tensor(timestep, sample)
        coefs = self._table(None, sample.device, accumulation_dtype(sample.dtype))

        needs_noise = True
        if isinstance(timestep, numbers.Integral) or (isinstance(timestep, torch.Tensor)
                                                      and timestep.device.type == "cpu"):
            needs_noise = bool((torch.as_tensor(timestep) > 0).any())
        noise = step_noise(sample, generator=generator, variance_noise=variance_noise, philox_seed=philox_seed,
                           needed=needs_noise)
        offset = None
        if philox_seed is not None:
            if learned:
                raise ValueError("philox_seed with a learned variance: the per-element std needs the noise outside "
                                 "the kernel; use generator or variance_noise")
            offset = self._philox_offset(timestep, philox_offset)

        if learned and noise is not None:
            # The std varies per element: scale the noise here; the table's noise_std column is 1 (0 at t = 0).
            compute = accumulation_dtype(sample.dtype)
            v = predicted_variance.to(compute)
            if vt == "learned":
                std = v.sqrt()
            else:
                bounds = self._variance_bounds.get(None, sample.device, compute)[ts]
                view = (-1,) + (1,) * (sample.dim() - 1)
                frac = (v + 1) / 2
                std = torch.exp(0.5 * (frac * bounds[:, 1].reshape(view) + (1 - frac) * bounds[:, 0].reshape(view)))
            noise = (std * noise.to(compute)).to(sample.dtype)
        return self._fused_step(model_output, sample, ts, coefs, noise=noise, uncond=model_output_uncond,
                                guidance_scale=guidance_scale, philox_seed=philox_seed, philox_offset=offset,
                                return_dict=return_dict)


# ---------------------------------------------------------------------------------------------------------------------
# DDIM


class DDIMScheduler(DiscreteScheduler):
    """Denoising diffusion implicit models (Song et al. 2021): few-step sampling, deterministic at eta = 0.

    Parameters (diffusers' names, order and defaults):
        num_train_timesteps (int, 1000), beta_start (float, 0.0001), beta_end (float, 0.02),
        beta_schedule (str, "linear"), trained_betas (None): the noise schedule, as DDPMScheduler's.
        clip_sample (bool, True), clip_sample_range (float, 1.0): clamp the predicted x_0.
        set_alpha_to_one (bool, True): the last step goes to alphas_cumprod = 1 (x_0 itself); False uses
            alphas_cumprod[0].
        steps_offset (int, 0): added to the "leading" timesteps.
        prediction_type (str, "epsilon"): "epsilon", "sample" or "v_prediction".
        thresholding (bool, False), dynamic_thresholding_ratio (float, 0.995), sample_max_value (float, 1.0):
            dynamic thresholding of x_0.
        timestep_spacing (str, "leading"): "leading", "linspace" or "trailing".
        rescale_betas_zero_snr (bool, False): rescale betas to zero terminal SNR.

    step() from a timestep of the schedule goes to the schedule's previous timestep, not diffusers' t - T //
    num_inference_steps (the two differ for "linspace" and "trailing" spacing: docs/scheduler-parity.md); from any
    other timestep it takes diffusers' rule. set_timesteps must come before step().
    """

    default_inference_steps = 50

    _fields = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "clip_sample",
               "set_alpha_to_one", "steps_offset", "prediction_type", "thresholding", "dynamic_thresholding_ratio",
               "clip_sample_range", "sample_max_value", "timestep_spacing", "rescale_betas_zero_snr")

    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas=None, clip_sample: bool = True,
                 set_alpha_to_one: bool = True, steps_offset: int = 0, prediction_type: str = "epsilon",
                 thresholding: bool = False, dynamic_thresholding_ratio: float = 0.995,
                 clip_sample_range: float = 1.0, sample_max_value: float = 1.0, timestep_spacing: str = "leading",
                 rescale_betas_zero_snr: bool = False):
        set_alpha_to_one = check_bool("set_alpha_to_one", set_alpha_to_one)
        values = dict(locals())
        self._set_alpha_to_one = set_alpha_to_one
        self._setup({k: values[k] for k in self._fields})
        self.final_alpha_cumprod = torch.tensor(1.0) if set_alpha_to_one else self.alphas_cumprod[0]

    def _final_alpha_cumprod(self) -> float:
        return 1.0 if self._set_alpha_to_one else float(self._abar[0])

    def _off_schedule_previous(self) -> np.ndarray | None:
        # diffusers' DDIM steps from any timestep t to t - T // num_inference_steps (below 0: to the final alpha).
        if self.num_inference_steps is None:
            return None
        T = self._config["num_train_timesteps"]
        return np.maximum(np.arange(T) - T // self.num_inference_steps, -1)

    def loop_step_options(self, eta: float | None = None, use_clipped_model_output: bool | None = None) -> dict:
        """The keyword arguments a sampling loop passes to every step(): eta (default 0, deterministic) and
        use_clipped_model_output. A loop's default (None) re-derives epsilon from the clipped or thresholded x_0
        whenever the scheduler clips or thresholds, so that every x_{t-1} is built from one consistent (x_0,
        epsilon) pair, as the original implementations (improved-diffusion, GLIDE) do; step()'s default (False,
        as diffusers') keeps the raw epsilon."""
        if use_clipped_model_output is None:
            use_clipped_model_output = bool(self._config["clip_sample"] or self._config["thresholding"])
        eta, use_clipped = self._variant(0.0 if eta is None else eta, use_clipped_model_output)
        return {"eta": eta, "use_clipped_model_output": use_clipped}

    def draws_noise(self, eta: float = 0.0, **step_options) -> bool:
        """Whether a loop stepping with `eta` draws noise after x_T (only eta > 0 does)."""
        return eta > 0

    def _get_variance(self, timestep: int, prev_timestep: int) -> torch.Tensor:
        """diffusers' DDIMScheduler._get_variance, for code written against it: sigma_t(1)^2, the variance of
        the step from `timestep` to `prev_timestep` at eta = 1 (below 0: to the final alpha), in float64 returned
        as float32."""
        a_t = self._abar[int(timestep)]
        a_prev = self._abar[int(prev_timestep)] if int(prev_timestep) >= 0 else self._final_alpha_cumprod()
        return torch.tensor(float(_posterior_variance(a_t, a_prev)), dtype=torch.float32)

    def _default_variant(self):
        return (0.0, False)

    def _variant(self, eta: float = 0.0, use_clipped_model_output: bool | None = False):
        # None is diffusers' "not given" (DDIMPipeline passes it through): its step reads it as False.
        use_clipped = False if use_clipped_model_output is None else use_clipped_model_output
        return (check_float("eta", eta, low=0.0), check_bool("use_clipped_model_output", use_clipped))

    def _rows(self, variant, t, a_t, a_prev):
        eta, use_clipped = variant
        std = eta * np.sqrt(_posterior_variance(a_t, a_prev))
        zero = np.zeros_like(a_t)
        x0_eps = self._x0_eps_columns(a_t)
        # Rounding can make 1 - abar_prev - sigma^2 a hair negative at eta = 1; it is 0 in exact arithmetic.
        direction = np.sqrt(np.maximum(1.0 - a_prev - std**2, 0.0))
        eps_from_x0 = zero
        if use_clipped:  # epsilon re-derived from the clipped x_0: eps = (x - sqrt(abar) x0) / sqrt(1 - abar)
            x0_eps[:, EPS_FROM_SAMPLE] = 1.0 / np.sqrt(1.0 - a_t)
            x0_eps[:, EPS_FROM_MODEL] = 0.0
            eps_from_x0 = -np.sqrt(a_t) / np.sqrt(1.0 - a_t)
        return np.concatenate([x0_eps, np.stack([eps_from_x0, np.sqrt(a_prev), zero, direction, std], axis=1)],
                              axis=1)

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, eta: float = 0.0,
             use_clipped_model_output: bool | None = False, generator: torch.Generator | None = None,
             variance_noise: torch.Tensor | None = None, return_dict: bool = True, *,
             model_output_uncond: torch.Tensor | None = None, guidance_scale: float = 1.0,
             philox_seed: int | None = None, philox_offset: int | None = None):
        """One DDIM step x_t -> x_{t_prev}, fused (gencore.ops.sampler_step): t_prev is the schedule's previous
        timestep (previous_timestep()).

        Args:
            model_output: (N, ...) the model's prediction (config.prediction_type), shaped like sample.
            timestep: the current timestep: an int, a 0-d tensor, or an int64 tensor of shape (N,) (one per sample)
                in [0, num_train_timesteps). One off the schedule set by set_timesteps steps to t -
                num_train_timesteps // num_inference_steps, as diffusers' DDIM does from every timestep.
            sample: x_t, (N, ...), float16/bfloat16/float32/float64.
            eta: the noise weight, >= 0: 0 is deterministic DDIM, 1 is DDPM-like.
            use_clipped_model_output: re-derive epsilon from the clipped x_0 (matters only when clipping bites);
                None, as diffusers' pipelines pass it, means False.
            generator: torch.Generator (or a list, one per sample) for the noise when eta > 0.
            variance_noise: the standard normal noise to use instead of drawing it (shaped like sample).
            return_dict: False returns (prev_sample, pred_original_sample).
            model_output_uncond, guidance_scale: classifier-free guidance, combined inside the step:
                uncond + guidance_scale * (model_output - uncond).
            philox_seed, philox_offset: in-kernel Philox noise (see DDPMScheduler.step).

        Raises:
            RuntimeError: set_timesteps was not called. ValueError: a timestep outside [0, num_train_timesteps),
                mismatched shapes, both generator and variance_noise.
        """
        if self.num_inference_steps is None:
            raise RuntimeError("DDIMScheduler.step needs the inference schedule: call "
                               "set_timesteps(num_inference_steps) first")
        guidance_scale = check_guidance_scale(guidance_scale)
        self._check_inputs(model_output, sample)
        variant = self._variant(eta, use_clipped_model_output)
        ts = self._timesteps_tensor(timestep, sample)
        coefs = self._table(variant, sample.device, accumulation_dtype(sample.dtype))
        noise, offset = None, None
        if variant[0] > 0:
            noise = step_noise(sample, generator=generator, variance_noise=variance_noise, philox_seed=philox_seed)
            if philox_seed is not None:
                offset = self._philox_offset(timestep, philox_offset)
        else:
            philox_seed = None  # eta = 0: no noise at all
        return self._fused_step(model_output, sample, ts, coefs, noise=noise, uncond=model_output_uncond,
                                guidance_scale=guidance_scale, philox_seed=philox_seed, philox_offset=offset,
                                return_dict=return_dict)


def _posterior_variance(a_t, a_prev):
    """beta~ = (1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev): the variance of q(x_prev | x_t, x_0) (Ho
    et al. eq. 7), which is also DDIM's sigma_t(eta)^2 at eta = 1 (Song et al. eq. 16)."""
    return (1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev)
