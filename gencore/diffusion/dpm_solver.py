"""DPM-Solver and DPM-Solver++ (Lu et al. 2022), the multistep solvers diffusers' users sample with in 10-25 steps, on
the fused step.

    from gencore.diffusion import DPMSolverMultistepScheduler, sample
    scheduler = DPMSolverMultistepScheduler.from_config(ddpm_scheduler.config, use_karras_sigmas=True)
    images = sample(model, scheduler, (16, 1, 28, 28), 20)       # 20 model calls

diffusers' DPMSolverMultistepScheduler: its constructor's names and defaults, set_timesteps (the three spacings,
Karras, Lu, exponential and beta sigmas, lambda_min_clipped, final_sigmas_type), and step() (the order schedule with
lower_order_final / euler_at_final, the history of predictions, the SDE variants' noise, the four algorithm types),
equal to diffusers' numbers to float rounding (tests/library/test_dpm_solver.py, in float64). What still differs, and why,
is listed once in docs/scheduler-parity.md.

The math, in the notation every row below is built in. sigma_i = sigmas[i] = sqrt((1 - abar) / abar) at step i,
alpha = 1 / sqrt(sigma^2 + 1) and s = sigma * alpha (the VP process's signal and noise scales), lambda = log(alpha / s),
h = lambda_t - lambda_s0 for the step from s0 = step i to t = step i + 1, and h_0, h_1 the two steps before it. The
data prediction of the model output m at s0 is x0 = a x + b m (epsilon: a = 1/alpha_s0, b = -s_s0/alpha_s0; v: a =
alpha_s0, b = -s_s0; sample: a = 0, b = 1), thresholded if asked. DPM-Solver++ ("dpmsolver++", "sde-dpmsolver++")
integrates the data predictions: P = x0. DPM-Solver ("dpmsolver", "sde-dpmsolver") integrates the noise predictions:
P = eps, the model's epsilon (eps = (x - alpha_s0 x0) / s_s0 from the thresholded x0 when thresholding). With P0 the
current prediction, P1, P2 the two before it, r0 = h_0 / h, r1 = h_1 / h:

    order 1  D1 = D2 = 0 (DDIM);    order 2  D1 = (P0 - P1) / r0;
    order 3  D1_0 = (P0 - P1) / r0, D1_1 = (P1 - P2) / r1, D1 = D1_0 + r0 / (r0 + r1) (D1_0 - D1_1),
             D2 = (D1_0 - D1_1) / (r0 + r1)
    with phi = e^{-h} - 1, psi = e^{h} - 1 (midpoint and heun name the two second-order weights; order 3 always
    takes the heun weight of D1):
    dpmsolver++:      x_t = (s_t / s_s0) x - alpha_t phi D0 + w1 D1 - alpha_t ((phi + h) / h^2 - 0.5) D2,
                      w1 = -0.5 alpha_t phi (midpoint) or alpha_t (phi / h + 1) (heun)
    sde-dpmsolver++:  x_t = (s_t / s_s0) e^{-h} x + alpha_t (1 - e^{-2h}) D0 + w1 D1
                      + alpha_t ((1 - e^{-2h} - 2h) / (2h)^2 - 0.5) D2 + s_t sqrt(1 - e^{-2h}) z,
                      w1 = 0.5 alpha_t (1 - e^{-2h}) (midpoint) or alpha_t ((1 - e^{-2h}) / (-2h) + 1) (heun)
    dpmsolver:        x_t = (alpha_t / alpha_s0) x - s_t psi D0 + w1 D1 - s_t ((psi - h) / h^2 - 0.5) D2,
                      w1 = -0.5 s_t psi (midpoint) or -s_t (psi / h - 1) (heun)
    sde-dpmsolver:    x_t = (alpha_t / alpha_s0) x - 2 s_t psi D0 + w1 D1 + s_t sqrt(e^{2h} - 1) z  (orders 1, 2),
                      w1 = -s_t psi (midpoint) or -2 s_t (psi / h - 1) (heun)

Every step is linear in (x, P0, P1, P2, z): one row of gencore.ops.sampler_step's table (x0_from_sample = a,
x0_from_model = b; the eps columns for DPM-Solver's P0; prev_from_sample, prev_from_x0 (DPM-Solver++) or
prev_from_eps (DPM-Solver), prev_from_history1 / 2 for P1 / P2, noise_std), computed in float64 from diffusers'
float32 sigmas at set_timesteps and rounded once, so a step is one fused pass over x, the model output and the
history, reading its row on the device. DPM-Solver of order 2 or 3 keeps its history as noise predictions, which the
fused step does not return: one more elementwise pass per step forms them (eps = c2 x + c3 m + c4 x0 of the same
row). Rows are indexed by step, not by timestep: a Karras schedule can visit a timestep twice.

The order of a step is decided by how many steps the loop has taken (lower_order_nums, as in diffusers), never by
where in the schedule it started: an image-to-image loop from step k (set_begin_index(k), or just stepping from
timesteps[k]) starts first order, because it has no history yet. One table per count of steps taken (0 up to
solver_order) holds every step's row for that count, so a step only picks its table on the host and its row on the
device.
"""
from __future__ import annotations

import math
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
from .tables import (COLUMN, EPS_FROM_MODEL, EPS_FROM_SAMPLE, EPS_FROM_X0, NUM_COEFS, TableCache, table_device)
from .thresholding import threshold_levels

DATA_ALGORITHM_TYPES = ("dpmsolver++", "sde-dpmsolver++")  # DPM-Solver++: integrates the predicted x0
NOISE_ALGORITHM_TYPES = ("dpmsolver", "sde-dpmsolver")     # DPM-Solver: integrates the predicted noise
ALGORITHM_TYPES = DATA_ALGORITHM_TYPES + NOISE_ALGORITHM_TYPES
SDE_ALGORITHM_TYPES = ("sde-dpmsolver++", "sde-dpmsolver")
SOLVER_TYPES = ("midpoint", "heun")
FINAL_SIGMAS_TYPES = ("zero", "sigma_min")
SIGMA_SCHEDULES = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "use_lu_lambdas")
# The beta sigma schedule (Lee et al. 2024, "Beta Sampling is All You Need"): diffusers' shape parameters.
BETA_SIGMAS_ALPHA = BETA_SIGMAS_BETA = 0.6


class DPMSolverMultistepScheduler(SchedulerMixin):
    """DPM-Solver++, DPM-Solver and their SDE variants, multistep, orders 1-3 (diffusers' names, order, defaults).

    Parameters: num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas (the noise schedule, as
    DDPMScheduler's); solver_order (2; 3 for unconditional sampling), prediction_type, thresholding,
    dynamic_thresholding_ratio, sample_max_value; algorithm_type ("dpmsolver++", "sde-dpmsolver++", or diffusers'
    deprecated "dpmsolver" and "sde-dpmsolver", which need final_sigmas_type="sigma_min"), solver_type ("midpoint"
    or "heun"), lower_order_final, euler_at_final (first-order final steps, steadier below 15 steps);
    use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas (needs scipy), use_lu_lambdas (the step spacing in
    sigma / lambda); final_sigmas_type ("zero": the last step lands on x0; "sigma_min"); lambda_min_clipped (drops
    the noisiest timesteps, for the cosine schedule); variance_type; timestep_spacing ("linspace"), steps_offset;
    rescale_betas_zero_snr. use_flow_sigmas, flow_shift, use_dynamic_shifting and time_shift_type (flow matching)
    must keep their defaults (docs/scheduler-parity.md).
    """

    order = 1
    init_noise_sigma = 1.0
    default_inference_steps = 20
    _compatibles = ("DDPMScheduler", "DDIMScheduler", "DPMSolverMultistepScheduler")
    _fields = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "solver_order",
               "prediction_type", "thresholding", "dynamic_thresholding_ratio", "sample_max_value", "algorithm_type",
               "solver_type", "lower_order_final", "euler_at_final", "use_karras_sigmas", "use_exponential_sigmas",
               "use_beta_sigmas", "use_lu_lambdas", "use_flow_sigmas", "flow_shift", "final_sigmas_type",
               "lambda_min_clipped", "variance_type", "timestep_spacing", "steps_offset", "rescale_betas_zero_snr",
               "use_dynamic_shifting", "time_shift_type")

    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas=None, solver_order: int = 2,
                 prediction_type: str = "epsilon", thresholding: bool = False, dynamic_thresholding_ratio: float = 0.995,
                 sample_max_value: float = 1.0, algorithm_type: str = "dpmsolver++", solver_type: str = "midpoint",
                 lower_order_final: bool = True, euler_at_final: bool = False, use_karras_sigmas: bool = False,
                 use_exponential_sigmas: bool = False, use_beta_sigmas: bool = False, use_lu_lambdas: bool = False,
                 use_flow_sigmas: bool = False, flow_shift: float = 1.0, final_sigmas_type: str = "zero",
                 lambda_min_clipped: float = -float("inf"), variance_type: str | None = None,
                 timestep_spacing: str = "linspace", steps_offset: int = 0, rescale_betas_zero_snr: bool = False,
                 use_dynamic_shifting: bool = False, time_shift_type: str = "exponential"):
        v = {k: v for k, v in locals().items() if k in self._fields}
        v["num_train_timesteps"] = check_int("num_train_timesteps", num_train_timesteps, 1)
        v["beta_start"] = check_float("beta_start", beta_start)
        v["beta_end"] = check_float("beta_end", beta_end)
        check_choice("beta_schedule", beta_schedule, BETA_SCHEDULES)
        v["solver_order"] = check_int("solver_order", solver_order, 1)
        if v["solver_order"] > 3:
            raise ValueError(f"solver_order must be 1, 2 or 3, got {solver_order}")
        if prediction_type == "flow_prediction":
            raise NotImplementedError("prediction_type='flow_prediction' (flow matching) is not implemented")
        check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
        if algorithm_type == "deis":  # diffusers maps it to dpmsolver++ too
            v["algorithm_type"] = algorithm_type = "dpmsolver++"
        check_choice("algorithm_type", algorithm_type, ALGORITHM_TYPES)
        if solver_type in ("logrho", "bh1", "bh2"):  # diffusers' mapping
            v["solver_type"] = solver_type = "midpoint"
        check_choice("solver_type", solver_type, SOLVER_TYPES)
        for name in ("thresholding", "lower_order_final", "euler_at_final", "use_flow_sigmas",
                     "rescale_betas_zero_snr", "use_dynamic_shifting") + SIGMA_SCHEDULES:
            v[name] = check_bool(name, v[name])
        for name in ("use_flow_sigmas", "use_dynamic_shifting"):
            if v[name]:
                raise NotImplementedError(f"{name}=True (flow matching) is not implemented by gencore's "
                                          "DPMSolverMultistepScheduler")
        if sum(v[name] for name in SIGMA_SCHEDULES) > 1:
            raise ValueError(f"use at most one of {', '.join(SIGMA_SCHEDULES)}")
        if v["use_beta_sigmas"]:
            _beta_ppf()  # the ImportError now, not at set_timesteps
        v["dynamic_thresholding_ratio"] = check_float("dynamic_thresholding_ratio", dynamic_thresholding_ratio,
                                                      low=0.0, high=1.0)
        v["sample_max_value"] = check_float("sample_max_value", sample_max_value, positive=True)
        v["flow_shift"] = check_float("flow_shift", flow_shift)
        check_choice("final_sigmas_type", final_sigmas_type, FINAL_SIGMAS_TYPES)
        if algorithm_type in NOISE_ALGORITHM_TYPES and final_sigmas_type == "zero":
            # A zero final sigma is an infinite last step in lambda, where a noise prediction has no limit.
            raise ValueError(f"algorithm_type={algorithm_type!r} needs final_sigmas_type='sigma_min' (its last step "
                             "cannot land on sigma = 0), as in diffusers")
        if algorithm_type == "sde-dpmsolver" and v["solver_order"] == 3:
            raise ValueError("algorithm_type='sde-dpmsolver' has steps of order 1 and 2 only (diffusers has no "
                             "third-order step for it): use solver_order=2, or 'sde-dpmsolver++'")
        if isinstance(lambda_min_clipped, bool) or not isinstance(lambda_min_clipped, numbers.Real) or math.isnan(
                lambda_min_clipped):
            raise TypeError(f"lambda_min_clipped must be a float (-inf: no clipping), got {lambda_min_clipped!r}")
        v["lambda_min_clipped"] = float(lambda_min_clipped)
        # A DDPM config's fixed variances mean nothing to an ODE solver (diffusers ignores them too); a learned one
        # means the model outputs 2C channels, of which the solver uses the prediction.
        check_choice("variance_type", variance_type, (None,) + VARIANCE_TYPES)
        check_choice("timestep_spacing", timestep_spacing, TIMESTEP_SPACINGS)
        v["steps_offset"] = check_int("steps_offset", steps_offset, 0)
        check_choice("time_shift_type", time_shift_type, ("exponential",))
        tb = trained_betas
        if tb is not None:
            if isinstance(tb, torch.Tensor):
                tb = tb.detach().cpu().to(torch.float64).numpy()
            v["trained_betas"] = tb = [float(b) for b in np.asarray(tb, dtype=np.float64).reshape(-1)]
        self._store_config(v)
        self._noise_form = algorithm_type in NOISE_ALGORITHM_TYPES

        betas = make_betas(v["num_train_timesteps"], v["beta_start"], v["beta_end"], beta_schedule, tb)
        if v["rescale_betas_zero_snr"]:
            betas = rescale_zero_terminal_snr(betas)
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        if v["rescale_betas_zero_snr"]:
            self.alphas_cumprod[-1] = 2.0**-24  # as diffusers: near 0 without being 0, so the first sigma is finite
        # diffusers' float32 tables: the sigma schedule starts from them, so the timesteps it picks are its own.
        self.alpha_t = torch.sqrt(self.alphas_cumprod)
        self.sigma_t = torch.sqrt(1 - self.alphas_cumprod)
        self.lambda_t = torch.log(self.alpha_t) - torch.log(self.sigma_t)
        self.sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5
        self.num_inference_steps = None
        self.timesteps = torch.from_numpy(np.arange(v["num_train_timesteps"] - 1, -1, -1, dtype=np.int64))
        self.model_outputs: list[torch.Tensor | None] = [None] * v["solver_order"]
        self.lower_order_nums = 0
        self._step_index = None
        self._begin_index = None
        self._tables = TableCache(self._build_table)
        self._repeats = False

    def __len__(self) -> int:
        return self._config["num_train_timesteps"]

    def __repr__(self) -> str:
        changed = [k for k in self._fields if k not in self._config.get("_use_default_values", ()) and
                   k != "trained_betas"]
        return f"{type(self).__name__}({', '.join(f'{k}={self._config[k]!r}' for k in changed)})"

    def scale_model_input(self, sample: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """The model input: the sample itself (DPM-Solver needs no input scaling)."""
        return sample

    def draws_noise(self, **step_options) -> bool:
        """Whether a loop stepping with `step_options` draws noise after x_T (the SDE variants do)."""
        return self._config["algorithm_type"] in SDE_ALGORITHM_TYPES

    # -- the schedule ---------------------------------------------------------------------------------------------

    @property
    def step_index(self) -> int | None:
        """The index of the next step (None until the first step of a schedule)."""
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start the next loop at step `begin_index` (image-to-image; add_noise then noises to its sigma). The first
        step a loop takes is first order wherever it starts, with or without this."""
        self._begin_index = check_int("begin_index", begin_index, 0)

    def set_timesteps(self, num_inference_steps: int | None = None, device=None, mu: float | None = None,
                      timesteps: Sequence[int] | None = None) -> None:
        """The inference schedule: `num_inference_steps` timesteps (diffusers' spacing and sigma options), or the
        explicit `timesteps`; the coefficient tables for it are built on `device`."""
        cfg = self._config
        T = cfg["num_train_timesteps"]
        if mu is not None:
            raise NotImplementedError("mu (dynamic shifting) is not implemented")
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError("set_timesteps takes exactly one of num_inference_steps and timesteps")
        special = [k for k in SIGMA_SCHEDULES if cfg[k]]
        if timesteps is not None and special:
            raise ValueError(f"timesteps cannot be given with {special[0]}=True (the sigmas choose the timesteps)")
        # diffusers' float32 training sigmas and their float32 logs: the schedules start from them, so that the
        # timesteps chosen (rounded, or truncated) are diffusers' own.
        base = (((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5).numpy()
        log_base = np.log(base)
        if timesteps is not None:
            ts = np.asarray([int(t) for t in timesteps], dtype=np.int64)
            if ts.size == 0 or ts.min() < 0 or ts.max() >= T:
                raise ValueError(f"timesteps must be a non-empty list in [0, {T}), got {list(timesteps)}")
            n = len(ts)
        else:
            n = check_int("num_inference_steps", num_inference_steps, 1)
            if n > T:
                raise ValueError(f"num_inference_steps ({n}) cannot be larger than num_train_timesteps ({T})")
            ts = self._spaced_timesteps(n)
        low, high = float(base[0]), float(base[-1])
        if cfg["use_karras_sigmas"]:  # uniform in sigma^(1/7), Karras et al. (2022)
            sigmas = _ramp(low, high, n, rho=7.0)
            ts = self._round(_sigma_to_t(sigmas, log_base))
        elif cfg["use_lu_lambdas"]:  # uniform in log sigma (Lu et al. 2022), rounded timesteps
            sigmas = np.exp(_ramp(float(log_base[0]), float(log_base[-1]), n, rho=1.0))
            ts = self._round(_sigma_to_t(sigmas, log_base))
        elif cfg["use_exponential_sigmas"]:  # uniform in log sigma, truncated timesteps
            sigmas = np.exp(np.linspace(math.log(high), math.log(low), n))
            ts = _sigma_to_t(sigmas, log_base)
        elif cfg["use_beta_sigmas"]:  # the quantiles of a Beta(0.6, 0.6) (Lee et al. 2024), truncated timesteps
            ppf = _beta_ppf()(1 - np.linspace(0, 1, n), BETA_SIGMAS_ALPHA, BETA_SIGMAS_BETA)
            sigmas = low + ppf * (high - low)
            ts = _sigma_to_t(sigmas, log_base)
        else:
            sigmas = np.interp(ts, np.arange(len(base)), base)
        if cfg["final_sigmas_type"] == "sigma_min":
            last = float(((1 - self.alphas_cumprod[0]) / self.alphas_cumprod[0]) ** 0.5)
        else:
            last = 0.0
        self._use_schedule(np.asarray(ts), np.append(sigmas, last).astype(np.float32), device)

    def _use_schedule(self, timesteps: np.ndarray, sigmas: np.ndarray, device) -> None:
        """Take the schedule (timesteps, and their float32 sigmas with the final one) and build its tables."""
        cfg = self._config
        self.sigmas = torch.from_numpy(sigmas)
        self.timesteps = torch.from_numpy(timesteps).to(device=device, dtype=torch.int64)
        self.num_inference_steps = len(self.timesteps)
        self.restart()
        self._begin_index = None
        self._tables = TableCache(self._build_table)
        self._repeats = len(set(self.timesteps.tolist())) != len(self.timesteps)  # once here: no host read per step
        for taken in range(cfg["solver_order"] + 1):  # every table a loop reads, so that its steps only gather
            self._tables.get(taken, table_device(device), torch.float32)

    def _schedule_restorer(self):
        # The sigmas too: a Karras, exponential, beta or Lu schedule cannot be given back as timesteps alone.
        if self.num_inference_steps is None:
            return None
        timesteps, sigmas, device = self.timesteps.cpu().numpy(), self.sigmas.numpy(), self.timesteps.device
        return lambda: self._use_schedule(timesteps, sigmas, device)

    def restart(self) -> None:
        """Forget the solver's history and start the schedule in use again from its first step (its tables stay:
        nothing is copied to the device, so a CUDA-graph capture may call this)."""
        self.model_outputs = [None] * self._config["solver_order"]
        self.lower_order_nums = 0
        self._step_index = None

    def _spaced_timesteps(self, n: int) -> np.ndarray:
        cfg, T = self._config, self._config["num_train_timesteps"]
        # The noisiest timesteps whose lambda lies below lambda_min_clipped are left out (cosine schedule).
        clipped = int(torch.searchsorted(torch.flip(self.lambda_t, [0]), cfg["lambda_min_clipped"]))
        last = T - clipped
        spacing = cfg["timestep_spacing"]
        if spacing == "linspace":
            return np.linspace(0, last - 1, n + 1).round()[::-1][:-1].copy().astype(np.int64)
        if spacing == "leading":
            ratio = last // (n + 1)
            return (np.arange(0, n + 1) * ratio).round()[::-1][:-1].copy().astype(np.int64) + cfg["steps_offset"]
        ratio = T / n  # trailing
        return np.arange(last, 0, -ratio).round().copy().astype(np.int64) - 1

    def _round(self, t: np.ndarray) -> np.ndarray:
        # diffusers rounds the timesteps of these sigma schedules except for the cosine betas (then truncates).
        return t if self._config["beta_schedule"] == "squaredcos_cap_v2" else t.round()

    # -- the coefficient tables -----------------------------------------------------------------------------------

    def _order(self, i: int, taken: int) -> int:
        """The order of step i when the loop has taken `taken` steps before it (diffusers' lower_order_nums): a loop
        has no history at its first step, whatever index that is, so it starts first order and climbs one order a
        step; short schedules and a zero final sigma drop to lower orders at the end. No step reaches back past
        the schedule's first step (min(taken, i): only a hand-set lower_order_nums could ask for that)."""
        cfg, n = self._config, self.num_inference_steps
        taken = min(taken, i)
        final = i == n - 1 and (cfg["euler_at_final"] or (cfg["lower_order_final"] and n < 15)
                                or cfg["final_sigmas_type"] == "zero")
        second = i == n - 2 and cfg["lower_order_final"] and n < 15
        if cfg["solver_order"] == 1 or taken < 1 or final:
            return 1
        if cfg["solver_order"] == 2 or taken < 2 or second:
            return 2
        return 3

    def _build_table(self, key) -> np.ndarray:
        """The float64 host table of `key`. An int, the number of steps the loop has taken (0 .. solver_order):
        the (num_inference_steps, NUM_COEFS) rows step() reads, row i of order _order(i, taken). A pair ("from",
        begin): the rows a loop from step `begin` steps through, one table (coefficient_table())."""
        n, order = self.num_inference_steps, self._config["solver_order"]
        if isinstance(key, tuple):
            begin = key[1]
            return np.stack([self._tables.host(min(max(i - begin, 0), order))[i] for i in range(n)])
        sig = self.sigmas.numpy().astype(np.float64)
        alpha = 1.0 / np.sqrt(sig**2 + 1.0)
        s = sig * alpha
        with np.errstate(divide="ignore"):
            lam = np.log(alpha) - np.log(s)  # +inf at a zero final sigma
        return np.stack([self._row(i, self._order(i, key), alpha, s, lam) for i in range(n)])

    def _row(self, i: int, order: int, alpha: np.ndarray, s: np.ndarray, lam: np.ndarray) -> np.ndarray:
        """The NUM_COEFS coefficients of step i at `order` (the formulas in the module doc)."""
        cfg, col = self._config, COLUMN
        a_s, s_s, a_t, s_t = alpha[i], s[i], alpha[i + 1], s[i + 1]
        pred = cfg["prediction_type"]
        h = lam[i + 1] - lam[i]
        with np.errstate(over="ignore", invalid="ignore"):
            weights, x_coef, noise_std = self._update_weights(order, h, a_t, s_t, a_s, s_s)
        # D = (D0, D1, D2) as combinations of the current prediction and the two before it (P0, P1, P2).
        D = np.zeros((3, 3))
        D[0, 0] = 1.0
        if order >= 2:
            r0 = (lam[i] - lam[i - 1]) / h
            d1_0 = np.array([1.0, -1.0, 0.0]) / r0
            if order == 2:
                D[1] = d1_0
            else:
                r1 = (lam[i - 1] - lam[i - 2]) / h
                d1_1 = np.array([0.0, 1.0, -1.0]) / r1
                D[1] = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
                D[2] = (d1_0 - d1_1) / (r0 + r1)
        on = weights @ D  # the weights of P0, P1, P2
        row = np.zeros(NUM_COEFS)
        row[col["x0_from_sample"]], row[col["x0_from_model"]] = {
            "epsilon": (1.0 / a_s, -s_s / a_s), "sample": (0.0, 1.0), "v_prediction": (a_s, -s_s)}[pred]
        row[col["prev_from_sample"]] = x_coef
        row[col["noise_std"]] = noise_std
        row[col["prev_from_history1"]], row[col["prev_from_history2"]] = on[1], on[2]
        if not self._noise_form:
            row[col["prev_from_x0"]] = on[0]
            return row
        if cfg["thresholding"]:  # eps from the thresholded x0, as diffusers
            eps = (1.0 / s_s, 0.0, -a_s / s_s)
        else:
            eps = {"epsilon": (0.0, 1.0, 0.0), "sample": (1.0 / s_s, -a_s / s_s, 0.0),
                   "v_prediction": (s_s, a_s, 0.0)}[pred]
        row[col["eps_from_sample"]], row[col["eps_from_model"]], row[col["eps_from_x0"]] = eps
        row[col["prev_from_eps"]] = on[0]
        return row

    def _update_weights(self, order, h, a_t, s_t, a_s, s_s):
        """(weights of D0, D1, D2; coefficient of x; noise std) of one step (the formulas in the module doc)."""
        algorithm = self._config["algorithm_type"]
        heun = self._config["solver_type"] == "heun" or order == 3
        finite = np.isfinite(h)
        if algorithm == "dpmsolver++":
            phi = math.expm1(-h) if finite else -1.0
            w0 = -a_t * phi
            w1 = a_t * (phi / h + 1.0) if heun else -0.5 * a_t * phi
            w2 = -a_t * ((phi + h) / h**2 - 0.5)
            x_coef, noise_std = s_t / s_s, 0.0
        elif algorithm == "sde-dpmsolver++":
            one_minus = -math.expm1(-2.0 * h) if finite else 1.0  # 1 - e^{-2h}
            w0 = a_t * one_minus
            w1 = a_t * (one_minus / (-2.0 * h) + 1.0) if heun else 0.5 * a_t * one_minus
            w2 = a_t * ((one_minus - 2.0 * h) / (2.0 * h) ** 2 - 0.5)
            x_coef, noise_std = s_t / s_s * (math.exp(-h) if finite else 0.0), s_t * math.sqrt(one_minus)
        elif algorithm == "dpmsolver":  # h is finite: the final sigma is sigma_min
            psi = math.expm1(h)
            w0 = -s_t * psi
            w1 = -s_t * (psi / h - 1.0) if heun else -0.5 * s_t * psi
            w2 = -s_t * ((psi - h) / h**2 - 0.5)
            x_coef, noise_std = a_t / a_s, 0.0
        else:  # sde-dpmsolver, orders 1 and 2
            psi = math.expm1(h)
            w0 = -2.0 * s_t * psi
            w1 = -2.0 * s_t * (psi / h - 1.0) if heun else -s_t * psi
            w2 = 0.0
            x_coef, noise_std = a_t / a_s, s_t * math.sqrt(math.expm1(2.0 * h))
        return (np.array([w0, w1 if order >= 2 else 0.0, w2 if order == 3 else 0.0]), x_coef, noise_std)

    def coefficient_table(self, device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The (num_inference_steps, 11) rows gencore.ops.sampler_step reads along a loop that starts at the first
        step (or set_begin_index's) and runs to the end, one row per step (see the module doc)."""
        if self.num_inference_steps is None:
            raise RuntimeError("call set_timesteps first")
        return self._tables.get(("from", self._begin_index or 0), table_device(device), dtype)

    # -- stepping -------------------------------------------------------------------------------------------------

    def index_for_timestep(self, timestep, schedule_timesteps: torch.Tensor | None = None) -> int:
        """The step at `timestep` in the schedule. diffusers' rule, but for the first timestep: a repeated timestep
        means its second step (a loop that starts mid-schedule, image-to-image), one off the schedule the last step.
        The schedule's own first timestep is step 0 even when repeated: diffusers starts such a loop (cosine betas
        with Karras sigmas, 10 steps: 998, 998, ...) at step 1 and runs off the end of its sigmas."""
        schedule = self.timesteps if schedule_timesteps is None else schedule_timesteps
        t = int(timestep.item()) if isinstance(timestep, torch.Tensor) else int(timestep)
        hits = (schedule.cpu() == t).nonzero().flatten().tolist()
        if not hits:
            return len(schedule) - 1
        if hits[0] == 0:
            return 0
        return hits[1] if len(hits) > 1 else hits[0]

    def _rows(self, timestep, sample: torch.Tensor) -> tuple[torch.Tensor, int, bool]:
        """Each sample's row of the tables (an (N,) int64 tensor on sample's device), the step index, and whether
        the timesteps were per sample."""
        n = sample.shape[0]
        if isinstance(timestep, torch.Tensor) and timestep.dim() == 1 and timestep.numel() == n and n > 1:
            if self._repeats:
                raise ValueError("per-sample timesteps need a schedule that visits each timestep once (this one "
                                 "repeats some: use one timestep for the batch)")
            hit = timestep.to(sample.device).reshape(-1, 1) == self.timesteps.to(sample.device).reshape(1, -1)
            on_schedule = hit.any(dim=1).all()
            if timestep.device.type == "cpu" and not torch.compiler.is_compiling():
                if not bool(on_schedule):
                    raise ValueError(f"timestep {timestep.tolist()} is not on the schedule in use "
                                     f"{self.timesteps.tolist()}")
            else:  # checked on the device, without a host read (argmax below would give row 0)
                torch._assert_async(on_schedule, "a timestep is not on the schedule in use")
            rows = hit.to(torch.int64).argmax(dim=1)
            if self._step_index is None:
                self._step_index = self._begin_index or 0
            return rows, self._step_index, True
        if isinstance(timestep, torch.Tensor) and timestep.numel() != 1:
            raise ValueError(f"timestep must be an int, a 0-d tensor or a tensor of shape ({n},); got shape "
                             f"{tuple(timestep.shape)}")
        if self._step_index is None:
            if self._begin_index is not None:
                self._step_index = self._begin_index
            else:  # the first step of a loop: one host read, as in diffusers
                self._step_index = self.index_for_timestep(timestep.reshape(()) if isinstance(
                    timestep, torch.Tensor) else timestep)
        return torch.full((n,), self._step_index, dtype=torch.int64, device=sample.device), self._step_index, False

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor,
             generator: torch.Generator | None = None, variance_noise: torch.Tensor | None = None,
             return_dict: bool = True, *, model_output_uncond: torch.Tensor | None = None,
             guidance_scale: float = 1.0, philox_seed: int | None = None, philox_offset: int | None = None):
        """One multistep DPM-Solver(++) step (fused: gencore.ops.sampler_step with the history of predictions).

        Args (diffusers'): model_output, timestep (an int or 0-d tensor on the schedule; or one per sample, an (N,)
        tensor), sample, generator / variance_noise (the SDE variants' noise), return_dict. gencore's:
        model_output_uncond and guidance_scale (classifier-free guidance in the step), philox_seed /
        philox_offset (in-kernel noise for the SDE variants; philox_offset defaults to the step index).

        The step's order follows lower_order_nums, the steps this loop has taken since set_timesteps (or restart):
        the first step is first order wherever the loop starts.

        Returns: SchedulerOutput(prev_sample, pred_original_sample = this step's data prediction x0), or the tuple.
        """
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps(num_inference_steps) before step()")
        cfg = self._config
        guidance_scale = check_guidance_scale(guidance_scale)
        if not isinstance(sample, torch.Tensor) or not sample.dtype.is_floating_point:
            raise TypeError("sample must be a floating-point tensor")
        if not isinstance(model_output, torch.Tensor) or model_output.device != sample.device:
            raise ValueError("model_output must be a tensor on sample's device")
        learned = cfg["variance_type"] in LEARNED_VARIANCE_TYPES
        if learned and model_output.dim() >= 2 and model_output.shape[1] == 2 * sample.shape[1]:
            model_output = model_output[:, :sample.shape[1]]  # the prediction; the variance half is unused
            if model_output_uncond is not None:
                model_output_uncond = model_output_uncond[:, :sample.shape[1]]
        if model_output.shape != sample.shape:
            raise ValueError(f"model_output has shape {tuple(model_output.shape)} but sample has shape "
                             f"{tuple(sample.shape)}")
        rows, index, per_sample = self._rows(timestep, sample)
        if index >= self.num_inference_steps:
            raise ValueError(f"the schedule's {self.num_inference_steps} steps are done; call set_timesteps again")
        taken = min(self.lower_order_nums, cfg["solver_order"])
        coefs = self._tables.get(taken, sample.device, accumulation_dtype(sample.dtype))
        model_output = model_output.to(sample.dtype)
        if model_output_uncond is not None:
            model_output_uncond = model_output_uncond.to(sample.dtype)
        noise, offset = None, 0
        if cfg["algorithm_type"] in SDE_ALGORITHM_TYPES:
            noise = step_noise(sample, generator=generator, variance_noise=variance_noise, philox_seed=philox_seed)
            if philox_seed is not None:
                offset = index if philox_offset is None else check_int("philox_offset", philox_offset, 0)
        else:
            philox_seed = None
        threshold = None
        if cfg["thresholding"]:
            threshold = threshold_levels(model_output, sample, rows, coefs, model_output_uncond, guidance_scale, cfg)
        # The history the rows weigh: per-sample rows may mix orders (a zero weight where one is lower), one
        # timestep for the batch reads exactly its row's order.
        order = min(taken + 1, cfg["solver_order"]) if per_sample else self._order(index, taken)
        history = self.model_outputs[::-1][:order - 1]  # the previous prediction, then the one before it
        if len(history) < order - 1 or any(not isinstance(h, torch.Tensor) or h.shape != sample.shape
                                           for h in history):
            raise ValueError("the solver's history does not match this step (lower_order_nums says "
                             f"{self.lower_order_nums} steps were taken): call set_timesteps before a new loop")
        history1, history2 = (history + [None, None])[:2]
        prev, x0 = sampler_step(model_output, sample, rows, coefs, model_output_uncond=model_output_uncond,
                                guidance_scale=guidance_scale, threshold=threshold, noise=noise,
                                philox_seed=philox_seed, philox_offset=offset, history1=history1,
                                history2=history2)
        if cfg["solver_order"] > 1:
            prediction = self._noise_prediction(model_output, model_output_uncond, guidance_scale, sample, x0, rows,
                                                coefs) if self._noise_form else x0
            self.model_outputs = self.model_outputs[1:] + [prediction]
        self.lower_order_nums = min(self.lower_order_nums + 1, cfg["solver_order"])
        self._step_index = index + 1
        out = SchedulerOutput(prev_sample=prev, pred_original_sample=x0)
        return out if return_dict else out.to_tuple()

    def _noise_prediction(self, model_output, uncond, guidance_scale, sample, x0, rows, coefs) -> torch.Tensor:
        """DPM-Solver's history entry: the step's eps = c2 x + c3 m + c4 x0 of its own row (the fused step forms it
        but returns x0 only), in the sample's dtype as diffusers keeps it."""
        compute = coefs.dtype
        view = (-1,) + (1,) * (sample.dim() - 1)
        c = coefs[rows]
        m = model_output.to(compute)
        if uncond is not None:
            u = uncond.to(compute)
            m = u + guidance_scale * (m - u)
        eps = (c[:, EPS_FROM_SAMPLE].reshape(view) * sample.to(compute) + c[:, EPS_FROM_MODEL].reshape(view) * m
               + c[:, EPS_FROM_X0].reshape(view) * x0.to(compute))
        return eps.to(sample.dtype)

    # -- the forward process --------------------------------------------------------------------------------------

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        """x_t = alpha x0 + s noise at the sigma of each timestep's step, with diffusers' choice of the step: each
        timestep's own (index_for_timestep) unless set_begin_index was called; then the step the loop is at (after
        its first step: inpainting), else the begin index (before it: image-to-image)."""
        if not isinstance(timesteps, torch.Tensor):
            timesteps = torch.tensor([int(timesteps)] * original_samples.shape[0])
        timesteps = timesteps.reshape(-1)
        if self._begin_index is None:
            index = [self.index_for_timestep(t) for t in timesteps.cpu()]
        elif self._step_index is not None:
            index = [self._step_index] * timesteps.numel()
        else:
            index = [self._begin_index] * timesteps.numel()
        sig = self.sigmas.to(torch.float64)[index]
        alpha = 1.0 / torch.sqrt(sig**2 + 1)
        view = (-1,) + (1,) * (original_samples.dim() - 1)
        a = alpha.reshape(view).to(original_samples.device, original_samples.dtype)
        s = (sig * alpha).reshape(view).to(original_samples.device, original_samples.dtype)
        return a * original_samples + s * noise


def _beta_ppf():
    """scipy.stats.beta.ppf, which the beta sigma schedule needs (scipy is optional, as in diffusers)."""
    try:
        from scipy.stats import beta
    except ImportError as exc:
        raise ImportError(f"use_beta_sigmas=True needs scipy (pip install scipy): {exc}") from None
    return beta.ppf


def _ramp(low: float, high: float, n: int, rho: float) -> np.ndarray:
    """n values from high to low, uniform in value^(1/rho) (rho = 7: Karras et al.'s sigmas; rho = 1: uniform)."""
    lo, hi = low ** (1 / rho), high ** (1 / rho)
    return (hi + np.linspace(0, 1, n) * (lo - hi)) ** rho


def _sigma_to_t(sigmas: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """The fractional timestep of each sigma: linear interpolation of log sigma in the training schedule."""
    log_sigma = np.log(np.maximum(sigmas, 1e-10))
    above = (log_sigma[None, :] - log_sigmas[:, None]) >= 0
    low = np.cumsum(above, axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    high = low + 1
    w = np.clip((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[high]), 0, 1)
    return ((1 - w) * low + w * high).reshape(sigmas.shape)
