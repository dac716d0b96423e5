"""diffusers' pipelines saving and loading gencore's schedulers (diffusers is imported only when this is called)."""
from __future__ import annotations

from . import dpm_solver, schedulers


def register_with_diffusers() -> None:
    """Let diffusers' ``DiffusionPipeline.save_pretrained`` save gencore's schedulers (and ``from_pretrained``
    load them back as gencore's classes, once gencore.diffusion is imported).

    diffusers saves a component only if its class derives from a base class listed in its loader's table of
    libraries; this adds gencore's scheduler modules to that table (a documented extension point would be better;
    diffusers has none). Importing gencore never imports diffusers: call this after importing diffusers.
    """
    try:
        from diffusers.pipelines import pipeline_loading_utils
    except ImportError as exc:
        raise ImportError(f"register_with_diffusers needs diffusers: {exc}") from None
    for module in (schedulers, dpm_solver):
        pipeline_loading_utils.LOADABLE_CLASSES.setdefault(
            module.__name__, {"SchedulerMixin": ["save_pretrained", "from_pretrained"]})
