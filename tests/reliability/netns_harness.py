"""A whole kiosk-to-central path over a cellular link built from the kernel's network stack.

The real parts, each in its namespace (tests/support/netns.py): `python -m agent run` in the
kiosk namespace, mosquitto and the reference receiver (`python -m cli receiver`) in the
central one, the latency relay between them. The central side starts first; the agent
queues its backlog while its connections are refused (a TCP reset, at once); then the
link opens and the backlog drains through it while the profile's faults play. What the
harness reads afterwards are the processes' own records: the agent's log (ids committed,
connections lost and made), the receiver's files and its final counters, and the kiosk
interface's byte counters.
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.reliability.common import committed_ids
from tests.support.config import keys_for, security_section, to_toml
from tests.support.link_faults import Shape, packets, refuse, set_loss, shape
from tests.support.netns import CENTRAL_ADDR, Topology
from tests.support.processes import NotifySocket, queued_while_running, stored_ids
from tests.support.waiting import wait_until

LOG_TIME = "%Y-%m-%d %H:%M:%S,%f"  # the agent's text log (agent/logs.py)
BROKER_PORT = 1883  # inside the central namespace: no other broker can be there
LOST_LINE = re.compile(r"^(\S+ \S+) WARNING\s+agent\.transport\.mqtt_link: "
                       r"(connection to \S+ lost|broker did not answer CONNECT)", re.M)
CONNECTED_LINE = re.compile(r"^(\S+ \S+) INFO\s+agent\.transport\.mqtt_link: connected to MQTT broker", re.M)
RECEIVER_STOP = re.compile(r"receiver stopped: (\d+) stored, (\d+) duplicates.*?chunks: (\d+) received, "
                           r"(\d+) duplicate, (\d+) corrupt")


@dataclass(frozen=True)
class Profile:
    """A cellular link: bandwidth, one-way delay and loss per direction, and its faults."""

    name: str
    up_kbit: int
    down_kbit: int
    delay_ms: int  # one way, each direction: the round trip is twice this
    loss_up_pct: float = 0.0
    loss_down_pct: float = 0.0
    flap: tuple[float, float] | None = None  # (up s, down s), again and again
    holes: int = 0  # black holes during the drain (each long enough to be noticed)
    holes_down_only: bool = False  # the holes swallow only what comes down to the kiosk
    nat_idle_s: float | None = None  # a NAT forgetting connections idle this long
    keepalive_s: int = 5


@dataclass
class Result:
    profile: str
    captures: int
    stored: int
    lost: int
    duplicates: int
    capture_bytes: int  # the images' bytes, as stored
    wire_up: int  # bytes sent on the kiosk's interface while draining
    wire_down: int
    drain_s: float
    chunks_received: int = 0
    chunks_duplicate: int = 0
    transfers_started: int = 0
    lost_at: list[float] = field(default_factory=list)  # wall-clock moments the agent noticed

    def line(self) -> str:
        n = max(1, self.captures)
        per = self.wire_up / n
        return (f"{self.profile}: {self.captures} captures ({self.capture_bytes // n:,} B each), "
                f"stored {self.stored}, lost {self.lost}, duplicates {self.duplicates}, drained in "
                f"{self.drain_s:.1f} s; on the wire {per:,.0f} B up per capture "
                f"({per * self.captures / max(1, self.capture_bytes):.2f}x its size), "
                f"{self.wire_down / n:,.0f} B down; chunks {self.chunks_received} stored, "
                f"{self.chunks_duplicate} received twice; {self.transfers_started} transfers started; "
                f"{len(self.lost_at)} dead connections noticed")


class CellularRun:
    """The topology with the profile's shape and loss, plus the central side and the agent."""

    def __init__(self, tmp_path: Path, profile: Profile, *, captures: int, size_px: int,
                 chunk_bytes: int, inflight_bytes: int, keepalive_s: int | None = None,
                 chunk_window: int | None = None) -> None:
        self.tmp, self.profile, self.captures = tmp_path, profile, captures
        self.out = tmp_path / "out"
        self.agent_log, self.receiver_log = tmp_path / "agent.log", tmp_path / "receiver.log"
        self.keepalive_s = keepalive_s or profile.keepalive_s
        self.topo = Topology(profile.delay_ms, profile.delay_ms)
        self.notify: NotifySocket | None = None
        self.agent = self.broker = self.receiver = None  # type: ignore[assignment]
        try:
            shape(self.topo, Shape(profile.up_kbit, profile.down_kbit))
            set_loss(self.topo, profile.loss_up_pct, profile.loss_down_pct, nat_idle_s=profile.nat_idle_s)
            self._write_configs(size_px, chunk_bytes, inflight_bytes, chunk_window)
        except BaseException:
            self.topo.close()
            raise

    def _write_configs(self, size_px: int, chunk_bytes: int, inflight_bytes: int,
                       chunk_window: int | None) -> None:
        keys = keys_for(self.tmp, "kiosk-n1")
        mqtt = {"host": CENTRAL_ADDR, "port": BROKER_PORT, "allow_plaintext": True}
        agent: dict[str, Any] = {
            "kiosk": {"id": "kiosk-n1"},
            "mqtt": {**mqtt, "keepalive_s": self.keepalive_s, "reconnect_min_s": 0.2, "reconnect_max_s": 2.0,
                     "receipt_timeout_s": 30.0, "connect_timeout_s": 10.0},
            "queue": {"path": str(self.tmp / "queue.db"), "min_free_bytes": 0},
            "uplink": {"chunk_bytes": chunk_bytes, "inflight_bytes": inflight_bytes,
                       **({"chunk_window": chunk_window} if chunk_window else {})},
            "capture": {"mode": "continuous", "rate_per_s": 0, "max_captures": self.captures,
                        "finger_positions": [1, 2, 3, 4]},
            "telemetry": {"interval_s": 0},
            "logging": {"level": "DEBUG", "format": "text"},
            "security": security_section(self.tmp, "kiosk-n1"),
            "devices": {"finger": {"driver": "sim-finger", "seed": 5, "width": size_px, "height": size_px}},
        }
        (self.tmp / "agent.toml").write_text(to_toml(agent))
        receiver = {
            "mqtt": {**mqtt, "keepalive_s": 30},
            "receiver": {"output_dir": str(self.out), "name": "r1",
                         "central_private_key": str(keys.central_key),
                         "receipt_signing_key": str(keys.receipt_key),
                         "kiosk_keys_dir": str(keys.kiosks_dir)},
            "logging": {"level": "INFO", "format": "text"},
        }
        (self.tmp / "receiver.toml").write_text(to_toml(receiver))
        (self.tmp / "mosquitto.conf").write_text(
            f"listener {BROKER_PORT} {CENTRAL_ADDR}\nallow_anonymous true\npersistence false\n"
            "log_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\n")

    # --- the parts ----------------------------------------------------------------------

    def start_agent(self) -> None:
        """The agent starts with its connections refused: its backlog queues until open()."""
        refuse(self.topo, True)
        self.notify = NotifySocket(self.tmp / "notify")  # a Unix socket: it crosses namespaces
        with self.agent_log.open("ab") as log:
            self.agent = self.topo.spawn(self.topo.kiosk, [sys.executable, "-m", "agent", "run", "--config",
                                                           str(self.tmp / "agent.toml")],
                                         stdout=log, stderr=log, env={"NOTIFY_SOCKET": str(self.notify.path)})
        self.notify.wait_for("READY=1")

    def wait_backlog(self) -> None:
        queue = self.tmp / "queue.db"
        wait_until(lambda: queued_while_running(queue) >= self.captures, timeout_s=120,
                   what=f"{self.captures} captures queued")

    def start_central(self) -> None:
        with (self.tmp / "mosquitto.log").open("ab") as log:
            self.broker = self.topo.spawn(self.topo.central,
                                          ["mosquitto", "-c", str(self.tmp / "mosquitto.conf")],
                                          stdout=log, stderr=log)
        self.topo.wait_listening(self.topo.central, BROKER_PORT)
        with self.receiver_log.open("ab") as log:
            argv = [sys.executable, "-m", "cli", "receiver", "--config", str(self.tmp / "receiver.toml")]
            self.receiver = self.topo.spawn(self.topo.central, argv, stdout=log, stderr=log)
        wait_until(lambda: "subscribed to" in self.receiver_log.read_text(errors="replace"), timeout_s=30,
                   what="the receiver subscribed")

    def open(self) -> None:
        refuse(self.topo, False)

    def start_and_open(self) -> tuple[float, tuple[int, int]]:
        """Central side, then the agent with its backlog queued, then the link opened; the
        moment it opened (monotonic) and the interface's byte counters just before."""
        self.start_central()
        self.start_agent()
        self.wait_backlog()
        wire_before = self.topo.if_bytes()
        started = time.monotonic()
        self.open()
        return started, wire_before

    def drained(self) -> bool:
        return queued_while_running(self.tmp / "queue.db") == 0

    def lost_times(self) -> list[float]:
        """Moments (wall clock) the agent noticed a dead connection, from its own log."""
        return self._times(LOST_LINE)

    def connected_times(self) -> list[float]:
        return self._times(CONNECTED_LINE)

    def _times(self, pattern: re.Pattern[str]) -> list[float]:
        text = self.agent_log.read_text(errors="replace")
        return [datetime.strptime(m.group(1), LOG_TIME).timestamp() for m in pattern.finditer(text)]

    def quiet_since(self, timeout_s: float) -> float:
        """Wait until no IP packet has crossed the kiosk's link for the NAT's idle time
        (packets the NAT drops do not count: they never cross); return the wall-clock
        moment of the last one."""
        idle = (self.profile.nat_idle_s or 0) + 0.5
        deadline = time.monotonic() + timeout_s
        last_counts, last_change = None, time.time()
        while True:
            counts = packets(self.topo)
            crossed = (counts["output"], counts["input"])
            if crossed != last_counts:
                last_counts, last_change = crossed, time.time()
            elif time.time() - last_change >= idle:
                return last_change
            if time.monotonic() > deadline:
                raise AssertionError(f"the link never went quiet for {idle:.1f} s")
            time.sleep(0.05)

    def finish(self, started: float, wire_before: tuple[int, int]) -> Result:
        """Stop the agent and the receiver cleanly and read what they recorded."""
        drain_s = time.monotonic() - started
        up, down = self.topo.if_bytes()
        assert self.topo.stop(self.agent, 30) == 0, "the agent ends with exit 0 on SIGTERM"
        self.topo.stop(self.receiver, 30)
        text = self.agent_log.read_text(errors="replace")
        committed, stored = committed_ids(text), stored_ids(self.out)
        match = RECEIVER_STOP.search(self.receiver_log.read_text(errors="replace"))
        assert match, "the receiver's closing counters are in its log"
        return Result(profile=self.profile.name, captures=len(committed), stored=len(stored),
                      lost=len(committed - stored), duplicates=int(match.group(2)),
                      capture_bytes=sum(p.stat().st_size for p in self.out.glob("*/*.png")),
                      wire_up=up - wire_before[0], wire_down=down - wire_before[1], drain_s=drain_s,
                      chunks_received=int(match.group(3)), chunks_duplicate=int(match.group(4)),
                      transfers_started=text.count(" goes in "), lost_at=self.lost_times())

    def close(self) -> None:
        if self.notify is not None:
            self.notify.close()
        self.topo.close()
