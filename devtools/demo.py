"""``kiosk-agent demo``: the whole capture path on one machine.

A simulated fingerprint scanner and camera, the agent, a local broker (mosquitto when it is
installed, otherwise an embedded amqtt broker) or a given one, and the reference receiver.
It runs until every capture is acknowledged end to end, then prints a summary.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import secrets
import shutil
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TextIO

from agent.cliutil import (
    EXIT_FAILED,
    EXIT_USAGE,
    Subparsers,
    non_negative_float,
    positive_float,
    positive_int,
)
from agent.config import validate_config
from agent.errors import PermanentError
from agent.lock import StateLock, StateLocked
from agent.logs import setup_logging
from agent.security.keys import provision
from devtools.broker import EmbeddedBroker, MosquittoBroker
from receiver.config import ReceiverConfig, ReceiverServiceConfig

if TYPE_CHECKING:
    from agent.daemon import Agent

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
    #: Serve the local API on this port (0: any) for a registration app, until stopped,
    #: instead of capturing by itself; None: the capture demo.
    api_port: int | None = None


def parse_broker(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise DemoError(f"--broker {value!r}: expected HOST:PORT, for example 127.0.0.1:1883")
    return host, int(port)


def run_demo(opts: DemoOptions, out: TextIO | None = None, err: TextIO | None = None,
             stop: threading.Event | None = None) -> int:
    """Run the demo until every capture is acknowledged, or until ``stop`` is set (SIGTERM,
    Ctrl-C: cmd_demo sets it); either way stop in order (agent, receiver, broker last),
    remove the temporary folder and print the summary. Exit 0 complete, 1 not (timed out,
    lost captures), 128 + the signal's number when stopped by one."""
    out = out or sys.stdout  # looked up per call: tests and callers may redirect them
    err = err or sys.stderr
    stop = stop or threading.Event()
    workdir = opts.workdir or Path(tempfile.mkdtemp(prefix="kiosk-demo-"))
    # A kept folder may be another demo's or an agent's state folder: one user at a time.
    lock = StateLock(workdir).acquire() if opts.workdir is not None else None
    broker = None
    try:
        broker, host, port, protocol = _start_broker(opts, err)
        summary = _run(opts, workdir, host, port, protocol, err, stop)
    finally:
        if broker is not None:
            broker.close()  # last: the agent's offline status and the receipts go through it
        if opts.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
        if lock is not None:
            lock.release()
    summary["broker"] = broker.kind if broker else f"{host}:{port}"
    summary["kept_in"] = str(workdir) if opts.workdir is not None else None
    if opts.json:
        out.write(json.dumps(summary) + "\n")
    else:
        out.write(_summary_line(summary))
    if opts.api_port is not None:  # serving until stopped: a stop is the normal end
        return 0 if summary["lost"] == 0 else 1
    if summary["interrupted"]:
        return 128 + int(getattr(signal, summary["interrupted"], signal.SIGINT))
    return 0 if summary["complete"] and summary["lost"] == 0 else 1


def _summary_line(summary: dict[str, Any]) -> str:
    line = (f"captured {summary['captured']}, acknowledged {summary['acknowledged']}, "
            f"queued {summary['queued']}, lost {summary['lost']}, duplicates seen by the receiver "
            f"{summary['duplicates_seen_by_receiver']}, {summary['seconds']:.1f} s "
            f"({summary['captures_per_s']:.1f} captures/s)\n")
    if summary["interrupted"]:
        where = (f"still in {summary['kept_in']}/queue.db for the next run with --dir"
                 if summary["kept_in"] else "discarded with the temporary folder (--dir keeps them)")
        line = f"stopped by {summary['interrupted']}: " + line
        if summary["queued"]:
            line += f"the {summary['queued']} queued captures were not lost: {where}\n"
    return line


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
    capture: dict[str, Any] = {"mode": "continuous", "rate_per_s": opts.rate, "max_captures": opts.count}
    api: dict[str, Any] = {}
    if opts.api_port is not None:
        # The registration app asks for each capture; its token is in the demo's folder (0600).
        capture = {"mode": "on-demand"}
        token = workdir / "api-token"
        token.write_text(secrets.token_urlsafe(32) + "\n")
        token.chmod(0o600)
        api = {"enabled": True, "port": opts.api_port, "token_file": str(token)}
    agent_cfg = validate_config({
        "kiosk": {"id": "demo-kiosk", "site": "demo"},
        "mqtt": mqtt,
        "queue": {"path": str(workdir / "queue.db"), "min_free_bytes": 0},
        "capture": capture,
        "local_api": api,
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
         err: TextIO, stop: threading.Event) -> dict[str, Any]:
    agent_cfg, receiver_cfg = _configs(opts, workdir, host, port, protocol)
    # Imported when the demo runs, not when the command line is built: they bring OpenCV,
    # numpy and every component, which `kiosk-agent --help` does not need.
    from agent.daemon import Agent
    from receiver.service import Receiver

    committed_before, _ = _queue_counts(agent_cfg.queue.path)
    receiver = Receiver(receiver_cfg)
    agent = Agent(agent_cfg)
    started = time.monotonic()
    err.write("starting the receiver and the agent (simulated scanner and camera)\n")
    receiver.start()
    complete = False
    progress = _Progress(err, opts.count if opts.api_port is None else 0)
    try:
        agent.start()
        assert agent.capture is not None and agent.publisher is not None and agent.queue is not None
        if opts.api_port is not None:
            _announce_api(agent, workdir, err)
        deadline = started + opts.timeout_s if opts.api_port is None else float("inf")
        while time.monotonic() < deadline and not stop.is_set():
            captured = agent.capture.captured
            pending, _ = agent.queue.totals()
            progress.show(captured, agent.publisher.counters.acknowledged, pending,
                          agent.link.connected if agent.link else False)
            if opts.api_port is None and captured >= opts.count and pending == 0:
                complete = True
                break
            stop.wait(0.1)
        else:
            if not stop.is_set():
                err.write(f"\ndemo timed out after {opts.timeout_s:.0f} s\n")
    finally:
        seconds = time.monotonic() - started
        progress.finish()
        if stop.is_set():
            err.write(f"{_reason(stop)}: stopping the agent, then the receiver, then the broker\n")
        agent.stop()
        receiver.stop()
    capture, publisher = agent.capture, agent.publisher
    captured = capture.captured if capture is not None else 0
    acknowledged = publisher.counters.acknowledged if publisher is not None else 0
    # What the queue still holds is not lost: it would go out at the next start.
    committed, queued = _queue_counts(agent_cfg.queue.path)
    committed -= committed_before  # a kept --dir holds earlier runs' items too
    return {
        "captured": captured,
        "acknowledged": acknowledged,
        "queued": queued,
        "lost": max(0, committed - acknowledged - queued),
        "interrupted": _reason(stop) if stop.is_set() else None,
        "stored_by_receiver": receiver.counters.stored,
        "duplicates_seen_by_receiver": receiver.counters.duplicates,
        "rejected": publisher.counters.rejected if publisher is not None else 0,
        "seconds": round(seconds, 3),
        "captures_per_s": round(captured / seconds, 2) if seconds else 0.0,
        "protocol": protocol,
        "complete": complete,
    }


def _announce_api(agent: Agent, workdir: Path, err: TextIO) -> None:
    api = agent.local_api
    if api is None or api.server is None:
        raise DemoError(f"the local API did not start: {api.error if api else 'off'}")
    err.write(f"local API: {api.address}  (token: {workdir / 'api-token'})\n"
              "a registration step by step: README.md, \"The first hour\"; Ctrl-C stops the demo\n")
    err.flush()


def _queue_counts(path: Path) -> tuple[int, int]:
    """(items ever committed to the queue, items still in it), read without writing. Items
    are captures and registration manifests alike: what "acknowledged" counts too."""
    if not path.exists():
        return 0, 0
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        # Queue schema 2 keeps the last sequence number with the totals (schema 1: AUTOINCREMENT).
        seq = db.execute("SELECT last_seq FROM totals").fetchone()
        queued = db.execute("SELECT items FROM totals").fetchone()
    except sqlite3.OperationalError:  # no tables yet: nothing was ever committed
        return 0, 0
    finally:
        db.close()
    return (seq[0] if seq else 0), (queued[0] if queued else 0)


class StopSignal(threading.Event):
    """Set by SIGTERM or SIGINT (Ctrl-C) while the demo runs; remembers which."""

    reason = "stopped"

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopSignal]:
        """The handlers for the demo's duration, the previous ones restored after (the demo
        also runs inside other programs, tests among them)."""
        def on_signal(signum: int, frame: FrameType | None) -> None:
            self.reason = signal.Signals(signum).name
            self.set()

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _reason(stop: threading.Event) -> str:
    return getattr(stop, "reason", "stopped")


class _Progress:
    """One updating line on a terminal; otherwise (logs, CI) a line when the figures change,
    at most every two seconds. ``total`` 0: no target (the API demo)."""

    def __init__(self, stream: TextIO, total: int) -> None:
        self.stream = stream
        self.total = total
        self.tty = stream.isatty()
        self._last = 0.0
        self._line = ""

    def show(self, captured: int, acked: int, pending: int, connected: bool) -> None:
        now = time.monotonic()
        if now - self._last < (0.2 if self.tty else 2.0):
            return
        link = "" if connected else " (waiting for broker)"
        target = f"/{self.total}" if self.total else ""
        line = f"captured {captured}{target}, acknowledged {acked}, queued {pending}{link}"
        if line == self._line:
            return
        self._last, self._line = now, line
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
    p.add_argument("--api", nargs="?", type=int, const=8765, metavar="PORT",
                   help="instead of capturing by itself, serve the local API on 127.0.0.1:PORT "
                        "(default 8765; 0: any free port) for a registration app until Ctrl-C")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    setup_logging("WARNING", "text")
    opts = DemoOptions(count=args.count, rate=args.rate, broker=args.broker, protocol=args.protocol,
                       embedded=args.embedded_broker,
                       timeout_s=args.timeout, workdir=args.dir, json=args.json, api_port=args.api)
    try:
        with StopSignal().installed() as stop:
            return run_demo(opts, stop=stop)
    except StateLocked as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except DemoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
