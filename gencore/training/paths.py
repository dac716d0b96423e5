"""Output paths checked before any work: a run folder or an output file that cannot be written is refused at once,
with one message naming the path as it was given, instead of an OSError (about a temporary file) at the first save,
after the training or sampling it was meant to keep.

The check writes a probe file where the output would go (in the nearest folder that already exists) and removes it:
asking for permissions is not enough, since root passes every permission check yet cannot write on a read-only
mount or into /proc and /sys. It creates no folder; the writers create them.
"""
from __future__ import annotations

import os
import tempfile


class OutputPathError(ValueError):
    """An output path that cannot be written; the message names the path as given and why."""


def _nearest_existing(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.lexists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def _check_can_create_in(folder: str, name: str, given: str) -> None:
    base = _nearest_existing(folder)
    if not os.path.isdir(base):
        raise OutputPathError(f"{name} {given}: {base} is a file, not a folder")
    try:
        with tempfile.NamedTemporaryFile(dir=base, prefix=".gencore-probe-"):
            pass
    except OSError as exc:
        raise OutputPathError(f"{name} {given}: cannot create files in {base} ({exc.strerror or exc})") from None


def check_output_folder(path: str, name: str = "out_dir") -> None:
    """`path` is a folder, or can be created as one, in which this process can create files; else OutputPathError
    naming `name` (the argument, e.g. "--out") and `path`."""
    if not path:
        raise OutputPathError(f"{name}: empty path")
    if os.path.lexists(path) and not os.path.isdir(path):
        raise OutputPathError(f"{name} {path}: is a file, not a folder")
    _check_can_create_in(path, name, path)


def check_output_file(path: str, name: str = "out") -> None:
    """A file can be written (created or replaced) at `path`, its folder created where missing; else
    OutputPathError naming `name` and `path`."""
    if not path:
        raise OutputPathError(f"{name}: empty path")
    if os.path.isdir(path):
        raise OutputPathError(f"{name} {path}: is a folder, not a file name")
    _check_can_create_in(os.path.dirname(os.path.abspath(path)), name, path)
