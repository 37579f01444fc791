"""Runs every benchmark once, writes bench/last-run.json and the generated section of
docs/performance.md.

    python -m bench.run            # quick sizes (about four minutes on two idle cores)
    python -m bench.run --full     # the full sizes (10,000-capture backlog, 200 kiosks)
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from bench import memory_limit, report
from bench.common import FULL, QUICK, REPO, BenchBroker, BenchError, Workspace, machine_info, versions


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="full sizes instead of the quick ones")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "last-run.json",
                        help="where to write the results (default bench/last-run.json)")
    parser.add_argument("--doc", type=Path, default=REPO / "docs" / "performance.md",
                        help="document whose generated section is rewritten (default docs/performance.md)")
    parser.add_argument("--no-doc", action="store_true", help="write only the JSON")
    return parser.parse_args(argv)


def step(name: str, timings: dict[str, float], fn: Callable[[], Any]) -> Any:
    """Run one benchmark, report its duration, and fail if it left threads running."""
    before = set(threading.enumerate())
    # Each step starts on a settled disk: the commit step leaves hundreds of MB of dirty pages
    # that the kernel writes back for seconds after, and every fsync of the next step (the
    # latency step's commits and the receiver's) queued behind them (e2e p50 20 ms in a full
    # run against 9.5 ms for the step alone).
    os.sync()
    print(f"bench: {name} ...", file=sys.stderr, flush=True)
    started = time.monotonic()
    result = fn()
    timings[name] = round(time.monotonic() - started, 1)
    print(f"bench: {name} done in {timings[name]:.1f} s", file=sys.stderr, flush=True)
    deadline = time.monotonic() + 5
    while leaked := [t.name for t in threading.enumerate() if t not in before and t.is_alive()]:
        if time.monotonic() > deadline:
            raise BenchError(f"{name} left threads running: {leaked}")
        time.sleep(0.05)
    return result


def run_all(full: bool) -> dict[str, Any]:
    sizes = FULL if full else QUICK
    results: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "mode": sizes.mode,
        "command": "make bench FULL=1" if full else "make bench",
        "sizes": asdict(sizes),
        "machine": machine_info(),
        "versions": versions(),
        "broker": "loopback, persistence off, " + ", ".join(BenchBroker.config_lines),
    }
    timings: dict[str, float] = {}
    started = time.monotonic()
    with Workspace() as ws:
        # First, while this process has imported neither NumPy nor OpenCV: the other steps'
        # modules import them, and pages resident here would not be charged to the agent's
        # memory cgroup (bench/memory_limit.py).
        results.update(step("memory_limit", timings, lambda: memory_limit.run(ws)))
        from bench import (
            central_ingest,
            commit,
            constrained,
            drain,
            face_quality,
            fleet,
            footprint,
            latency,
            profile,
            registration,
            sealing,
            startup,
        )
        figures, backlog = step("commit", timings, lambda: commit.run(ws, sizes))
        results.update(figures)
        results.update(step("drain", timings, lambda: drain.run(ws, sizes, backlog)))
        results.update(step("profile", timings, lambda: profile.run(ws, sizes)))
        results.update(step("latency", timings, lambda: latency.run(ws, sizes)))
        results.update(step("footprint", timings, lambda: footprint.run(ws)))
        results.update(step("startup", timings, lambda: startup.run(ws, sizes, backlog)))
        results.update(step("fleet", timings, lambda: fleet.run(ws, sizes)))
        results.update(step("central_ingest", timings, lambda: central_ingest.run_sized(ws, sizes)))
        results.update(step("face_quality", timings, lambda: face_quality.run(sizes)))
        results.update(step("sealing", timings, lambda: sealing.run(300 if sizes.mode == "quick" else 1000)))
        results.update(step("registration", timings, lambda: registration.run(ws, sizes)))
        results.update(step("constrained", timings, lambda: constrained.run(ws, sizes)))
    results["step_seconds"] = timings
    results["wall_s"] = round(time.monotonic() - started, 1)
    results["targets"] = report.evaluate(results)
    return results


def _terminate(signum: int, frame: FrameType | None) -> None:
    # Unwind like Ctrl-C, so every step's clean-up stops its processes and removes its files.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 PID`: where is it stuck?
    try:
        results = run_all(args.full)
    except BenchError as exc:
        print(f"bench: failed: {exc}", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    if not args.no_doc:
        report.update_doc(args.doc, results)
    print("\n".join(report.headline_table(results)))
    print(f"\nwrote {args.out}" + ("" if args.no_doc else f" and {args.doc}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
