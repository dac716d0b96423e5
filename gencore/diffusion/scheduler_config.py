"""A scheduler's configuration, and what diffusers expects of a scheduler's configuration, without diffusers.

gencore's schedulers take diffusers' constructor arguments; this module gives them diffusers' configuration API as
well, so that code and pipelines written for diffusers' schedulers hold gencore's:

    scheduler = gencore.diffusion.DDIMScheduler.from_config(pipe.scheduler.config)    # any diffusers config
    scheduler.save_pretrained("run/scheduler")        # scheduler_config.json, readable by diffusers' classes too
    scheduler = gencore.diffusion.DDIMScheduler.from_pretrained("run", subfolder="scheduler")
    scheduler.register_to_config(steps_offset=1)      # what Stable Diffusion's pipelines do to an old config

A configuration change (register_to_config, or assigning ``_internal_dict`` as diffusers' pipelines do) rebuilds the
scheduler from the new values: gencore builds its tables from the configuration, so an edited configuration that
the tables did not follow would be silently ignored.

Saving a whole pipeline: diffusers' ``DiffusionPipeline.save_pretrained`` saves only components whose class derives
from one of diffusers' own base classes, so it writes ``"scheduler": [null, null]`` for any other scheduler. After
``gencore.diffusion.register_with_diffusers()`` (gencore/diffusion/diffusers_interop.py) it saves gencore's
schedulers (model_index.json names the class's module, e.g. ``gencore.diffusion.schedulers``), and
``from_pretrained`` of that folder loads them back as gencore's classes.

Also here, as in diffusers' scheduling_utils: what every scheduler shares besides its math. The configuration's
vocabularies (PREDICTION_TYPES, ...), the checks of configuration values (check_int, check_float, check_bool,
check_choice: a bad value is an error naming the field, at construction) and SchedulerOutput, what step() returns.
"""
from __future__ import annotations

import functools
import inspect
import json
import math
import numbers
import os
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

CONFIG_NAME = "scheduler_config.json"

# The configuration's vocabularies (diffusers' names), shared by every scheduler.
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
TIMESTEP_SPACINGS = ("leading", "linspace", "trailing")
VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range")
LEARNED_VARIANCE_TYPES = ("learned", "learned_range")


class SchedulerConfig(dict):
    """A scheduler's configuration: a read-only dict with attribute access (``config.num_train_timesteps``).

    ``_class_name`` names the scheduler class, as in diffusers' scheduler_config.json, so the dict can be saved as
    one; from_config ignores it (and every other key it does not know).
    """

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"scheduler config has no field {name!r}") from None

    def _read_only(self, *args, **kwargs):
        raise TypeError("a scheduler config is read-only; use scheduler.register_to_config(name=value), or make a "
                        "new scheduler with Scheduler.from_config(scheduler.config, name=value)")

    __setitem__ = __delitem__ = __setattr__ = __delattr__ = _read_only
    clear = pop = popitem = setdefault = update = _read_only

    def __reduce__(self):
        return (SchedulerConfig, (dict(self),))


def _as_mapping(config) -> Mapping:
    if config is None:
        return {}
    if not isinstance(config, Mapping) and hasattr(config, "config"):
        config = config.config
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a dict (or have a .config dict), got {type(config).__name__}")
    return config


# gencore.diffusion's scheduler classes by name: what `compatibles` resolves _compatibles against.
_SCHEDULER_CLASSES: dict[str, type] = {}


class SchedulerMixin:
    """diffusers' scheduler configuration API for a class whose constructor arguments are ``_fields``.

    (The name is diffusers' own: its pipeline loader finds a component's loading methods through a base class of
    that name in the component's module.)
    """

    config_name = CONFIG_NAME
    _fields: tuple[str, ...] = ()
    _compatibles: tuple[str, ...] = ()  # names of the gencore.diffusion classes that take the same config
    _deprecated_kwargs: list[str] = []  # diffusers' ConfigMixin reads it; gencore has none
    _config: SchedulerConfig

    def __init_subclass__(cls, **kwargs):
        # Record which constructor arguments a call passed (diffusers' register_to_config decorator does the same):
        # the others are "default values", which another scheduler class built from this config replaces with
        # its own defaults.
        super().__init_subclass__(**kwargs)
        if cls.__module__.startswith(__package__ + "."):
            _SCHEDULER_CLASSES[cls.__name__] = cls
        init = cls.__dict__.get("__init__")
        if init is None:
            return
        signature = inspect.signature(init)

        @functools.wraps(init)
        def recording_init(self, *args, **kw):
            self._passed_fields = set(signature.bind_partial(self, *args, **kw).arguments) - {"self"}
            init(self, *args, **kw)

        cls.__init__ = recording_init

    def _store_config(self, values: Mapping) -> None:
        """Keep the validated constructor values as the configuration, with diffusers' bookkeeping keys:
        _class_name, and (when some were not passed) _use_default_values, the fields left at their default."""
        passed = self.__dict__.get("_passed_fields", set(self._fields))
        config = {"_class_name": type(self).__name__}
        defaulted = [k for k in self._fields if k not in passed]
        if defaulted:
            config["_use_default_values"] = defaulted
        config.update({k: values[k] for k in self._fields})
        config.update(self.__dict__.get("_hidden_config", {}))
        self._config = SchedulerConfig(config)

    @property
    def config(self) -> SchedulerConfig:
        """The configuration (read-only dict with attribute access); ``type(s).from_config(s.config)`` rebuilds s."""
        return self._config

    @classmethod
    def from_config(cls, config=None, return_unused_kwargs: bool = False, **changes):
        """Build a scheduler from a config dict (or anything with a ``.config``), e.g. a diffusers scheduler's.

        Keys this scheduler does not take (``_class_name``, ``_diffusers_version``, another scheduler's options such
        as ``skip_prk_steps``) are ignored, as diffusers does; the values of the keys it takes are validated.
        ``changes`` override the config. A change that is not a constructor argument is an error (a misspelt
        option must not pass silently), unless ``return_unused_kwargs`` asks for them back: then the result is
        ``(scheduler, unused)`` as in diffusers.
        """
        config = _as_mapping(config)
        defaulted = set(config.get("_use_default_values", ()))  # the source's defaults: take ours instead
        config = {k: v for k, v in config.items() if k not in defaulted}
        unused = {k: v for k, v in changes.items() if k not in cls._fields}
        if unused and not return_unused_kwargs:
            raise TypeError(f"{cls.__name__}.from_config got unknown arguments: {', '.join(sorted(unused))}")
        kwargs = {k: config[k] for k in cls._fields if k in config}
        kwargs.update({k: v for k, v in changes.items() if k in cls._fields})
        scheduler = cls(**kwargs)
        # Another class's options ride along in the config (diffusers keeps them too), so that a DDPM config
        # through DDIM and back keeps its variance_type.
        hidden = {k: v for k, v in config.items() if not k.startswith("_") and k not in cls._fields}
        if hidden:
            scheduler._hidden_config = hidden
            scheduler._config = SchedulerConfig({**scheduler._config, **hidden})
        return (scheduler, unused) if return_unused_kwargs else scheduler

    @classmethod
    def load_config(cls, pretrained_model_name_or_path, subfolder: str | None = None) -> dict:
        """The dict in ``<path>[/<subfolder>]/scheduler_config.json`` (a local folder or the file itself)."""
        path = os.fspath(pretrained_model_name_or_path)
        if subfolder:
            path = os.path.join(path, subfolder)
        if not path.endswith(".json"):
            path = os.path.join(path, cls.config_name)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no scheduler configuration at {path} (gencore reads local folders only; "
                                    "download a hub repository first)")
        with open(path, encoding="utf-8") as f:
            try:
                config = json.load(f)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path} is not a JSON scheduler configuration: {exc}") from None
        if not isinstance(config, dict):
            raise ValueError(f"{path} holds a {type(config).__name__}, not a scheduler configuration object")
        return config

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path=None, subfolder: str | None = None,
                        return_unused_kwargs: bool = False, **kwargs):
        """A scheduler from a saved ``scheduler_config.json`` (gencore's or diffusers'), with ``kwargs`` overriding.

        diffusers' download options (cache_dir, revision, ...) have no meaning for a local folder and are ignored.
        """
        hub_options = {"cache_dir", "force_download", "proxies", "local_files_only", "token", "revision",
                       "use_auth_token", "resume_download"}
        changes = {k: v for k, v in kwargs.items() if k not in hub_options}
        config = cls.load_config(pretrained_model_name_or_path, subfolder=subfolder)
        return cls.from_config(config, return_unused_kwargs=return_unused_kwargs, **changes)

    def save_config(self, save_directory, push_to_hub: bool = False, **kwargs) -> None:
        """Write ``<save_directory>/scheduler_config.json`` (diffusers' format: the constructor arguments and
        ``_class_name``), creating the folder. A file is written beside and renamed in, so a crash leaves the old
        file or the new one, never half of one."""
        if push_to_hub:
            raise NotImplementedError("gencore does not upload to a hub: push the saved folder yourself")
        if os.path.isfile(save_directory):
            raise ValueError(f"save_directory {save_directory} is a file, not a folder")
        os.makedirs(save_directory, exist_ok=True)
        path = os.path.join(save_directory, self.config_name)
        config = {k: v for k, v in self._config.items() if k != "_use_default_values"}  # as diffusers writes
        config["_gencore_version"] = sys.modules["gencore"].__version__
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    save_pretrained = save_config

    def register_to_config(self, **changes) -> None:
        """Change configuration values. A constructor field rebuilds the scheduler from the new values (keeping
        its inference schedule): gencore builds its tables from the configuration, which must not be ignored. Any
        other name is stored in the configuration only, as diffusers stores it (config[name], and an attribute
        with diffusers' FutureWarning)."""
        extra = {k: v for k, v in changes.items() if k not in self._fields}
        fields = {k: v for k, v in changes.items() if k in self._fields}
        if fields:
            values = {k: self._config[k] for k in self._fields}
            values.update(fields)
            defaulted = set(self._config.get("_use_default_values", ())) - set(fields)
            restore_schedule = self._schedule_restorer()
            type(self).__init__(self, **{k: v for k, v in values.items() if k not in defaulted})
            if restore_schedule is not None:
                restore_schedule()
        if extra:
            self._hidden_config = {**self.__dict__.get("_hidden_config", {}), **extra}
            self._config = SchedulerConfig({**self._config, **extra})

    def __getattr__(self, name):
        # Called only for names that are not attributes. diffusers' ConfigMixin reads a configuration value as an
        # attribute too (scheduler.beta_start), deprecated there with a FutureWarning: the same here, so that code
        # written for diffusers reads gencore's schedulers alike.
        config = self.__dict__.get("_config")
        if config is not None and name in config and not name.startswith("__"):
            warnings.warn(f"Accessing config attribute `{name}` directly via '{type(self).__name__}' object "
                          f"attribute is deprecated. Please access '{name}' over '{type(self).__name__}'s config "
                          f"object instead, e.g. 'scheduler.config.{name}'.", FutureWarning, stacklevel=2)
            return config[name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def _schedule_restorer(self):
        """A function that sets the inference schedule in use again after a rebuild (what register_to_config keeps,
        as diffusers keeps it), or None before set_timesteps."""
        if getattr(self, "num_inference_steps", None) is None:
            return None
        timesteps, device = [int(t) for t in self.timesteps.tolist()], self.timesteps.device
        return lambda: self.set_timesteps(timesteps=timesteps, device=device)

    @property
    def _internal_dict(self) -> SchedulerConfig:
        # diffusers' ConfigMixin keeps the configuration here, and pipelines assign a new FrozenDict to it.
        return self._config

    @_internal_dict.setter
    def _internal_dict(self, config) -> None:
        config = _as_mapping(config)
        self.register_to_config(**{k: v for k, v in config.items() if not k.startswith("_") and (
            k not in self._config or v != self._config[k])})

    # What a sampling loop (gencore.diffusion.sample) asks a scheduler; the answers here are those of a scheduler
    # whose step() takes no options and keeps no history. Each scheduler also answers default_inference_steps
    # and draws_noise(**step_options).

    def loop_step_options(self, eta: float | None = None, use_clipped_model_output: bool | None = None) -> dict:
        """The keyword arguments a sampling loop passes to every step(): none (eta and use_clipped_model_output are
        DDIM's; a value for them is an error rather than ignored)."""
        for name, value in (("eta", eta), ("use_clipped_model_output", use_clipped_model_output)):
            if value is not None:
                raise ValueError(f"{name} is a DDIM option; {type(self).__name__} takes none")
        return {}

    def restart(self) -> None:
        """Start a new loop: nothing to forget (a step that depends on its timestep only)."""

    @property
    def compatibles(self) -> list[type]:
        """The gencore.diffusion scheduler classes that take this one's configuration (itself included)."""
        return [type(self)] + [_SCHEDULER_CLASSES[name] for name in self._compatibles
                               if name != type(self).__name__ and name in _SCHEDULER_CLASSES]


# ---------------------------------------------------------------------------------------------------------------------
# Configuration values: every bad value is a ValueError/TypeError naming the field.


def check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_float(name, value, *, positive=False, low=None, high=None):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise TypeError(f"{name} must be a finite float, got {type(value).__name__} {value!r}")
    value = float(value)
    if positive and value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name} must lie in [{low}, {high}], got {value}")
    return value


def check_bool(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
    return bool(value)


def check_guidance_scale(value) -> float:
    """Classifier-free guidance's weight w, checked once where it enters (scheduler.step, sample()) and trusted
    below: a finite real number (1: no guidance; 0: the unconditional prediction alone)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"guidance_scale must be a float, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"guidance_scale must be finite, got {value}")
    return value


def check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


# ---------------------------------------------------------------------------------------------------------------------
# What step() returns (diffusers' SchedulerOutput, without diffusers)


@dataclass
class SchedulerOutput:
    """What step() returns.

    prev_sample: x_{t-1}, shaped and typed like the sample: the next model input.
    pred_original_sample: the predicted x_0 after clipping/thresholding, like the sample (a preview, or for guidance).
    """

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor

    # diffusers' BaseOutput is an ordered dict whose fields are also attributes and positions: out["prev_sample"],
    # out[0], out.keys(), and iteration over the keys. The same here, without importing diffusers.
    def to_tuple(self) -> tuple[torch.Tensor, torch.Tensor]:
        return (self.prev_sample, self.pred_original_sample)

    def keys(self):
        return ("prev_sample", "pred_original_sample")

    def values(self):
        return self.to_tuple()

    def items(self):
        return tuple(zip(self.keys(), self.values()))

    def __getitem__(self, key):
        if isinstance(key, str):
            if key not in self.keys():
                raise KeyError(key)
            return getattr(self, key)
        return self.to_tuple()[key]

    def __iter__(self):
        return iter(self.keys())

    def __len__(self) -> int:
        return 2

    def __contains__(self, key) -> bool:
        return key in self.keys()


DDPMSchedulerOutput = SchedulerOutput
DDIMSchedulerOutput = SchedulerOutput
