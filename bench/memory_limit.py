"""A registration inside a hard memory limit: does the agent fit a small kiosk?

``rss_peak_registration_mb`` (bench/registration.py) is the agent's VmHWM, which counts every
page of the shared libraries the process has mapped: file-backed, clean, shared with the page
cache and dropped by the kernel under pressure. Its file part depends on what was cached
before the agent started (the kernel maps cached neighbours of each faulted page): the same
code measured 135 MB after the page cache was dropped and 173 MB with the libraries cached.
This step asks the question the target stands for directly. The same sessions (ten fingers
and a face through the local API, simulated devices) run with the agent in a memory cgroup of
its own: a hard limit (cgroup v1 ``memory.limit_in_bytes``, and ``memory.memsw.limit_in_bytes``
where swap accounting exists; cgroup v2 ``memory.max`` with ``memory.swap.max`` 0), so no
swap. At the limit the kernel reclaims the group's file pages (the libraries, read back from
disk when needed again: major faults); what it cannot reclaim, the agent's private memory,
must fit or the kernel's OOM killer ends the agent. Each limit's sessions are compared with an
unlimited run in the same step; limits go down from LIMITS_MB's first until a run fails or
runs more than THRASHING times slower (lower limits only thrash longer). The figures:
``registration_memory_free_mb``, the working set: the lowest limit reached before the first
run slower than FREE_SPEED of the unlimited speed (this machine's run-to-run noise is up to
about 10 %); ``registration_in_100mb_speed_ratio``, unlimited session time / at 100 MB. Both
are for the default configuration; the first is measured again with the face mesh off
(``quality.face.landmarks = "off"``, the face judged by the Haar checks alone:
``registration_memory_free_mb_landmarks_off``).

A cgroup is charged for the pages its processes bring in, not for pages already in memory.
So before each run the page cache is dropped (as root: ``/proc/sys/vm/drop_caches``; without
root the step says so), and this benchmark's own process imports neither NumPy nor OpenCV
(bench/run.py runs this step before importing the others): the agent faults its libraries in
itself and is charged for them. Mosquitto and the reference receiver stay outside the group.
Without a writable memory controller (not root, a container) the step is skipped and says why.
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import BenchError, Workspace, drop_page_cache, remove_cgroup
from bench.procs import status_kb
from bench.registration import registering_agent, session

#: The limits tried, highest first.
LIMITS_MB = [150, 135, 125, 115, 110, 100, 90]
#: Limited / unlimited session time beyond which lower limits are not tried.
THRASHING = 4.0
#: Unlimited / limited session speed counted as "no cost".
FREE_SPEED = 0.8
#: The configurations measured: the default (the face mesh's landmarks where installed), and
#: the Haar checks alone, the choice for a kiosk that must fit 100 MB (docs/deployment.md).
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "landmarks_off": {"quality": {"face": {"landmarks": "off"}}},
}
#: Sessions per run; the first (models loaded, first frames) is left out of the median.
SESSIONS = 5
MB = 1 << 20


class MemoryLimit:
    """A memory cgroup with a hard limit (None: accounting only) for processes started with
    ``preexec``."""

    def __init__(self, limit_mb: int | None) -> None:
        self.limit_mb = limit_mb
        name = f"kiosk-bench-mem-{os.getpid()}-{limit_mb or 'none'}"
        v1 = Path("/sys/fs/cgroup/memory")
        v2 = Path("/sys/fs/cgroup")
        try:
            if (v1 / "memory.limit_in_bytes").exists():
                self.v1, self.path = True, v1 / name
                self.path.mkdir()
                if limit_mb is not None:
                    # memory first: the kernel refuses a memsw limit below the memory limit.
                    (self.path / "memory.limit_in_bytes").write_text(str(limit_mb * MB))
                    if (self.path / "memory.memsw.limit_in_bytes").exists():
                        (self.path / "memory.memsw.limit_in_bytes").write_text(str(limit_mb * MB))
            elif "memory" in (v2 / "cgroup.controllers").read_text().split():
                self.v1, self.path = False, v2 / name
                (v2 / "cgroup.subtree_control").write_text("+memory")
                self.path.mkdir()
                if limit_mb is not None:
                    (self.path / "memory.max").write_text(str(limit_mb * MB))
                    if (self.path / "memory.swap.max").exists():
                        (self.path / "memory.swap.max").write_text("0")
            else:
                raise BenchError("no memory cgroup controller here (neither cgroup v1 nor v2's memory)")
        except OSError as exc:
            raise BenchError(f"cannot make a memory cgroup under /sys/fs/cgroup: {exc}") from None

    def preexec(self) -> None:
        """In the child, before exec: into the group."""
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def _read(self, name: str) -> str:
        return (self.path / name).read_text()

    def figures(self) -> dict[str, Any]:
        """The group's peak charge, the reclaims the limit forced, major faults and OOM kills."""
        stat = dict(line.split() for line in self._read("memory.stat").splitlines())
        if self.v1:
            events = dict(line.split() for line in self._read("memory.oom_control").splitlines())
            return {"peak_charge_mb": round(int(self._read("memory.max_usage_in_bytes")) / MB, 1),
                    "limit_hits": int(self._read("memory.failcnt")),
                    "oom_kills": int(events.get("oom_kill", 0)),
                    "major_faults": int(stat["pgmajfault"])}
        events = dict(line.split() for line in self._read("memory.events").splitlines())
        peak = self.path / "memory.peak"
        return {"peak_charge_mb": round(int(peak.read_text()) / MB, 1) if peak.exists() else None,
                "limit_hits": int(events.get("max", 0)), "oom_kills": int(events.get("oom_kill", 0)),
                "major_faults": int(stat["pgmajfault"])}

    def close(self) -> None:
        remove_cgroup(self.path)

    def __enter__(self) -> MemoryLimit:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def describe(self) -> str:
        if self.v1:
            swap = "memory.memsw.limit_in_bytes too" if (self.path / "memory.memsw.limit_in_bytes").exists() \
                else "no swap accounting (the machine has no swap in use)"
            return f"cgroup v1 memory.limit_in_bytes; {swap}"
        return "cgroup v2 memory.max, memory.swap.max 0"


def one_run(ws: Workspace, limit_mb: int | None, sessions: int = SESSIONS, drop_cache: bool = True,
            settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Sessions with the agent in a memory cgroup; whether they completed, their times and the
    group's figures. ``settings``: agent config sections set on top of the benchmark's."""
    work = ws.fresh_dir(f"memory-{limit_mb or 'none'}")
    dropped = drop_cache and drop_page_cache()
    times: list[float] = []
    failure = None
    vm_hwm_mb = None
    with MemoryLimit(limit_mb) as group:
        try:
            with registering_agent(ws, work, group.preexec, settings) as (agent, api):
                for n in range(sessions):
                    started = time.monotonic()
                    session(api, n)
                    times.append(time.monotonic() - started)
                vm_hwm_mb = round(status_kb(agent.pid, "VmHWM") / 1024, 1)
                agent.stop()
        except (BenchError, OSError) as exc:
            failure = f"{type(exc).__name__}: {exc}"[:300]
        figures = group.figures()
        kind = group.describe()
    if figures["oom_kills"]:
        failure = f"the kernel's OOM killer ended the agent ({failure})"
    return {"limit_mb": limit_mb, "completed": failure is None, "failure": failure,
            "sessions_done": len(times), "first_session_s": round(times[0], 3) if times else None,
            "session_median_s": round(statistics.median(times[1:] or times), 3) if times else None,
            "vm_hwm_mb": vm_hwm_mb, "page_cache_dropped": dropped, "cgroup": kind, **figures}


def descend(ws: Workspace, limits: list[int], settings: dict[str, Any]) -> dict[str, Any]:
    """An unlimited run, then the limits from the highest down until one fails or thrashes."""
    free = one_run(ws, None, settings=settings)
    if not free["completed"]:
        raise BenchError(f"the unlimited registration failed: {free['failure']}")
    runs = []
    for limit in limits:
        runs.append(one_run(ws, limit, settings=settings))
        last = runs[-1]
        last["speed_ratio"] = (round(free["session_median_s"] / last["session_median_s"], 3)
                               if last["completed"] else None)
        if not last["completed"] or last["speed_ratio"] < 1 / THRASHING:
            break
    # The working set: the lowest limit reached before the first that cost speed.
    free_at = list(itertools.takewhile(lambda r: r["completed"] and r["speed_ratio"] >= FREE_SPEED, runs))
    at_100 = next((r for r in runs if r["limit_mb"] == 100), None)
    return {"settings": settings, "unlimited": free, "limited": runs,
            "free_mb": free_at[-1]["limit_mb"] if free_at else None,
            "speed_ratio_at_100mb": (at_100["speed_ratio"] or 0.0) if at_100 else None}


def run(ws: Workspace, limits: list[int] = LIMITS_MB) -> dict[str, Any]:
    if "cv2" in sys.modules or "numpy" in sys.modules:
        # Their pages would be resident in this process and never charged to the agent's group.
        raise BenchError("bench/memory_limit.py must run in a process that has not imported NumPy or OpenCV")
    try:
        MemoryLimit(None).close()
    except BenchError as exc:  # not root, a container: nothing to measure here
        print(f"bench: memory_limit: skipped: {exc}", file=sys.stderr)
        return {"memory_limit": {"skipped": str(exc)}}
    variants = {name: descend(ws, limits, settings) for name, settings in VARIANTS.items()}
    results: dict[str, Any] = {
        "memory_limit": {"sessions": SESSIONS, "free_speed": FREE_SPEED, "variants": variants},
        "registration_memory_free_mb": variants["default"]["free_mb"],
        "registration_memory_free_mb_landmarks_off": variants["landmarks_off"]["free_mb"],
    }
    if variants["default"]["speed_ratio_at_100mb"] is not None:
        results["registration_in_100mb_speed_ratio"] = variants["default"]["speed_ratio_at_100mb"]
    return results


def main(argv: list[str]) -> int:
    limits = [int(a) for a in argv] or LIMITS_MB
    with Workspace() as ws:
        try:
            print(json.dumps(run(ws, limits), indent=2))
        except BenchError as exc:
            print(f"bench: failed: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
