"""One agent per queue, one receiver per store and client id: real processes, a real broker.

A second `kiosk-agent run` on the same config must exit 1 naming the first one's pid,
before it opens the queue or reaches the broker: the first stays online (no "offline"
will from a client-id takeover) and keeps its local API. A SIGKILLed holder leaves no
stale lock. The same for the receiver.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.lock import StateLock, StateLocked, holder
from devtools.broker import MosquittoBroker, free_port
from tests.support.config import keys_for, to_toml
from tests.support.local_api import Api, local_api_section
from tests.support.paths import ROOT
from tests.support.processes import NotifySocket, spawn_agent, write_config
from tests.support.waiting import wait_until


class StatusWatch:
    """Every status message of the kiosk while it runs (a takeover would publish the will)."""

    def __init__(self, port: int, kiosk_id: str) -> None:
        self.states: list[str] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(f"kiosk/{kiosk_id}/status", qos=1)
        self.client.loop_start()

    def _on_message(self, client, userdata, message) -> None:  # type: ignore[no-untyped-def]
        with self._lock:
            self.states.append(json.loads(message.payload).get("state"))

    def seen(self) -> list[str]:
        with self._lock:
            return list(self.states)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_a_second_agent_on_one_queue_exits_1_and_the_first_keeps_running(
        tmp_path: Path, broker: MosquittoBroker) -> None:
    config = write_config(tmp_path, broker.port, max_captures=3)
    api_port = free_port()
    text = config.read_text() + "\n" + to_toml(
        {"local_api": local_api_section(tmp_path, port=api_port)})
    config.write_text(text)
    notify = NotifySocket(tmp_path / "notify.sock")
    first = spawn_agent(config, tmp_path / "first.log", notify)
    watch: StatusWatch | None = None
    try:
        notify.wait_for("READY=1")
        watch = StatusWatch(broker.port, "kiosk-p1")
        wait_until(lambda: "online" in watch.seen(), timeout_s=30, what="the first agent online")
        second = subprocess.run([sys.executable, "-m", "agent", "run", "--config", str(config)],
                                cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                                capture_output=True, text=True, timeout=60)
        assert second.returncode == 1, second.stderr
        assert f"another kiosk-agent (pid {first.pid}) is using {tmp_path}" in second.stderr
        assert "Traceback" not in second.stderr and "IntegrityError" not in second.stderr
        time.sleep(2.0)  # a client-id takeover would have published the first's will by now
        assert first.poll() is None
        assert "offline" not in watch.seen(), watch.seen()
        token = (tmp_path / "local-api.token").read_text().strip()
        status, body = Api(f"http://127.0.0.1:{api_port}", token).call("GET", "/v1/status")
        assert status == 200, body
        assert holder(tmp_path) == first.pid
    finally:
        _stop(first)
        if watch is not None:
            watch.close()
        notify.close()
    assert first.returncode == 0
    assert holder(tmp_path) is None  # released on a clean stop too


def test_a_killed_agent_leaves_no_stale_lock(tmp_path: Path, broker: MosquittoBroker) -> None:
    """flock belongs to the open file: SIGKILL frees it at once, nobody has to clean up, and
    the next agent starts."""
    config = write_config(tmp_path, broker.port, max_captures=1)
    notify = NotifySocket(tmp_path / "notify.sock")
    killed = spawn_agent(config, tmp_path / "killed.log", notify)
    try:
        notify.wait_for("READY=1")
        with pytest.raises(StateLocked, match=f"another kiosk-agent \\(pid {killed.pid}\\)"):
            StateLock(tmp_path).acquire()
    finally:
        killed.kill()
        killed.wait()
    assert holder(tmp_path) is None  # at once: no wait, no clean-up
    notify.messages.clear()
    after = spawn_agent(config, tmp_path / "after.log", notify)
    try:
        notify.wait_for("READY=1")
        assert holder(tmp_path) == after.pid
    finally:
        _stop(after)
        notify.close()
    assert after.returncode == 0


def _receiver_config(tmp_path: Path, port: int, name: str) -> Path:
    keys = keys_for(tmp_path, "kiosk-p1")
    path = tmp_path / f"receiver-{name}.toml"
    path.write_text(to_toml({
        "mqtt": {"host": "127.0.0.1", "port": port, "allow_plaintext": True},
        "receiver": {"output_dir": str(tmp_path / "received"), "name": name,
                     "central_private_key": str(keys.central_key),
                     "receipt_signing_key": str(keys.receipt_key),
                     "kiosk_keys_dir": str(keys.kiosks_dir)},
        "logging": {"format": "text"},
    }))
    return path


def test_receivers_one_per_client_id_on_a_store(tmp_path: Path, broker: MosquittoBroker) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "cli", "receiver", "--config"]
    first = subprocess.Popen([*cmd, str(_receiver_config(tmp_path, broker.port, "r1"))], cwd=ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    other: subprocess.Popen[bytes] | None = None
    try:
        wait_until(lambda: holder(tmp_path / "received", ".lock-kiosk-receiver-r1") == first.pid,
                   timeout_s=30, what="the first receiver's lock")
        second = subprocess.run([*cmd, str(_receiver_config(tmp_path, broker.port, "r1"))], cwd=ROOT,
                                env=env, capture_output=True, text=True, timeout=60)
        assert second.returncode == 1
        assert f"(pid {first.pid}) is using {tmp_path / 'received'}" in second.stderr
        # Another name in the same share group shares the store, as designed.
        other = subprocess.Popen([*cmd, str(_receiver_config(tmp_path, broker.port, "r2"))], cwd=ROOT,
                                 env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: holder(tmp_path / "received", ".lock-kiosk-receiver-r2") == other.pid,
                   timeout_s=30, what="the second receiver's lock")
        first.kill()
        first.wait()
        assert holder(tmp_path / "received", ".lock-kiosk-receiver-r1") is None
        assert first.poll() is not None and other.poll() is None
    finally:
        for proc in (first, other):
            if proc is not None:
                _stop(proc)


def test_the_demo_keeps_off_a_folder_in_use(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cli.main import main

    with StateLock(tmp_path):
        assert main(["demo", "--dir", str(tmp_path), "--broker", "127.0.0.1:1", "--count", "1"]) == 1
    assert f"another kiosk-agent (pid {os.getpid()}) is using {tmp_path}" in capsys.readouterr().err
    assert not (tmp_path / "queue.db").exists()
