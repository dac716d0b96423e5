"""Run diffusers' own scheduler tests against gencore's schedulers, and hold the result to docs/scheduler-parity.md.

    python scripts/diffusers_scheduler_tests.py /path/to/diffusers            # gencore's classes
    python scripts/diffusers_scheduler_tests.py /path/to/diffusers --theirs   # diffusers' own classes, for comparison
    python scripts/diffusers_scheduler_tests.py /path/to/diffusers -- -k ddim -x    # after --: pytest's options

The argument (or $GENCORE_DIFFUSERS_SRC) is a diffusers source checkout: only its tests/ folder is read
(tests/schedulers/test_scheduler_{ddpm,ddim,dpm_multi}.py with their SchedulerCommonTest, tests/testing_utils.py,
tests/others/, tests/conftest.py). Nothing of diffusers is copied into gencore: after pytest has imported diffusers'
test modules, their names DDPMScheduler, DDIMScheduler and DPMSolverMultistepScheduler (module globals and each test
class's scheduler_classes) are rebound to gencore.diffusion's classes, and the tests run as written. The tests of
SchedulerCommonTest itself, collected again in each file with no scheduler class, exercise nothing and are left out.

Exit status 0 when the failing tests are exactly those listed in docs/scheduler-parity.md (each documented
deliberate difference names the tests it fails), 1 otherwise: an undocumented failure, or a documented one that
now passes (the page is then out of date). tests/library/test_diffusers_parity.py runs this where $GENCORE_DIFFUSERS_SRC is
set. diffusers' tests/conftest.py puts the checkout's src/ first on sys.path: a full checkout tests its own
diffusers, so use one whose version matches the diffusers installed beside gencore.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

import pytest

import gencore.diffusion as ours

ROOT = Path(__file__).resolve().parent.parent
PARITY_DOC = ROOT / "docs" / "scheduler-parity.md"
TEST_FILES = ("test_scheduler_ddpm.py", "test_scheduler_ddim.py", "test_scheduler_dpm_multi.py")
REBOUND = ("DDPMScheduler", "DDIMScheduler", "DPMSolverMultistepScheduler")
# A test named in the page: `test_scheduler_ddim.py::DDIMSchedulerTest::test_eta`.
DOCUMENTED_TEST = re.compile(r"`(test_scheduler_\w+\.py::\w+::\w+)`")


def documented_failures(doc: Path = PARITY_DOC) -> set[str]:
    """The diffusers tests docs/scheduler-parity.md says gencore fails on purpose."""
    return set(DOCUMENTED_TEST.findall(doc.read_text(encoding="utf-8")))


def short_id(nodeid: str) -> str:
    """tests/schedulers/test_scheduler_ddim.py::DDIMSchedulerTest::test_eta -> test_scheduler_ddim.py::...::test_eta"""
    path, _, rest = nodeid.partition("::")
    return f"{Path(path).name}::{rest}"


class RebindToGencore:
    """A pytest plugin: diffusers' test modules see gencore's scheduler classes under diffusers' names."""

    def __init__(self, rebind: bool = True):
        self.rebind = rebind
        self.outcomes: dict[str, str] = {}

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, session, config, items):
        modules = {item.module for item in items if getattr(item, "module", None) is not None}
        modules |= {m for name, m in sys.modules.items() if name.endswith("schedulers.test_schedulers")}
        replace = {}
        for module in modules:
            for name in REBOUND:
                theirs = module.__dict__.get(name)
                if theirs is not None and self.rebind:
                    replace[theirs] = getattr(ours, name)
                    setattr(module, name, getattr(ours, name))
        kept = []
        for item in items:
            cls = getattr(item, "cls", None)
            classes = getattr(cls, "scheduler_classes", None)
            if cls is None or not classes:
                config.hook.pytest_deselected(items=[item])
                continue
            if self.rebind and not any(c in replace.values() for c in classes):
                cls.scheduler_classes = tuple(replace.get(c, c) for c in classes)
            kept.append(item)
        items[:] = kept

    def pytest_runtest_logreport(self, report):
        name = short_id(report.nodeid)
        if report.when == "call" or report.outcome != "passed":
            if self.outcomes.get(name) in (None, "passed"):
                self.outcomes[name] = report.outcome


def run(src: Path, rebind: bool = True, pytest_args=()) -> tuple[int, dict[str, str]]:
    folder = Path(src) / "tests" / "schedulers"
    missing = [f for f in TEST_FILES if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{src} is not a diffusers source checkout: {folder} lacks {', '.join(missing)}")
    plugin = RebindToGencore(rebind)
    args = [str(folder / f) for f in TEST_FILES] + ["-q", "-p", "no:cacheprovider", "--rootdir", str(src),
                                                   *pytest_args]
    code = pytest.main(args, plugins=[plugin])
    return int(code), plugin.outcomes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", nargs="?", default=os.environ.get("GENCORE_DIFFUSERS_SRC"),
                        help="a diffusers source checkout (default: $GENCORE_DIFFUSERS_SRC)")
    parser.add_argument("--theirs", action="store_true", help="run diffusers' own classes instead (no rebinding)")
    argv = list(sys.argv[1:] if argv is None else argv)
    pytest_args = argv[argv.index("--") + 1:] if "--" in argv else []  # after --: passed on to pytest
    args = parser.parse_args(argv[:len(argv) - len(pytest_args) - ("--" in argv)])
    if not args.src:
        parser.error("give a diffusers source checkout, or set GENCORE_DIFFUSERS_SRC")
    code, outcomes = run(Path(args.src), rebind=not args.theirs, pytest_args=pytest_args)
    if code not in (0, 1):  # 2..5: interrupted, internal error, usage error, nothing collected
        print(f"pytest could not run diffusers' tests (exit status {code})", file=sys.stderr)
        return 1
    failed = {name for name, outcome in outcomes.items() if outcome == "failed"}
    counts = {o: sum(v == o for v in outcomes.values()) for o in ("passed", "failed", "skipped")}
    who = "diffusers' own classes" if args.theirs else "gencore's classes"
    print(f"diffusers' scheduler tests against {who}: {counts['passed']} passed, {counts['failed']} failed, "
          f"{counts['skipped']} skipped")
    if args.theirs:
        return 0
    documented = documented_failures()
    undocumented, stale = sorted(failed - documented), sorted(documented - failed)
    for name in undocumented:
        print(f"FAILED and not in {PARITY_DOC.name}: {name}")
    for name in stale:
        print(f"listed in {PARITY_DOC.name} but did not fail: {name} ({outcomes.get(name, 'not run')})")
    if not undocumented and not stale:
        print(f"every failure is a deliberate difference listed in {PARITY_DOC.relative_to(ROOT)}")
    return 1 if undocumented or stale else 0


if __name__ == "__main__":
    sys.exit(main())
