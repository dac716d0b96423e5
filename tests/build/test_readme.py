"""The README works as written: every ```python block runs on its own, every `gencore` command line it shows names a
command and options that exist, its set-up commands are the ones CI runs, and its links and the docs' links point to
files that exist.

Each python block runs in a fresh interpreter, in an empty folder, as a user would paste it: a block that leans on a
name another block defined fails here. Blocks that import diffusers are skipped where diffusers is not installed.
"""
from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
CI_SCRIPT = ROOT / ".ci" / "run"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)


def _blocks(language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(README.read_text()) if lang == language]


PYTHON_BLOCKS = _blocks("python")


def _gencore_lines() -> list[list[str]]:
    """Every `gencore ...` command the README shows: lines of its bash blocks and its inline code spans."""
    text = README.read_text()
    lines = [line for block in _blocks("bash") for line in block.splitlines()]
    prose = FENCE.sub("", text)
    lines += re.findall(r"`(gencore [^`]*)`", prose)
    commands = []
    for line in lines:
        words = shlex.split(line, comments=True)
        for start in [i for i, w in enumerate(words) if w == "gencore"]:  # also after `&&`
            command = words[start:]
            if "&&" in command:
                command = command[:command.index("&&")]
            if not any(w.startswith("<") for w in command):  # `gencore <command> --help` is a template
                commands.append(command)
    return commands


GENCORE_LINES = _gencore_lines()


def _first_line(block: str) -> str:
    return next((line for line in block.splitlines() if line.strip() and not line.startswith("import")),
                block.splitlines()[0])[:50]


def test_the_readme_has_examples_to_check():
    assert len(PYTHON_BLOCKS) >= 3
    assert {c[1] for c in GENCORE_LINES if len(c) > 1} >= {"demo", "train", "sample", "eval", "bench", "info"}


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=[_first_line(b) for b in PYTHON_BLOCKS])
def test_python_block_runs_as_written(block, tmp_path):
    if re.search(r"^\s*(import|from) diffusers\b", block, re.M) and importlib.util.find_spec("diffusers") is None:
        pytest.skip("this block uses diffusers, which is not installed (pip install -e '.[test]' installs it)")
    script = tmp_path / "block.py"
    script.write_text(block)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"README block failed:\n{block}\n--- stderr ---\n{proc.stderr[-4000:]}"


def _options(command: list[str]) -> list[str]:
    return [w.split("=", 1)[0] for w in command if w.startswith("--")]


@pytest.mark.parametrize("subcommand", sorted({c[1] for c in GENCORE_LINES if len(c) > 1}))
def test_every_gencore_command_and_option_exists(subcommand):
    """`gencore SUB --help` succeeds, and lists every option the README passes to SUB."""
    exe = shutil.which("gencore")
    assert exe, "the gencore command is not installed (pip install -e .)"
    proc = subprocess.run([exe, subcommand, "--help"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    for command in (c for c in GENCORE_LINES if len(c) > 1 and c[1] == subcommand):
        for option in _options(command):
            assert re.search(rf"(^|[\s\[,]){re.escape(option)}\b", proc.stdout), (option, " ".join(command))
        for positional in (w for w in command[2:3] if not w.startswith("-")):  # e.g. `train ddpm`
            assert positional in proc.stdout, (positional, " ".join(command))


def test_set_up_commands_are_the_ones_ci_runs():
    """The README's test command is what .ci/run runs (there through `python3 -m`, so that the interpreter that
    installed the package runs it), and the demo command installs the same way."""
    setup = [line for block in _blocks("bash") for line in block.splitlines() if line.startswith("pip install")]
    assert len(setup) == 2, setup
    demo, test = sorted(setup, key=lambda line: "[test]" in line)
    ci_lines = CI_SCRIPT.read_text().splitlines()
    marker = next(i for i, line in enumerate(ci_lines) if "the README's test command, verbatim" in line)
    ci_test = ci_lines[marker + 1].replace("python3 -m pip", "pip").replace("python3 -m pytest", "pytest")
    assert test == ci_test
    assert demo == test.replace('".[test]"', '".[demo]"').replace("&& pytest", "&& gencore demo")


LINK = re.compile(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)")


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors for a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#+\s+(.*)$", FENCE.sub("", page.read_text()), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("page", [README, *sorted((ROOT / "docs").glob("*.md"))], ids=lambda p: p.name)
def test_relative_links_point_to_files_and_headings(page):
    broken = []
    for target, anchor in LINK.findall(FENCE.sub("", page.read_text())):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path = (page.parent / target) if target else page
        if not path.exists():
            broken.append(target)
        elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
            broken.append(f"{target}#{anchor}")
    assert not broken, f"{page.name} links to files or headings that do not exist: {broken}"
