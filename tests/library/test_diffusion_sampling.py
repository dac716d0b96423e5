"""gencore.diffusion.sample and training_loss: closed forms, determinism, guidance, callbacks, diffusers' loop."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gencore.diffusion import (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, capture_sample,
                               min_snr_weights, sample, training_loss)
from gencore.models import UNet
from gencore.testing import assert_close

SHAPE = (3, 1, 4, 4)


class TinyModel(torch.nn.Module):
    """A deterministic class-conditional denoiser: conv + timestep + label embedding (null class = num_classes)."""

    def __init__(self, channels=1, out_channels=None, num_classes=4):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = torch.nn.Conv2d(channels, out_channels or channels, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g) * 0.2)
            self.conv.bias.zero_()
        self.num_classes = num_classes
        self.label = torch.nn.Embedding(num_classes + 1, out_channels or channels)
        self.calls = []

    def forward(self, x, t, class_labels=None):
        self.calls.append((x.shape[0], None if class_labels is None else class_labels.clone()))
        h = self.conv(x) + (t.float() / 1000).reshape(-1, 1, 1, 1)
        if class_labels is not None:
            h = h + self.label(class_labels)[:, :, None, None]
        return h


class Constant(torch.nn.Module):
    """Predicts a fixed x0 (prediction_type="sample")."""

    def __init__(self, x0):
        super().__init__()
        self.x0 = x0

    def forward(self, x, t):
        return self.x0.expand_as(x)


def test_ddim_eta0_reaches_the_predicted_x0():
    """A model that always predicts x0 ("sample"): DDIM eta=0 ends exactly at x0 (the last step goes to abar = 1)."""
    x0 = torch.rand(SHAPE, dtype=torch.float64) * 2 - 1
    s = DDIMScheduler(prediction_type="sample", clip_sample=False)
    out = sample(Constant(x0), s, torch.randn(SHAPE, dtype=torch.float64), 20, progress=False)
    assert_close(out, x0)


@pytest.mark.parametrize("cls,kwargs", [(DDIMScheduler, {"eta": 1.0}), (DDPMScheduler, {})])
def test_same_seed_same_samples(cls, kwargs):
    model = TinyModel()

    def run(seed):
        return sample(model, cls(), SHAPE, 10, generator=torch.Generator().manual_seed(seed), progress=False,
                      **kwargs)

    a, b, c = run(1), run(1), run(2)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("use_clipped", [False, True], ids=["raw_eps", "clipped_eps"])
@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_loop_matches_diffusers(eta, use_clipped):
    """sample() with DDIM equals the same loop written with diffusers' DDIMScheduler and the same generator, for
    either epsilon (sample()'s default is the clipped one, diffusers' the raw one)."""
    d = pytest.importorskip("diffusers")
    model = TinyModel()
    ours = sample(model, DDIMScheduler(), SHAPE, 10, eta=eta, generator=torch.Generator().manual_seed(3),
                  progress=False, use_clipped_model_output=use_clipped)
    theirs = d.DDIMScheduler()
    theirs.set_timesteps(10)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(SHAPE, generator=g)
    with torch.no_grad():
        for t in theirs.timesteps:
            x = theirs.step(model(x, t.expand(SHAPE[0])), t, x, eta=eta, generator=g,
                            use_clipped_model_output=use_clipped).prev_sample
    # 10 steps of float32 rounding, coefficients rounded from float64 here and computed in float32 there
    assert_close(ours, x, "float32_compounded")


def test_callback_and_intermediates():
    model = TinyModel()
    s = DDIMScheduler()
    seen = []
    noise = torch.randn(SHAPE)
    out, inter = sample(model, s, noise, 10, callback=lambda i, t, o: seen.append((i, t, o.prev_sample.clone())),
                        return_intermediates=3, progress=False)
    assert [i for i, _, _ in seen] == list(range(10))
    assert [t for _, t, _ in seen] == s.timesteps.tolist()
    assert torch.equal(seen[-1][2], out)
    # x_T, then after steps 3, 6, 9 and the last one (10)
    assert len(inter) == 5 and torch.equal(inter[0], noise) and torch.equal(inter[-1], out)
    assert torch.equal(inter[1], seen[2][2]) and torch.equal(inter[3], seen[8][2])
    out_all, every = sample(model, s, noise, 4, return_intermediates=True, progress=False)
    assert len(every) == 5 and torch.equal(out_all, every[-1])


def test_classifier_free_guidance():
    """Guidance calls the model once on 2N inputs (labels, then the null class) and combines in the step."""
    model = TinyModel()
    labels = torch.tensor([0, 3, 1])
    s = DDIMScheduler(clip_sample=False)
    noise = torch.randn(SHAPE)
    out = sample(model, s, noise, 5, class_labels=labels, guidance_scale=3.0, progress=False)
    assert all(n == 6 for n, _ in model.calls)
    assert torch.equal(model.calls[0][1], torch.tensor([0, 3, 1, 4, 4, 4]))
    # the same by hand
    x = noise
    with torch.no_grad():
        for t in s.timesteps.tolist():
            tt = torch.full((3,), t)
            cond, uncond = model(x, tt, labels), model(x, tt, torch.full((3,), 4))
            x = s.step(uncond + 3.0 * (cond - uncond), t, x).prev_sample
    assert_close(out, x, torch.float32)
    # guidance_scale 1 is plain conditional sampling: one call of N
    model.calls.clear()
    sample(model, s, noise, 2, class_labels=labels, progress=False)
    assert [n for n, _ in model.calls] == [3, 3]


def test_guidance_with_learned_variance():
    model = TinyModel(out_channels=2)
    s = DDPMScheduler(variance_type="learned_range")
    out = sample(model, s, SHAPE, 5, class_labels=torch.tensor([0, 1, 2]), guidance_scale=2.0, progress=False,
                 generator=torch.Generator().manual_seed(0))
    assert out.shape == SHAPE and bool(torch.isfinite(out).all())


def test_sampling_bad_input():
    model = TinyModel()
    with pytest.raises(ValueError, match="eta"):
        sample(model, DDPMScheduler(), SHAPE, 5, eta=0.5, progress=False)
    with pytest.raises(ValueError, match="class_labels"):
        sample(model, DDIMScheduler(), SHAPE, 5, guidance_scale=2.0, progress=False)
    with pytest.raises(ValueError, match="class_labels must have shape"):
        sample(model, DDIMScheduler(), SHAPE, 5, class_labels=torch.tensor([1]), progress=False)
    with pytest.raises(ValueError, match="return_intermediates"):
        sample(model, DDIMScheduler(), SHAPE, 5, return_intermediates=0, progress=False)
    with pytest.raises(TypeError, match="scheduler"):
        sample(model, object(), SHAPE, 5, progress=False)
    with pytest.raises(ValueError, match="num_inference_steps"):
        sample(model, DDIMScheduler(), SHAPE, 1001, progress=False)
    with pytest.raises(ValueError, match="use_clipped_model_output is a DDIM option"):
        sample(model, DPMSolverMultistepScheduler(), SHAPE, 5, use_clipped_model_output=True, progress=False)
    with pytest.raises(TypeError, match="guidance_scale must be a float"):
        sample(model, DDIMScheduler(), SHAPE, 5, class_labels=[0, 1], guidance_scale=None, progress=False)


def test_the_loop_asks_the_scheduler():
    """sample() holds no knowledge of scheduler classes: the default step count, the options every step takes, the
    history to forget and whether steps draw noise come from the scheduler, so a subclass that answers otherwise
    is followed."""
    calls = []

    class FewStepsDDIM(DDIMScheduler):
        default_inference_steps = 4

        def restart(self):
            calls.append("restart")

    def model(x, t):
        calls.append(int(t[0]))
        return torch.zeros_like(x)

    s = FewStepsDDIM(clip_sample=False)
    x = sample(model, s, SHAPE, progress=False, generator=torch.Generator().manual_seed(0))
    assert calls == ["restart"] + s.timesteps.tolist() and len(s.timesteps) == 4 and torch.isfinite(x).all()
    assert DDIMScheduler().loop_step_options() == {"eta": 0.0, "use_clipped_model_output": True}
    assert DDIMScheduler(clip_sample=False).loop_step_options(eta=0.5) == {"eta": 0.5,
                                                                           "use_clipped_model_output": False}
    assert not DDIMScheduler().draws_noise(eta=0.0) and DDIMScheduler().draws_noise(eta=0.5)
    assert DDPMScheduler().draws_noise() and DDPMScheduler().default_inference_steps == 1000
    assert not DPMSolverMultistepScheduler().draws_noise()
    assert DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++").draws_noise()


# ---------------------------------------------------------------------------------------------------------------------
# training_loss


class Oracle(torch.nn.Module):
    """Knows x0 and returns the exact target for the scheduler's prediction type."""

    def __init__(self, x0, scheduler):
        super().__init__()
        self.x0, self.s = x0, scheduler
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x_t, t):
        abar = self.s.alphas_cumprod.double()[t].reshape(-1, 1, 1, 1)
        eps = (x_t - abar.sqrt() * self.x0) / (1 - abar).sqrt()
        pred = self.s.config.prediction_type
        target = {"epsilon": eps, "sample": self.x0, "v_prediction": abar.sqrt() * eps - (1 - abar).sqrt() * self.x0}
        return target[pred] + self.w


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("loss_type", ["l2", "l1", "huber"])
def test_training_loss_is_zero_for_the_true_target(prediction_type, loss_type):
    x0 = torch.rand(SHAPE, dtype=torch.float64) * 2 - 1
    s = DDPMScheduler(prediction_type=prediction_type)
    loss = training_loss(Oracle(x0, s), x0, s, loss_type=loss_type, snr_gamma=5.0,
                         generator=torch.Generator().manual_seed(0))
    assert loss.dtype == torch.float64
    assert_close(loss, 0.0, "float64_short")


@pytest.mark.parametrize("loss_type,fn", [("l2", F.mse_loss), ("l1", F.l1_loss), ("huber", F.smooth_l1_loss)])
@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_training_loss_closed_form(loss_type, fn, prediction_type):
    s = DDIMScheduler(prediction_type=prediction_type, beta_schedule="squaredcos_cap_v2")
    x0, noise = torch.randn(SHAPE), torch.randn(SHAPE)
    t = torch.tensor([0, 500, 999])
    model = TinyModel()
    loss = training_loss(model, x0, s, loss_type=loss_type, timesteps=t, noise=noise)
    x_t = s.add_noise(x0, noise, t)
    target = {"epsilon": noise, "sample": x0, "v_prediction": s.get_velocity(x0, noise, t)}[prediction_type]
    pred = model(x_t, t)
    assert_close(loss, fn(pred, target), torch.float32)
    loss.backward()
    assert model.conv.weight.grad is not None and float(model.conv.weight.grad.abs().sum()) > 0
    # min-SNR-gamma: per-sample losses weighted by min(snr, gamma) / snr (eps), / (snr + 1) (v), or min(snr, gamma)
    abar = s.alphas_cumprod[t]
    snr = abar / (1 - abar)
    w = torch.clamp(snr, max=5.0)
    w = {"epsilon": w / snr, "sample": w, "v_prediction": w / (snr + 1)}[prediction_type]
    per_sample = torch.stack([fn(pred[i], target[i]) for i in range(3)])
    weighted = training_loss(model, x0, s, loss_type=loss_type, timesteps=t, noise=noise, snr_gamma=5.0)
    assert_close(weighted, (per_sample * w).mean(), torch.float32)


def test_min_snr_zero_terminal_snr_epsilon_is_finite():
    w = min_snr_weights(torch.tensor([0.0, 1.0, 100.0]), 5.0, "epsilon")
    assert torch.equal(w, torch.tensor([1.0, 1.0, 0.05]))


def test_training_loss_bad_input():
    s, model, x0 = DDPMScheduler(), TinyModel(), torch.randn(SHAPE)
    with pytest.raises(ValueError, match="loss_type"):
        training_loss(model, x0, s, loss_type="l3")
    with pytest.raises(ValueError, match="timesteps must lie"):
        training_loss(model, x0, s, timesteps=torch.tensor([0, 1, 1000]))
    with pytest.raises(ValueError, match="timesteps must have shape"):
        training_loss(model, x0, s, timesteps=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="noise"):
        training_loss(model, x0, s, noise=torch.randn(2, 1, 4, 4))
    with pytest.raises(ValueError, match="snr_gamma"):
        training_loss(model, x0, s, snr_gamma=0)


def test_philox_sampling_does_not_depend_on_the_batch():
    model = TinyModel()
    noise = torch.randn(SHAPE)
    full = sample(model, DDIMScheduler(), noise, 6, eta=1.0, philox_seed=7, progress=False)
    part = sample(model, DDIMScheduler(), noise[:1], 6, eta=1.0, philox_seed=7, progress=False)
    assert_close(part, full[:1], torch.float32)
    assert not torch.equal(full, sample(model, DDIMScheduler(), noise, 6, eta=1.0, philox_seed=8, progress=False))


# ---------------------------------------------------------------------------------------------------------------------
# The captured loop: sample(..., cuda_graph=True) and capture_sample


def test_captured_loop_refuses_what_it_cannot_replay():
    def model(x, t):
        return torch.zeros_like(x)

    with pytest.raises(ValueError, match="CUDA device"):
        sample(model, DDIMScheduler(), (2, 1, 4, 4), 3, cuda_graph=True, progress=False)
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="deterministic"):
            sample(model, DDPMScheduler(), (2, 1, 4, 4), 3, cuda_graph=True, progress=False, device="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("sampler,steps", [("ddim", 50), ("dpm++", 20)])
def test_captured_loop_equals_the_eager_loop(sampler, steps):
    """The whole loop, gencore's UNet included, in one CUDA graph: each replay gives sample()'s images for its noise."""
    torch.manual_seed(0)
    model = UNet(in_channels=1, out_channels=1, base_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                 attention_levels=(1,), norm_groups=8).cuda().eval()
    scheduler = (DDIMScheduler(beta_schedule="squaredcos_cap_v2") if sampler == "ddim"
                 else DPMSolverMultistepScheduler(beta_schedule="squaredcos_cap_v2"))
    noise = [torch.randn(8, 1, 28, 28, device="cuda", generator=torch.Generator("cuda").manual_seed(s))
             for s in (1, 2)]
    graph = capture_sample(model, scheduler, noise[0], steps)
    for x_t in noise:  # two replays with different noise: the graph reads its input buffer each time
        expected = sample(model, scheduler, x_t, steps, progress=False)
        assert_close(graph(x_t), expected, "float32_reordered")
    assert_close(sample(model, scheduler, noise[1], steps, progress=False, cuda_graph=True),
                 sample(model, scheduler, noise[1], steps, progress=False), "float32_reordered")
