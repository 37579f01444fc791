"""Do the quality tests notice a check that stopped working? One mutant per check: the face or
finger check of that name always passes (its verdict forced, its hint dropped), and the
quality tests run against it. A mutant no test fails is a check nothing really tests.

    .venv/bin/python -m devtools.check_mutants                # every face and finger check
    .venv/bin/python -m devtools.check_mutants yaw gaze       # some of them
    .venv/bin/python -m devtools.check_mutants --json         # for scripts

First a control run with no mutant, which must pass. Each mutant is a pytest run in a process
of its own with this module loaded as a plugin (``-p devtools.check_mutants``) and the check
named in ``KIOSK_MUTANT_CHECK``; two run at a time. Exit 0 when every mutant failed at least
one test, 1 when one survived, 2 when the control run failed. Results of the last run:
docs/face-quality.md and docs/finger-quality.md ("Mutants").
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ENV = "KIOSK_MUTANT_CHECK"
TESTS = ["tests/agent/quality"]

FACE_CHECKS = ["face_count", "eye_distance", "horizontal_centre", "eye_line_height", "roll", "luminance",
               "dark_pixels", "bright_pixels", "sharpness", "background", "yaw", "pitch", "eyes_open",
               "mouth_closed", "expression", "gaze", "eyes_visible", "eye_glare", "lighting_balance",
               "face_scale"]
FINGER_CHECKS = ["empty_or_low_contrast", "uniform_image", "foreground_px", "orientation_certainty",
                 "ridge_frequency", "ridge_valley_clarity", "orientation_spread", "orientation_jump_deg",
                 "singular_points", "ridge_period_mm", "score"]


# --- the plugin: loaded into the pytest process of one mutant ---------------------------------


def pytest_configure(config: Any) -> None:
    name = os.environ.get(ENV)
    if not name:
        return
    from agent.quality import report

    original = report.Check.__init__

    def forced(self: report.Check, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        if self.name == name:  # the mutant: this check always passes and asks nothing
            object.__setattr__(self, "passed", True)
            object.__setattr__(self, "hint", "")

    report.Check.__init__ = forced  # type: ignore[method-assign]


# --- the driver ---------------------------------------------------------------------------------


def run_tests(check: str | None, tests: list[str]) -> dict[str, Any]:
    env = dict(os.environ)
    env.pop(ENV, None)
    if check:
        env[ENV] = check
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "devtools.check_mutants",
         "--tb=no", "-rf", "--durations=0", *tests],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    failed = sorted(set(re.findall(r"^FAILED (\S+)", proc.stdout, re.MULTILINE)))
    summary = (proc.stdout.strip().splitlines() or ["(no output)"])[-1]
    return {"check": check, "failed": failed, "returncode": proc.returncode, "summary": summary,
            "seconds": round(time.monotonic() - started, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.check_mutants",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("checks", nargs="*", help="check names (default: every face and finger check)")
    parser.add_argument("--jobs", type=int, default=2, help="mutants run at a time (default 2)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    checks = args.checks or FACE_CHECKS + FINGER_CHECKS
    control = run_tests(None, TESTS)
    if control["returncode"] != 0:
        print(f"control run (no mutant) failed: {control['summary']}", file=sys.stderr)
        return 2
    print(f"control run: {control['summary']}", file=sys.stderr)
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        results = []
        for result in pool.map(lambda c: run_tests(c, TESTS), checks):
            results.append(result)
            print(f"{result['check']}: {len(result['failed'])} tests failed ({result['seconds']} s)",
                  file=sys.stderr, flush=True)
    survivors = [r["check"] for r in results if not r["failed"]]
    if args.json:
        print(json.dumps({"control": control, "mutants": results, "survivors": survivors}, indent=2))
    else:
        for r in results:
            shown = ", ".join(t.split("::")[-1] for t in r["failed"][:3])
            more = f" (+{len(r['failed']) - 3} more)" if len(r["failed"]) > 3 else ""
            print(f"{r['check']:24} {len(r['failed']):3} failed  {shown}{more}")
        print(f"survivors: {', '.join(survivors) or 'none'}")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
