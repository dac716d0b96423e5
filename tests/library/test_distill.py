"""gencore distill: the student's target lands a real DDIM step where the teacher did (exact oracles, no training),
the pool is the teacher's own trajectory, a trained student is closer to its teacher's 256-step DDIM endpoints than
the teacher's own few-step samplers, kill and resume equals an uninterrupted run, every diffusion checkpoint and
sampler starts from the same noise for the same seed, and bad input is one clear line."""
import json
import shutil
from pathlib import Path

import pytest
import torch

from gencore.cli import main
from gencore.data import load_digits
from gencore.diffusion import DDIMScheduler, sample
from gencore.models import UNet
from gencore.testing import assert_close, assert_equal
from gencore.training import (DDPMConfig, DDPMTrainer, DistillConfig, DistillTrainer, GANConfig, GANTrainer,
                              sample_from_checkpoint)
from gencore.training.checkpoint import CheckpointError, load_models
from gencore.training.distillation import (segment_coefficients, student_scheduler_config, student_timesteps,
                                           teacher_trajectories, v_targets)

TINY_UNET = dict(base_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(), norm_groups=4)
QUIET = dict(progress=False, sample_every=0, checkpoint_every=0, n_samples=4, log_every=1)


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    threads = torch.get_num_threads()
    torch.set_num_threads(min(threads, 2))
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits():
    return load_digits(image_size=16)


@pytest.fixture(scope="module")
def teacher(digits, tmp_path_factory):
    """An unconditional DDPM trained for a few hundred steps: under-trained, which the closeness test must survive."""
    out = tmp_path_factory.mktemp("teacher")
    trainer = DDPMTrainer(digits, DDPMConfig(steps=250, batch_size=32, lr=2e-3, unet=TINY_UNET, out_dir=str(out),
                                             **QUIET))
    trainer.train()
    return str(out)


@pytest.fixture(scope="module")
def conditional_teacher(digits, tmp_path_factory):
    out = tmp_path_factory.mktemp("cteacher")
    DDPMTrainer(digits, DDPMConfig(steps=2, batch_size=8, unet=dict(TINY_UNET, base_channels=8), out_dir=str(out),
                                   class_conditional=True, **QUIET)).train()
    return str(out)


def _distill(teacher, out, **kw):
    config = dict(teacher=teacher, out_dir=str(out), calls=2, pool=256, batch_size=32, steps=200, lr=1e-3, **QUIET)
    config.update(kw)
    trainer = DistillTrainer(DistillConfig(**config))
    trainer.train()
    return trainer


# ---------------------------------------------------------------------------------------------------------------------
# Exact oracles: no training


@pytest.mark.parametrize("calls", [1, 2, 4, 8])
def test_the_target_v_makes_the_students_ddim_step_land_on_the_next_state(calls):
    """The student's own sampler (the fused DDIM step, v-prediction, no clipping), given v*, steps from z_a exactly
    to z_b: the training target and the sampler agree on every segment."""
    torch.manual_seed(0)
    config = student_scheduler_config(DDIMScheduler(beta_schedule="squaredcos_cap_v2").config)
    sched = DDIMScheduler.from_config(config)
    sched.set_timesteps(calls)
    coef = segment_coefficients(config, calls)
    for k, t in enumerate(sched.timesteps.tolist()):
        z_a, z_b = torch.randn(3, 1, 8, 8, dtype=torch.float64), torch.randn(3, 1, 8, 8, dtype=torch.float64)
        if k == calls - 1:
            z_b = z_b.clamp(-1, 1)  # the endpoint: an image
        v = v_targets(z_a, z_b, coef[k].expand(3, 4))
        assert_close(sched.step(v, t, z_a).prev_sample, z_b, torch.float64)


def test_pool_trajectories_are_the_teachers_own_states():
    """teacher_trajectories keeps, at the student's timesteps, exactly the states the teacher's sampler passes
    through, and ends at its result."""
    torch.manual_seed(0)
    model = UNet(in_channels=1, out_channels=1, **TINY_UNET).eval()
    teacher_config = {"scheduler": dict(DDIMScheduler().config)}
    noise = torch.randn(3, 1, 16, 16)
    states = teacher_trajectories(model, teacher_config, 4, noise, sampler="ddim", steps=16)
    sched = DDIMScheduler.from_config(teacher_config["scheduler"], timestep_spacing="trailing")
    end, kept = sample(model, sched, noise, 16, return_intermediates=4, progress=False)
    assert states.shape == (3, 5, 1, 16, 16)
    for k in range(4):
        assert_equal(states[:, k], kept[k])
    assert_equal(states[:, 4], end)
    assert student_timesteps(student_scheduler_config(teacher_config["scheduler"]), 4) == [999, 749, 499, 249]


# ---------------------------------------------------------------------------------------------------------------------
# A trained student


def test_student_is_closer_to_the_teachers_ddim_256_than_the_teachers_few_step_samplers(teacher, tmp_path):
    """From noise the pool never saw (another seed), the 2-call student's samples are nearer the teacher's own
    256-step DDIM endpoints than the teacher's DPM-Solver++ or DDIM in 2 steps."""
    _distill(teacher, tmp_path / "s")
    n, seed = 64, 7

    def draw(path, **kw):
        return sample_from_checkpoint(path, n, generator=torch.Generator().manual_seed(seed), **kw)

    target = draw(teacher, sampler="ddim", steps=256)

    def rms(x):
        return (x - target).pow(2).mean().sqrt().item()

    student = rms(draw(str(tmp_path / "s")))
    teacher_dpm, teacher_ddim = rms(draw(teacher, sampler="dpm++", steps=2)), rms(draw(teacher, sampler="ddim", steps=2))
    assert student < min(teacher_dpm, teacher_ddim), (student, teacher_dpm, teacher_ddim)


def test_student_checkpoint_samples_as_it_was_trained(teacher, tmp_path, monkeypatch):
    _distill(teacher, tmp_path / "s", steps=2, pool=32)
    config = json.loads(next((tmp_path / "s").glob("checkpoint-*/config.json")).read_text())
    assert config["kind"] == "ddpm" and config["student"]["calls"] == 2
    assert config["scheduler"]["prediction_type"] == "v_prediction"
    from gencore.training import generate
    calls, load = [], generate.load_models

    def loading(*args, **kwargs):
        models, loaded = load(*args, **kwargs)
        models["model"].register_forward_hook(lambda *_: calls.append(1))
        return models, loaded

    monkeypatch.setattr(generate, "load_models", loading)
    sample_from_checkpoint(str(tmp_path / "s"), 3)
    assert len(calls) == 2  # its two calls, no more
    for kw, message in [(dict(steps=4), "2 steps"), (dict(sampler="dpm++"), "ddim"),
                        (dict(guidance_scale=2.0), "guidance"), (dict(eta=0.5), "eta 0.5")]:
        with pytest.raises(ValueError, match=message):
            sample_from_checkpoint(str(tmp_path / "s"), 2, **kw)


def test_kill_and_resume_equals_uninterrupted(teacher, tmp_path):
    kw = dict(steps=6, checkpoint_every=3, pool=64)
    a = _distill(teacher, tmp_path / "a", **kw)

    b = DistillTrainer(DistillConfig(teacher=teacher, out_dir=str(tmp_path / "b"), calls=2, batch_size=32, lr=1e-3,
                                     **{**QUIET, **kw}))
    step = b.train_step

    def dies_at_step_5(k):
        if k == 4:
            raise KeyboardInterrupt
        return step(k)

    b.train_step = dies_at_step_5
    with pytest.raises(KeyboardInterrupt):
        b.train()
    moved = tmp_path / "moved_teacher"  # the teacher is known by its weights, not its folder
    shutil.copytree(teacher, moved)
    c = DistillTrainer(DistillConfig(teacher=str(moved), out_dir=str(tmp_path / "b"), calls=2, batch_size=32, lr=1e-3,
                                     **{**QUIET, **kw}), resume_from=str(tmp_path / "b"))  # reads the pool b wrote
    assert c.step == 3
    c.train()
    for role, state in a.state_dicts().items():
        for key, value in state.items():
            assert_equal(c.state_dicts()[role][key], value, msg=f"{role}.{key}")
    assert c.history == a.history


def test_a_guided_teacher_is_folded_into_a_conditional_student(conditional_teacher, tmp_path):
    trainer = _distill(conditional_teacher, tmp_path / "s", steps=2, pool=32, guidance_scale=2.0, teacher_steps=8)
    assert trainer.dataset.labels.tolist() == [i % 10 for i in range(32)]
    # The pool's endpoints are the guided teacher's own samples of their labels, from the pool's noise.
    models, teacher_config = load_models(conditional_teacher, ema=True)
    noise = torch.randn((32, 1, 16, 16), generator=torch.Generator().manual_seed(271828))  # seed 0 + the pool's offset
    sched = DDIMScheduler.from_config(teacher_config["scheduler"], timestep_spacing="trailing", steps_offset=0)
    guided = sample(models["model"].eval(), sched, noise, 8, class_labels=trainer.dataset.labels,
                    guidance_scale=2.0, eta=0.0, progress=False)
    assert_close(trainer.dataset.images, guided, torch.float32)
    assert (guided - sample(models["model"], sched, noise, 8, class_labels=trainer.dataset.labels, eta=0.0,
                            progress=False)).abs().max() > 1e-3  # the guidance changed them
    config = json.loads(next((tmp_path / "s").glob("checkpoint-*/config.json")).read_text())
    assert config["conditional"] and config["student"]["guidance_scale"] == 2.0
    x = sample_from_checkpoint(str(tmp_path / "s"), 4, class_labels=torch.tensor([3, 3, 7, 7]))
    assert x.shape == (4, 1, 16, 16)


def test_every_diffusion_checkpoint_and_sampler_starts_from_the_same_noise(teacher, tmp_path, monkeypatch):
    _distill(teacher, tmp_path / "s", steps=1, pool=32)
    from gencore.training import generate
    seen = []
    real = generate.diffusion_sample

    def spy(*args, noise=None, **kwargs):
        seen.append(noise.clone())
        return real(*args, noise=noise, **kwargs)

    monkeypatch.setattr(generate, "diffusion_sample", spy)
    runs = [(teacher, dict(sampler="ddim", steps=3, batch_size=5)), (teacher, dict(sampler="dpm++", steps=4)),
            (teacher, dict(sampler="ddpm", steps=3, batch_size=2))]
    runs += [(str(tmp_path / "s"), dict(batch_size=3)), (str(tmp_path / "s"), dict(batch_size=4)),
             (str(tmp_path / "s"), {})]  # {}: the default batch, all 6 at once
    first = []
    for path, kw in runs:
        seen.clear()
        sample_from_checkpoint(path, 6, generator=torch.Generator().manual_seed(11), **kw)
        first.append(torch.cat(seen))
    for noise in first[1:]:
        assert_equal(noise, first[0])


# ---------------------------------------------------------------------------------------------------------------------
# Bad input


def test_bad_teachers_and_options(teacher, digits, tmp_path):
    gan_dir = tmp_path / "gan"
    GANTrainer(digits, GANConfig(steps=1, batch_size=8, features=8, out_dir=str(gan_dir), **QUIET)).train()
    with pytest.raises(ValueError, match="'gan' checkpoint"):
        DistillTrainer(DistillConfig(teacher=str(gan_dir), out_dir=str(tmp_path / "x"), **QUIET))
    student = tmp_path / "s"
    _distill(teacher, student, steps=1, pool=32)
    with pytest.raises(ValueError, match="already a 2-call student"):
        DistillTrainer(DistillConfig(teacher=str(student), out_dir=str(tmp_path / "y"), **QUIET))
    with pytest.raises(ValueError, match="calls must be one of 1, 2, 4, 8"):
        DistillConfig(teacher=teacher, calls=3).validate()
    with pytest.raises(ValueError, match="multiple of calls"):
        DistillConfig(teacher=teacher, calls=4, teacher_steps=30).validate()
    with pytest.raises(ValueError, match="class-conditional DDPM"):
        DistillTrainer(DistillConfig(teacher=teacher, guidance_scale=2.0, pool=32, batch_size=16, **QUIET))
    with pytest.raises(CheckpointError, match="other settings"):  # a pool drawn for another run is not reused
        _distill(teacher, student, steps=1, pool=64)
    trainer = DDPMTrainer(digits, DDPMConfig(steps=1, batch_size=8, unet=TINY_UNET, **QUIET))
    with pytest.raises(ValueError, match="gencore distill --resume"):
        trainer.resume(str(student))
    (student / "trajectories.safetensors").unlink()  # without its pool, the student's checkpoint still guards it
    other = DistillTrainer(DistillConfig(teacher=teacher, out_dir=str(student), calls=2, pool=32, batch_size=32,
                                         steps=2, teacher_steps=32, **QUIET))
    with pytest.raises(CheckpointError, match="distilled with other settings: teacher"):
        other.resume()


def test_a_refused_resume_costs_no_teacher_calls(teacher, tmp_path, monkeypatch):
    """resume_from (`--resume`) is checked against the teacher and settings before the pool is drawn."""
    student = tmp_path / "s"
    _distill(teacher, student, steps=1, pool=32)
    (student / "trajectories.safetensors").unlink()  # as the "drawn with other settings" error suggests
    from gencore.training import distillation

    def no_teacher_calls(*args, **kwargs):
        raise AssertionError("the teacher drew trajectories for a resume that is refused")

    monkeypatch.setattr(distillation, "teacher_trajectories", no_teacher_calls)
    same = dict(teacher=teacher, out_dir=str(student), calls=2, pool=32, batch_size=32, steps=2, **QUIET)
    for changed, message in [(dict(pool=64), "pool 32 there, 64 now"), (dict(seed=1), "seed 0 there, 1 now"),
                             (dict(teacher_steps=32), "teacher steps 64 there, 32 now")]:
        with pytest.raises(CheckpointError, match=message):
            DistillTrainer(DistillConfig(**{**same, **changed}), resume_from=str(student))
    with pytest.raises(CheckpointError, match="holds a DDPM, not a student"):  # a DDPM run folder as the student's
        DistillTrainer(DistillConfig(**{**same, "out_dir": teacher}), resume_from=teacher)
    assert not (student / "trajectories.safetensors").exists()
    assert not (Path(teacher) / "trajectories.safetensors").exists()
    total = load_models(teacher)[1]["scheduler"]["num_train_timesteps"]
    with pytest.raises(ValueError, match=f"teacher_steps must be at most the teacher's {total}"):
        DistillTrainer(DistillConfig(**{**same, "out_dir": str(tmp_path / "x"), "teacher_steps": 2 * total}))


def test_a_teacher_retrained_in_place_does_not_reuse_its_pool_or_student(digits, tmp_path):
    teacher, student = tmp_path / "t", tmp_path / "s"

    def train_teacher(seed):
        shutil.rmtree(teacher, ignore_errors=True)
        DDPMTrainer(digits, DDPMConfig(steps=1, batch_size=8, seed=seed, unet=dict(TINY_UNET, base_channels=8),
                                       out_dir=str(teacher), **QUIET)).train()

    train_teacher(0)
    _distill(str(teacher), student, steps=1, pool=32, teacher_steps=4)
    train_teacher(1)  # the same folder and step, other weights
    with pytest.raises(CheckpointError, match="drawn with other settings"):
        _distill(str(teacher), student, steps=2, pool=32, teacher_steps=4)
    (student / "trajectories.safetensors").unlink()
    again = DistillTrainer(DistillConfig(teacher=str(teacher), out_dir=str(student), calls=2, pool=32, batch_size=32,
                                         steps=2, teacher_steps=4, **QUIET))
    with pytest.raises(CheckpointError, match="teacher sha256"):
        again.resume()


def test_guidance_needs_a_model_that_learned_the_null_class(digits, tmp_path):
    # cfg_dropout 0: the null-class embedding is never trained, so a guided step would mix in its random output
    out = tmp_path / "no_null"
    DDPMTrainer(digits, DDPMConfig(steps=1, batch_size=8, unet=dict(TINY_UNET, base_channels=8), out_dir=str(out),
                                   class_conditional=True, cfg_dropout=0.0, **QUIET)).train()
    with pytest.raises(ValueError, match="trained with cfg_dropout 0"):
        sample_from_checkpoint(str(out), 2, steps=2, guidance_scale=2.0)
    with pytest.raises(ValueError, match="trained with cfg_dropout 0"):
        DistillTrainer(DistillConfig(teacher=str(out), guidance_scale=2.0, pool=32, batch_size=16, **QUIET))
    assert sample_from_checkpoint(str(out), 2, steps=2).shape == (2, 1, 16, 16)  # unguided: its conditional model


def test_the_command_and_distill_config_train_the_same_student_by_default():
    """gencore.cli imports no torch, so the command's defaults are written beside DistillConfig's: held equal here."""
    from gencore.cli import build_parser
    args = build_parser().parse_args(["distill", "--teacher", "t", "--out", "o"])
    fields = {"calls": "calls", "teacher_sampler": "teacher_sampler", "teacher_steps": "teacher_steps", "pool": "pool",
              "guidance_scale": "guidance_scale", "steps": "steps", "batch_size": "batch_size", "lr": "lr",
              "lr_schedule": "lr_schedule", "lr_warmup_steps": "lr_warmup_steps", "seed": "seed",
              "grad_clip": "grad_clip", "ema": "ema_decay", "bf16": "amp"}
    config = DistillConfig(teacher="t")
    assert {arg: getattr(args, arg) for arg in fields} == {arg: getattr(config, f) for arg, f in fields.items()}


def test_the_distill_function_is_exported_beside_its_module():
    import gencore.training.distillation  # noqa: F401  (a submodule of the same name would shadow the function)
    from gencore.training import distill
    assert callable(distill) and distill.__module__ == "gencore.training.distillation"


def test_cli_distill_sample_and_one_line_errors(capsys, teacher, tmp_path):
    out = tmp_path / "s"
    code = main(["distill", "--teacher", teacher, "--out", str(out), "--calls", "1", "--steps", "2", "--pool", "32",
                 "--batch-size", "16", "--no-progress", "--teacher-steps", "8"])
    assert code == 0, capsys.readouterr().err
    assert "1-call student" in capsys.readouterr().out
    assert main(["sample", "--checkpoint", str(out), "--out", str(tmp_path / "s.png"), "--n", "4"]) == 0
    assert "step 2" in capsys.readouterr().out
    for argv, message in [
        (["distill", "--teacher", str(tmp_path / "none"), "--out", str(tmp_path / "o")],
         "--teacher: checkpoint not found"),
        (["distill", "--teacher", teacher, "--out", teacher, "--resume"], "holds a DDPM, not a student"),
        (["distill", "--teacher", str(out), "--out", str(tmp_path / "o")], "already a 1-call student"),
        (["distill", "--teacher", teacher, "--out", str(out)], "already holds a checkpoint"),
        (["distill", "--teacher", teacher, "--out", str(tmp_path / "o"), "--calls", "4", "--teacher-steps", "10"],
         "multiple of --calls"),
        (["sample", "--checkpoint", str(out), "--out", str(tmp_path / "x.png"), "--steps", "4"], "1 steps"),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and message in err, err
    with pytest.raises(SystemExit) as exc:
        main(["distill", "--teacher", teacher, "--out", str(tmp_path / "o"), "--calls", "3"])
    assert exc.value.code == 2 and "invalid choice" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["distill", "--teacher", teacher, "--out", str(tmp_path / "o"), "--ema", "1.5"])
    assert exc.value.code == 2 and "--ema: expected a decay in [0, 1)" in capsys.readouterr().err


def test_sampling_a_checkpoint_with_optimize_runs_the_optimized_model(teacher, monkeypatch):
    """optimize=True (`--optimize`) samples through gencore.optimize's module; compiling itself is tested elsewhere,
    so here optimize only wraps the model and counts its calls."""
    import gencore._optimize
    calls = []

    class Wrapped(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, *args):
            calls.append(1)
            return self.model(*args)

    monkeypatch.setattr(gencore._optimize, "optimize", Wrapped)
    g = torch.Generator().manual_seed(0)
    x = sample_from_checkpoint(teacher, 2, sampler="ddim", steps=3, generator=g, optimize=True)
    y = sample_from_checkpoint(teacher, 2, sampler="ddim", steps=3, generator=torch.Generator().manual_seed(0))
    assert len(calls) == 3
    assert_equal(x, y)
