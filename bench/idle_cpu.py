"""Idle CPU of a connected agent, per thread, over a minute (alone; not a step of make bench).

``python -m agent run`` with a simulated finger scanner and camera, on-demand capture, connected
to a private mosquitto, nothing queued: CPU ticks (utime + stime) of every thread from
/proc/PID/task over IDLE_S seconds after it came online. bench/footprint.py reads the same over
5 s as part of ``make bench``; at 10 ms per tick that cannot resolve the 0.2 % target.

    .venv/bin/python -m bench.idle_cpu [SECONDS]
"""

from __future__ import annotations

import json
import os
import sys
import time

from bench.common import SIM_DEVICES, BenchBroker, Workspace
from bench.footprint import wait_online
from bench.procs import AgentProcess

IDLE_S = 60.0


def thread_ticks(pid: int) -> dict[str, int]:
    ticks = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as fh:
                stat = fh.read()
            with open(f"/proc/{pid}/task/{tid}/comm") as fh:
                name = fh.read().strip()
        except OSError:
            continue  # the thread ended meanwhile
        fields = stat[stat.rindex(")") + 2:].split()
        ticks[f"{name}:{tid}"] = int(fields[11]) + int(fields[12])
    return ticks


def run(ws: Workspace, idle_s: float = IDLE_S) -> dict[str, object]:
    work = ws.fresh_dir("idle-cpu")
    with BenchBroker() as broker:
        config = ws.write_toml(work / "agent.toml", ws.agent_settings(
            port=broker.port, queue_path=work / "queue.db", devices=SIM_DEVICES))
        with AgentProcess(config, work, "idle-cpu-agent") as agent:
            agent.start()
            agent.wait_ready()
            wait_online(broker.port)
            time.sleep(2.0)  # start-up's last work (device opening, first telemetry) done
            before, started = thread_ticks(agent.pid), time.monotonic()
            time.sleep(idle_s)
            after, wall = thread_ticks(agent.pid), time.monotonic() - started
            agent.stop()
    hz = os.sysconf("SC_CLK_TCK")
    used = {name: (after[name] - before.get(name, 0)) / hz for name in after}
    return {"idle_cpu_pct": round(100 * sum(used.values()) / wall, 3), "idle_s": round(wall, 1),
            "by_thread_pct": {name: round(100 * s / wall, 3)
                              for name, s in sorted(used.items(), key=lambda x: -x[1]) if s}}


if __name__ == "__main__":
    with Workspace() as workspace:
        print(json.dumps(run(workspace, float(sys.argv[1]) if len(sys.argv) > 1 else IDLE_S), indent=1))
