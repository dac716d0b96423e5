"""Checkpoints never lose the last good state and never load a damaged one silently.

Every moment of a save (crashes injected at each point inside write_checkpoint, re-saves of the same step, real
SIGKILLs) leaves a latest checkpoint that loads; corrupt bytes, NaN weights, JSON of the wrong types, paths out of
the run folder and configs that would allocate without bound are refused with a CheckpointError naming the file
(and key)."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

import gencore
from gencore.data import load_digits
from gencore.training import CheckpointError, DDPMConfig, DDPMTrainer, sample_from_checkpoint
from gencore.training import checkpoint as ckpt

TINY_UNET = dict(base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(), norm_groups=4)


@pytest.fixture(autouse=True)
def _reference_backend():
    with gencore.use_backend("reference"):
        yield


@pytest.fixture(scope="module")
def digits():
    return load_digits().subset(32)


def trainer(data, out, steps, **kw):
    return DDPMTrainer(data, DDPMConfig(steps=steps, batch_size=16, progress=False, log_every=1, n_samples=2,
                                        unet=TINY_UNET, sample_steps=2, out_dir=str(out), **kw))


def latest_loads(out) -> int:
    """The latest checkpoint of `out` loads (models, config, trainer state): returns its step."""
    sample_from_checkpoint(str(out), 1, steps=2)
    t = trainer(load_digits().subset(32), out, 10)
    return t.resume()


class Crash(Exception):
    pass


@pytest.fixture
def crash_at():
    def arm(point):
        def hook(name):
            if name == point:
                raise Crash(name)
        ckpt._crash_hook = hook

    yield arm
    ckpt._crash_hook = None


@pytest.mark.parametrize("point", ["files written", "manifest written", "renamed", "latest written",
                                   "removing old"])
def test_a_crash_anywhere_in_a_resave_of_the_same_step_keeps_a_loadable_latest(digits, tmp_path, crash_at, point):
    """Re-running a finished job with --resume and the same --steps saves the same step again. It used to delete
    the folder latest.json pointed at before renaming the new copy in: a kill in between lost the run."""
    trainer(digits, tmp_path, 2, checkpoint_every=1).train()
    assert latest_loads(tmp_path) == 2
    again = trainer(digits, tmp_path, 2, checkpoint_every=1)
    again.resume()
    crash_at(point)
    with pytest.raises(Crash):
        again.save_checkpoint()
    crash_at(None)
    assert latest_loads(tmp_path) == 2
    again.save_checkpoint()  # and a later save tidies up
    names = [d for d in os.listdir(tmp_path) if d.startswith("checkpoint-")]
    assert len(names) == 1 and latest_loads(tmp_path) == 2


@pytest.mark.parametrize("point", ["files written", "manifest written", "renamed", "latest written",
                                   "removing old"])
def test_a_crash_anywhere_in_a_save_resumes_from_the_last_complete_one(digits, tmp_path, crash_at, point):
    t = trainer(digits, tmp_path, 4, checkpoint_every=1)
    step = t.train_step

    def crash_during_third_save(k):
        if k == 2:
            crash_at(point)
        return step(k)

    t.train_step = crash_during_third_save
    with pytest.raises(Crash):
        t.train()
    crash_at(None)
    restored = latest_loads(tmp_path)
    assert restored in (2, 3)  # 3 once latest.json names it
    resumed = trainer(digits, tmp_path, 4, checkpoint_every=1)
    assert resumed.resume() == restored
    resumed.train()
    assert latest_loads(tmp_path) == 4


def _rewrite_manifest(folder):
    os.remove(os.path.join(folder, ckpt.MANIFEST))
    ckpt._write_manifest(folder)


def _edit_json(folder, name, edit, *, manifest=True):
    path = os.path.join(folder, name)
    with open(path) as f:
        obj = json.load(f)
    obj = edit(obj)
    with open(path, "w") as f:
        json.dump(obj, f)
    if manifest:
        _rewrite_manifest(folder)


@pytest.fixture
def run_dir(digits, tmp_path):
    trainer(digits, tmp_path, 1).train()
    return tmp_path, str(tmp_path / "checkpoint-00000001")


def _set(key, value):
    def edit(obj):
        obj[key] = value
        return obj
    return edit


def _delete(key):
    def edit(obj):
        del obj[key]
        return obj
    return edit


@pytest.mark.parametrize("name, edit, match", [
    ("config.json", _set("models", []), r"config.json: 'models' must be an object"),
    ("config.json", _set("data", [1, 28, 28]), r"config.json: 'data' must be an object"),
    ("config.json", _delete("scheduler"), r"config.json: 'scheduler' is missing"),
    ("config.json", lambda c: {**c, "scheduler": {**c["scheduler"], "num_train_timesteps": "1000"}},
     r"config.json \[scheduler\]: 'num_train_timesteps' must be an integer"),
    ("config.json", _delete("step"), r"config.json: 'step' is missing"),
    ("config.json", lambda c: {**c, "models": {"model": {**c["models"]["model"], "config": {
        **c["models"]["model"]["config"], "base_channels": 4096}}}}, r"model(_ema)?.safetensors does not fit the model"),
    ("trainer_state.json", _set("history", [1, 2]), r"trainer_state.json: 'history' must be an object"),
    ("trainer_state.json", _set("rng", "seed"), r"trainer_state.json: 'rng' must be a list"),
    ("trainer_state.json", _delete("step"), r"trainer_state.json: 'step' is missing"),
], ids=["models-list", "data-list", "no-scheduler", "timesteps-string", "no-step", "base-channels-4096",
        "history-list", "rng-string", "state-no-step"])
def test_json_of_the_wrong_types_is_refused_naming_file_and_key(run_dir, name, edit, match):
    out, folder = run_dir
    _edit_json(folder, name, edit)
    with pytest.raises(CheckpointError, match=match):
        latest_loads(out)


def test_latest_json_of_the_wrong_type_or_pointing_outside(run_dir):
    out, _ = run_dir
    latest = out / "latest.json"
    latest.write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="latest.json: expected a JSON object"):
        latest_loads(out)
    os.makedirs(out.parent / "elsewhere", exist_ok=True)
    latest.write_text(json.dumps({"checkpoint": "../elsewhere", "step": 1}))
    with pytest.raises(CheckpointError, match="must name a checkpoint-<step> folder"):
        latest_loads(out)


def test_random_bytes_in_a_tensor_payload_fail_the_checksum(run_dir):
    out, folder = run_dir
    path = os.path.join(folder, "model.safetensors")
    data = bytearray(open(path, "rb").read())
    header = 8 + int.from_bytes(data[:8], "little")
    data[header + 100:header + 108] = os.urandom(8)  # inside the data region: safetensors itself cannot notice
    open(path, "wb").write(bytes(data))
    with pytest.raises(CheckpointError, match="model.safetensors is corrupt: its content differs from the checksum"):
        latest_loads(out)


def test_nan_weights_do_not_load(run_dir):
    out, folder = run_dir
    from safetensors.torch import load_file, save_file

    path = os.path.join(folder, "model_ema.safetensors")
    state = load_file(path)
    save_file({k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in state.items()}, path)
    _rewrite_manifest(folder)  # a checkpoint saved from a run that had diverged: the checksums match
    with pytest.raises(CheckpointError, match="model_ema.safetensors: tensor .* NaN"):
        latest_loads(out)


def test_an_optimizer_tensor_of_the_wrong_shape_is_refused_on_resume(run_dir, digits):
    out, folder = run_dir
    from safetensors.torch import load_file, save_file

    path = os.path.join(folder, "trainer_state.safetensors")
    state = load_file(path)
    key = next(k for k, v in state.items() if k.startswith("optimizer.") and v.dim() == 4)
    state[key] = torch.zeros(3, 3)
    save_file(state, path)
    _rewrite_manifest(folder)
    with pytest.raises(CheckpointError, match="optimizer state of 'model' does not fit.*shape"):
        trainer(digits, out, 2).resume()


def test_fid_load_reference_names_a_corrupt_file(tmp_path):
    from gencore.metrics import FID

    bad = tmp_path / "stats.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    with pytest.raises(ValueError, match="stats.safetensors"):
        FID(lambda x: x.flatten(1)).load_reference(bad)


def test_sigkill_at_random_moments_always_resumes(tmp_path):
    """Real SIGKILLs at random moments of a run that saves every step: every resume succeeds and continues from
    the last complete checkpoint. Bounded: five kills."""
    out = tmp_path / "run"
    script = (
        "import sys, gencore\n"
        "from gencore.data import load_digits\n"
        "from gencore.training import DDPMConfig, DDPMTrainer\n"
        "from gencore.training.checkpoint import has_checkpoint\n"
        f"t = DDPMTrainer(load_digits().subset(32), DDPMConfig(steps=400, batch_size=16, progress=False, "
        f"n_samples=2, unet={TINY_UNET!r}, sample_steps=2, checkpoint_every=1, out_dir={str(out)!r}))\n"
        "if has_checkpoint(t.config.out_dir): t.resume()\n"
        "print('ready', flush=True)\n"
        "with gencore.use_backend('reference'): t.train()\n"
    )
    rng = random.Random(0)
    last = 0
    for _ in range(5):
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert proc.stdout.readline().strip() == b"ready", proc.stderr.read().decode()[-2000:]
        time.sleep(rng.uniform(0.2, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        step = latest_loads(out)
        assert step >= last  # never goes back
        last = step
    assert last > 0
