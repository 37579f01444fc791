"""Local MQTT brokers for the demo and the tests.

``MosquittoBroker`` runs the real mosquitto binary on a loopback port (MQTT 5 and 3.1.1);
``EmbeddedBroker`` runs amqtt in-process for machines without mosquitto (MQTT 3.1.1 only,
so clients must use protocol "3.1.1").
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from agent.guard import log_and_continue

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(host: str, port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout_s:.0f} s") from None
            time.sleep(0.05)


class MosquittoBroker:
    """A private mosquitto on 127.0.0.1:<port>; ``stop``/``start`` again keeps the port."""

    kind = "mosquitto"
    protocol = "5"

    def __init__(self, port: int | None = None, *, binary: str | None = None,
                 max_packet_size: int | None = None, tls: dict[str, str] | None = None) -> None:
        """``tls``: {"cafile", "certfile", "keyfile"} for a TLS-only listener that requires
        client certificates signed by that CA."""
        self.binary = binary or shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self._dir = Path(tempfile.mkdtemp(prefix="kiosk-mosquitto-"))
        self._conf = self._dir / "mosquitto.conf"
        lines = [f"listener {self.port} 127.0.0.1", "allow_anonymous true", "persistence false",
                 "log_dest stderr", "log_type error", "log_type warning"]
        if max_packet_size:
            lines.append(f"max_packet_size {max_packet_size}")
        if tls:
            # mosquitto started as root drops to its own user, which cannot read files in
            # private test folders: give it copies in its own, readable folder.
            self._dir.chmod(0o755)
            copies = {}
            for key in ("cafile", "certfile", "keyfile"):
                copies[key] = self._dir / f"{key}.pem"
                shutil.copyfile(tls[key], copies[key])
                copies[key].chmod(0o644)
            lines += [f"cafile {copies['cafile']}", f"certfile {copies['certfile']}",
                      f"keyfile {copies['keyfile']}", "require_certificate true", "tls_version tlsv1.2"]
        self._conf.write_text("\n".join(lines) + "\n")
        self._proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> bool:
        return shutil.which("mosquitto") is not None or Path("/usr/sbin/mosquitto").exists()

    def start(self, timeout_s: float = 10.0) -> None:
        # Its log goes to a file: an unread pipe would fill and stall the broker.
        with (self._dir / "mosquitto.log").open("ab") as log_file:
            # Its own session, so its own process group: Ctrl-C in a terminal signals the
            # foreground group, and the broker must outlive the clients stopping through it
            # (the demo stops it last).
            self._proc = subprocess.Popen([self.binary, "-c", str(self._conf)],
                                          stdout=subprocess.DEVNULL, stderr=log_file,
                                          start_new_session=True)
        try:
            wait_for_port(self.host, self.port, timeout_s)
        except TimeoutError:
            self.stop()
            log_text = (self._dir / "mosquitto.log").read_text(errors="replace")[-2000:]
            raise TimeoutError(f"mosquitto did not start on port {self.port}; its log:\n{log_text}") from None

    def stop(self) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def kill(self) -> None:
        """Stop abruptly, as a crash or power cut would."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)


class EmbeddedBroker:
    """amqtt running on its own asyncio loop in a thread named ``embedded-broker``."""

    kind = "embedded (amqtt, MQTT 3.1.1)"
    protocol = "3.1.1"

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._broker = None
        self._thread: threading.Thread | None = None

    @staticmethod
    def available() -> bool:
        try:
            import amqtt.broker  # noqa: F401
        except ImportError:
            return False
        return True

    def start(self, timeout_s: float = 10.0) -> None:
        from amqtt.broker import Broker

        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                self._broker = Broker(config, loop=loop)
                loop.run_until_complete(self._broker.start())
            except BaseException as exc:  # reported to start() below
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="embedded-broker", daemon=True)
        self._thread.start()
        ready.wait(timeout_s)
        if failure:
            raise RuntimeError(f"embedded broker failed to start: {failure[0]}") from failure[0]
        if not ready.is_set():
            raise TimeoutError(f"embedded broker not ready after {timeout_s:.0f} s")

    def stop(self) -> None:
        if self._loop is None or self._broker is None:
            return
        future = asyncio.run_coroutine_threadsafe(self._broker.shutdown(), self._loop)
        with log_and_continue(log, "embedded broker did not shut down cleanly"):
            future.result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        self._loop.close()
        self._loop = None
        self._broker = None

    def close(self) -> None:
        self.stop()
