"""Fleet: many simulated kiosks, each running the agent's own transport code, through one
mosquitto to reference receivers sharing one subscription group into PostgreSQL.

Every simulated kiosk is what the daemon builds for its uplink (agent/daemon.py): its own
Ed25519 key (enrolled with the receivers), a Sealer, a DurableQueue (SQLite file), a
Publisher in ``receipt`` mode and an MqttLink with its last will, on its own thread. Many
kiosks share a worker process (``python -m bench.fleet worker``); the parent drives the
workers over stdin and reads their progress on stdout. Captures are 100 KB images sealed
and committed to each kiosk's queue by the agent's code; a kiosk deletes one only when a
receipt signed by the central key names it.

One change from a real kiosk, and why: a kiosk's link thread wakes every 50 ms when idle
(agent/transport/mqtt_link.py, IDLE_WAIT_S) to look at its queue. A real kiosk has a CPU of
its own for that; here hundreds of kiosks share one core, and 1,000 kiosks polling 20 times
a second would use the machine by themselves. Workers raise it to WORKER_IDLE_WAIT_S: new
captures wait up to that long before they go, nothing else changes.

Figures (bench/run.py): ``fleet_lost`` (captures a kiosk deleted, i.e. a verified receipt
arrived, that are not rows in the database: must be 0), ``fleet_captures_per_s`` (backlogs
of every kiosk drained, first connect to the last receipt), and ``fleet_storm_s``: the
broker restarts with every kiosk online and holding new captures queued while it was down;
seconds from the broker accepting connections again to every kiosk being connected and
subscribed again, and to every queue being empty (``fleet_storm_drained_s``).

    python -m bench.fleet [--kiosks N] [--captures C] [--workers W]   # the bench step alone
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from bench.common import REPO, BenchBroker, BenchError, Sizes, Workspace
from bench.procs import Managed

#: See the module docstring: a worker's kiosks poll their queues this often when idle.
WORKER_IDLE_WAIT_S = 0.5
#: Kiosks per worker process at most: paho waits on its sockets with select(), which cannot
#: watch a descriptor numbered 1024 or above, and each simulated kiosk holds about ten
#: (its MQTT socket, paho's and the link's wake-up pairs, SQLite's database, WAL and shm files):
#: beyond this a kiosk's link would fail where a real kiosk, alone in its process, never does.
MAX_KIOSKS_PER_WORKER = 60
#: Progress lines from a worker at most this often.
REPORT_S = 0.1
RECEIVERS = ("r1", "r2")
#: The kiosks' mqtt.receipt_timeout_s: the product's default. Shorter makes every kiosk send
#: its whole window again while the receivers are behind, and the copies pile up in the
#: broker (docs/deployment.md, max_queued_messages).
RECEIPT_TIMEOUT_S = 60.0


# --- inside a worker process: the kiosks ------------------------------------------------------


class SimKiosk:
    """One kiosk's uplink, built as the daemon builds it."""

    def __init__(self, spec: dict[str, Any], settings: dict[str, Any]) -> None:
        from agent.config import validate_config
        from agent.security.keys import load_encryption_public, load_receipt_keys, load_signing_key
        from agent.security.sealing import Sealer
        from agent.transport.durable_queue import DurableQueue
        from agent.transport.mqtt_link import MqttLink, Will
        from agent.transport.protocol import Topics, status_payload
        from agent.transport.publisher import Publisher

        self.id = spec["id"]
        raw = json.loads(json.dumps(settings))
        raw["kiosk"]["id"] = self.id
        raw["kiosk"]["state_dir"] = spec["state_dir"]
        raw["queue"]["path"] = spec["queue"]
        raw["security"]["kiosk_key"] = spec["key"]
        cfg = validate_config(raw, f"fleet kiosk {self.id}")
        Path(spec["state_dir"]).mkdir(parents=True, exist_ok=True)
        self.sealer = Sealer(load_signing_key(Path(spec["key"])),
                             load_encryption_public(cfg.security.central_public_key))
        q = cfg.queue
        self.queue = DurableQueue(q.path, max_bytes=q.max_bytes, min_free_bytes=q.min_free_bytes,
                                  erase_interval_s=q.erase_interval_s, reserve_bytes=q.reserve_bytes)
        topics = Topics(cfg.mqtt.topic_prefix, self.id)
        status = {"kiosk_id": self.id, "site": cfg.kiosk.site}
        self.publisher = Publisher(self.queue, cfg.mqtt, topics, status, uplink=cfg.uplink,
                                   state_dir=cfg.state_dir, signer=self.sealer,
                                   receipt_keys=load_receipt_keys(cfg.security.receipt_keys))
        self.link = MqttLink(cfg.mqtt, self.publisher, client_id=cfg.client_id(), name=self.id,
                             will=Will(topics.status, status_payload("offline", **status)))
        self.created: list[str] = []

    def add(self, count: int, images: list[bytes]) -> None:
        """Seal and commit ``count`` captures, exactly as CaptureService.commit does."""
        for _ in range(count):
            self.created.append(commit_capture(self.queue, self.sealer, self.id,
                                               images[len(self.created) % len(images)]))

    @property
    def online(self) -> bool:
        """Connected and subscribed to its receipts: able to finish what it sends."""
        return self.link.subscribed

    def close(self) -> None:
        self.queue.close()


def commit_capture(queue: Any, sealer: Any, kiosk_id: str, image: bytes) -> str:
    """CaptureService.commit for a ready-made 100 KB image: record, seal with the queue's
    sequence number, durable commit. Returns the capture id."""
    from dataclasses import replace

    from agent.capture.record import new_record
    from agent.transport.protocol import encode_capture
    from drivers import CapturedImage, Modality

    captured = CapturedImage(modality=Modality.FINGER, position=1, image_format="png", image=image,
                             width=320, height=400, ppi=500)
    record = new_record(captured, kiosk_id=kiosk_id, site="bench", operator_id=None, device_id="bench",
                        driver="bench-fixed", device_serial="BENCH-1")

    def sealed(seq: int) -> bytes:
        return sealer.seal(item_id=record.id, kiosk_id=kiosk_id, seq=seq, kind="capture",
                           inner=encode_capture(replace(record, seq=seq)))

    queue.put(record.id, "capture", sealed)
    return record.id


class Worker:
    """A worker process's kiosks and its command loop (stdin) and progress lines (stdout)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        import agent.transport.mqtt_link as mqtt_link

        mqtt_link.IDLE_WAIT_S = WORKER_IDLE_WAIT_S  # see the module docstring
        self.images = [os.urandom(spec.get("image_bytes", 100_000)) for _ in range(8)]
        self.kiosks = [SimKiosk(k, spec["settings"]) for k in spec["kiosks"]]
        self.out = threading.Lock()
        self.stopping = threading.Event()

    def say(self, line: str) -> None:
        with self.out:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def progress(self) -> str:
        online = sum(k.online for k in self.kiosks)
        pending = sum(k.queue.totals()[0] for k in self.kiosks)
        acked = sum(k.publisher.counters.acknowledged for k in self.kiosks)
        refused = sum(k.publisher.counters.receipts_refused for k in self.kiosks)
        rejected = sum(k.publisher.counters.rejected for k in self.kiosks)
        return (f"progress {time.monotonic()!r} online={online} pending={pending} acked={acked} "
                f"refused={refused} rejected={rejected}")

    def report(self) -> None:
        while not self.stopping.wait(REPORT_S):
            self.say(self.progress())

    def run(self, commands: IO[str]) -> None:
        self.say("built")
        threading.Thread(target=self.report, daemon=True).start()
        for line in commands:
            words = line.split()
            if words[:1] == ["start"]:
                for kiosk in self.kiosks:
                    kiosk.link.start()
            elif words[:1] == ["add"]:
                count = int(words[1])
                with ThreadPoolExecutor(4) as pool:  # fsyncs of different files overlap
                    list(pool.map(lambda k, n=count: k.add(n, self.images), self.kiosks))
                self.say(f"added {count}")
            elif words[:1] == ["stop"]:
                break
        self.stopping.set()
        # In parallel: each link's clean stop waits for its offline status's PUBACK.
        with ThreadPoolExecutor(32) as pool:
            list(pool.map(lambda k: k.link.stop(), self.kiosks))
        self.say(self.progress())
        for kiosk in self.kiosks:
            kiosk.close()
        self.say("created " + json.dumps({k.id: k.created for k in self.kiosks}))
        self.say("stopped")


def worker_main(spec_path: str) -> int:
    import faulthandler
    import logging

    logging.basicConfig(level=logging.ERROR, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, lambda *a: os._exit(3))
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 PID`: where is it stuck?
    worker = Worker(json.loads(Path(spec_path).read_text()))
    worker.run(sys.stdin)
    return 0


# --- in the parent: workers as processes ----------------------------------------------------


@dataclass
class Progress:
    at: float = 0.0
    online: int = 0
    pending: int = 0
    acked: int = 0
    refused: int = 0
    rejected: int = 0


class WorkerProcess(Managed):
    def __init__(self, spec_path: Path, log_path: Path, name: str) -> None:
        super().__init__(name, [sys.executable, "-m", "bench.fleet", "worker", str(spec_path)], log_path,
                         stdout_pipe=True)
        self.cond = threading.Condition()
        self.progress = Progress()
        self.lines: list[str] = []
        self.created: dict[str, list[str]] = {}
        self._reader: threading.Thread | None = None

    def start(self) -> float:
        started = time.monotonic()
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self.args, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=log, text=True)
        assert self.proc.stdout is not None
        self._reader = threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True,
                                        name=f"bench-{self.name}")
        self._reader.start()
        return started

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            word, _, rest = line.rstrip("\n").partition(" ")
            with self.cond:
                if word == "progress":
                    at, *fields = rest.split()
                    counts = {k: int(v) for k, v in (f.split("=") for f in fields)}
                    self.progress = Progress(float(at), **counts)
                elif word == "created":
                    self.created = json.loads(rest)
                else:
                    self.lines.append(line.strip())
                self.cond.notify_all()

    def send(self, command: str) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def wait_line(self, prefix: str, timeout_s: float) -> None:
        with self.cond:
            if not self.cond.wait_for(lambda: any(x.startswith(prefix) for x in self.lines), timeout_s):
                self.check_alive()
                raise BenchError(f"{self.name}: no {prefix!r} within {timeout_s:.0f} s:\n{self.log_tail()}")
            self.lines = [x for x in self.lines if not x.startswith(prefix)]

    def finish(self, timeout_s: float = 600.0) -> None:
        """After ``send("stop")``: wait for its kiosks to stop and collect what they created."""
        self.wait_line("stopped", timeout_s)
        assert self.proc is not None
        self.proc.wait(30)
        if self._reader is not None:
            self._reader.join(5)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
        self.proc = None


class Fleet:
    """Kiosks spread over worker processes: keys made and enrolled here, queues in ``root``."""

    def __init__(self, ws: Workspace, port: int, kiosks: int, workers: int, *, prefix: str = "fleet",
                 settings: dict[str, Any] | None = None, image_bytes: int = 100_000) -> None:
        self.root = ws.fresh_dir(f"{prefix}-kiosks")
        base = settings or fleet_settings(ws, port)
        self.ids = [f"{prefix}-{i:04d}" for i in range(kiosks)]
        workers = max(workers, -(-kiosks // MAX_KIOSKS_PER_WORKER))
        specs: list[list[dict[str, Any]]] = [[] for _ in range(workers)]
        for n, kiosk_id in enumerate(self.ids):
            specs[n % workers].append(self._enrol(ws, kiosk_id))
        self.workers = []
        for w, kiosk_specs in enumerate(specs):
            path = self.root / f"worker-{w}.json"
            path.write_text(json.dumps({"settings": base, "kiosks": kiosk_specs, "image_bytes": image_bytes}))
            self.workers.append(WorkerProcess(path, self.root / f"worker-{w}.log", f"fleet worker {w}"))

    def _enrol(self, ws: Workspace, kiosk_id: str) -> dict[str, Any]:
        from agent.security.keys import public_pem

        key = Ed25519PrivateKey.generate()
        key_path = self.root / f"{kiosk_id}.key"
        key_path.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
        key_path.chmod(0o600)
        (ws.keys.kiosks_dir / f"{kiosk_id}.pub").write_bytes(public_pem(key.public_key()))
        return {"id": kiosk_id, "key": str(key_path), "queue": str(self.root / f"{kiosk_id}.db"),
                "state_dir": str(self.root / kiosk_id)}

    def start_workers(self, timeout_s: float = 1800.0) -> None:
        for worker in self.workers:
            worker.start()
        for worker in self.workers:
            worker.wait_line("built", timeout_s)

    def command(self, line: str) -> None:
        for worker in self.workers:
            worker.send(line)

    def add(self, per_kiosk: int, timeout_s: float = 3600.0) -> None:
        self.command(f"add {per_kiosk}")
        for worker in self.workers:
            worker.wait_line("added", timeout_s)

    def total(self) -> Progress:
        total = Progress()
        for worker in self.workers:
            with worker.cond:
                p = worker.progress
            total.at = max(total.at, p.at)
            for name in ("online", "pending", "acked", "refused", "rejected"):
                setattr(total, name, getattr(total, name) + getattr(p, name))
        return total

    def wait(self, what: str, done: Callable[[Progress], bool], timeout_s: float,
             check: Callable[[], None] | None = None) -> float:
        """Until ``done`` holds for the fleet's progress as of one report after now; returns
        the monotonic time of the first report that showed it."""
        asked = time.monotonic()
        deadline = asked + timeout_s
        first = 0.0
        while True:
            progress = [w.progress for w in self.workers]
            total = self.total()
            if all(p.at > asked for p in progress) and done(total):
                first = first or max(p.at for p in progress)
                return first
            if time.monotonic() > deadline:
                raise BenchError(f"fleet: not {what} after {timeout_s:.0f} s: {total}")
            for worker in self.workers:
                worker.check_alive()
            if check is not None:
                check()
            time.sleep(REPORT_S / 2)

    def finish(self) -> dict[str, list[str]]:
        """Stop every kiosk cleanly; capture ids each created."""
        created: dict[str, list[str]] = {}
        for worker in self.workers:
            worker.send("stop")
        for worker in self.workers:
            worker.finish()
            created.update(worker.created)
        return created

    def kill(self) -> None:
        for worker in self.workers:
            worker.kill()


def fleet_settings(ws: Workspace, port: int) -> dict[str, Any]:
    """An agent config for the simulated kiosks: the product's defaults except for what a
    laboratory needs (plain MQTT on loopback, no disk reserve or free-space floor per kiosk)."""
    raw = ws.agent_settings(port=port, queue_path=ws.root / "unused.db", level="ERROR")
    # receipt_timeout_s: a capture a kiosk sends in the moment between its reconnect and the
    # receivers' re-subscription reaches no subscriber (the broker drops it) and goes again
    # only after this long: the storm's "drained" figure includes that wait.
    raw["mqtt"] = {"host": "127.0.0.1", "port": port, "allow_plaintext": True, "ack_mode": "receipt",
                   "receipt_timeout_s": RECEIPT_TIMEOUT_S}
    raw["queue"].update({"reserve_bytes": 0, "erase_interval_s": 1.0})
    raw["kiosk"]["site"] = "bench"
    return raw


# --- the receivers (PostgreSQL store) and what the database holds -----------------------------


class Receivers:
    """Reference receivers in one share group on one database, each its own process
    (tests/central/receiver_process.py: the Receiver class the `receiver` command runs)."""

    def __init__(self, ws: Workspace, port: int, dsn: str, names: tuple[str, ...] = RECEIVERS,
                 extra_args: tuple[str, ...] = (), **receiver: Any) -> None:
        """``extra_args``: receiver_process's test-only breakages (mutation runs)."""
        self.procs: dict[str, Managed] = {}
        self.ws, self.port, self.dsn, self.receiver = ws, port, dsn, receiver
        self.extra_args = list(extra_args)
        for name in names:
            self.procs[name] = self._make(name)

    def _make(self, name: str) -> Managed:
        out = self.ws.root / f"out-{name}"
        settings = self.ws.receiver_settings(port=self.port, output_dir=out, name=name)
        settings["receiver"].update({"store": self.dsn, **self.receiver})
        settings["logging"]["level"] = "WARNING"
        settings["mqtt"].update({"reconnect_min_s": 0.2, "reconnect_max_s": 2.0})
        path = self.ws.root / f"receiver-{name}.json"
        path.write_text(json.dumps(settings))
        command = [sys.executable, "-m", "tests.central.receiver_process", str(path), *self.extra_args]
        return Managed(f"receiver {name}", command,
                       self.ws.root / f"receiver-{name}.log", stdout_pipe=True)

    def start(self, name: str | None = None, timeout_s: float = 60.0) -> None:
        self.launch(name)
        self.wait_ready(name, timeout_s)

    def launch(self, name: str | None = None) -> None:
        """Start the named receiver (default: all) without waiting for it."""
        for n in ([name] if name else list(self.procs)):
            proc = self.procs[n]
            if proc.proc is None or proc.proc.poll() is not None:
                proc.kill()
                proc.start()

    def wait_ready(self, name: str | None = None, timeout_s: float = 60.0) -> None:
        for n in ([name] if name else list(self.procs)):
            self._wait_ready(self.procs[n], timeout_s)

    @staticmethod
    def _wait_ready(proc: Managed, timeout_s: float) -> None:
        assert proc.proc is not None and proc.proc.stdout is not None
        ready = threading.Event()

        def read() -> None:
            assert proc.proc is not None and proc.proc.stdout is not None
            if proc.proc.stdout.readline().strip() == "ready":
                ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(timeout_s):
            raise BenchError(f"{proc.name} not ready in {timeout_s:.0f} s:\n{proc.log_tail()}")

    def pid(self, name: str) -> int:
        return self.procs[name].pid

    def check_alive(self) -> None:
        for proc in self.procs.values():
            proc.check_alive()

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.stop()

    def kill(self) -> None:
        for proc in self.procs.values():
            proc.kill()


def database_rows(dsn: str, prefix: str) -> tuple[set[tuple[str, str]], int]:
    """((kiosk, capture id) rows of the fleet's kiosks, and how many rows that is)."""
    import psycopg

    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT kiosk_id, capture_id FROM captures WHERE kiosk_id LIKE %s",
                            (prefix + "-%",)).fetchall()
    return {(k, c) for k, c in rows}, len(rows)


def lost(created: dict[str, list[str]], rows: set[tuple[str, str]]) -> int:
    return sum(1 for kiosk, ids in created.items() for cid in ids if (kiosk, cid) not in rows)


# --- the bench step ---------------------------------------------------------------------------


def run(ws: Workspace, sizes: Sizes, workers: int = 2, storm_down_s: float = 2.0) -> dict[str, Any]:
    from bench.central_ingest import bench_database

    kiosks, per_kiosk = sizes.fleet_kiosks, sizes.fleet_captures_per_kiosk
    total = kiosks * per_kiosk
    timeout = 120 + total / 20
    with bench_database() as dsn, BenchBroker() as broker:
        receivers = Receivers(ws, broker.port, dsn)
        fleet = Fleet(ws, broker.port, kiosks, min(workers, kiosks))
        try:
            receivers.launch()
            fleet.start_workers()  # while the receivers start
            receivers.wait_ready()
            fleet.add(per_kiosk)  # the backlog, before any kiosk connects
            go = time.monotonic()
            fleet.command("start")
            online_at = fleet.wait("all online", lambda p: p.online == kiosks, timeout, receivers.check_alive)
            drained_at = fleet.wait("drained", lambda p: p.pending == 0, timeout, receivers.check_alive)
            # The storm: every kiosk online, the broker goes away, captures pile up, it comes back.
            broker.stop()
            fleet.wait("offline", lambda p: p.online == 0, 60)
            fleet.add(2)
            time.sleep(storm_down_s)
            broker.start()
            back = time.monotonic()
            alive = receivers.check_alive
            storm_online = fleet.wait("online again", lambda p: p.online == kiosks, timeout, alive)
            storm_drained = fleet.wait("drained again", lambda p: p.pending == 0, timeout, alive)
            progress = fleet.total()
            created = fleet.finish()
            receivers.stop()
        finally:
            fleet.kill()
            receivers.kill()
        rows, row_count = database_rows(dsn, "fleet")
    created_count = sum(len(ids) for ids in created.values())
    return {
        "fleet_captures_per_s": round(total / (drained_at - go), 1),
        "fleet_lost": lost(created, rows),
        "fleet_storm_s": round(storm_online - back, 2),
        "fleet": {
            "kiosks": kiosks,
            "captures": created_count,
            "backlog_per_kiosk": per_kiosk,
            "receivers": len(RECEIVERS),
            "worker_processes": len(fleet.workers),
            "first_online_s": round(online_at - go, 2),
            "rows": row_count,
            "duplicate_rows": row_count - len(rows),
            "acknowledged": progress.acked,
            "receipts_refused": progress.refused,
            "rejected": progress.rejected,
            "storm_down_s": storm_down_s,
            "receipt_timeout_s": RECEIPT_TIMEOUT_S,
            "storm_drained_s": round(storm_drained - back, 2),
        },
    }


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["worker"]:
        return worker_main(argv[1])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kiosks", type=int, default=50)
    parser.add_argument("--captures", type=int, default=20, help="backlog per kiosk")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    from bench.common import QUICK

    sizes = Sizes(**{**QUICK.__dict__, "fleet_kiosks": args.kiosks,
                     "fleet_captures_per_kiosk": args.captures})
    with Workspace() as ws:
        print(json.dumps(run(ws, sizes, args.workers), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
