"""Broker outages of several lengths and a hostile network between kiosk and broker."""

from __future__ import annotations

import time
from pathlib import Path

from agent.daemon import Agent
from devtools.broker import MosquittoBroker
from receiver.service import Receiver
from tests.reliability.common import SOAK
from tests.reliability.proxy import FaultyProxy
from tests.support.config import agent_config, receiver_config
from tests.support.processes import stored_ids
from tests.support.waiting import wait_until

OUTAGES_S = [0.5, 2.0, 5.0, 15.0, 60.0] if SOAK else [0.5, 2.0, 5.0]


def steady_agent(tmp_path: Path, port: int, total: int, **mqtt: object) -> Agent:
    config = agent_config(tmp_path, port, capture={"max_captures": total, "rate_per_s": 25,
                                                   "finger_positions": [1, 2]},
                          mqtt={"keepalive_s": 5, "reconnect_min_s": 0.1, "reconnect_max_s": 1.0, **mqtt})
    return Agent(config)


def test_broker_outages_of_several_lengths(tmp_path: Path, broker: MosquittoBroker) -> None:
    total = 40 * (len(OUTAGES_S) + 1)
    agent = steady_agent(tmp_path, broker.port, total)
    out = tmp_path / "out"
    receiver = Receiver(receiver_config(out, agent.config))
    receiver.start()
    agent.start()
    try:
        for outage in OUTAGES_S:
            before = len(stored_ids(out))
            wait_until(lambda b=before: len(stored_ids(out)) >= b + 20, what="steady flow")
            broker.kill()  # abrupt, as a crash or power cut of the broker's host
            time.sleep(outage)
            broker.start()
        wait_until(lambda: agent.capture.captured >= total and agent.queue.totals()[0] == 0,  # type: ignore[union-attr]
                   timeout_s=120, what="everything delivered after the outages")
    finally:
        agent.stop()
        receiver.stop()
    assert len(stored_ids(out)) == total == agent.capture.captured  # type: ignore[union-attr]
    print(f"outages {OUTAGES_S} s: {total} captures, {receiver.counters.duplicates} duplicates "
          f"de-duplicated, lost 0; agent connected {agent.link.connects} times")  # type: ignore[union-attr]


def test_drop_stall_and_slow_links(tmp_path: Path, broker: MosquittoBroker) -> None:
    proxy = FaultyProxy(broker.port)
    total = 160
    agent = steady_agent(tmp_path, proxy.port, total)
    out = tmp_path / "out"
    receiver = Receiver(receiver_config(out, agent.config))  # connects to the broker directly
    receiver.start()
    agent.start()
    try:
        link = agent.link
        assert link is not None
        wait_until(lambda: len(stored_ids(out)) >= 20, what="steady flow")
        proxy.drop()  # connections reset mid-stream
        wait_until(lambda: link.connects >= 2, what="reconnect after a reset")

        stored = len(stored_ids(out))
        proxy.mode = "stall"  # half-open: no FIN, no RST, nothing moves
        # The keepalive (5 s) notices within 1.5 keepalives; new connections wait too.
        wait_until(lambda: not link.connected, timeout_s=15, what="the stall noticed")
        assert len(stored_ids(out)) <= stored + agent.config.mqtt.inflight_window
        proxy.mode = "pass"
        wait_until(lambda: link.connected, timeout_s=15, what="reconnected after the stall")

        proxy.mode = "slow"  # a weak cellular link: 20 KB/s
        time.sleep(3)
        proxy.mode = "pass"
        wait_until(lambda: agent.capture.captured >= total and agent.queue.totals()[0] == 0,  # type: ignore[union-attr]
                   timeout_s=120, what="everything delivered")
    finally:
        agent.stop()
        receiver.stop()
        proxy.close()
    assert len(stored_ids(out)) == total
    print("network faults (reset, half-open stall until the keepalive noticed, 3 s at 20 KB/s): "
          f"{total} captures, lost 0, "
          f"{link.connects} connections")
