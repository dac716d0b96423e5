"""gencore.training: each trainer's loss falls on a tiny MNIST subset, save / kill / resume equals an uninterrupted
run, checkpoints are atomic and corrupt ones are reported, sampling from checkpoints, options (bf16, clipping,
min-SNR, classifier-free label dropout)."""
import json
import os
import signal

import pytest
import torch

import gencore
from gencore.data import ImageDataset, load_dataset, load_digits
from gencore.testing import assert_close, assert_equal
from gencore.training import (CheckpointError, DDPMConfig, DDPMTrainer, GANConfig, GANTrainer, TrainingInterrupted,
                              WGANGPConfig, WGANGPTrainer, sample_from_checkpoint)
from gencore.training.paths import OutputPathError

TINY_UNET = dict(base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(), norm_groups=4)
COMMON = dict(batch_size=16, progress=False, log_every=1, n_samples=4)


@pytest.fixture(autouse=True)
def _reference_backend():
    with gencore.use_backend("reference"):
        yield


@pytest.fixture(scope="module")
def mnist_tiny(mnist_dir):
    """The first 64 images of the project's MNIST training part."""
    return load_dataset("mnist", root=str(mnist_dir)).subset(64)


@pytest.fixture(scope="module")
def digits_tiny():
    return load_digits().subset(64)


def ddpm(data, **kw):
    return DDPMTrainer(data, DDPMConfig(**{**COMMON, "unet": TINY_UNET, "lr": 2e-3, "sample_steps": 2, **kw}))


def gan(data, **kw):
    return GANTrainer(data, GANConfig(**{**COMMON, "features": 8, **kw}))


def wgan(data, **kw):
    return WGANGPTrainer(data, WGANGPConfig(**{**COMMON, "features": 8, "n_critic": 2, **kw}))


def cgan(data, **kw):
    return GANTrainer(data, GANConfig(**{**COMMON, "features": 8, "conditional": True, **kw}))


def _mean(xs):
    return sum(xs) / len(xs)


def test_mnist_subset_layout(mnist_tiny):
    assert mnist_tiny.images.shape == (64, 1, 28, 28) and mnist_tiny.num_classes == 10
    assert mnist_tiny.images.min() >= -1 and mnist_tiny.images.max() <= 1


@pytest.mark.parametrize("make, key, steps", [
    (ddpm, "loss", 16),
    (gan, "d_loss", 8),
    (wgan, "d_loss", 8),
    (cgan, "d_loss", 8),
], ids=["ddpm", "gan", "wgan-gp", "cgan"])
def test_trainer_loss_falls(mnist_tiny, make, key, steps):
    trainer = make(mnist_tiny, steps=steps)
    hist = trainer.train()
    values = hist[key]
    assert len(values) == steps and all(map(lambda v: v == v, values))  # no NaN
    assert _mean(values[-3:]) < _mean(values[:3]), values


def _state(trainer):
    out = {f"{role}.{k}": v.clone() for role, sd in trainer.state_dicts().items() for k, v in sd.items()}
    for role, opt in trainer.optimizers.items():
        for idx, st in opt.state_dict()["state"].items():
            for k, v in st.items():
                out[f"opt.{role}.{idx}.{k}"] = torch.as_tensor(v).clone()
    return out


class Killed(Exception):
    pass


@pytest.mark.parametrize("make", [ddpm, gan, wgan], ids=["ddpm", "gan", "wgan-gp"])
def test_kill_and_resume_equals_uninterrupted(digits_tiny, tmp_path, make):
    extra = dict(ema_decay=0.9) if make is not ddpm else {}
    a = make(digits_tiny, steps=6, checkpoint_every=3, out_dir=str(tmp_path / "a"), **extra)
    a.train()

    b = make(digits_tiny, steps=6, checkpoint_every=3, out_dir=str(tmp_path / "b"), **extra)
    step = b.train_step

    def dies_at_step_5(k):  # a kill after step 5 started: steps 4-5 are lost, the checkpoint at 3 is intact
        if k == 4:
            raise Killed
        return step(k)

    b.train_step = dies_at_step_5
    with pytest.raises(Killed):
        b.train()
    assert json.loads((tmp_path / "b" / "latest.json").read_text())["step"] == 3

    c = make(digits_tiny, steps=6, checkpoint_every=3, out_dir=str(tmp_path / "b"), **extra)
    assert c.resume() == 3
    c.train()
    sa, sc = _state(a), _state(c)
    assert sa.keys() == sc.keys()
    for k in sa:
        assert_equal(sc[k], sa[k], msg=k)
    assert c.history == a.history


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("make", [ddpm, wgan], ids=["ddpm", "wgan-gp"])
def test_signal_writes_a_checkpoint_of_the_step_reached(digits_tiny, tmp_path, make, signum):
    """SIGINT or SIGTERM in the middle of step 3 (of 6, no periodic checkpoints): the step finishes, a checkpoint
    of step 3 is written and TrainingInterrupted names it; resumed, the run ends where an uninterrupted one does.
    The signal handlers are the caller's again afterwards."""
    a = make(digits_tiny, steps=6, out_dir=str(tmp_path / "a"))
    a.train()

    b = make(digits_tiny, steps=6, out_dir=str(tmp_path / "b"))
    step = b.train_step

    def signalled_during_step_3(k):
        if k == 2:
            os.kill(os.getpid(), signum)  # delivered at once, in the middle of the step
        return step(k)

    b.train_step = signalled_during_step_3
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with pytest.raises(TrainingInterrupted) as info:
        b.train()
    assert isinstance(info.value, KeyboardInterrupt)
    assert (info.value.signum, info.value.step) == (signum, 3)
    assert info.value.checkpoint == str(tmp_path / "b" / "checkpoint-00000003")
    assert json.loads((tmp_path / "b" / "latest.json").read_text())["step"] == 3
    assert {s: signal.getsignal(s) for s in handlers} == handlers

    c = make(digits_tiny, steps=6, out_dir=str(tmp_path / "b"))
    assert c.resume() == 3
    c.train()
    sa, sc = _state(a), _state(c)
    for k in sa:
        assert_equal(sc[k], sa[k], msg=k)


def test_signal_after_a_periodic_checkpoint_writes_no_second_one(digits_tiny, tmp_path):
    t = gan(digits_tiny, steps=6, checkpoint_every=2, out_dir=str(tmp_path))
    step = t.train_step

    def signalled_during_step_4(k):
        if k == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return step(k)

    t.train_step = signalled_during_step_4
    with pytest.raises(TrainingInterrupted) as info:
        t.train()
    assert info.value.step == 4 and info.value.checkpoint == str(tmp_path / "checkpoint-00000004")
    assert sorted(d for d in os.listdir(tmp_path) if d.startswith("checkpoint-")) == ["checkpoint-00000004"]


@pytest.fixture
def python_sigint_handler():
    """Python's own SIGINT handler, also where the shell that started pytest in the background ignores SIGINT."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_signal_without_out_dir_is_a_plain_keyboard_interrupt(digits_tiny, python_sigint_handler):
    t = gan(digits_tiny, steps=6)
    step = t.train_step

    def interrupted(k):
        if k == 1:
            os.kill(os.getpid(), signal.SIGINT)  # nowhere to write a checkpoint: Python's own KeyboardInterrupt
        return step(k)

    t.train_step = interrupted
    with pytest.raises(KeyboardInterrupt) as info:
        t.train()
    assert not isinstance(info.value, TrainingInterrupted)


def test_unwritable_out_dir_is_refused_before_training(digits_tiny, tmp_path):
    (tmp_path / "file").write_text("x")
    for out_dir, reason in ((tmp_path / "file", "is a file"), (tmp_path / "file" / "run", "is a file"),
                            ("/proc/gencore-run", "cannot create files in /proc")):
        with pytest.raises(OutputPathError, match=reason) as info:
            gan(digits_tiny, steps=1, out_dir=str(out_dir))
        assert str(out_dir) in str(info.value) and "out_dir" in str(info.value)


def test_checkpoint_layout_and_atomic_leftovers(digits_tiny, tmp_path):
    t = gan(digits_tiny, steps=2, checkpoint_every=1, out_dir=str(tmp_path))
    os.makedirs(tmp_path / ".checkpoint-00000001.tmp-dead")  # a run killed mid-write leaves this behind
    t.train()
    names = sorted(os.listdir(tmp_path))
    assert "latest.json" in names and "checkpoint-00000002" in names
    assert "checkpoint-00000001" not in names and not any(".tmp-" in n for n in names)
    files = sorted(os.listdir(tmp_path / "checkpoint-00000002"))
    assert files == ["config.json", "discriminator.safetensors", "generator.safetensors", "manifest.json",
                     "trainer_state.json",
                     "trainer_state.safetensors"]
    assert os.path.isfile(tmp_path / "losses.png") and os.listdir(tmp_path / "samples")


def test_corrupt_and_missing_checkpoints(digits_tiny, tmp_path):
    t = gan(digits_tiny, steps=1, out_dir=str(tmp_path / "run"))
    t.train()
    with pytest.raises(FileNotFoundError):
        sample_from_checkpoint(str(tmp_path / "nope"), 2)
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        sample_from_checkpoint(str(tmp_path), 2)
    ckpt = tmp_path / "run" / "checkpoint-00000001"
    weights = ckpt / "generator.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="generator.safetensors"):
        sample_from_checkpoint(str(tmp_path / "run"), 2)
    (ckpt / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json"):
        sample_from_checkpoint(str(tmp_path / "run"), 2)


def test_resume_refuses_other_kind(digits_tiny, tmp_path):
    gan(digits_tiny, steps=1, out_dir=str(tmp_path)).train()
    with pytest.raises(CheckpointError, match="not 'wgan-gp'"):
        wgan(digits_tiny, steps=1, out_dir=str(tmp_path)).resume()


@pytest.mark.parametrize("make, conditional", [(ddpm, False), (gan, False), (cgan, True)], ids=["ddpm", "gan", "cgan"])
def test_sample_from_checkpoint(digits_tiny, tmp_path, make, conditional):
    make(digits_tiny, steps=1, out_dir=str(tmp_path)).train()
    g = torch.Generator().manual_seed(0)
    x = sample_from_checkpoint(str(tmp_path), 5, batch_size=3, generator=g, steps=2)
    assert x.shape == (5, 1, 28, 28) and x.dtype == torch.float32 and x.abs().max() <= 1
    x2 = sample_from_checkpoint(str(tmp_path), 5, batch_size=3, generator=torch.Generator().manual_seed(0), steps=2)
    assert_equal(x, x2)
    if conditional:
        y = sample_from_checkpoint(str(tmp_path), 2, class_labels=torch.tensor([7, 7]))
        assert y.shape == (2, 1, 28, 28)
        with pytest.raises(ValueError, match="class_labels"):
            sample_from_checkpoint(str(tmp_path), 2, class_labels=torch.tensor([10, 0]))


def test_ddpm_options_cfg_min_snr_bf16_clip(digits_tiny, tmp_path):
    t = ddpm(digits_tiny, steps=2, class_conditional=True, cfg_dropout=0.5, snr_gamma=5.0, amp=True, grad_clip=1.0,
             loss_type="huber", out_dir=str(tmp_path))
    assert t.raw("model").num_classes == 10
    hist = t.train()
    assert len(hist["loss"]) == 2 and all(v == v for v in hist["loss"])
    x = sample_from_checkpoint(str(tmp_path), 2, steps=2, guidance_scale=3.0)
    assert x.shape == (2, 1, 28, 28) and torch.isfinite(x).all()


def test_gan_options_hinge_spectral_ema_projection(digits_tiny):
    for kw in (dict(loss="hinge", spectral_norm=True, ema_decay=0.9, amp=True, grad_clip=1.0),
               dict(loss="non_saturating"),
               dict(conditional=True, discriminator="projection", loss="hinge")):
        t = GANTrainer(digits_tiny, GANConfig(**{**COMMON, "features": 8, "steps": 2, **kw}))
        hist = t.train()
        assert len(hist["g_loss"]) == 2 and all(v == v for v in hist["g_loss"] + hist["d_loss"])


def test_gan_extra_layers_and_r1(digits_tiny):
    for kw in (dict(extra_layers=1, r1_gamma=0.1), dict(extra_layers=1, r1_gamma=0.1, conditional=True)):
        t = GANTrainer(digits_tiny, GANConfig(**{**COMMON, "features": 8, "steps": 2, **kw}))
        hist = t.train()
        assert len(hist["r1"]) == 2 and all(0 < v < float("inf") for v in hist["r1"])
        g = t.models["generator"]
        assert sum(type(m) is torch.nn.Conv2d for m in g.modules()) == 1


def test_trainer_config_errors(digits_tiny):
    with pytest.raises(ValueError, match="batch_size"):
        ddpm(digits_tiny, batch_size=0)
    with pytest.raises(ValueError, match="fewer than one batch"):
        ddpm(digits_tiny.subset(8))
    with pytest.raises(ValueError, match="loss must be one of"):
        gan(digits_tiny, loss="l2")
    with pytest.raises(ValueError, match="labelled dataset"):
        cgan(ImageDataset(digits_tiny.images))
    with pytest.raises(ValueError, match="projection"):
        gan(digits_tiny, discriminator="projection")
    with pytest.raises(ValueError, match="r1_gamma"):
        gan(digits_tiny, r1_gamma=-1.0)
    with pytest.raises(ValueError, match="extra_layers"):
        gan(digits_tiny, extra_layers=-1)
    with pytest.raises(ValueError, match="gp_lambda"):
        WGANGPTrainer(digits_tiny, WGANGPConfig(**COMMON, r1_gamma=1.0))


def test_ema_warms_up_like_diffusers():
    """The EMA forgets its first weights quickly: decay min(0.999, (1 + n) / (10 + n)) at update n, so after a few
    hundred steps it tracks the trained weights instead of keeping 0.999**steps of the random initialisation."""
    from gencore.training.trainer import ema_decay_at, make_ema

    model = torch.nn.Linear(3, 2)
    ema = make_ema(model, 0.999)
    expected = None
    for step in range(300):
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(float(step))
        ema.update_parameters(model)
        if expected is None:
            expected = 0.0  # the first update copies
        else:
            expected += (1 - float(ema_decay_at(0.999, step))) * (step - expected)
    assert_close(ema_decay_at(0.999, 1), 2 / 11, "float64_short")
    assert float(ema_decay_at(0.999, 10**6)) == 0.999
    assert_close(ema.module.weight, torch.full((2, 3), expected, dtype=torch.float64), torch.float32)
    assert expected > 299 - 35  # lags the weights by about 1 / (1 - decay) ~ 30 steps, not by the whole run


def test_lr_schedules():
    from gencore.training.trainer import lr_factor

    assert_close(lr_factor(0, 100, "cosine", 10), 0.1, "float64_short")   # warm-up from lr / warmup
    assert_close(lr_factor(9, 100, "cosine", 10), 1.0, "float64_short")
    assert_close(lr_factor(10, 100, "cosine", 10), 1.0, "float64_short")
    assert_close(lr_factor(55, 100, "cosine", 10), 0.5, "float64_short")
    assert_close(lr_factor(100, 100, "cosine", 10), 0.0, "float64_short")
    assert_close(lr_factor(55, 100, "linear", 10), 0.5, "float64_short")
    assert lr_factor(99, 100, "constant", 0) == 1.0
    with pytest.raises(ValueError, match="lr_schedule"):
        ddpm(load_digits().subset(16), lr_schedule="step")


def test_lr_schedule_survives_resume(digits_tiny, tmp_path):
    """The learning rate is a function of the step: a resumed run continues on the same curve, bit for bit."""
    kw = dict(steps=6, checkpoint_every=3, lr_schedule="cosine", lr_warmup_steps=2)
    a = ddpm(digits_tiny, out_dir=str(tmp_path / "a"), **kw)
    a.train()
    assert_close(a.optimizers["model"].param_groups[0]["lr"], 2e-3 * (0.5 + 0.5 * __import__("math").cos(
        __import__("math").pi * 3 / 4)), "float64_short")  # the lr of the last step (step index 5 of 6, warm-up 2)
    b = ddpm(digits_tiny, out_dir=str(tmp_path / "b"), **kw)
    b.train(3)  # stops half-way (a checkpoint at step 3), as a killed run would
    c = ddpm(digits_tiny, out_dir=str(tmp_path / "b"), **kw)
    assert c.resume() == 3
    c.train()
    for k, v in _state(a).items():
        assert_equal(_state(c)[k], v, msg=k)
