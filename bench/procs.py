"""Processes and MQTT plumbing the benchmarks share: the agent, receivers and raw paho peers as
subprocesses, /proc readings (RSS, CPU), the systemd notify socket, a readiness probe."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.security.keys import load_receipt_keys
from agent.transport.receipts import verify_receipts
from bench.common import (
    PROBE_KIOSK_ID,
    REPO,
    TOPIC_PREFIX,
    BenchError,
    ImagePool,
    Workspace,
    python_cmd,
    seal_capture,
)

_CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- /proc ------------------------------------------------------------------------------------


def status_kb(pid: int, field: str) -> int:
    """A "kB" field of /proc/PID/status: VmRSS, VmHWM (peak RSS), ..."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise BenchError(f"/proc/{pid}/status has no {field}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc/PID/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()  # the command name may contain spaces
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def child_pids(command: str) -> list[int]:
    """This process's children running ``command`` (mosquitto is started by MosquittoBroker)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # the process ended while we looked
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        if ppid == os.getpid() and name == command:
            found.append(int(entry.name))
    return found


class CpuMeter:
    """CPU seconds used by labelled processes between construction and ``stop``."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self._start = self._read()
        self._t0 = time.monotonic()

    def _read(self) -> dict[str, float]:
        return {label: cpu_seconds(pid) for label, pid in self.pids.items()}

    def stop(self) -> dict[str, float]:
        end = self._read()
        used = {label: round(end[label] - self._start[label], 2) for label in self.pids}
        used["wall"] = round(time.monotonic() - self._t0, 2)
        return used


# --- subprocesses -----------------------------------------------------------------------------


class Managed:
    """A subprocess with its output in a log file, stopped with SIGTERM (then SIGKILL)."""

    def __init__(self, name: str, args: list[str], log_path: Path, env: dict[str, str] | None = None,
                 stdout_pipe: bool = False, preexec: Callable[[], None] | None = None) -> None:
        self.name = name
        self.args = args
        self.log_path = log_path
        self.env = env
        self.stdout_pipe = stdout_pipe
        #: Run in the child before it executes (bench/constrained.py: into a CPU-limited cgroup).
        self.preexec = preexec
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> float:
        """Spawn it; returns the monotonic time just before the spawn."""
        started = time.monotonic()
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.args, cwd=REPO, env=self.env, stderr=log, text=True,
                stdout=subprocess.PIPE if self.stdout_pipe else log, preexec_fn=self.preexec,
            )
        return started

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise BenchError(f"{self.name} is not running")
        return self.proc.pid

    def check_alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            raise BenchError(f"{self.name} exited unexpectedly; its log:\n{self.log_tail()}")

    def stop(self, timeout_s: float = 20.0) -> int:
        """SIGTERM and wait; SIGKILL when it does not stop in time. Returns the exit code."""
        if self.proc is None:
            return 0
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise BenchError(f"{self.name} did not stop within {timeout_s:.0f} s of SIGTERM; "
                             f"killed. Its log:\n{self.log_tail()}") from None
        finally:
            if proc.stdout is not None:
                proc.stdout.close()
        if code != 0:
            raise BenchError(f"{self.name} exited with {code}; its log:\n{self.log_tail()}")
        return code

    def kill(self) -> None:
        """For clean-up after a failure: never leaves a process behind."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return "(no log)"

    def __enter__(self) -> Managed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


class NotifySocket:
    """The $NOTIFY_SOCKET end systemd would hold: the agent sends READY=1 to it.

    Like systemd it keeps reading: the agent also sends a STATUS= line whenever its status
    changes, and a datagram socket nobody reads fills up (about 10 datagrams) and then blocks
    the agent's sendto, and with it the agent's main thread.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)  # the reader checks for close() this often
        self.ready_at = 0.0
        self._ready = threading.Event()
        self._closing = threading.Event()
        self._reader = threading.Thread(target=self._read, name=f"bench-notify-{path.name}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._closing.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            received = time.monotonic()
            if b"READY=1" in data.split(b"\n") and not self._ready.is_set():
                self.ready_at = received
                self._ready.set()

    def wait_ready(self, timeout_s: float) -> float:
        """The monotonic time the READY=1 datagram arrived."""
        if not self._ready.wait(timeout_s):
            raise BenchError(f"no READY=1 on {self.path} within {timeout_s:.0f} s")
        return self.ready_at

    def close(self) -> None:
        if self._reader.is_alive():
            self._closing.set()
            self._reader.join()
        self.sock.close()
        self.path.unlink(missing_ok=True)


def unit_environment(unit: Path = REPO / "systemd" / "kiosk-agent.service") -> dict[str, str]:
    """The unit's Environment= settings (MALLOC_ARENA_MAX, ...), but not its config path (the
    benchmark passes --config): the agent is measured as systemd runs it."""
    env = {}
    for line in unit.read_text().splitlines():
        if line.startswith("Environment="):
            name, _, value = line[len("Environment="):].partition("=")
            if name != "KIOSK_AGENT_CONFIG":
                env[name] = value
    return env


class AgentProcess(Managed):
    """``python -m agent run --config PATH`` with a notify socket, as systemd runs it."""

    def __init__(self, config_path: Path, workdir: Path, name: str = "agent",
                 preexec: Callable[[], None] | None = None) -> None:
        self.notify = NotifySocket(workdir / f"{name}.notify")
        env = dict(os.environ, **unit_environment(), NOTIFY_SOCKET=str(self.notify.path))
        env.pop("WATCHDOG_USEC", None)
        super().__init__(name, python_cmd("-m", "agent", "run", "--config", str(config_path)),
                         workdir / f"{name}.log", env, preexec=preexec)

    def wait_ready(self, timeout_s: float = 60.0) -> float:
        # In slices, so an agent that dies while starting fails the step at once with its log,
        # rather than after the whole timeout (a CPU-limited start may need minutes).
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return self.notify.wait_ready(min(1.0, max(0.0, deadline - time.monotonic())))
            except BenchError:
                self.check_alive()
                if time.monotonic() >= deadline:
                    raise

    def stop(self, timeout_s: float = 20.0) -> int:
        try:
            return super().stop(timeout_s)
        finally:
            self.notify.close()

    def kill(self) -> None:
        super().kill()
        self.notify.close()

    def problems(self) -> list[str]:
        """ERROR/CRITICAL lines and tracebacks in its log (the log level is WARNING)."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return [line for line in text.splitlines()
                if " ERROR " in line or " CRITICAL " in line or line.startswith("Traceback")]


class ReceiverProcess(Managed):
    """``python -m cli receiver --config PATH``: the reference receiver in its own process."""

    def __init__(self, ws: Workspace, port: int, output_dir: Path, name: str) -> None:
        config = ws.write_toml(ws.root / f"receiver-{name}.toml",
                               ws.receiver_settings(port=port, output_dir=output_dir, name=name))
        super().__init__(f"receiver {name}", receiver_command(config, name), ws.root / f"receiver-{name}.log")


def receiver_command(config: Path, name: str) -> list[str]:
    """``python -m cli receiver``; with KIOSK_BENCH_PROFILE=DIR under cProfile, the profile
    written to DIR/receiver-NAME.prof at exit (for proportions only: it slows the receiver)."""
    profile = os.environ.get("KIOSK_BENCH_PROFILE")
    wrap = ("-m", "cProfile", "-o", str(Path(profile) / f"receiver-{name}.prof")) if profile else ()
    return python_cmd(*wrap, "-m", "cli", "receiver", "--config", str(config))


class RawPeer(Managed):
    """bench/raw_peer.py: a plain paho subscriber (or echo responder) in its own process.

    It reports "ready" once subscribed and "count N T" (messages so far, monotonic time of
    the latest) as messages arrive; monotonic clocks are shared between processes on Linux.
    """

    def __init__(self, ws: Workspace, port: int, topic_filter: str, name: str, echo: bool = False) -> None:
        args = python_cmd("-m", "bench.raw_peer", "--port", str(port), "--filter", topic_filter,
                          "--client-id", name)
        super().__init__(f"raw peer {name}", args + (["--echo"] if echo else []),
                         ws.root / f"{name}.log", stdout_pipe=True)
        self._cond = threading.Condition()
        self._ready = False
        self.count = 0
        self.last = 0.0
        self._reader: threading.Thread | None = None

    def start(self) -> float:
        started = super().start()
        assert self.proc is not None and self.proc.stdout is not None
        self._reader = threading.Thread(target=self._read, args=(self.proc.stdout,),
                                        name=f"bench-{self.name}", daemon=True)
        self._reader.start()
        return started

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            words = line.split()
            with self._cond:
                if words == ["ready"]:
                    self._ready = True
                elif len(words) == 3 and words[0] == "count":
                    self.count, self.last = int(words[1]), float(words[2])
                self._cond.notify_all()

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: self._ready, timeout_s):
                raise BenchError(f"{self.name} not subscribed after {timeout_s:.0f} s:\n{self.log_tail()}")

    def wait_count(self, target: int, timeout_s: float) -> float:
        """Wait until it has received ``target`` messages in all; the time of the last one."""
        with self._cond:
            if not self._cond.wait_for(lambda: self.count >= target, timeout_s):
                raise BenchError(f"{self.name} received {self.count} of {target} messages "
                                 f"within {timeout_s:.0f} s")
            return self.last

    def stop(self, timeout_s: float = 20.0) -> int:
        reader = self._reader
        code = super().stop(timeout_s)
        if reader is not None:
            reader.join(5)
        return code

    def kill(self) -> None:
        super().kill()
        if self._reader is not None:
            self._reader.join(5)


class BrokerGate:
    """Stands on the broker's port before the broker exists, so an agent can be started while
    "the broker is down" and still connect only once its consumers are ready.

    It accepts the agent's TCP connection and never answers its CONNECT. ``release_port``
    stops listening (the held connection stays) so the real broker can bind the port;
    ``open`` closes the held connection: the agent sees the line drop and reconnects, after
    at most ``mqtt.reconnect_min_s``, to the real broker.
    """

    def __init__(self, port: int) -> None:
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", port))
        self.listener.listen(4)
        self.held: list[socket.socket] = []

    def hold_client(self, timeout_s: float = 30.0) -> None:
        self.listener.settimeout(timeout_s)
        try:
            conn, _ = self.listener.accept()
        except TimeoutError:
            raise BenchError(f"no client connected to the gate within {timeout_s:.0f} s") from None
        self.held.append(conn)

    def release_port(self) -> None:
        self.listener.close()

    def open(self) -> None:
        for conn in self.held:
            conn.close()
        self.held.clear()

    def close(self) -> None:
        self.release_port()
        self.open()


# --- MQTT helpers -----------------------------------------------------------------------------


def new_client(client_id: str) -> mqtt.Client:
    """A plain paho client as an application would make one: MQTT 5, library defaults."""
    return mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)


def connect(client: mqtt.Client, port: int, timeout_s: float = 10.0) -> None:
    """connect + loop_start, and wait for the CONNACK."""
    connected = threading.Event()
    client.on_connect = lambda c, u, f, rc, p: connected.set() if not rc.is_failure else None
    client.connect("127.0.0.1", port)
    client.loop_start()
    if not connected.wait(timeout_s):
        client.loop_stop()
        raise BenchError(f"no CONNACK from the broker on port {port} within {timeout_s:.0f} s")


def subscribe(client: mqtt.Client, topic: str, timeout_s: float = 10.0) -> None:
    """Subscribe at QoS 1 and wait for the SUBACK."""
    acked = threading.Event()
    client.on_subscribe = lambda *args: acked.set()
    client.subscribe(topic, qos=1)
    if not acked.wait(timeout_s):
        raise BenchError(f"no SUBACK for {topic} within {timeout_s:.0f} s")


def disconnect(client: mqtt.Client) -> None:
    client.disconnect()
    client.loop_stop()


def wait_receivers(ws: Workspace, port: int, names: set[str], timeout_s: float = 60.0) -> None:
    """Send valid sealed captures from an enrolled probe kiosk until each named receiver has
    sent a receipt: only then is a receiver subscribed and able to store (a capture published
    before that reaches no one and would be re-sent only after receipt_timeout_s)."""
    seen: set[str] = set()
    lock = threading.Lock()
    trusted = load_receipt_keys([ws.keys.receipt_public])

    def on_message(client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        # Receipts are signed frames (agent/transport/receipts.py): verified, as a kiosk would.
        receipts = verify_receipts(bytes(message.payload), trusted, PROBE_KIOSK_ID)
        with lock:
            seen.update(r.receiver for r in receipts)

    client = new_client(f"bench-probe-{os.getpid()}")
    client.on_message = on_message
    connect(client, port)
    try:
        subscribe(client, f"{TOPIC_PREFIX}/{PROBE_KIOSK_ID}/receipts")
        pool = ImagePool(count=1, size=1000)
        deadline = time.monotonic() + timeout_s
        seq = 0
        while True:
            with lock:
                if names <= seen:
                    return
            if time.monotonic() > deadline:
                raise BenchError(f"receivers {sorted(names - seen)} sent no receipt within {timeout_s:.0f} s")
            seq += 1
            _, payload = seal_capture(ws.probe, PROBE_KIOSK_ID, seq, pool.next())
            client.publish(f"{TOPIC_PREFIX}/{PROBE_KIOSK_ID}/captures", payload, qos=1)
            time.sleep(0.1)
    finally:
        disconnect(client)


def wait_queue_empty(db_path: Path, timeout_s: float, poll_s: float = 0.01) -> float:
    """Poll the running totals of a queue another process drains; the time it reached 0."""
    db = sqlite3.connect(db_path, timeout=10)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            items = db.execute("SELECT items FROM totals").fetchone()[0]
            now = time.monotonic()
            if items == 0:
                return now
            if now > deadline:
                raise BenchError(f"{items} captures still queued in {db_path} after {timeout_s:.0f} s")
            time.sleep(poll_s)
    finally:
        db.close()
