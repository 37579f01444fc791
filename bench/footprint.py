"""Memory and CPU of an idle agent: ``python -m agent run`` with a simulated finger scanner and
camera, connected to the broker, nothing queued, nothing requested.

Peak RSS is VmHWM from /proc/PID/status after the agent has been connected and idle for a
few seconds. For scale, the same is read from a plain paho subscriber process
(bench/raw_peer.py) connected to the same broker and idle as long.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt

from bench.common import KIOSK_ID, SIM_DEVICES, TOPIC_PREFIX, BenchBroker, BenchError, Workspace
from bench.procs import AgentProcess, CpuMeter, RawPeer, connect, disconnect, new_client, status_kb, subscribe

#: Long enough for CPU time (counted in 10 ms ticks) to show a 1 % load.
IDLE_S = 5.0


def wait_online(port: int, timeout_s: float = 30.0) -> None:
    """Wait for the agent's retained "online" status: it is connected."""
    online = threading.Event()

    def on_message(client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        if json.loads(message.payload).get("state") == "online":
            online.set()

    client = new_client("bench-status-watch")
    client.on_message = on_message
    connect(client, port)
    try:
        subscribe(client, f"{TOPIC_PREFIX}/{KIOSK_ID}/status")
        if not online.wait(timeout_s):
            raise BenchError(f"the agent was not online within {timeout_s:.0f} s")
    finally:
        disconnect(client)


def idle_readings(pid: int) -> dict[str, float]:
    """CPU over IDLE_S seconds of idling, then peak and current RSS."""
    meter = CpuMeter({"process": pid})
    time.sleep(IDLE_S)
    cpu = meter.stop()
    return {"peak_mb": round(status_kb(pid, "VmHWM") / 1024, 1),
            "rss_mb": round(status_kb(pid, "VmRSS") / 1024, 1),
            "idle_cpu_percent": round(100 * cpu["process"] / cpu["wall"], 1)}


def run(ws: Workspace) -> dict[str, Any]:
    work = ws.fresh_dir("idle")
    with BenchBroker() as broker:
        config = ws.write_toml(work / "agent.toml", ws.agent_settings(
            port=broker.port, queue_path=work / "queue.db", devices=SIM_DEVICES))
        with AgentProcess(config, work, "idle-agent") as agent:
            agent.start()
            agent.wait_ready()
            wait_online(broker.port)
            agent_idle = idle_readings(agent.pid)
            agent.stop()
        with RawPeer(ws, broker.port, f"{TOPIC_PREFIX}/+/captures", "idle-raw") as peer:
            peer.start()
            peer.wait_ready()
            raw_idle = idle_readings(peer.pid)
            peer.stop()
    return {
        "rss_idle_mb": agent_idle["peak_mb"],
        "idle": {"agent": agent_idle, "raw_paho_subscriber": raw_idle, "idle_s": IDLE_S,
                 "devices": sorted(SIM_DEVICES)},
    }
