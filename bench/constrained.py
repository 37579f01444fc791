"""An emulation of a Raspberry Pi-class CPU: the kiosk's processes on one core, limited to 30 %
of it. This is an emulation on the benchmark machine, not a measurement on a Pi: a Pi's core
is slower in other ways (memory, caches, no SHA or AES instructions on some models) that a
CPU quota does not reproduce; what it shows is how the agent behaves when CPU is scarce.

The limit: a cgroup of our own with a CFS quota of 30 ms per 100 ms period, under
/sys/fs/cgroup/cpu (cgroup v1: ``cpu.cfs_quota_us``, ``cpu.cfs_period_us``), or ``cpu.max``
where cgroup v2 has the cpu controller; and the affinity of one core (as ``taskset``). Each
constrained process enters the cgroup and takes the affinity in the child before it executes,
so all of it, from its first instruction, runs there. The broker, the raw subscriber and
this process are not limited (they stand for the network and the central side). Without a
writable cpu controller (not root, a container) the step is skipped and says why.

Each figure is paired with the same work unconstrained in the same run:

- commit: a worker process commits N captures through the agent's capture path
  (bench/commit.py's ``agent_commits``) and N raw sqlite3 inserts (``raw_commits``);
- drain: ``python -m agent run`` with those N captures queued, in ``puback`` mode to a raw
  paho subscriber (the kiosk side's own cost), from the moment a gate lets it reach the
  broker until its queue is empty;
- idle CPU: the agent with its simulated scanner and camera, connected and idle;
- face frames per second: bench/face_quality.py's agent side (decode, detect, every check),
  OpenCV on one thread.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import (
    SIM_DEVICES,
    TOPIC_PREFIX,
    BenchBroker,
    BenchError,
    ImagePool,
    Sizes,
    Workspace,
    copy_queue,
    python_cmd,
    ratio,
    remove_cgroup,
    seal_capture,
)
from bench.procs import AgentProcess, BrokerGate, CpuMeter, Managed, RawPeer, wait_queue_empty
from devtools.broker import free_port

SHARE = 0.30
PERIOD_US = 100_000
IDLE_S = 10.0


class CpuLimit:
    """One core at SHARE of its time, for the processes started with ``preexec``."""

    def __init__(self) -> None:
        self.cpu = max(os.sched_getaffinity(0))
        self.path, self.kind = self._make()

    @staticmethod
    def _make() -> tuple[Path, str]:
        name = f"kiosk-bench-{os.getpid()}"
        v1 = Path("/sys/fs/cgroup/cpu")
        if (v1 / "cpu.cfs_quota_us").exists():
            path = v1 / name
            try:
                path.mkdir()
                (path / "cpu.cfs_period_us").write_text(str(PERIOD_US))
                (path / "cpu.cfs_quota_us").write_text(str(int(SHARE * PERIOD_US)))
            except OSError as exc:
                raise BenchError(f"cannot make a cgroup v1 cpu limit under {v1}: {exc}") from None
            return path, "cgroup v1 cpu.cfs_quota_us"
        root = Path("/sys/fs/cgroup")
        controllers = root / "cgroup.controllers"
        if controllers.exists() and "cpu" in controllers.read_text().split():
            path = root / name
            try:
                (root / "cgroup.subtree_control").write_text("+cpu")  # children may then limit CPU
                path.mkdir()
                (path / "cpu.max").write_text(f"{int(SHARE * PERIOD_US)} {PERIOD_US}")
            except OSError as exc:
                raise BenchError(f"cannot make a cgroup v2 cpu.max limit under {root}: {exc}") from None
            return path, "cgroup v2 cpu.max"
        raise BenchError("no cpu cgroup controller here (neither /sys/fs/cgroup/cpu nor cgroup v2's cpu)")

    def preexec(self) -> None:
        """In the child, before exec: into the cgroup, onto the one core."""
        (self.path / "cgroup.procs").write_text(str(os.getpid()))
        os.sched_setaffinity(0, {self.cpu})

    def throttled(self) -> dict[str, int]:
        """The kernel's own count of periods in which the limit held the group back."""
        stat = dict(line.split() for line in (self.path / "cpu.stat").read_text().splitlines())
        return {key: int(value) for key, value in stat.items() if "throttled" in key or key == "nr_periods"}

    def close(self) -> None:
        remove_cgroup(self.path)

    def describe(self) -> str:
        return (f"CPU {self.cpu} only, {SHARE:.0%} of it ({int(SHARE * PERIOD_US)} us per {PERIOD_US} us; "
                f"{self.kind})")


# --- workers: run in a (possibly limited) child process, print one JSON line -------------------


def _worker_commit(queue_path: Path, count: int) -> dict[str, Any]:
    from bench.commit import agent_commits, raw_commits

    with Workspace() as ws:
        pool = ImagePool(16)
        payloads = [seal_capture(ws.sealer(), "k", seq, image)[1] for seq, image in enumerate(pool.images, 1)]
        raw = raw_commits(queue_path.parent / "raw.db", payloads, count)
        # The agent's queue is sealed with this throw-away workspace's keys: the drain's raw
        # subscriber only counts messages, so the keys do not matter there.
        agent = agent_commits(ws, pool, queue_path, count)
    return {"agent_per_s": round(agent.per_s, 1), "raw_sqlite_per_s": round(raw.per_s, 1),
            "agent_p50_ms": agent.summary()["p50_ms"]}


def _worker_face(frames: int) -> dict[str, Any]:
    from bench import face_quality

    figures = face_quality.run(frames_per_round=frames)
    return {"face_fps": figures["face_fps"], "raw_haar_fps": figures["face_raw_haar_fps"]}


def worker(argv: list[str]) -> int:
    kind = argv[0]
    result = _worker_commit(Path(argv[1]), int(argv[2])) if kind == "commit" else _worker_face(int(argv[1]))
    print(json.dumps(result), flush=True)
    return 0


def run_worker(ws: Workspace, name: str, args: list[str], limit: CpuLimit | None) -> dict[str, Any]:
    process = Managed(name, python_cmd("-m", "bench.constrained", "--worker", *args), ws.root / f"{name}.log",
                      stdout_pipe=True, preexec=limit.preexec if limit else None)
    with process:
        process.start()
        assert process.proc is not None and process.proc.stdout is not None
        out = process.proc.stdout.read()
        if process.proc.wait(timeout=600) != 0:
            raise BenchError(f"{name} failed; its log:\n{process.log_tail()}")
    return json.loads(out.strip().splitlines()[-1])


# --- the agent process -----------------------------------------------------------------------


def drain(ws: Workspace, backlog: Path, count: int, limit: CpuLimit | None, name: str) -> dict[str, Any]:
    """puback mode to a raw subscriber: gate, then the clock runs until the queue is empty."""
    work = ws.fresh_dir(name)
    queue = work / "queue.db"
    copy_queue(backlog, queue)
    port = free_port()
    config = ws.write_toml(work / "agent.toml", ws.agent_settings(
        port=port, queue_path=queue, ack_mode="puback", devices=SIM_DEVICES))
    gate = BrokerGate(port)
    try:
        with AgentProcess(config, work, name, preexec=limit.preexec if limit else None) as agent:
            agent.start()
            agent.wait_ready(timeout_s=300)
            gate.hold_client(timeout_s=120)
            gate.release_port()
            with BenchBroker(port), RawPeer(ws, port, f"{TOPIC_PREFIX}/+/captures", f"{name}-raw") as peer:
                peer.start()
                peer.wait_ready()
                gate.open()
                started = time.monotonic()
                meter = CpuMeter({"agent": agent.pid})
                emptied = wait_queue_empty(queue, 600)
                cpu = meter.stop()
                peer.wait_count(count, 120)
                problems = agent.problems()
                agent.stop()
                peer.stop()
    finally:
        gate.close()
        shutil.rmtree(work)
    if problems:
        raise BenchError(f"{name}: the agent logged errors: " + "; ".join(problems[:3]))
    seconds = emptied - started
    return {"per_s": round(count / seconds, 1), "seconds": round(seconds, 2),
            "agent_cpu_share": round(cpu["agent"] / cpu["wall"], 3)}


def idle_cpu(ws: Workspace, limit: CpuLimit | None, name: str) -> dict[str, Any]:
    from bench.footprint import wait_online

    work = ws.fresh_dir(name)
    with BenchBroker() as broker:
        config = ws.write_toml(work / "agent.toml", ws.agent_settings(
            port=broker.port, queue_path=work / "queue.db", devices=SIM_DEVICES))
        with AgentProcess(config, work, name, preexec=limit.preexec if limit else None) as agent:
            agent.start()
            agent.wait_ready(timeout_s=300)
            wait_online(broker.port, timeout_s=120)
            time.sleep(2)  # past the first telemetry and status messages
            meter = CpuMeter({"agent": agent.pid})
            time.sleep(IDLE_S)
            cpu = meter.stop()
            agent.stop()
    return {"idle_cpu_pct_of_a_core": round(100 * cpu["agent"] / cpu["wall"], 2), "idle_s": IDLE_S}


def run(ws: Workspace, sizes: Sizes) -> dict[str, Any]:
    count = sizes.constrained_captures
    frames = 40 if sizes.mode == "quick" else 150
    try:
        limit = CpuLimit()
    except BenchError as exc:
        print(f"bench: constrained: skipped: {exc}", file=sys.stderr)
        return {"constrained": {"skipped": str(exc)}}
    try:
        sides: dict[str, dict[str, Any]] = {}
        for side, lim in (("limited", limit), ("unlimited", None)):
            backlog = ws.fresh_dir(f"constrained-{side}") / "queue.db"
            commit = run_worker(ws, f"commit-{side}", ["commit", str(backlog), str(count)], lim)
            sides[side] = {
                "commit": commit,
                "drain_puback": drain(ws, backlog, count, lim, f"drain-{side}"),
                "idle": idle_cpu(ws, lim, f"idle-{side}"),
                "face": run_worker(ws, f"face-{side}", ["face", str(frames)], lim),
            }
        throttled = limit.throttled()
    finally:
        limit.close()
    lim_, free = sides["limited"], sides["unlimited"]
    lim_commit, free_commit = lim_["commit"], free["commit"]
    return {
        "constrained_commit_per_s": lim_["commit"]["agent_per_s"],
        "constrained_drain_per_s": lim_["drain_puback"]["per_s"],
        "constrained_idle_cpu_pct": lim_["idle"]["idle_cpu_pct_of_a_core"],
        "constrained_face_fps": lim_["face"]["face_fps"],
        "constrained": {
            "emulation": "Raspberry Pi-class CPU emulated: " + limit.describe() + "; not a Pi measurement",
            "captures": count, "face_frames_per_round": frames,
            "limited": lim_, "unlimited": free,
            "ratios_limited_vs_unlimited": {
                "commit": ratio(lim_commit["agent_per_s"], free_commit["agent_per_s"]),
                "commit_raw_sqlite": ratio(lim_commit["raw_sqlite_per_s"], free_commit["raw_sqlite_per_s"]),
                "drain": ratio(lim_["drain_puback"]["per_s"], free["drain_puback"]["per_s"]),
                "face_fps": ratio(lim_["face"]["face_fps"], free["face"]["face_fps"]),
            },
            "commit_ratio_vs_sqlite_limited": ratio(lim_commit["agent_per_s"],
                                                    lim_commit["raw_sqlite_per_s"]),
            "cgroup_cpu_stat": throttled,
        },
    }


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        sys.exit(worker(sys.argv[2:]))
    from bench.common import FULL, QUICK

    with Workspace() as workspace:
        print(json.dumps(run(workspace, FULL if "--full" in sys.argv else QUICK), indent=2))
