"""bench/gpu.sh, proven without a GPU: its dry run checks the steps it would take on a GPU machine."""
import os
import re
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "gpu.sh"


def _dry_run(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "results")}
    return subprocess.run(["bash", str(SCRIPT), "--dry-run"], capture_output=True, text=True, env=env, timeout=120)


def test_dry_run_writes_to_out_and_times_every_step(tmp_path):
    proc = _dry_run(tmp_path)
    assert proc.returncode == 0, proc.stderr
    steps = [line for line in proc.stdout.splitlines() if line.startswith("would run:")]
    assert len(steps) == 4
    assert all(re.match(r"would run: timeout -k 10 \d+ ", s) for s in steps)      # each step has its own limit
    limits = [int(re.match(r"would run: timeout -k 10 (\d+)", s).group(1)) for s in steps]
    assert sum(limits) + 10 * len(limits) < 9 * 60                                  # the whole call fits 9 minutes
    summary = tmp_path / "results" / "summary.txt"                                  # results go to $OUT
    assert summary.is_file() and len(summary.read_text().splitlines()) == 4
    assert not (SCRIPT.parent.parent / "out").exists() or str(tmp_path) in proc.stdout


def test_installs_nothing_from_the_network_and_keeps_out():
    text = SCRIPT.read_text()
    for line in text.splitlines():
        if "pip install" in line and not line.lstrip().startswith("#"):
            assert "--no-index" in line and "--no-deps" in line, line
    assert "diffusers" not in text.split("set -uo pipefail")[1]
    assert not re.search(r"^\s*(export\s+)?OUT=", text, flags=re.M)                 # never overwrites $OUT
    assert "PIP_NO_INDEX=1" in text
