"""``kiosk-agent demo``: the whole capture path on one machine.

A simulated fingerprint scanner and camera, the agent, a local broker (mosquitto when it is
installed, otherwise an embedded amqtt broker) or a given one, and the reference receiver.
It runs until every capture is acknowledged end to end, then prints a summary.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from agent.cliutil import EXIT_USAGE, Subparsers, non_negative_float, positive_float, positive_int
from agent.config import validate_config
from agent.daemon import Agent
from agent.errors import PermanentError
from agent.logs import setup_logging
from agent.security.keys import provision
from devtools.broker import EmbeddedBroker, MosquittoBroker
from receiver.config import ReceiverConfig, ReceiverServiceConfig
from receiver.service import Receiver

log = logging.getLogger(__name__)


class DemoError(PermanentError):
    pass


@dataclass
class DemoOptions:
    count: int = 20
    rate: float = 0.0
    broker: str | None = None
    protocol: str | None = None
    embedded: bool = False
    timeout_s: float = 300.0
    workdir: Path | None = None
    json: bool = False


def parse_broker(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise DemoError(f"--broker {value!r}: expected HOST:PORT, for example 127.0.0.1:1883")
    return host, int(port)


def run_demo(opts: DemoOptions, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout  # looked up per call: tests and callers may redirect them
    err = err or sys.stderr
    workdir = opts.workdir or Path(tempfile.mkdtemp(prefix="kiosk-demo-"))
    broker, host, port, protocol = _start_broker(opts, err)
    try:
        summary = _run(opts, workdir, host, port, protocol, err)
    finally:
        if broker is not None:
            broker.close()
        if opts.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    summary["broker"] = broker.kind if broker else f"{host}:{port}"
    if opts.json:
        out.write(json.dumps(summary) + "\n")
    else:
        out.write(
            f"captured {summary['captured']}, acknowledged {summary['acknowledged']}, "
            f"lost {summary['lost']}, duplicates seen by the receiver "
            f"{summary['duplicates_seen_by_receiver']}, {summary['seconds']:.1f} s "
            f"({summary['captures_per_s']:.1f} captures/s)\n"
        )
    return 0 if summary["complete"] and summary["lost"] == 0 else 1


def _start_broker(opts: DemoOptions, err: TextIO) -> tuple[Any, str, int, str]:
    if opts.broker:
        host, port = parse_broker(opts.broker)
        protocol = opts.protocol or "5"
        err.write(f"broker: using {host}:{port} (MQTT {protocol}); waiting for it if it is down\n")
        return None, host, port, protocol
    if opts.embedded and not EmbeddedBroker.available():
        raise DemoError("the embedded broker is not installed: pip install 'kiosk-agent[demo]'")
    if MosquittoBroker.available() and not opts.embedded:
        broker: MosquittoBroker | EmbeddedBroker = MosquittoBroker()
    elif EmbeddedBroker.available():
        broker = EmbeddedBroker()
    else:
        raise DemoError("no MQTT broker: install mosquitto (sudo apt-get install mosquitto) or "
                        "the embedded one (pip install 'kiosk-agent[demo]'), or pass --broker HOST:PORT")
    broker.start()
    protocol = opts.protocol or broker.protocol
    err.write(f"broker: {broker.kind} on {broker.host}:{broker.port} (MQTT {protocol})\n")
    return broker, broker.host, broker.port, protocol


def _configs(opts: DemoOptions, workdir: Path, host: str, port: int, protocol: str):  # type: ignore[no-untyped-def]
    # A demo broker on this machine (or one named with --broker) without TLS: allowed explicitly.
    mqtt = {"host": host, "port": port, "protocol": protocol, "reconnect_min_s": 0.2,
            "reconnect_max_s": 5.0, "receipt_timeout_s": 10.0, "allow_plaintext": True}
    keys = provision(workdir / "keys", "demo-kiosk")
    agent_cfg = validate_config({
        "kiosk": {"id": "demo-kiosk", "site": "demo"},
        "mqtt": mqtt,
        "queue": {"path": str(workdir / "queue.db"), "min_free_bytes": 0},
        "capture": {"mode": "continuous", "rate_per_s": opts.rate, "max_captures": opts.count},
        "logging": {"level": "WARNING"},
        "security": {"kiosk_key": str(keys.kiosk_key), "central_public_key": str(keys.central_public),
                     "receipt_keys": [str(keys.receipt_public)]},
        "devices": {
            "finger": {"driver": "sim-finger", "seed": 1},
            "camera": {"driver": "sim-camera", "seed": 1},
        },
    }, "demo")
    receiver_cfg = ReceiverServiceConfig(
        mqtt=agent_cfg.mqtt,
        receiver=ReceiverConfig(output_dir=workdir / "received", name="demo-receiver",
                                central_private_key=keys.central_key, receipt_signing_key=keys.receipt_key,
                                kiosk_keys_dir=keys.kiosks_dir),
    )
    return agent_cfg, receiver_cfg


def _run(opts: DemoOptions, workdir: Path, host: str, port: int, protocol: str,
         err: TextIO) -> dict[str, Any]:
    agent_cfg, receiver_cfg = _configs(opts, workdir, host, port, protocol)
    receiver = Receiver(receiver_cfg)
    agent = Agent(agent_cfg)
    started = time.monotonic()
    receiver.start()
    agent.start()
    assert agent.capture is not None and agent.publisher is not None and agent.queue is not None
    complete = False
    progress = _Progress(err, opts.count)
    try:
        deadline = started + opts.timeout_s
        while time.monotonic() < deadline:
            captured = agent.capture.captured
            pending, _ = agent.queue.totals()
            progress.show(captured, agent.publisher.counters.acknowledged, pending,
                          agent.link.connected if agent.link else False)
            if captured >= opts.count and pending == 0:
                complete = True
                break
            time.sleep(0.1)
        else:
            err.write(f"\ndemo timed out after {opts.timeout_s:.0f} s\n")
    finally:
        seconds = time.monotonic() - started
        progress.finish()
        agent.stop()
        receiver.stop()
    captured = agent.capture.captured
    acknowledged = agent.publisher.counters.acknowledged
    return {
        "captured": captured,
        "acknowledged": acknowledged,
        "lost": captured - acknowledged,
        "stored_by_receiver": receiver.counters.stored,
        "duplicates_seen_by_receiver": receiver.counters.duplicates,
        "rejected": agent.publisher.counters.rejected,
        "seconds": round(seconds, 3),
        "captures_per_s": round(captured / seconds, 2) if seconds else 0.0,
        "protocol": protocol,
        "complete": complete,
    }


class _Progress:
    """One updating line on a terminal; a line every two seconds otherwise (logs, CI)."""

    def __init__(self, stream: TextIO, total: int) -> None:
        self.stream = stream
        self.total = total
        self.tty = stream.isatty()
        self._last = 0.0

    def show(self, captured: int, acked: int, pending: int, connected: bool) -> None:
        now = time.monotonic()
        if now - self._last < (0.2 if self.tty else 2.0):
            return
        self._last = now
        link = "" if connected else " (waiting for broker)"
        line = f"captured {captured}/{self.total}, acknowledged {acked}, queued {pending}{link}"
        self.stream.write(f"\r{line}\033[K" if self.tty else line + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.tty:
            self.stream.write("\n")


# --- command line (added to kiosk-agent by cli/main.py) ------------------------------------


def add_parser(sub: Subparsers, parsers: dict[str, Any]) -> None:
    p = sub.add_parser("demo", help="run the whole capture path locally with simulated devices")
    p.add_argument("--count", type=positive_int, default=20, metavar="N",
                   help="captures to take (default 20)")
    p.add_argument("--rate", type=non_negative_float, default=0.0, metavar="R",
                   help="captures per second; 0 = as fast as the path allows (default)")
    p.add_argument("--broker", metavar="HOST:PORT",
                   help="use this broker instead of starting one (waits while it is down)")
    p.add_argument("--embedded-broker", action="store_true",
                   help="use the in-process broker even when mosquitto is installed")
    p.add_argument("--protocol", choices=["5", "3.1.1"],
                   help="MQTT version (default: 5, or 3.1.1 with the embedded broker)")
    p.add_argument("--timeout", type=positive_float, default=300.0, metavar="SECONDS",
                   help="give up after this long (default 300)")
    p.add_argument("--dir", type=Path, metavar="PATH",
                   help="keep the queue and received captures here (default: a temporary folder)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    setup_logging("WARNING", "text")
    opts = DemoOptions(count=args.count, rate=args.rate, broker=args.broker, protocol=args.protocol,
                       embedded=args.embedded_broker,
                       timeout_s=args.timeout, workdir=args.dir, json=args.json)
    try:
        return run_demo(opts)
    except DemoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
