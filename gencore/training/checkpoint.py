"""Checkpoints without pickle: safetensors weights + JSON config and trainer state, written atomically.

A run folder looks like:

    OUT/latest.json                 {"checkpoint": "checkpoint-00001200", "step": 1200}   (replaced atomically)
    OUT/checkpoint-00001200/        (a second save of the same step goes to checkpoint-00001200.1, ...)
        config.json                 kind ("ddpm", "gan", "wgan-gp", "cgan"), models {role: {name, config}},
                                    scheduler config (DDPM), trainer config, data description, step
        <role>.safetensors          weights of each model (e.g. model, generator, discriminator)
        <role>_ema.safetensors      the EMA weights, when the run keeps an EMA
        trainer_state.safetensors   optimizer tensors and torch RNG states (one per process under DDP)
        trainer_state.json          step, loss history, optimizer hyper-parameters, Python/NumPy RNG states
        manifest.json               the SHA-256 and size of every other file, verified on every load

A checkpoint is first written into a temporary folder next to it (every file fsynced) and renamed into place under
a name no other checkpoint has, the folder fsynced; only then is latest.json replaced (temporary file, fsync,
os.replace) and older checkpoints removed. Killing the process (or losing power) at any moment leaves a complete
checkpoint that latest.json points to, so `--resume` loses at most the steps since it. Loading checks the manifest,
the JSON files' types, that every float weight is finite and that the weights fit the models before any large
allocation, and names the file (and key) it refuses.

`load_checkpoint`, `gencore.training.generate.sample_from_checkpoint` and `gencore sample/eval --checkpoint` accept either the run folder or
one checkpoint folder.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..diffusion import DDPMScheduler
from ..models import build_model

FORMAT = "gencore-checkpoint"
VERSION = 2          # 2: manifest.json with checksums; version 1 checkpoints (no manifest) still load
READABLE_VERSIONS = (1, 2)
LATEST = "latest.json"
MANIFEST = "manifest.json"
_NAME = re.compile(r"checkpoint-(\d{8,})(?:\.(\d+))?")


class CheckpointError(ValueError):
    """A checkpoint folder is missing, incomplete or corrupt (the message names the file)."""


def _fsync_file(path: str) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: str) -> None:
    """Make a rename or a new file in `path` durable (POSIX: the directory entry lives in the directory)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_json(path: str, obj) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


_TYPE_NAMES = {dict: "an object", list: "a list", str: "a string", int: "an integer", bool: "true or false",
               float: "a number"}


def expect(obj, key: str, kind, where: str, *, optional: bool = False):
    """obj[key] checked to be of type `kind` (a type or tuple), else a CheckpointError naming the file and key."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if key not in obj:
        if optional:
            return None
        raise CheckpointError(f"{where}: {key!r} is missing")
    value = obj[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    bad_bool = isinstance(value, bool) and bool not in kinds
    if not isinstance(value, kinds) or bad_bool:
        wanted = " or ".join(_TYPE_NAMES.get(k, k.__name__) for k in kinds)
        raise CheckpointError(f"{where}: {key!r} must be {wanted}, got {json.dumps(value)[:60]}")
    return value


def _read_json(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing: not a complete gencore checkpoint") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is corrupt ({exc})") from None


def save_tensors(path: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """safetensors file of CPU, contiguous, unshared copies (safetensors refuses aliased storage)."""
    save_file({k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}, path, metadata=metadata)
    _fsync_file(path)


def save_tensors_atomic(path: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """save_tensors to a temporary file beside `path`, renamed into place: `path` is the old file or the whole new
    one at every moment."""
    tmp = f"{path}.tmp-{os.getpid()}"
    save_tensors(tmp, tensors, metadata)
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


def tensor_metadata(path: str) -> dict[str, str]:
    """The string metadata of a safetensors file (empty when it has none)."""
    try:
        with safe_open(path, framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path} is corrupt ({exc})") from None


def load_tensors(path: str, device: str | torch.device = "cpu", *, finite: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; with `finite`, every floating-point tensor must hold only finite values
    (weights that went NaN must not load and train on silently)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path} is missing: not a complete gencore checkpoint")
    try:
        tensors = load_file(path, device=str(device))
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"{path} is corrupt ({exc})") from None
    if finite:
        for key, t in tensors.items():
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise CheckpointError(f"{path}: tensor {key!r} holds NaN or infinite values (the run had diverged "
                                      f"when it was saved); resume from an earlier checkpoint")
    return tensors


def tensor_shapes(path: str) -> dict[str, tuple[int, ...]]:
    """{key: shape} of a safetensors file from its header alone (nothing is loaded)."""
    try:
        with safe_open(path, framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"{path} is corrupt ({exc})") from None


def file_sha256(path: str) -> str:
    """The SHA-256 of a file's bytes, as the manifest lists it: what identifies a model's weights wherever they lie."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_manifest(folder: str) -> None:
    files = {}
    for name in sorted(os.listdir(folder)):
        full = os.path.join(folder, name)
        files[name] = {"sha256": file_sha256(full), "bytes": os.path.getsize(full)}
    _write_json(os.path.join(folder, MANIFEST), {"format": FORMAT, "files": files})


def verify_checkpoint(folder: str) -> None:
    """Check every file of a checkpoint folder against its manifest (size and SHA-256); a CheckpointError names the
    first file that is missing or differs. Version-1 checkpoints have no manifest and pass."""
    path = os.path.join(folder, MANIFEST)
    if not os.path.isfile(path):
        config = _read_json(os.path.join(folder, "config.json"))
        if isinstance(config, dict) and config.get("version") == 1:
            return
        raise CheckpointError(f"{path} is missing: not a complete gencore checkpoint")
    manifest = _read_json(path)
    files = expect(manifest, "files", dict, path)
    for name, entry in files.items():
        where = os.path.join(folder, name)
        if os.path.basename(name) != name or name in ("", ".", ".."):
            raise CheckpointError(f"{path}: {name!r} is not a file name inside the checkpoint")
        size = expect(entry, "bytes", int, f"{path} [{name!r}]")
        digest = expect(entry, "sha256", str, f"{path} [{name!r}]")
        if not os.path.isfile(where):
            raise CheckpointError(f"{where} is missing (listed in {MANIFEST})")
        if os.path.getsize(where) != size or file_sha256(where) != digest:
            raise CheckpointError(f"{where} is corrupt: its content differs from the checksum in {MANIFEST}")


def _checkpoint_sort_key(name: str) -> tuple[int, int]:
    m = _NAME.fullmatch(name)
    return (int(m.group(1)), int(m.group(2) or 0)) if m else (-1, -1)


def resolve_checkpoint(path: str) -> str:
    """The checkpoint folder for `path`: itself if it holds config.json, else the one OUT/latest.json names."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if not os.path.isdir(path):
        raise CheckpointError(f"{path} is a file; a checkpoint is a folder (a run's --out folder or one of its "
                              "checkpoint-* folders)")
    if os.path.isfile(os.path.join(path, "config.json")):
        return path
    latest = os.path.join(path, LATEST)
    if os.path.isfile(latest):
        name = expect(_read_json(latest), "checkpoint", str, latest)
        if not _NAME.fullmatch(name):  # a plain checkpoint-<step> name: never a path out of the run folder
            raise CheckpointError(f"{latest}: 'checkpoint' must name a checkpoint-<step> folder of {path}, "
                                  f"got {name!r}")
        if not os.path.isdir(os.path.join(path, name)):
            raise CheckpointError(f"{latest} points to {name!r}, which is not a folder in {path}")
        return os.path.join(path, name)
    raise CheckpointError(f"{path} holds no checkpoint (neither config.json nor {LATEST}); was the run stopped "
                          "before its first checkpoint?")


def has_checkpoint(out_dir: str) -> bool:
    return os.path.isfile(os.path.join(out_dir, LATEST)) or os.path.isfile(os.path.join(out_dir, "config.json"))


# Points inside write_checkpoint where tests inject a crash (the torture test); None in normal runs.
_crash_hook = None


def _crash_point(name: str) -> None:
    if _crash_hook is not None:
        _crash_hook(name)


def write_checkpoint(out_dir: str, step: int, config: dict, weights: dict[str, dict[str, torch.Tensor]],
                     state_tensors: dict[str, torch.Tensor], state_json: dict, keep: int = 1) -> str:
    """Write checkpoint-<step> under out_dir atomically, point latest.json at it, keep the newest `keep`.

    weights: {file stem: state_dict}; state_tensors / state_json: the trainer state (optimizer, RNG, history).
    A second save of the same step (a re-run with --resume and the same --steps) gets its own folder
    (checkpoint-<step>.1, ...): the folder latest.json points to is never touched until latest.json points
    elsewhere. Returns the checkpoint folder.
    """
    os.makedirs(out_dir, exist_ok=True)
    name = f"checkpoint-{step:08d}"
    copy = 0
    while os.path.exists(os.path.join(out_dir, name)):
        copy += 1
        name = f"checkpoint-{step:08d}.{copy}"
    final = os.path.join(out_dir, name)
    tmp = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=out_dir)
    try:
        for stem, sd in weights.items():
            save_tensors(os.path.join(tmp, f"{stem}.safetensors"), sd)
        save_tensors(os.path.join(tmp, "trainer_state.safetensors"), state_tensors)
        _write_json(os.path.join(tmp, "trainer_state.json"), state_json)
        _write_json(os.path.join(tmp, "config.json"), {"format": FORMAT, "version": VERSION, "step": step, **config})
        _crash_point("files written")
        _write_manifest(tmp)
        _crash_point("manifest written")
        os.rename(tmp, final)
        _fsync_dir(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _crash_point("renamed")
    _write_json(os.path.join(out_dir, LATEST), {"checkpoint": name, "step": step})
    _crash_point("latest written")
    old = sorted((d for d in os.listdir(out_dir) if _NAME.fullmatch(d) and d != name), key=_checkpoint_sort_key)
    for i, d in enumerate(old[:max(0, len(old) - (keep - 1))]):
        shutil.rmtree(os.path.join(out_dir, d), ignore_errors=True)
        if i == 0:
            _crash_point("removing old")
    for d in os.listdir(out_dir):  # temporary folders of runs killed mid-write
        if d.startswith(".checkpoint-") and ".tmp-" in d:
            shutil.rmtree(os.path.join(out_dir, d), ignore_errors=True)
    return final


def read_config(path: str, *, verify: bool = True) -> dict:
    """config.json of a checkpoint (path: run folder or checkpoint folder), validated; with `verify`, every file
    of the checkpoint is checked against its manifest first."""
    ckpt = resolve_checkpoint(path)
    where = os.path.join(ckpt, "config.json")
    config = _read_json(where)
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise CheckpointError(f"{where} is not a gencore checkpoint config")
    if config.get("version") not in READABLE_VERSIONS:
        raise CheckpointError(f"checkpoint version {config.get('version')} is not supported (this gencore reads "
                              f"versions {', '.join(map(str, READABLE_VERSIONS))})")
    if verify:
        verify_checkpoint(ckpt)
    expect(config, "kind", str, where)
    expect(config, "step", int, where)
    models = expect(config, "models", dict, where)
    for role, desc in models.items():
        expect(desc, "name", str, f"{where} [models.{role}]")
        expect(desc, "config", dict, f"{where} [models.{role}]")
    data = expect(config, "data", dict, where)
    shape = expect(data, "image_shape", list, f"{where} [data]")
    if len(shape) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape):
        raise CheckpointError(f"{where} [data]: 'image_shape' must be three positive integers, got {shape}")
    expect(data, "num_classes", (int, type(None)), f"{where} [data]", optional=True)
    if config["kind"] == "ddpm":
        scheduler = expect(config, "scheduler", dict, where)
        expect(scheduler, "num_train_timesteps", int, f"{where} [scheduler]", optional=True)
        try:
            DDPMScheduler.from_config(dict(scheduler))
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{where} [scheduler]: {exc}") from None
    return config


def build_checked_model(desc: dict, weights_file: str, where: str) -> torch.nn.Module:
    """The model that `desc` ({"name", "config"}) describes, built only after its parameter shapes, worked out on
    the meta device (no memory), match the tensors in `weights_file`: a config that asks for a huge model is
    refused before anything is allocated, with a message naming both files."""
    try:
        with torch.device("meta"):
            skeleton = build_model(desc["name"], desc["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{where}: cannot rebuild model {desc.get('name')!r} ({exc})") from None
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    stored = tensor_shapes(weights_file)
    for key, shape in expected.items():
        if stored.get(key) != shape:
            got = "missing" if key not in stored else f"shape {stored[key]}"
            raise CheckpointError(f"{weights_file} does not fit the model of {where}: {key!r} should have shape "
                                  f"{shape}, the file has it {got}")
    return build_model(desc["name"], desc["config"])


def weights_file(ckpt: str, role: str, ema: bool = True) -> str:
    """The safetensors file a role's weights load from: its EMA weights where kept and ema, else its own."""
    stem = f"{role}_ema" if ema and os.path.isfile(os.path.join(ckpt, f"{role}_ema.safetensors")) else role
    return os.path.join(ckpt, f"{stem}.safetensors")


def load_models(path: str, *, device: str | torch.device = "cpu", ema: bool = True) -> tuple[dict, dict]:
    """Rebuild every model of a checkpoint in eval mode: returns ({role: module}, config).

    With ema=True a role's EMA weights are used where the checkpoint has them (what sampling should use).
    """

    ckpt = resolve_checkpoint(path)
    config = read_config(ckpt)
    models = {}
    for role, desc in config["models"].items():
        file = weights_file(ckpt, role, ema)
        model = build_checked_model(desc, file, f"{os.path.join(ckpt, 'config.json')} [models.{role}]")
        state = load_tensors(file, finite=True)
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise CheckpointError(f"{file} does not fit the model in config.json: {str(exc).splitlines()[0]}") \
                from None
        models[role] = model.to(device).eval()
    return models, config


# ---------------------------------------------------------------------------------------------------------------------
# The trainers' state: optimizers and random-number generators as safetensors + JSON (no pickle)


def check_optimizer_state(opt: torch.optim.Optimizer, loaded: dict) -> None:
    """Every saved per-parameter tensor has its parameter's shape (or is a scalar such as Adam's step): torch would
    accept a wrong shape and fail, or broadcast silently, at the first step after resuming."""
    params = [p for group in opt.param_groups for p in group["params"]]
    saved_groups = loaded.get("param_groups", [])
    if sum(len(g.get("params", [])) for g in saved_groups) != len(params):
        raise ValueError(f"{sum(len(g.get('params', [])) for g in saved_groups)} parameters saved, the model has "
                         f"{len(params)}")
    ids = [i for g in saved_groups for i in g["params"]]
    for index, param in zip(ids, params):
        for name, value in loaded.get("state", {}).get(index, {}).items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != param.shape:
                raise ValueError(f"state {name!r} of parameter {index} has shape {tuple(value.shape)}, the parameter "
                                 f"{tuple(param.shape)}")


def jsonable(obj):
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (tuple, list)):
        return [jsonable(o) for o in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def python_rng_state(s):
    return (s[0], tuple(s[1]), s[2])


def numpy_rng_state(s):
    return (s[0], np.array(s[1], dtype=np.uint32), int(s[2]), int(s[3]), float(s[4]))


def flatten_optimizer_state(sd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state_dict into tensors (for safetensors) and the JSON rest."""
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{idx}.{k}"] = v
            else:
                scalars.setdefault(str(idx), {})[k] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def unflatten_optimizer_state(tensors: dict[str, torch.Tensor], rest: dict) -> dict:
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        idx, k = key.split(".", 1)
        state.setdefault(int(idx), {})[k] = v
    for idx, st in rest.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(st)
    return {"state": state, "param_groups": rest["param_groups"]}
