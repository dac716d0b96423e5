"""The `gencore` command: demo --quick, train / resume / sample end to end, --help, and clear errors for bad flags,
missing files and corrupt checkpoints."""
import argparse
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import gencore.cli
from gencore.cli import build_parser, main
from gencore.commands.train import build

TINY = ["--base-channels", "8", "--channel-mult", "1,2", "--num-res-blocks", "1", "--attention-levels", "",
        "--norm-groups", "4", "--n-samples", "4", "--sample-steps", "2"]


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


COMMANDS = ["demo", "train", "distill", "sample", "eval", "bench", "info"]


@pytest.mark.parametrize("command", COMMANDS)
def test_help(capsys, command):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert "usage: gencore " + command in capsys.readouterr().out


def _subparsers():
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices


@pytest.mark.parametrize("command", COMMANDS)
def test_help_states_every_default_once(capsys, command):
    """Every option that takes a value says its default (argparse's own "(default: ...)", or the help's words
    for a default chosen later), and none says it twice or says "None"."""
    subparser = _subparsers()[command]
    formatter = subparser._get_formatter()
    chosen = {a for group in subparser._mutually_exclusive_groups if group.required for a in group._group_actions}
    for action in subparser._actions:
        # flags, --help, and what must be given (train's --out; eval's --fake or --checkpoint) have no default
        if not action.option_strings or action.nargs == 0 or action.required or action in chosen:
            continue
        assert "(default" in formatter._get_help_string(action), (command, action.option_strings)
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "(default: None)" not in text and "(default: False)" not in text
    assert re.search(r"\(default[^)]*\) \(default", text) is None  # "(default: 100, or 20 ...) (default: ...)"


# Runs `gencore --help` and every `gencore COMMAND --help` in a fresh interpreter and reports which modules loaded.
# With STUB, the package `gencore` is an empty module over the source folder: gencore/__init__.py does not run, so
# what loads is what the command line itself imports.
HELP_PROBE = textwrap.dedent("""
    import contextlib, io, json, sys, types
    if sys.argv[1] == "stub":
        package = types.ModuleType("gencore")
        package.__path__ = [sys.argv[2]]
        sys.modules["gencore"] = package
    from gencore.cli import main
    codes = []
    for argv in [["--help"]] + [[command, "--help"] for command in sys.argv[3:]]:
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                main(argv)
            except SystemExit as exc:
                codes.append(exc.code)
    print(json.dumps({"codes": codes, "modules": sorted(sys.modules)}))
""")


def _help_modules(mode: str) -> tuple[list, list[str]]:
    package = os.path.dirname(os.path.abspath(gencore.cli.__file__))
    proc = subprocess.run([sys.executable, "-c", HELP_PROBE, mode, package, *COMMANDS], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return result["codes"], result["modules"]


def _heavy(modules: list[str]) -> list[str]:
    return [m for m in modules if m.split(".")[0] in ("torch", "numpy", "safetensors", "triton")]


def test_help_imports_nothing_heavy_from_the_command_line():
    """What gencore/cli.py and the parsers import for --help: no torch, numpy, safetensors or triton, and no part
    of gencore beyond the parsers' plain-data options."""
    codes, modules = _help_modules("stub")
    assert codes == [0] * (len(COMMANDS) + 1)
    assert _heavy(modules) == []
    assert [m for m in modules if m.startswith("gencore")] == ["gencore", "gencore.cli", "gencore.commands",
                                                                "gencore.commands._args", "gencore.training",
                                                                "gencore.training.options"]


def test_help_does_not_import_torch():
    """`gencore --help` through the real package, as the installed `gencore` script runs it."""
    codes, modules = _help_modules("package")
    assert codes == [0] * (len(COMMANDS) + 1)
    assert _heavy(modules) == []


def test_demo_quick(capsys, tmp_path):
    out_dir = tmp_path / "missing" / "demo"  # missing parents are created
    code, out, err = run(capsys, "demo", "--quick", "--out", str(out_dir), "--no-progress")
    assert code == 0, err
    tmp_path = out_dir
    for name in ("ddpm_samples.png", "ddpm_progressive.png", "gan_samples.png", "ddpm/losses.png",
                 "gan/losses.png"):
        assert os.path.getsize(tmp_path / name) > 100, name
        assert os.path.abspath(tmp_path / name) in out
    assert "fused backend" in out or "reference backend" in out
    assert "of the held-out real digits" in out and "DDPM samples" in out and "GAN samples" in out
    assert "demo finished in" in out


def test_demo_is_decided_by_steps_not_the_clock(capsys, tmp_path):
    """The same seed and step counts draw the same pictures: nothing depends on how fast the machine is."""
    pictures = []
    for name in ("a", "b"):
        code, _, err = run(capsys, "demo", "--quick", "--ddpm-steps", "3", "--gan-steps", "3",
                           "--out", str(tmp_path / name), "--no-progress")
        assert code == 0, err
        pictures.append([np.asarray(Image.open(tmp_path / name / f)) for f in ("ddpm_samples.png",
                                                                                 "gan_samples.png")])
    for a, b in zip(*pictures):
        assert np.array_equal(a, b)


def test_train_resume_sample(capsys, tmp_path):
    run_dir = str(tmp_path / "run")
    base = ["train", "ddpm", "--data", "digits", "--limit", "64", "--batch-size", "16", "--out", run_dir,
            "--checkpoint-every", "2", "--sample-every", "0", "--backend", "reference", "--no-progress", *TINY]
    code, out, err = run(capsys, *base, "--steps", "2")
    assert code == 0, err
    assert "trained ddpm" in out
    code, _, err = run(capsys, *base, "--steps", "3")
    assert code == 2 and "--resume" in err  # refuses to overwrite a run
    code, out, err = run(capsys, *base, "--steps", "3", "--resume")
    assert code == 0 and "resumed ddpm from step 2" in out, err
    png = str(tmp_path / "s.png")
    code, out, err = run(capsys, "sample", "--checkpoint", run_dir, "--n", "4", "--steps", "2", "--out", png,
                         "--progressive", "--backend", "reference")
    assert code == 0, err
    assert os.path.getsize(png) > 100 and os.path.getsize(str(tmp_path / "s-progressive.png")) > 100
    # a tensor file that `gencore eval --fake` reads
    tensors = str(tmp_path / "s.safetensors")
    code, out, err = run(capsys, "sample", "--checkpoint", run_dir, "--n", "5", "--steps", "2", "--out", tensors,
                         "--backend", "reference")
    assert code == 0, err
    images = load_file(tensors)["images"]
    assert images.shape == (5, 1, 28, 28) and images.dtype == torch.float32 and images.abs().max() <= 1
    # DPM-Solver++ from the same checkpoint (its default of 20 steps; 3 here)
    code, out, err = run(capsys, "sample", "--checkpoint", run_dir, "--n", "3", "--sampler", "dpm++", "--steps", "3",
                         "--out", tensors, "--progressive")
    assert code == 0, err
    images = load_file(tensors)["images"]
    assert images.shape == (3, 1, 28, 28) and torch.isfinite(images).all()
    with pytest.raises(SystemExit) as exc:
        main(["sample", "--checkpoint", run_dir, "--out", str(tmp_path / "s.jpg")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "--out: must end in .png or .safetensors" in err and "Traceback" not in err


def test_resume_takes_the_unet_options_not_given_from_the_run(capsys, tmp_path):
    """A run made with other UNet options (e.g. the larger defaults of earlier versions) resumes without repeating
    them; an option given that contradicts the run is refused with the file and the parameter named."""
    run_dir = str(tmp_path / "run")
    unet = ["--base-channels", "8", "--channel-mult", "1,2", "--num-res-blocks", "2", "--attention-levels", "1",
            "--norm-groups", "4"]
    base = ["train", "ddpm", "--data", "digits", "--limit", "32", "--batch-size", "16", "--out", run_dir,
            "--sample-every", "0", "--n-samples", "2", "--sample-steps", "2", "--no-progress"]
    code, _, err = run(capsys, *base, *unet, "--steps", "1")
    assert code == 0, err
    code, out, err = run(capsys, *base, "--steps", "2", "--resume")
    assert code == 0 and "resumed ddpm from step 1" in out, err
    config = json.loads(open(os.path.join(run_dir, "checkpoint-00000002", "config.json")).read())
    assert config["trainer"]["unet"]["num_res_blocks"] == 2 and config["trainer"]["unet"]["attention_levels"] == [1]
    code, _, err = run(capsys, *base, "--steps", "3", "--resume", "--base-channels", "16")
    assert code == 2 and "does not fit" in err and "Traceback" not in err


def test_default_unet_is_the_small_one():
    _, config = build(build_parser().parse_args(["train", "ddpm", "--out", "x", "--device", "cpu"]))
    assert config.unet == {"base_channels": 32, "channel_mult": [1, 2, 2], "num_res_blocks": 1,
                           "attention_levels": [], "norm_groups": 8, "dropout": 0.0, "time_embedding_norm": "default"}


@pytest.mark.parametrize("kind", ["gan", "wgan-gp", "cgan"])
def test_train_gans_and_sample(capsys, tmp_path, kind):
    code, _, err = run(capsys, "train", kind, "--data", "digits", "--limit", "64", "--batch-size", "16",
                       "--features", "8", "--steps", "1", "--n-critic", "1", "--out", str(tmp_path),
                       "--no-progress")
    assert code == 0, err
    extra = ["--class", "3"] if kind == "cgan" else []
    code, out, err = run(capsys, "sample", "--checkpoint", str(tmp_path), "--n", "3",
                         "--out", str(tmp_path / "g.png"), *extra)
    assert code == 0, err


def test_sample_errors(capsys, tmp_path):
    code, _, err = run(capsys, "sample", "--checkpoint", str(tmp_path / "missing"))
    assert code == 2 and "checkpoint not found" in err
    code, _, err = run(capsys, "sample", "--checkpoint", str(tmp_path))
    assert code == 2 and "holds no checkpoint" in err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("[1, 2")
    code, _, err = run(capsys, "sample", "--checkpoint", str(bad))
    assert code == 2 and "corrupt" in err
    code, _, err = run(capsys, "train", "gan", "--data", "digits", "--limit", "32", "--batch-size", "16",
                       "--features", "8", "--steps", "1", "--out", str(tmp_path / "g"), "--no-progress")
    assert code == 0, err
    code, _, err = run(capsys, "sample", "--checkpoint", str(tmp_path / "g"), "--class", "1")
    assert code == 2 and "class-conditional" in err
    code, _, err = run(capsys, "sample", "--checkpoint", str(tmp_path / "g"), "--progressive")
    assert code == 2 and "diffusion" in err


@pytest.mark.parametrize("argv, message", [
    (["train", "ddpm", "--out", "x", "--steps", "0"], "positive integer"),
    (["train", "ddpm", "--out", "x", "--channel-mult", "1,a"], "comma-separated"),
    (["train", "vae", "--out", "x"], "invalid choice"),
    (["train", "ddpm"], "--out"),
    (["sample", "--checkpoint", "x", "--sampler", "euler"], "invalid choice"),
    (["sample", "--checkpoint", "x", "--eta", "-1"], "non-negative"),
    (["train", "ddpm", "--out", "x", "--base-channels", "1"], "an integer >= 2"),
    (["train", "ddpm", "--out", "x", "--lr-schedule", "step"], "invalid choice"),
    (["train", "gan", "--out", "x", "--lr-warmup-steps", "-1"], "non-negative"),
])
def test_bad_flags(capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("argv", [["eval", "--fake", "x.npy"], ["sample", "--checkpoint", "x"],
                                  ["train", "ddpm", "--out", "x"]], ids=["eval", "sample", "train"])
def test_device_cuda_without_cuda_is_one_line(capsys, argv):
    code, _, err = run(capsys, *argv, "--device", "cuda")
    assert code == 2 and "no CUDA device here" in err and "Traceback" not in err


@pytest.mark.parametrize("content", [b"\x00" * 7, b"garbage that is not a header" * 20, b"\xff" * 300])
@pytest.mark.parametrize("suffix", [".safetensors", ".npy", ".npz"])
def test_eval_corrupt_fake_file_is_one_line(capsys, tmp_path, content, suffix, mnist_dir):
    bad = tmp_path / f"bad{suffix}"
    bad.write_bytes(content)
    code, _, err = run(capsys, "eval", "--fake", str(bad), "--mnist-dir", str(mnist_dir))
    assert code == 2 and str(bad) in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_eval_of_a_checkpoint_that_is_not_28x28_says_why(capsys, tmp_path, mnist_dir):
    code, _, err = run(capsys, "train", "gan", "--data", "digits", "--image-size", "16", "--limit", "32",
                       "--batch-size", "16", "--features", "8", "--steps", "1", "--out", str(tmp_path),
                       "--no-progress")
    assert code == 0, err
    code, _, err = run(capsys, "eval", "--checkpoint", str(tmp_path), "--n", "4", "--mnist-dir", str(mnist_dir))
    assert code == 2 and "draws 1x16x16 images" in err and "Traceback" not in err


def test_missing_mnist_tells_the_cli_user_what_to_do(capsys, tmp_path):
    code, _, err = run(capsys, "train", "ddpm", "--data", "mnist", "--mnist-dir", str(tmp_path),
                       "--out", str(tmp_path / "o"))
    assert code == 2 and "--mnist-dir" in err and "--download" in err


def test_lr_schedule_flags_reach_the_trainer():
    args = build_parser().parse_args(["train", "ddpm", "--out", "x", "--lr", "1e-3", "--lr-schedule", "cosine",
                                      "--lr-warmup-steps", "20", "--device", "cpu"])
    _, config = build(args)
    assert (config.lr_schedule, config.lr_warmup_steps, config.lr) == ("cosine", 20, 1e-3)
    _, config = build(build_parser().parse_args(["train", "gan", "--out", "x", "--device", "cpu"]))
    assert (config.lr_schedule, config.lr_warmup_steps) == ("constant", 0)  # the default is unchanged


def test_r1_gamma_with_wgan_gp_is_one_line(capsys, tmp_path):
    code, _, err = run(capsys, "train", "wgan-gp", "--data", "digits", "--out", str(tmp_path), "--r1-gamma", "1")
    assert code == 2 and "gp_lambda" in err and "Traceback" not in err


def test_base_channels_16_trains_on_the_default_groups(capsys, tmp_path):
    code, out, err = run(capsys, "train", "ddpm", "--data", "digits", "--limit", "16", "--batch-size", "8",
                         "--base-channels", "16", "--channel-mult", "1,2", "--num-res-blocks", "1",
                         "--attention-levels", "", "--steps", "1", "--n-samples", "2", "--sample-steps", "2",
                         "--out", str(tmp_path), "--no-progress")
    assert code == 0, err


def test_train_missing_data_and_resume(capsys, tmp_path):
    code, _, err = run(capsys, "train", "ddpm", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o"))
    assert code == 2 and "no such folder" in err
    code, _, err = run(capsys, "train", "ddpm", "--data", "digits", "--out", str(tmp_path / "o"), "--resume")
    assert code == 2 and "no checkpoint" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run(capsys, "train", "gan", "--data", str(empty), "--out", str(tmp_path / "o2"))
    assert code == 2 and "no images" in err


def test_train_image_folder(capsys, tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(10):
            pixels = rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "imgs" / cls / f"{i}.png")
    code, out, err = run(capsys, "train", "cgan", "--data", str(tmp_path / "imgs"), "--image-size", "32",
                         "--channels", "3", "--batch-size", "8", "--features", "8", "--steps", "1",
                         "--out", str(tmp_path / "o"), "--no-progress")
    assert code == 0, err


def test_sigkill_mid_run_then_resume(capsys, tmp_path):
    """A real kill (SIGKILL, no clean-up) while checkpoints are written every step leaves a loadable checkpoint
    that --resume continues from."""
    run_dir = tmp_path / "run"
    argv = ["train", "gan", "--data", "digits", "--limit", "32", "--batch-size", "16", "--features", "8",
            "--checkpoint-every", "1", "--sample-every", "0", "--no-progress", "--out", str(run_dir)]
    proc = subprocess.Popen([sys.executable, "-m", "gencore.cli", *argv, "--steps", "100000"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            latest = run_dir / "latest.json"
            if latest.exists() and json.loads(latest.read_text())["step"] >= 3:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    step = json.loads((run_dir / "latest.json").read_text())["step"]
    code, out, err = run(capsys, *argv, "--steps", str(step + 1), "--resume")
    assert code == 0, err
    assert f"resumed gan from step {step}" in out


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_signal_during_train_keeps_the_step_reached(capsys, tmp_path, signum, status):
    """Ctrl-C (SIGINT) or SIGTERM to `gencore train` with no periodic checkpoint due: it writes a checkpoint of the
    step reached, names it and the step, and exits 130 / 143; --resume continues from that step."""
    run_dir = tmp_path / "run"
    argv = ["train", "gan", "--data", "digits", "--limit", "32", "--batch-size", "16", "--features", "8",
            "--checkpoint-every", "0", "--sample-every", "1", "--n-samples", "2", "--no-progress",
            "--out", str(run_dir)]
    proc = subprocess.Popen([sys.executable, "-m", "gencore.cli", *argv, "--steps", "100000"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:  # a sample grid per step: training is under way
            if len(list((run_dir / "samples").glob("*.png"))) >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == status, err
    match = re.search(rf"stopped by {signal.Signals(signum).name} at step (\d+); checkpoint of that step: (\S+) "
                      r"\(continue with --resume\)", err)
    assert match, err
    step, folder = int(match.group(1)), match.group(2)
    assert step >= 2 and "Traceback" not in err
    assert json.loads((run_dir / "latest.json").read_text()) == {"checkpoint": os.path.basename(folder),
                                                                  "step": step}
    code, out, err = run(capsys, *argv, "--steps", str(step + 1), "--resume")
    assert code == 0 and f"resumed gan from step {step}" in out, err


BENCH_PROBE = textwrap.dedent("""
    import argparse, sys, types
    import torch
    import gencore.benchmarks as harness
    from gencore.commands import bench

    # One tiny op row, so that its peak memory is measured with torch.profiler as every op row's is.
    tiny = types.ModuleType("gencore.benchmarks.tiny")
    tiny.cases = lambda device, quick: [harness.Case("tiny", "reference", "(4,)", "float32", "forward", 32,
                                                     lambda: (lambda: torch.ones(4) + 1))]
    sys.modules["gencore.benchmarks.tiny"] = tiny
    bench._ops = lambda: ["tiny"]
    bench.run(argparse.Namespace(op=None, threads=None, device="cpu", quick=True, min_time=0.01))
""")


@pytest.mark.parametrize("level, quiet", [(None, True), ("0", False)], ids=["default", "user-set level 0"])
def test_bench_prints_its_table_without_profiler_lines(level, quiet):
    """kineto prints "profiler_start"/"profiler_stop" to the process's stderr for every profiled call unless
    KINETO_LOG_LEVEL says otherwise; `gencore bench` quiets it, unless the user asked for a level."""
    env = {k: v for k, v in os.environ.items() if k != "KINETO_LOG_LEVEL"}
    if level is not None:
        env["KINETO_LOG_LEVEL"] = level
    proc = subprocess.run([sys.executable, "-c", BENCH_PROBE], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| tiny | (4,) | float32 | forward |" in proc.stdout  # the table
    assert ("profiler_start" not in proc.stdout + proc.stderr) == quiet, proc.stderr
