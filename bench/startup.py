"""Start-up: time to ready with a backlog of N captures against time to ready with none.

``python -m agent run`` is spawned with $NOTIFY_SOCKET pointing at a datagram socket of ours,
as systemd does; "ready" is the READY=1 it sends. The broker is down in both cases (a kiosk
booting offline), so the backlog stays as it is from one run to the next. "None" is an
existing queue with no items, not a missing file (creating the schema is not start-up work
a drained kiosk does). One warm-up run of each, then the two alternate; medians are compared.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from bench.common import SIM_DEVICES, Sizes, Workspace, copy_queue, open_queue, ratio
from bench.procs import AgentProcess
from devtools.broker import free_port


def time_to_ready(config: Path, work: Path, name: str) -> float:
    with AgentProcess(config, work, name) as agent:
        spawned = agent.start()
        ready = agent.wait_ready()
        agent.stop()
    return ready - spawned


def run(ws: Workspace, sizes: Sizes, backlog: Path) -> dict[str, Any]:
    work = ws.fresh_dir("startup")
    port = free_port()  # nothing listens there: the broker is down
    configs = {}
    for case in ("empty", "backlog"):
        folder = work / case
        folder.mkdir()
        settings = ws.agent_settings(port=port, queue_path=folder / "queue.db", devices=SIM_DEVICES)
        if case == "backlog":
            copy_queue(backlog, folder / "queue.db")
        else:
            open_queue(ws.agent_config(port=port, queue_path=folder / "queue.db")).close()
        configs[case] = ws.write_toml(folder / "agent.toml", settings)
    times: dict[str, list[float]] = {"empty": [], "backlog": []}
    for i in range(sizes.startup_repeats + 1):
        for case, config in configs.items():
            seconds = time_to_ready(config, work, f"startup-{case}-{i}")
            if i:  # the first round warms the page cache (Python modules, the queue file)
                times[case].append(seconds)
    empty, backed_up = statistics.median(times["empty"]), statistics.median(times["backlog"])
    return {
        "startup_ratio_backlog_vs_empty": ratio(backed_up, empty),
        "startup": {
            "backlog_items": sizes.backlog,
            "repeats": sizes.startup_repeats,
            "empty_median_s": round(empty, 3),
            "backlog_median_s": round(backed_up, 3),
            "empty_runs_s": [round(t, 3) for t in times["empty"]],
            "backlog_runs_s": [round(t, 3) for t in times["backlog"]],
        },
    }
