"""diffusers' own scheduler tests against gencore's classes (scripts/diffusers_scheduler_tests.py).

They need a diffusers source checkout (the PyPI sdist carries no tests): set GENCORE_DIFFUSERS_SRC to one. Every
test they fail must be a deliberate difference listed in docs/scheduler-parity.md, and every listed test must fail.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "diffusers_scheduler_tests.py"
SRC = os.environ.get("GENCORE_DIFFUSERS_SRC")
_spec = importlib.util.spec_from_file_location("diffusers_scheduler_tests", SCRIPT)
script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(script)


@pytest.mark.skipif(not SRC, reason="set GENCORE_DIFFUSERS_SRC to a diffusers source checkout to run diffusers' "
                                    "own scheduler tests against gencore (the PyPI sdist carries no tests)")
def test_diffusers_scheduler_tests_fail_only_where_documented():
    pytest.importorskip("diffusers")
    # A process of its own: diffusers' conftest changes sys.path and the warning filters of the process it runs in.
    run = subprocess.run([sys.executable, str(SCRIPT), SRC], cwd=ROOT, capture_output=True, text=True, timeout=600)
    summary = [line for line in run.stdout.splitlines() if "scheduler-parity.md" in line or "against" in line]
    assert run.returncode == 0, "\n".join(summary) or run.stdout[-4000:] + run.stderr[-4000:]


def test_the_parity_page_names_real_tests():
    """The page's list is what the script holds diffusers' tests to: each entry names a test of the three files the
    script runs, in pytest's file::class::test form."""
    documented = script.documented_failures()
    assert documented
    for name in documented:
        file, cls, test = name.split("::")
        assert file in script.TEST_FILES and cls.endswith("SchedulerTest") and test.startswith("test_"), name
