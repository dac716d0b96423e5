"""DDPM/DDIM schedulers: closed forms, parity with diffusers, per-sample timesteps, config round-trip, bad input.

Parity tolerance: gencore computes the coefficients in float64, rounds them once to float32 and runs the step in
float32; diffusers computes coefficients and step in float32, which near t = T with the cosine schedule loses digits
to cancellation (1 - abar_prev - sigma^2 at eta = 1). So the truth for DDIM is diffusers run in float64 (its
alphas_cumprod upcast, float64 inputs made from the same float32 values), compared at the float32 row of
gencore.testing's table. DDPM draws its noise from the generator in the sample's dtype, so for the same numbers both
run in float32: a few float32 roundings apart, within the same 5e-5 budget. Closed-form checks run in float64.
"""
from __future__ import annotations

import copy
import importlib
import itertools
import json
import math
import pickle

import pytest
import torch

import gencore
import gencore.diffusion.thresholding as thresholding
from gencore.diffusion import (BETA_SCHEDULES, DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, make_betas,
                               rescale_zero_terminal_snr)
from gencore.reference.philox import philox_normal
from gencore.testing import assert_close, assert_equal, backend_params, device_for

SHAPE = (3, 2, 4, 4)


def rand(*shape, seed, scale=1.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def diffusers():
    return pytest.importorskip("diffusers")


def upcast(scheduler):
    """A diffusers scheduler computing in float64 (for float64 inputs): the truth for the float32 results."""
    scheduler.alphas_cumprod = scheduler.alphas_cumprod.double()
    if hasattr(scheduler, "final_alpha_cumprod"):
        scheduler.final_alpha_cumprod = scheduler.final_alpha_cumprod.double()
    scheduler.one = torch.tensor(1.0, dtype=torch.float64)
    return scheduler


def d64(*tensors):
    return [t.double() for t in tensors]


# ---------------------------------------------------------------------------------------------------------------------
# Schedules


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"])
@pytest.mark.parametrize("rescale", [False, True])
def test_betas_match_diffusers_bit_for_bit(schedule, rescale):
    d = diffusers()
    kw = dict(beta_schedule=schedule, rescale_betas_zero_snr=rescale, beta_start=0.00085, beta_end=0.012)
    ours, theirs = DDPMScheduler(**kw), d.DDPMScheduler(**kw)
    assert ours.betas.dtype == torch.float32
    assert torch.equal(ours.betas, theirs.betas)
    assert torch.equal(ours.alphas_cumprod, theirs.alphas_cumprod)
    if schedule != "sigmoid":  # diffusers' DDIM has no sigmoid schedule; gencore's has
        assert torch.equal(DDIMScheduler(**kw).alphas_cumprod, d.DDIMScheduler(**kw).alphas_cumprod)


def test_zero_terminal_snr_closed_form():
    betas = make_betas(1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    abar = torch.cumprod(1 - rescale_zero_terminal_snr(betas), 0)
    assert abar[-1] == 0  # SNR exactly zero at the last timestep
    assert_equal(abar[0], torch.cumprod(1 - betas, 0)[0])  # the first keeps its value (correctly rounded ops)
    assert bool((abar[1:] <= abar[:-1]).all())


def test_cosine_schedule_closed_form():
    T = 50
    betas = make_betas(T, beta_schedule="squaredcos_cap_v2").double()

    def f(s):
        return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

    abar = torch.cumprod(1 - betas, 0)
    expected = torch.tensor([f((t + 1) / T) / f(0) for t in range(T)], dtype=torch.float64)
    uncapped = betas < 0.999
    assert_close(abar[uncapped], expected[uncapped], "float32_coefficients")  # float32 betas, as diffusers' are


def test_trained_betas():
    betas = torch.linspace(1e-3, 0.05, 20)
    s = DDIMScheduler(num_train_timesteps=20, trained_betas=betas.tolist())
    assert torch.equal(s.betas, betas)
    with pytest.raises(ValueError, match="trained_betas"):
        DDIMScheduler(num_train_timesteps=21, trained_betas=betas.tolist())
    with pytest.raises(ValueError, match="trained_betas"):
        DDIMScheduler(num_train_timesteps=2, trained_betas=[0.1, 1.5])


# ---------------------------------------------------------------------------------------------------------------------
# Timestep schedules


@pytest.mark.parametrize("cls_name", ["DDPMScheduler", "DDIMScheduler"])
@pytest.mark.parametrize("spacing", ["leading", "linspace", "trailing"])
@pytest.mark.parametrize("n", [1, 7, 10, 13, 50, 999])
@pytest.mark.parametrize("offset", [0, 1])
def test_timesteps_match_diffusers(cls_name, spacing, n, offset):
    d = diffusers()
    kw = dict(timestep_spacing=spacing, steps_offset=offset)
    ours, theirs = getattr(__import__("gencore.diffusion", fromlist=[cls_name]), cls_name)(**kw), \
        getattr(d, cls_name)(**kw)
    ours.set_timesteps(n)
    theirs.set_timesteps(n)
    assert ours.timesteps.dtype == torch.int64
    assert torch.equal(ours.timesteps, theirs.timesteps)
    assert ours.num_inference_steps == n


def test_previous_timestep_is_the_schedules():
    """The DDIM fix: 13 trailing steps go 999 -> 922 (the schedule's next), where diffusers takes 999 - 1000 // 13."""
    s = DDIMScheduler(timestep_spacing="trailing")
    s.set_timesteps(13)
    ts = s.timesteps.tolist()
    assert ts[:2] == [999, 922]
    assert 999 - 1000 // 13 == 923  # what diffusers' DDIM steps to
    assert s.previous_timestep(999) == 922
    assert [s.previous_timestep(t) for t in ts] == ts[1:] + [-1]


# ---------------------------------------------------------------------------------------------------------------------
# Closed forms


@pytest.mark.parametrize("spacing,n", [("leading", 10), ("linspace", 10), ("trailing", 13), ("trailing", 7)])
@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_ddim_eta0_inverts_add_noise(spacing, n, prediction_type):
    """With the true prediction, one DDIM eta=0 step from add_noise(x0, eps, t) lands on add_noise(x0, eps, t_prev)."""
    s = DDIMScheduler(timestep_spacing=spacing, prediction_type=prediction_type, clip_sample=False)
    s.set_timesteps(n)
    x0, eps = rand(*SHAPE, seed=1, dtype=torch.float64), rand(*SHAPE, seed=2, dtype=torch.float64)
    for t in s.timesteps.tolist():
        x_t = s.add_noise(x0, eps, t)
        truth = {"epsilon": eps, "sample": x0, "v_prediction": s.get_velocity(x0, eps, t)}[prediction_type]
        out = s.step(truth, t, x_t)
        prev = s.previous_timestep(t)
        expected = s.add_noise(x0, eps, prev) if prev >= 0 else x0  # set_alpha_to_one: the last step gives x0
        assert_close(out.prev_sample, expected, msg=f"t={t} -> {prev}")
        assert_close(out.pred_original_sample, x0)


def test_ddpm_posterior_mean_closed_form():
    """DDPM's prev_sample without noise is the posterior mean of q(x_{t-1} | x_t, x_0) (Ho et al. eq. 7)."""
    s = DDPMScheduler(clip_sample=False, prediction_type="sample")
    x0, x_t = rand(*SHAPE, seed=3, dtype=torch.float64), rand(*SHAPE, seed=4, dtype=torch.float64)
    t = 500
    abar = s.alphas_cumprod.double()
    beta = 1 - abar[t] / abar[t - 1]
    mean = (abar[t - 1].sqrt() * beta / (1 - abar[t]) * x0
            + (1 - beta).sqrt() * (1 - abar[t - 1]) / (1 - abar[t]) * x_t)
    out = s.step(x0, t, x_t, variance_noise=torch.zeros_like(x_t))
    assert_close(out.prev_sample, mean)


# ---------------------------------------------------------------------------------------------------------------------
# Parity with diffusers


def _ddim_reference_step(abar, t, prev, x, m, eta, z, pred, clip, use_clipped, final=1.0):
    """DDIM (Song et al. eq. 12) in float64 following diffusers' formulas, for a given previous timestep."""
    a_t = abar[t]
    a_p = abar[prev] if prev >= 0 else torch.tensor(final, dtype=torch.float64)
    b_t = 1 - a_t
    if pred == "epsilon":
        x0, e = (x - b_t.sqrt() * m) / a_t.sqrt(), m
    elif pred == "sample":
        x0, e = m, (x - a_t.sqrt() * m) / b_t.sqrt()
    else:
        x0, e = a_t.sqrt() * x - b_t.sqrt() * m, a_t.sqrt() * m + b_t.sqrt() * x
    if clip:
        x0 = x0.clamp(-1, 1)
    std = eta * ((1 - a_p) / b_t * (1 - a_t / a_p)).sqrt()
    if use_clipped:
        e = (x - a_t.sqrt() * x0) / b_t.sqrt()
    prev_sample = a_p.sqrt() * x0 + (1 - a_p - std**2).clamp(min=0).sqrt() * e
    if eta > 0:
        prev_sample = prev_sample + std * z
    return prev_sample, x0


DDIM_CASES = list(itertools.product(["linear", "scaled_linear", "squaredcos_cap_v2"],
                                    ["epsilon", "sample", "v_prediction"], [0.0, 0.5, 1.0]))


@pytest.mark.parametrize("schedule,prediction_type,eta", DDIM_CASES)
@pytest.mark.parametrize("spacing,n,offset", [("leading", 10, 0), ("leading", 7, 1), ("linspace", 10, 0),
                                              ("trailing", 13, 0), ("trailing", 10, 0)])
def test_ddim_step_matches_diffusers(schedule, prediction_type, eta, spacing, n, offset):
    """Equal to diffusers wherever its previous timestep is the schedule's; the correct DDIM step elsewhere."""
    d = diffusers()
    kw = dict(beta_schedule=schedule, prediction_type=prediction_type, timestep_spacing=spacing, steps_offset=offset,
              clip_sample=prediction_type != "epsilon")
    ours, theirs = DDIMScheduler(**kw), upcast(d.DDIMScheduler(**kw))
    ours.set_timesteps(n)
    theirs.set_timesteps(n)
    abar = theirs.alphas_cumprod
    agreed = differed = 0
    for i, t in enumerate(theirs.timesteps):
        x, m, z = rand(*SHAPE, seed=10 + i), rand(*SHAPE, seed=100 + i), rand(*SHAPE, seed=1000 + i)
        out = ours.step(m, t, x, eta=eta, variance_noise=z)
        diffusers_prev = int(t) - 1000 // n
        prev = ours.previous_timestep(t)
        if diffusers_prev == prev or (diffusers_prev < 0 and prev < 0):
            ref = theirs.step(*d64(m), t, *d64(x), eta=eta, variance_noise=z.double())
            assert_close(out.prev_sample, ref.prev_sample, msg=f"t={int(t)}")
            assert_close(out.pred_original_sample, ref.pred_original_sample, msg=f"t={int(t)}")
            agreed += 1
        else:  # diffusers' defect: check the correct step in float64 instead
            exp_prev, exp_x0 = _ddim_reference_step(abar, int(t), prev, x.double(), m.double(), eta, z.double(),
                                                    prediction_type, kw["clip_sample"], False)
            assert_close(out.prev_sample, exp_prev, msg=f"t={int(t)} -> {prev}")
            assert_close(out.pred_original_sample, exp_x0)
            differed += 1
    assert agreed >= 1
    assert differed == 0 if spacing == "leading" or (spacing == "trailing" and 1000 % n == 0) else differed >= 1


def test_ddim_reference_step_reproduces_diffusers():
    """The float64 formula used above, given diffusers' (wrong) previous timestep, gives diffusers' numbers: so where
    they differ, only the previous timestep differs."""
    d = diffusers()
    theirs = upcast(d.DDIMScheduler(timestep_spacing="trailing", prediction_type="v_prediction", clip_sample=True))
    theirs.set_timesteps(13)
    x, m, z = rand(*SHAPE, seed=1), rand(*SHAPE, seed=2), rand(*SHAPE, seed=3)
    ref = theirs.step(m.double(), 999, x.double(), eta=0.5, variance_noise=z.double())
    mine, _ = _ddim_reference_step(theirs.alphas_cumprod, 999, 923, x.double(), m.double(), 0.5, z.double(),
                                   "v_prediction", True, False)
    assert_close(ref.prev_sample, mine)
    ours = DDIMScheduler(timestep_spacing="trailing", prediction_type="v_prediction", clip_sample=True)
    ours.set_timesteps(13)
    assert not torch.allclose(ours.step(m, 999, x, eta=0.5, variance_noise=z).prev_sample.double(), ref.prev_sample)


@pytest.mark.parametrize("use_clipped", [False, True])
@pytest.mark.parametrize("set_alpha_to_one", [False, True])
@pytest.mark.parametrize("thresholding", [False, True])
def test_ddim_options_match_diffusers(use_clipped, set_alpha_to_one, thresholding):
    d = diffusers()
    kw = dict(clip_sample=True, set_alpha_to_one=set_alpha_to_one, thresholding=thresholding,
              dynamic_thresholding_ratio=0.9, sample_max_value=1.5, clip_sample_range=0.8)
    ours, theirs = DDIMScheduler(**kw), upcast(d.DDIMScheduler(**kw))
    ours.set_timesteps(8)
    theirs.set_timesteps(8)
    for i, t in enumerate(theirs.timesteps):
        x, m, z = rand(*SHAPE, seed=i, scale=2.0), rand(*SHAPE, seed=50 + i), rand(*SHAPE, seed=90 + i)
        a = ours.step(m, t, x, eta=0.7, use_clipped_model_output=use_clipped, variance_noise=z)
        b = theirs.step(*d64(m), t, *d64(x), eta=0.7, use_clipped_model_output=use_clipped, variance_noise=z.double())
        assert_close(a.prev_sample, b.prev_sample, msg=f"t={int(t)}")
        assert_close(a.pred_original_sample, b.pred_original_sample, msg=f"t={int(t)}")


@pytest.mark.parametrize("spacing,n", [("leading", 50), ("trailing", 50), ("linspace", 13), ("trailing", 13)])
@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("set_alpha_to_one", [True, False])
def test_ddim_off_schedule_timesteps_match_diffusers(spacing, n, eta, set_alpha_to_one):
    """diffusers' DDIM steps from any timestep t to t - T // num_inference_steps, and code written for it does
    (diffusers' own tests step from timesteps 0, 1, 10, 49 whatever the schedule): gencore takes the same step from
    a timestep off the schedule, alone or beside on-schedule timesteps in a per-sample batch."""
    d = diffusers()
    kw = dict(timestep_spacing=spacing, set_alpha_to_one=set_alpha_to_one, clip_sample=False)
    ours, theirs = DDIMScheduler(**kw), upcast(d.DDIMScheduler(**kw))
    ours.set_timesteps(n)
    theirs.set_timesteps(n)
    on = set(ours.timesteps.tolist())
    off = [t for t in (0, 1, 10, 49, 500, 923, 998) if t not in on]
    assert off
    x, m, z = rand(*SHAPE, seed=1), rand(*SHAPE, seed=2), rand(*SHAPE, seed=3)
    for t in off:
        a = ours.step(m, t, x, eta=eta, variance_noise=z)
        b = theirs.step(*d64(m), t, *d64(x), eta=eta, variance_noise=z.double())
        assert_close(a.prev_sample, b.prev_sample, msg=f"t={t}")
        assert ours.previous_timestep(t) == max(t - 1000 // n, -1)
    mixed = torch.tensor([off[0], int(ours.timesteps[1]), off[-1]])
    per_sample = ours.step(m, mixed, x, eta=eta, variance_noise=z).prev_sample
    for k, t in enumerate(mixed.tolist()):
        alone = ours.step(m[k:k + 1], t, x[k:k + 1], eta=eta, variance_noise=z[k:k + 1]).prev_sample
        assert_equal(per_sample[k:k + 1], alone)


DDPM_VARIANCES = ["fixed_small", "fixed_small_log", "fixed_large", "learned", "learned_range"]


@pytest.mark.parametrize("variance_type", DDPM_VARIANCES)
@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("spacing,n,offset", [("leading", 10, 1), ("linspace", 10, 0), ("trailing", 13, 0)])
def test_ddpm_step_matches_diffusers(variance_type, prediction_type, spacing, n, offset):
    d = diffusers()
    kw = dict(variance_type=variance_type, prediction_type=prediction_type, timestep_spacing=spacing,
              steps_offset=offset, beta_schedule="squaredcos_cap_v2" if spacing == "linspace" else "linear",
              clip_sample=prediction_type == "sample")
    ours, theirs = DDPMScheduler(**kw), d.DDPMScheduler(**kw)
    ours.set_timesteps(n)
    theirs.set_timesteps(n)
    for i, t in enumerate(theirs.timesteps):
        x, m = rand(*SHAPE, seed=i), rand(*SHAPE, seed=40 + i)
        if variance_type == "learned":  # the model outputs the variance itself
            m = torch.cat([m, torch.rand(SHAPE, generator=torch.Generator().manual_seed(i)) * 0.02], 1)
        elif variance_type == "learned_range":  # v in [-1, 1] interpolates the log-variance
            m = torch.cat([m, torch.rand(SHAPE, generator=torch.Generator().manual_seed(i)) * 2 - 1], 1)
        a = ours.step(m, t, x, generator=torch.Generator().manual_seed(7))
        b = theirs.step(m, t, x, generator=torch.Generator().manual_seed(7))
        assert_close(a.prev_sample, b.prev_sample, torch.float32, msg=f"t={int(t)}")
        assert_close(a.pred_original_sample, b.pred_original_sample, torch.float32, msg=f"t={int(t)}")


@pytest.mark.parametrize("schedule", BETA_SCHEDULES)
def test_ddpm_full_schedule_and_thresholding_match_diffusers(schedule):
    """Without set_timesteps DDPM steps through every training timestep (as diffusers); thresholding on."""
    d = diffusers()
    kw = dict(beta_schedule=schedule, thresholding=True, sample_max_value=2.0, dynamic_thresholding_ratio=0.8,
              num_train_timesteps=40)
    ours, theirs = DDPMScheduler(**kw), d.DDPMScheduler(**kw)
    assert torch.equal(ours.timesteps, theirs.timesteps)
    for t in [39, 20, 1, 0]:
        x, m = rand(*SHAPE, seed=t, scale=3.0), rand(*SHAPE, seed=t + 1)
        a = ours.step(m, t, x, generator=torch.Generator().manual_seed(t))
        b = theirs.step(m, t, x, generator=torch.Generator().manual_seed(t))
        assert_close(a.prev_sample, b.prev_sample, torch.float32, msg=f"t={t}")
        assert_close(a.pred_original_sample, b.pred_original_sample, torch.float32, msg=f"t={t}")


def test_ddpm_custom_timesteps_match_diffusers():
    d = diffusers()
    ours, theirs = DDPMScheduler(), d.DDPMScheduler()
    ours.set_timesteps(timesteps=[900, 500, 321, 20, 0])
    theirs.set_timesteps(timesteps=[900, 500, 321, 20, 0])
    for t in theirs.timesteps:
        x, m = rand(*SHAPE, seed=int(t)), rand(*SHAPE, seed=int(t) + 1)
        a = ours.step(m, t, x, generator=torch.Generator().manual_seed(1))
        b = theirs.step(m, t, x, generator=torch.Generator().manual_seed(1))
        assert_close(a.prev_sample, b.prev_sample, torch.float32)


def test_ddpm_fixed_large_log_is_fixed_large():
    """diffusers returns NaN for fixed_large_log (sqrt of a log-variance); gencore uses its intended std sqrt(beta)."""
    a, b = DDPMScheduler(variance_type="fixed_large_log"), DDPMScheduler(variance_type="fixed_large")
    a.set_timesteps(10)
    b.set_timesteps(10)
    x, m, z = rand(*SHAPE, seed=1), rand(*SHAPE, seed=2), rand(*SHAPE, seed=3)
    for t in a.timesteps:
        pa = a.step(m, t, x, variance_noise=z).prev_sample
        assert bool(torch.isfinite(pa).all())
        assert torch.equal(pa, b.step(m, t, x, variance_noise=z).prev_sample)


def test_ddpm_variance_type_none_is_fixed_small():
    """A DPM-Solver config carries variance_type=None (diffusers' "not given"); diffusers' DDPM built from it adds
    the posterior variance, as "fixed_small" does."""
    x, m, z = rand(*SHAPE, seed=1), rand(*SHAPE, seed=2), rand(*SHAPE, seed=3)
    a, b = DDPMScheduler(variance_type=None), DDPMScheduler(variance_type="fixed_small")
    for t in (999, 500, 1):
        assert_equal(a.step(m, t, x, variance_noise=z).prev_sample, b.step(m, t, x, variance_noise=z).prev_sample)
    explicit = DPMSolverMultistepScheduler(variance_type=None).config  # passed, so not a default DDPM replaces
    assert DDPMScheduler.from_config(explicit).config.variance_type is None


@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log",
                                           "learned", "learned_range"])
def test_get_variance_matches_diffusers(variance_type):
    """_get_variance is private in diffusers, but code and tests written for diffusers call it (float64 here,
    float32 there: 1e-4 relative apart at t = 1)."""
    d = diffusers()
    ours, theirs = DDPMScheduler(variance_type=variance_type), d.DDPMScheduler(variance_type=variance_type)
    v = torch.rand(3, generator=torch.Generator().manual_seed(0)) * 2 - 1
    for inference_steps in (None, 10):
        if inference_steps:
            ours.set_timesteps(inference_steps)
            theirs.set_timesteps(inference_steps)
        for t in ours.timesteps.tolist()[:3] + ours.timesteps.tolist()[-2:]:
            got, want = ours._get_variance(t, predicted_variance=v), theirs._get_variance(t, predicted_variance=v)
            assert_close(got, want, "float32_cancellation", msg=f"t={t}")
    ddim, theirs = DDIMScheduler(set_alpha_to_one=False), d.DDIMScheduler(set_alpha_to_one=False)
    for t, prev in ((0, 0), (420, 400), (980, 960), (487, 486), (999, 998), (10, -1)):
        assert_close(ddim._get_variance(t, prev), theirs._get_variance(t, prev), "float32_cancellation")


def test_ddpm_loop_differs_from_diffusers_only_by_its_float32_coefficients():
    """diffusers' test_full_loop_with_noise (two DDPM steps, t = 1 and 0, from add_noise) sums to 387.9466 there
    and to 387.9676 here. The cause is diffusers' float32 arithmetic: beta_1 = 1 - abar_1 / abar_0 = 1.1994e-4 loses
    four digits to cancellation and comes out 1.0e-4 relative low, and with it the posterior mean's weight of x0
    (0.5453). diffusers' own step with its coefficients computed in float64 (the same float32 samples, noise and
    generator) gives gencore's sum."""
    d = diffusers()
    n = 4 * 3 * 8 * 8
    x0 = (torch.arange(n).reshape(3, 8, 8, 4) / n).permute(3, 0, 1, 2)  # diffusers' dummy_sample_deter
    noise = (torch.arange(n).flip(-1).reshape(3, 8, 8, 4) / n).permute(3, 0, 1, 2)  # ... and dummy_noise_deter

    def loop(s):
        ts = s.timesteps[998:]
        x = s.add_noise(x0, noise, ts[:1])
        generator = torch.manual_seed(0)
        for t in ts:
            tt = t.reshape(-1, 1, 1, 1).float()
            x = s.step(x * tt / (tt + 1), t, x, generator=generator).prev_sample
        return float(x.double().abs().sum())

    ours, theirs = loop(DDPMScheduler()), loop(d.DDPMScheduler())
    theirs_f64_coefficients = loop(upcast(d.DDPMScheduler()))  # 0-d float64 coefficients keep float32 samples
    assert abs(theirs - 387.9466) < 1e-3 and abs(ours - 387.9676) < 1e-3  # the printed figures, to their last digit
    assert_close(ours, theirs_f64_coefficients, "float32_coefficients")
    abar = d.DDPMScheduler().alphas_cumprod
    beta32, beta64 = 1 - abar[1] / abar[0], 1 - abar[1].double() / abar[0].double()
    assert round(float(beta32.double() / beta64) - 1, 6) == -1.00e-4  # the docstring's 1.0e-4 low, one digit more


def test_config_values_read_as_attributes_with_diffusers_warning():
    """diffusers' ConfigMixin: scheduler.beta_start reads the config with a FutureWarning, register_to_config
    stores any name (only constructor fields rebuild the scheduler), and a missing name is diffusers'
    AttributeError."""
    for cls in (DDPMScheduler, DDIMScheduler, DPMSolverMultistepScheduler):
        s = cls(beta_start=0.0002)
        s.dummy_attribute = 5
        with pytest.warns(FutureWarning, match="config attribute `beta_start`"):
            assert s.beta_start == 0.0002
        s.register_to_config(test_attribute=5)
        assert s.config.test_attribute == 5 and s.config.beta_start == 0.0002
        with pytest.warns(FutureWarning):
            assert getattr(s, "test_attribute") == 5
        assert s.dummy_attribute == 5 and hasattr(s, "save_pretrained")
        with pytest.raises(AttributeError, match=f"^'{cls.__name__}' object has no attribute 'does_not_exist'$"):
            s.does_not_exist
        s.register_to_config(beta_start=0.0003)  # a field: rebuilt from it, the extra name kept
        assert float(s.betas[0]) == pytest.approx(0.0003) and s.config.test_attribute == 5
        assert copy.deepcopy(s).config == s.config and pickle.loads(pickle.dumps(s)).config == s.config


def test_guidance_scale_is_checked_where_it_enters():
    s = DDIMScheduler()
    s.set_timesteps(10)
    x = rand(*SHAPE, seed=0)
    with pytest.raises(TypeError, match="guidance_scale must be a float"):
        s.step(x, 900, x, model_output_uncond=x, guidance_scale="2")
    with pytest.raises(ValueError, match="guidance_scale must be finite"):
        DDPMScheduler().step(x, 900, x, model_output_uncond=x, guidance_scale=math.inf)


@pytest.mark.parametrize("cls_name", ["DDPMScheduler", "DDIMScheduler"])
def test_add_noise_and_velocity_match_diffusers(cls_name):
    d = diffusers()
    ours = getattr(__import__("gencore.diffusion", fromlist=[cls_name]), cls_name)(beta_schedule="scaled_linear")
    theirs = getattr(d, cls_name)(beta_schedule="scaled_linear")
    x0, noise = rand(*SHAPE, seed=1), rand(*SHAPE, seed=2)
    for t in (torch.tensor([0, 500, 999]), torch.tensor(321), torch.tensor([7])):
        assert_close(ours.add_noise(x0, noise, t), theirs.add_noise(x0, noise, t), torch.float32)
        assert_close(ours.get_velocity(x0, noise, t), theirs.get_velocity(x0, noise, t), torch.float32)
    assert ours.scale_model_input(x0, 5) is x0


def test_zero_snr_v_prediction_matches_diffusers():
    d = diffusers()
    kw = dict(rescale_betas_zero_snr=True, prediction_type="v_prediction", timestep_spacing="trailing",
              beta_schedule="scaled_linear", clip_sample=False)
    ours, theirs = DDIMScheduler(**kw), upcast(d.DDIMScheduler(**kw))
    ours.set_timesteps(10)
    theirs.set_timesteps(10)
    for i, t in enumerate(theirs.timesteps):
        x, m = rand(*SHAPE, seed=i), rand(*SHAPE, seed=i + 20)
        assert_close(ours.step(m, t, x).prev_sample, theirs.step(*d64(m), t, *d64(x)).prev_sample, msg=f"t={int(t)}")


# ---------------------------------------------------------------------------------------------------------------------
# Beyond diffusers: per-sample timesteps, guidance, dtypes


@pytest.mark.parametrize("cls,kwargs", [(DDIMScheduler, {"eta": 0.6}), (DDIMScheduler, {"eta": 0.0}),
                                        (DDPMScheduler, {})])
def test_per_sample_timesteps_equal_the_loop(cls, kwargs):
    s = cls(thresholding=True, timestep_spacing="trailing")
    s.set_timesteps(13)
    ts = s.timesteps[torch.tensor([0, 5, 12, 3, 12])]
    x, m, z = rand(5, 2, 3, 3, seed=1, scale=2), rand(5, 2, 3, 3, seed=2), rand(5, 2, 3, 3, seed=3)
    fused = s.step(m, ts, x, variance_noise=z, **kwargs)
    for i in range(5):
        one = s.step(m[i:i + 1], int(ts[i]), x[i:i + 1], variance_noise=z[i:i + 1], **kwargs)
        assert_close(fused.prev_sample[i:i + 1], one.prev_sample, torch.float32, msg=f"sample {i}, t={int(ts[i])}")
        assert_close(fused.pred_original_sample[i:i + 1], one.pred_original_sample, torch.float32)


@pytest.mark.parametrize("cls", [DDIMScheduler, DDPMScheduler])
def test_guidance_combines_inside_the_step(cls):
    s = cls(clip_sample=False)
    s.set_timesteps(10)
    x, c, u, z = (rand(*SHAPE, seed=i) for i in range(4))
    w = 4.5
    a = s.step(c, 900, x, model_output_uncond=u, guidance_scale=w, variance_noise=z)
    b = s.step(u + w * (c - u), 900, x, variance_noise=z)
    assert_close(a.prev_sample, b.prev_sample, torch.float32)
    assert_close(a.pred_original_sample, b.pred_original_sample, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_other_dtypes_follow_float32(dtype):
    s = DDIMScheduler()
    s.set_timesteps(10)
    x, m, z = rand(*SHAPE, seed=1), rand(*SHAPE, seed=2), rand(*SHAPE, seed=3)
    x, m, z = x.to(dtype), m.to(dtype), z.to(dtype)  # the same (rounded) inputs for both
    out = s.step(m, 500, x, eta=0.5, variance_noise=z)
    assert out.prev_sample.dtype == dtype and out.pred_original_sample.dtype == dtype
    ref = s.step(m.double(), 500, x.double(), eta=0.5, variance_noise=z.double())
    assert_close(out.prev_sample, ref.prev_sample)
    assert_close(out.pred_original_sample, ref.pred_original_sample)


def test_generator_noise_matches_diffusers():
    """The same generator seed draws the same noise as diffusers' DDIM (DDPM is covered by its parity test)."""
    d = diffusers()
    ours, theirs = DDIMScheduler(), d.DDIMScheduler()
    ours.set_timesteps(10)
    theirs.set_timesteps(10)
    x, m = rand(*SHAPE, seed=1), rand(*SHAPE, seed=2)
    a = ours.step(m, 900, x, eta=1.0, generator=torch.Generator().manual_seed(5))
    b = theirs.step(m, 900, x, eta=1.0, generator=torch.Generator().manual_seed(5))
    assert_close(a.prev_sample, b.prev_sample, torch.float32)


def test_same_generator_seed_same_noise():
    s = DDIMScheduler()
    s.set_timesteps(10)
    x, m = rand(*SHAPE, seed=1), rand(*SHAPE, seed=2)

    def run(seed):
        return s.step(m, 900, x, eta=1.0, generator=torch.Generator().manual_seed(seed)).prev_sample

    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(3), run(4))


def test_return_tuple():
    s = DDIMScheduler()
    s.set_timesteps(4)
    x, m = rand(*SHAPE, seed=1), rand(*SHAPE, seed=2)
    prev, x0 = s.step(m, 750, x, return_dict=False)
    out = s.step(m, 750, x)
    assert torch.equal(prev, out.prev_sample) and torch.equal(x0, out[1])


def test_coefficient_table_is_built_by_set_timesteps():
    for cls in (DDIMScheduler, DDPMScheduler):
        s = cls()
        s.set_timesteps(5)
        table = s.coefficient_table()
        assert table.shape == (1000, 11) and table.dtype == torch.float32
        assert bool((table[s.timesteps, 9:] == 0).all())  # one-step methods: no history
        on = s.timesteps
        assert bool(torch.isfinite(table[on]).all())
        off = torch.ones(1000, dtype=torch.bool)
        off[on] = False
        if cls is DDIMScheduler:  # diffusers' step from any timestep: every row is a step
            assert bool(torch.isfinite(table[off]).all())
        else:  # DDPM refuses a timestep off its schedule (diffusers too): those rows are unusable on purpose
            assert bool(torch.isnan(table[off]).all())


# ---------------------------------------------------------------------------------------------------------------------
# Config


@pytest.mark.parametrize("cls", [DDIMScheduler, DDPMScheduler])
def test_config_round_trip(cls):
    s = cls(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction", timestep_spacing="trailing",
            steps_offset=1, clip_sample=False)
    cfg = s.config
    assert cfg["_class_name"] == cls.__name__ and cfg.prediction_type == "v_prediction"
    again = cls.from_config(json.loads(json.dumps(cfg)))
    assert again.config == cfg
    assert torch.equal(again.alphas_cumprod, s.alphas_cumprod)
    assert cls.from_config(s).config == cfg  # anything with a .config
    assert cls.from_config(cfg, steps_offset=0).config.steps_offset == 0
    with pytest.raises(TypeError, match="read-only"):
        cfg["steps_offset"] = 3
    assert copy.deepcopy(cfg) == cfg and pickle.loads(pickle.dumps(cfg)) == cfg


def test_trained_betas_round_trip():
    betas = [0.01 * (i + 1) for i in range(10)]
    s = DDPMScheduler(num_train_timesteps=10, trained_betas=betas)
    again = DDPMScheduler.from_config(json.loads(json.dumps(s.config)))
    assert torch.equal(again.betas, s.betas)


@pytest.mark.parametrize("cls_name", ["DDIMScheduler", "DDPMScheduler"])
def test_diffusers_config_loads_both_ways(cls_name):
    d = diffusers()
    ours_cls = getattr(__import__("gencore.diffusion", fromlist=[cls_name]), cls_name)
    theirs = getattr(d, cls_name)(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                  prediction_type="v_prediction", steps_offset=1, clip_sample=False)
    ours = ours_cls.from_config(theirs.config)  # carries _class_name, _diffusers_version, ...
    for k in ours_cls._fields:
        assert ours.config[k] == theirs.config[k], k
    back = getattr(d, cls_name).from_config(ours.config)
    assert torch.equal(back.alphas_cumprod, ours.alphas_cumprod)
    # a config of another scheduler (Stable Diffusion's PNDM) loads too: unknown keys are ignored
    sd = {"_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012,
          "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000,
          "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
          "clip_sample": False}
    s = ours_cls.from_config(sd)
    assert s.config.beta_schedule == "scaled_linear" and s.config.steps_offset == 1


# ---------------------------------------------------------------------------------------------------------------------
# Bad input: clear exceptions naming the thing


@pytest.mark.parametrize("field,value", [("prediction_type", "eps"), ("beta_schedule", "cosine"),
                                         ("timestep_spacing", "uniform"), ("variance_type", "small"),
                                         ("num_train_timesteps", 0), ("clip_sample_range", -1.0),
                                         ("dynamic_thresholding_ratio", 1.5)])
def test_unknown_values_are_rejected(field, value):
    cls = DDPMScheduler if field == "variance_type" else DDIMScheduler
    with pytest.raises(ValueError, match=field):
        cls(**{field: value})
    with pytest.raises(ValueError, match=field):
        cls.from_config({"_class_name": "X", field: value})


def test_wrong_types_are_rejected():
    with pytest.raises(TypeError, match="clip_sample"):
        DDIMScheduler(clip_sample="yes")
    with pytest.raises(TypeError, match="steps_offset"):
        DDIMScheduler(steps_offset=1.5)
    with pytest.raises(TypeError, match="unknown arguments: bogus"):
        DDIMScheduler.from_config({}, bogus=1)


def test_step_before_set_timesteps():
    s = DDIMScheduler()
    x = rand(*SHAPE, seed=0)
    with pytest.raises(RuntimeError, match="set_timesteps"):
        s.step(x, 999, x)


def test_too_many_steps():
    for cls in (DDIMScheduler, DDPMScheduler):
        with pytest.raises(ValueError, match="num_inference_steps.*num_train_timesteps"):
            cls().set_timesteps(1001)
    with pytest.raises(ValueError, match="steps_offset"):  # leading + offset pushes the first step to T
        DDIMScheduler(steps_offset=1).set_timesteps(1000)
    with pytest.raises(ValueError, match="exactly one"):
        DDPMScheduler().set_timesteps()
    with pytest.raises(ValueError, match="decreasing"):
        DDPMScheduler().set_timesteps(timesteps=[5, 10])


@pytest.mark.parametrize("cls", [DDIMScheduler, DDPMScheduler])
def test_timestep_outside_the_schedule(cls):
    s = cls()
    s.set_timesteps(10)
    x = rand(*SHAPE, seed=0)
    for bad in (1000, -1, torch.tensor(1000), torch.tensor([900, -3, 900])):
        with pytest.raises(ValueError, match=r"timestep -?\d+ is outside \[0, num_train_timesteps=1000\)"):
            s.step(x, bad, x)
    off = (923, torch.tensor(923), torch.tensor([900, 923, 900]))
    if cls is DDPMScheduler:  # diffusers' DDPM cannot step from there either
        for bad in off:
            with pytest.raises(ValueError, match="timestep .* not on the schedule"):
                s.step(x, bad, x)
    else:  # diffusers' DDIM steps from any timestep (test_scheduler_ddim_off_schedule_timesteps_match_diffusers)
        for t in off:
            assert torch.isfinite(s.step(x, t, x).prev_sample).all()
    with pytest.raises(TypeError, match="timestep"):
        s.step(x, 900.0, x)
    with pytest.raises(ValueError, match="timestep must be"):
        s.step(x, torch.tensor([900, 900]), x)  # 2 timesteps for 3 samples
    with pytest.raises(ValueError, match="timesteps must lie"):
        s.add_noise(x, x, torch.tensor([0, 1000, 3]))


def test_shape_mismatch():
    s = DDIMScheduler()
    s.set_timesteps(10)
    x = rand(*SHAPE, seed=0)
    with pytest.raises(ValueError, match="model_output has shape"):
        s.step(x[:, :1], 900, x)
    with pytest.raises(ValueError, match="variance_noise"):
        s.step(x, 900, x, eta=1.0, variance_noise=x[:2])
    with pytest.raises(ValueError, match="model_output_uncond"):
        s.step(x, 900, x, model_output_uncond=x[:2], guidance_scale=2.0)
    with pytest.raises(ValueError, match="generator or variance_noise"):
        s.step(x, 900, x, eta=1.0, variance_noise=x, generator=torch.Generator())
    with pytest.raises(ValueError, match="noise has shape"):
        s.add_noise(x, x[:1], 3)
    learned = DDPMScheduler(variance_type="learned_range")
    with pytest.raises(ValueError, match="2\\*C channels"):
        learned.step(x, 999, x)


@pytest.mark.parametrize("cls,kwargs", [(DDIMScheduler, {"eta": 1.0}), (DDPMScheduler, {})])
def test_philox_noise_is_keyed_on_sample_and_step(cls, kwargs):
    """philox_seed draws gencore.reference.philox's noise for (seed, sample, step): the same whatever the batch."""
    s = cls()
    s.set_timesteps(10)
    x, m = rand(*SHAPE, seed=1), rand(*SHAPE, seed=2)
    t = 700  # position 2 of the schedule [900, 800, 700, ...]: the default philox_offset
    fused = s.step(m, t, x, philox_seed=1234, **kwargs).prev_sample
    z = philox_normal(SHAPE, 1234, 2)
    assert_close(fused, s.step(m, t, x, variance_noise=z, **kwargs).prev_sample, torch.float32)
    assert_close(s.step(m[:2], t, x[:2], philox_seed=1234, **kwargs).prev_sample, fused[:2], torch.float32)
    other = s.step(m, t, x, philox_seed=1234, philox_offset=3, **kwargs).prev_sample
    assert not torch.allclose(other, fused)
    with pytest.raises(ValueError, match="philox_offset"):
        s.step(m, s.timesteps[torch.tensor([0, 1, 2])], x, philox_seed=1, **kwargs)
    with pytest.raises(ValueError, match="philox_seed"):
        s.step(m, t, x, philox_seed=1, generator=torch.Generator(), **kwargs)


@pytest.mark.parametrize("cls", [DDIMScheduler, DDPMScheduler])
def test_philox_offset_of_a_device_timestep_is_never_read_back(cls, monkeypatch):
    """A 0-d device timestep without philox_offset used to be read with .item(): a host sync per step, and an error
    inside a CUDA-graph capture. It is refused with a message naming philox_offset, before anything reads it (a
    meta tensor stands in for a CUDA one: reading it back raises, so any read would show)."""
    s = cls()
    s.set_timesteps(10)
    monkeypatch.setattr(torch.Tensor, "item", lambda self: pytest.fail("the timestep was read back to the host"))
    with pytest.raises(ValueError, match="philox_offset .*must be given when timestep is a meta tensor"):
        s._philox_offset(torch.tensor(700, device="meta"), None)
    assert s._philox_offset(torch.tensor(700, device="meta"), 2) == 2


@pytest.mark.parametrize("limit", [40, 10])  # chunks of samples; then samples larger than torch.quantile takes
def test_thresholding_beyond_torch_quantile_limit(monkeypatch, limit):
    s = DDIMScheduler(thresholding=True, sample_max_value=3.0, dynamic_thresholding_ratio=0.9)
    s.set_timesteps(10)
    x, m = rand(*SHAPE, seed=1, scale=3), rand(*SHAPE, seed=2)
    expected = s.step(m, 900, x)
    monkeypatch.setattr(thresholding, "QUANTILE_MAX_NUMEL", limit)
    got = s.step(m, 900, x)
    assert_close(got.prev_sample, expected.prev_sample, torch.float32)
    assert_close(got.pred_original_sample, expected.pred_original_sample, torch.float32)


# ---------------------------------------------------------------------------------------------------------------------
# CUDA: no host synchronisation, so a sampling loop captures in a CUDA graph


@pytest.mark.gpu
@pytest.mark.parametrize("cls,kwargs", [(DDIMScheduler, {"eta": 0.0}), (DDIMScheduler, {"eta": 1.0}),
                                        (DDPMScheduler, {})])
def test_cuda_step_matches_cpu(cls, kwargs):
    s = cls(thresholding=True)
    s.set_timesteps(10, device="cuda")
    x, m, z = rand(*SHAPE, seed=1, scale=2), rand(*SHAPE, seed=2), rand(*SHAPE, seed=3)
    ts = s.timesteps[torch.tensor([0, 4, 9], device="cuda")]
    gpu = s.step(m.cuda(), ts, x.cuda(), variance_noise=z.cuda(), **kwargs)
    cpu = s.step(m, ts.cpu(), x, variance_noise=z, **kwargs)
    assert_close(gpu.prev_sample.cpu(), cpu.prev_sample, torch.float32)
    assert_close(gpu.pred_original_sample.cpu(), cpu.pred_original_sample, torch.float32)


@pytest.mark.gpu
def test_ddim_loop_captures_in_a_cuda_graph():
    s = DDIMScheduler(clip_sample=False, timestep_spacing="trailing")
    s.set_timesteps(10, device="cuda")
    x_T = torch.randn(SHAPE, device="cuda")

    def model(x, t):
        return 0.1 * x + (t.float() / 1000).reshape(-1, 1, 1, 1)

    x_buf, t_buf = x_T.clone(), torch.full((SHAPE[0],), int(s.timesteps[0]), device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture (tables exist already: set_timesteps built them)
        for _ in range(2):
            s.step(model(x_buf, t_buf), t_buf, x_buf)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = s.step(model(x_buf, t_buf), t_buf, x_buf).prev_sample
    x_buf.copy_(x_T)
    for t in s.timesteps.tolist():
        t_buf.fill_(t)
        graph.replay()
        x_buf.copy_(out)
    eager = x_T.clone()
    for t in s.timesteps.tolist():
        eager = s.step(model(eager, torch.full((SHAPE[0],), t, device="cuda")), t, eager).prev_sample
    assert_close(x_buf, eager, torch.float32)


# ---------------------------------------------------------------------------------------------------------------------
# The schedulers on every backend of the fused op (each held to the reference backend)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("cls,options,step_kwargs", [
    (DDIMScheduler, {"thresholding": True}, {"eta": 0.5}),
    (DDIMScheduler, {"prediction_type": "v_prediction"}, {"eta": 0.0, "use_clipped_model_output": True}),
    (DDPMScheduler, {"variance_type": "fixed_large", "prediction_type": "sample"}, {}),
])
def test_step_on_every_backend(backend, dtype, cls, options, step_kwargs):
    op_module = importlib.import_module("gencore.ops.sampler_step")  # (gencore.ops.sampler_step is the function)
    if backend not in op_module.IMPLEMENTED:
        pytest.skip(f"sampler_step has no {backend} implementation in this build")
    device = device_for(backend)
    s = cls(timestep_spacing="trailing", **options)
    s.set_timesteps(13, device=device)
    ts = s.timesteps[torch.tensor([0, 6, 12])]
    x, c, u, z = (rand(3, 2, 5, 3, seed=i, scale=2).to(device=device, dtype=dtype) for i in range(4))
    with gencore.use_backend("reference"):
        ref = s.step(c, ts, x, model_output_uncond=u, guidance_scale=2.5, variance_noise=z, **step_kwargs)
    with gencore.use_backend(backend):
        got = s.step(c, ts, x, model_output_uncond=u, guidance_scale=2.5, variance_noise=z, **step_kwargs)
    assert got.prev_sample.dtype == dtype
    assert_close(got.prev_sample, ref.prev_sample, msg=backend)
    assert_close(got.pred_original_sample, ref.pred_original_sample, msg=backend)


@pytest.mark.parametrize("cls_name", ["DDIMScheduler", "DDPMScheduler"])
def test_zero_terminal_snr_epsilon_step_is_clipped_like_diffusers(cls_name):
    """alphas_cumprod[T-1] = 0 with epsilon prediction: x0 = (x - eps) / 0. diffusers gets +-inf and clips it to the
    range; gencore's table used 1/0 = inf in two coefficients, and inf*x - inf*eps gave an all-NaN step."""
    d = diffusers()
    kw = dict(rescale_betas_zero_snr=True, timestep_spacing="trailing", clip_sample=True)
    cls = {"DDIMScheduler": DDIMScheduler, "DDPMScheduler": DDPMScheduler}[cls_name]
    ours, theirs = cls(**kw), getattr(d, cls_name)(**kw)
    ours.set_timesteps(10)
    theirs.set_timesteps(10)
    assert float(ours.alphas_cumprod[-1]) == 0.0 and int(ours.timesteps[0]) == 999
    x, m = rand(*SHAPE, seed=1), rand(*SHAPE, seed=2)
    noise = rand(*SHAPE, seed=3)
    extra = {"variance_noise": noise} if cls_name == "DDIMScheduler" else {}
    got = ours.step(m, 999, x, **extra) if extra else ours.step(m, 999, x, generator=torch.Generator().manual_seed(4))
    want = theirs.step(m, 999, x, **extra) if extra else theirs.step(m, 999, x,
                                                                     generator=torch.Generator().manual_seed(4))
    assert torch.isfinite(got.prev_sample).all()
    assert torch.equal(got.pred_original_sample, want.pred_original_sample)  # +-1: the sign of x - eps
    assert_close(got.prev_sample, want.prev_sample, torch.float32)
    # Thresholding takes the same limit (diffusers' quantile of inf gives NaN there): x0 = sign(x - eps) * max.
    t = cls(**dict(kw, clip_sample=False, thresholding=True, sample_max_value=2.0))
    t.set_timesteps(10)
    x0 = t.step(m, 999, x, **extra).pred_original_sample if extra else t.step(
        m, 999, x, generator=torch.Generator().manual_seed(4)).pred_original_sample
    assert torch.equal(x0, torch.sign(x - m))
