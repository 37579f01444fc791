"""Remote configuration is not a weapon: every way an admin key (or an overlay file) could
turn a kiosk against the people it registers, tried against a real kiosk on real mosquitto
brokers with signed commands. Each test fails if its hole reopens."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import pytest
import tomli_w
from pydantic import BaseModel, SecretStr

from agent.config import AgentConfig, load_config
from agent.daemon import Agent
from agent.remote.audit import MAX_AUDIT_ROWS
from agent.remote.overlay import OVERLAY_NAME, write_overlay
from agent.remote.settable import BROKER_KEYS, REMOTELY_SETTABLE
from agent.transport.config import MqttConfig
from devtools.broker import MosquittoBroker
from tests.support.paths import ROOT
from tests.support.remote_client import OperatorClient
from tests.support.remote_kiosk import KIOSK, kiosk_raw, start_kiosk
from tests.support.tls_brokers import Pki
from tests.support.waiting import wait_until

#: Just over what the audit log used to keep in all: a flood this size wiped every genuine row.
FLOOD = MAX_AUDIT_ROWS + 200


class Listener:
    """A stranger's TCP port: records every byte a kiosk sends it, answers nothing."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.received = b""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="stranger", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            conn.settimeout(0.1)
            with conn:
                while not self._stop.is_set():
                    try:
                        data = conn.recv(65536)
                    except TimeoutError:
                        continue
                    if not data:
                        break
                    self.received += data

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def config_set(ops: OperatorClient, tmp_path: Path, changes: dict[str, Any]) -> dict[str, Any]:
    return ops.call(tmp_path / "operators" / "ada.key", "ada", "config.set", changes, timeout_s=30)


def assert_refused(reply: dict[str, Any], *keys: str) -> None:
    assert reply["ok"] is False and reply["error"]["code"] == "invalid_args", reply
    for key in keys:
        assert f"{key}: cannot be changed remotely" in reply["error"]["message"], (key, reply)


def plaintext(changes: dict[str, Any]) -> dict[str, Any]:
    """What an attacker adds to run plain MQTT where the config requires a word for it."""
    return {**changes, "mqtt.allow_plaintext": True} if "allow_plaintext" in MqttConfig.model_fields \
        else changes


@pytest.fixture
def kiosk(tmp_path: Path, broker: MosquittoBroker) -> Iterator[tuple[Agent, OperatorClient]]:
    agent = start_kiosk(tmp_path, kiosk_raw(tmp_path, broker.port))
    ops = OperatorClient(broker.port, KIOSK)
    try:
        yield agent, ops
    finally:
        ops.close()
        agent.stop()


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path / "pki")


@pytest.fixture
def tls_kiosk(tmp_path: Path, pki: Pki) -> Iterator[tuple[Agent, OperatorClient, MosquittoBroker]]:
    broker = pki.broker("broker")
    agent = start_kiosk(tmp_path, kiosk_raw(tmp_path, broker.port, mqtt={"tls": pki.kiosk_tls()}))
    ops = OperatorClient(broker.plain_port, KIOSK)  # type: ignore[attr-defined]
    try:
        yield agent, ops, broker
    finally:
        ops.close()
        agent.stop()
        broker.close()


# --- where the data goes -----------------------------------------------------------------


def test_the_broker_password_cannot_be_pointed_at_the_kiosk_key(tmp_path: Path, tls_kiosk) -> None:  # type: ignore[no-untyped-def]
    """The old attack: a stranger's broker, TLS off, the kiosk's private key as the MQTT
    password: the key went out in clear before the rollback."""
    agent, ops, _ = tls_kiosk
    stranger = Listener()
    try:
        key = agent.config.security.kiosk_key
        reply = config_set(ops, tmp_path, plaintext({
            "mqtt.host": "127.0.0.1", "mqtt.port": stranger.port, "mqtt.username": "kiosk",
            "mqtt.password_file": str(key), "mqtt.tls.enabled": False}))
        assert_refused(reply, "mqtt.password_file", "mqtt.username", "mqtt.tls.enabled")
        time.sleep(1.0)  # a kiosk that obeyed would have connected by now
        assert stranger.received == b"", "the kiosk talked to the stranger's port"
        assert key.read_bytes() not in stranger.received
        assert agent.config.mqtt.password_file is None and agent.config.mqtt.tls.enabled
        assert agent.link is not None and agent.link.connected
    finally:
        stranger.close()


def test_the_broker_cannot_move_without_tls(tmp_path: Path, kiosk) -> None:  # type: ignore[no-untyped-def]
    agent, ops = kiosk
    stranger = Listener()
    try:
        for changes in ({"mqtt.port": stranger.port}, {"mqtt.host": "127.0.0.2"}):
            reply = config_set(ops, tmp_path, changes)
            assert reply["ok"] is False and reply["error"]["code"] == "invalid_args", reply
            assert "only while TLS is on" in reply["error"]["message"]
        time.sleep(0.5)
        assert stranger.received == b""
        assert not (agent.config.remote.state_dir / OVERLAY_NAME).exists()
    finally:
        stranger.close()


def test_tls_cannot_be_turned_off_remotely(tmp_path: Path, tls_kiosk) -> None:  # type: ignore[no-untyped-def]
    agent, ops, broker = tls_kiosk
    reply = config_set(ops, tmp_path, plaintext({"mqtt.tls.enabled": False, "mqtt.port": broker.plain_port}))
    assert_refused(reply, "mqtt.tls.enabled")
    for key in ("mqtt.tls.ca_file", "mqtt.tls.cert_file", "mqtt.tls.key_file"):
        assert_refused(config_set(ops, tmp_path, {key: str(tmp_path / "other.pem")}), key)
    assert agent.config.mqtt.tls.enabled and agent.config.mqtt.port == broker.port
    assert agent.link is not None and agent.link.connected


def test_a_new_broker_must_prove_itself_with_the_same_ca(tmp_path: Path, pki: Pki, tls_kiosk) -> None:  # type: ignore[no-untyped-def]
    agent, ops, first = tls_kiosk
    with contextlib.ExitStack() as cleanup:  # whatever started is stopped, also on a failure
        impostor = pki.broker("impostor", trusted=False)
        cleanup.callback(impostor.close)
        second = pki.broker("second")
        cleanup.callback(second.close)
        ops2 = OperatorClient(second.plain_port, KIOSK)  # type: ignore[attr-defined]
        cleanup.callback(ops2.close)
        # A broker whose certificate another CA signed never gets the kiosk.
        reply = config_set(ops, tmp_path, {"mqtt.port": impostor.port})
        assert reply["error"]["code"] == "rolled_back", reply
        assert agent.config.mqtt.port == first.port and agent.link is not None and agent.link.connected
        # One from the same CA does, with the TLS settings and credentials in force; the reply
        # comes from there.
        admin = tmp_path / "operators" / "ada.key"
        payload = ops.sign(admin, "ada", "config.set", {"mqtt.port": second.port})
        ops.publish("config.set", payload)
        assert ops2.wait_reply(json.loads(payload)["id"])["ok"] is True
        assert agent.config.mqtt.port == second.port and agent.config.mqtt.tls.enabled
        assert ops2.call(admin, "ada", "ping")["ok"] is True


def test_reconnect_delays_stay_within_reach_of_support(tmp_path: Path, kiosk) -> None:  # type: ignore[no-untyped-def]
    """Not a leak but a lock-out: a kiosk told to wait a day between reconnects is out of
    reach long after the rollback stopped watching."""
    agent, ops = kiosk
    for changes in ({"mqtt.reconnect_max_s": "86400"},  # text: judged after pydantic reads it
                    {"mqtt.reconnect_min_s": 7200, "mqtt.reconnect_max_s": 7200},
                    {"mqtt.connect_timeout_s": 1e9}):
        reply = config_set(ops, tmp_path, changes)
        assert reply["error"]["code"] == "invalid_args", reply
        assert "when changed remotely" in reply["error"]["message"]
    assert config_set(ops, tmp_path, {"mqtt.reconnect_max_s": 120})["ok"] is True
    assert agent.config.mqtt.reconnect_max_s == 120


def test_remote_changes_cannot_flood_the_uplink_or_fill_the_disk(tmp_path: Path, kiosk) -> None:  # type: ignore[no-untyped-def]
    """Found by review: telemetry every nanosecond (25 MB in 10 s, outside every capture
    budget), receipts timed out at once, a reserve file the size of the disk, no free space
    kept. Each is refused; sane values and "telemetry off" still pass."""
    agent, ops = kiosk
    for changes in ({"telemetry.interval_s": 1e-9}, {"telemetry.interval_s": "2"},
                    {"mqtt.receipt_timeout_s": 0.01}, {"queue.reserve_bytes": 10**15},
                    {"queue.min_free_bytes": 0}):
        reply = config_set(ops, tmp_path, changes)
        assert reply["error"]["code"] == "invalid_args", (changes, reply)
        assert "when changed remotely" in reply["error"]["message"]
    before = agent.config.telemetry.interval_s
    assert before != 30
    assert config_set(ops, tmp_path, {"telemetry.interval_s": 30})["ok"] is True
    assert agent.config.telemetry.interval_s == 30
    assert config_set(ops, tmp_path, {"telemetry.interval_s": 0})["ok"] is True
    assert agent.config.telemetry.interval_s == 0


# --- what the kiosk reads, runs and overwrites -----------------------------------------


def test_the_local_api_socket_cannot_be_pointed_at_the_queue(tmp_path: Path, broker: MosquittoBroker) -> None:
    raw = kiosk_raw(tmp_path, broker.port)
    agent = start_kiosk(tmp_path, raw)
    ops = OperatorClient(broker.port, KIOSK)
    try:
        admin = tmp_path / "operators" / "ada.key"
        assert ops.call(admin, "ada", "capture", {"device": "finger", "position": 1})["ok"]
        queue = agent.config.queue.path
        reply = config_set(ops, tmp_path, {"local_api.enabled": True, "local_api.unix_socket": str(queue),
                                           "local_api.port": 0})
        assert_refused(reply, "local_api.enabled", "local_api.unix_socket", "local_api.port")
        # The next start: the backlog is still a database, with the capture in it.
        agent.stop()
        agent = start_kiosk(tmp_path, raw)
        assert queue.is_file() and agent.queue is not None and agent.queue.totals()[0] == 1
        assert agent.local_api is None
    finally:
        ops.close()
        agent.stop()


def test_no_camera_can_be_added_or_made_the_face_device(tmp_path: Path, kiosk) -> None:  # type: ignore[no-untyped-def]
    agent, ops = kiosk
    for source in (str(tmp_path / "someone-else.jpg"), "rtsp://198.51.100.7/live"):
        reply = config_set(ops, tmp_path, {"devices.face2.driver": "opencv", "devices.face2.source": source,
                                           "registration.face_device": "face2"})
        assert_refused(reply, "devices.face2.driver", "devices.face2.source", "registration.face_device")
    assert_refused(config_set(ops, tmp_path, {"devices.finger.enabled": False}), "devices.finger.enabled")
    assert set(agent.config.devices) == {"finger"} and agent.config.registration.face_device == "camera"


def test_no_importable_name_is_ever_imported_for_a_remote_change(
        tmp_path: Path, kiosk, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    agent, ops = kiosk
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    marker = tmp_path / "imported"
    (plugins / "planted_assessor.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('imported')\n"
        "def make(config):\n    raise RuntimeError('planted')\n")
    monkeypatch.syspath_prepend(str(plugins))
    # Alone, beside an allowed key, and beside a value that fails validation: refused each
    # time before anything is validated, so the module is never imported.
    for changes in ({"quality.finger.assessor": "planted_assessor:make"},
                    {"quality.finger.assessor": "planted_assessor:make", "telemetry.interval_s": 5},
                    {"quality.finger.assessor": "planted_assessor:make", "mqtt.keepalive_s": 1}):
        assert_refused(config_set(ops, tmp_path, changes), "quality.finger.assessor")
    assert not marker.exists() and "planted_assessor" not in sys.modules
    assert agent.config.telemetry.interval_s == 0.5  # nothing of a refused change applies
    # builtins:print once broke every finger capture.
    assert_refused(config_set(ops, tmp_path, {"quality.finger.assessor": "builtins:print"}),
                   "quality.finger.assessor")
    assert_refused(config_set(ops, tmp_path, {"quality.face.yunet_model": str(tmp_path / "m.onnx")}),
                   "quality.face.yunet_model")
    shot = ops.call(tmp_path / "operators" / "ada.key", "ada", "capture", {"device": "finger", "position": 2})
    assert shot["ok"] is True, shot


def test_an_overlay_file_cannot_smuggle_in_what_config_set_refuses(tmp_path: Path) -> None:
    """An overlay written by an older version (or by anyone who could write the state folder)."""
    raw = kiosk_raw(tmp_path, 1883)
    path = tmp_path / "agent.toml"
    path.write_text(tomli_w.dumps(raw))
    key = tmp_path / "keys" / "kiosk.key"
    write_overlay(tmp_path / "remote" / OVERLAY_NAME, {
        "mqtt": {"host": "203.0.113.9", "password_file": str(key), "keepalive_s": 45},
        "quality": {"finger": {"assessor": "builtins:print", "min_score": 55}},
        "local_api": {"enabled": True, "unix_socket": str(tmp_path / "queue.db")},
        "security": {"service_user": "root"}, "telemetry": {"interval_s": 9.0}})
    config = load_config(path, environ={})
    assert config.mqtt.host == "127.0.0.1" and config.mqtt.password_file is None
    assert config.quality.finger.assessor == "builtin" and not config.local_api.enabled
    assert config.security.service_user == "kiosk"
    # What may come from a remote change still does.
    kept = (config.mqtt.keepalive_s, config.quality.finger.min_score, config.telemetry.interval_s)
    assert kept == (45, 55, 9)


def _settings(model: type[BaseModel], prefix: str = "") -> dict[str, Any]:
    """Every leaf setting of a config model, dotted, with its annotation."""
    out: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        nested = [t for t in (field.annotation, *get_args(field.annotation))
                  if isinstance(t, type) and issubclass(t, BaseModel)]
        if nested and name != "devices":
            out.update(_settings(nested[0], f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = field.annotation
    return out


def test_the_allow_list_names_real_settings_and_no_path_secret_or_import() -> None:
    settings = _settings(AgentConfig)
    assert REMOTELY_SETTABLE | BROKER_KEYS <= set(settings), "a typo, or a setting that is gone"
    for key in REMOTELY_SETTABLE:
        kinds = {settings[key], *get_args(settings[key])}
        assert not kinds & {Path, SecretStr}, f"{key} names a file or holds a secret"
        never = ("remote.", "security.", "devices", "local_api.", "mqtt.tls.", "kiosk.")
        assert not key.startswith(never), key
        assert key.rsplit(".", 1)[1] not in ("host", "username", "client_id", "topic_prefix", "assessor",
                                             "ack_mode", "mode", "face_device", "finger_device"), key


# --- a change survives a restart ---------------------------------------------------------


@pytest.mark.parametrize("variable, value", [("KIOSK_AGENT_QUEUE__PATH", "env-state/queue.db"),
                                             ("KIOSK_AGENT_KIOSK__STATE_DIR", "env-state")])
def test_a_change_survives_a_restart_when_the_state_folder_comes_from_the_environment(
        tmp_path: Path, broker: MosquittoBroker, variable: str, value: str) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(tomli_w.dumps(kiosk_raw(tmp_path, broker.port)))  # queue.path in the file
    env = {**os.environ, variable: str(tmp_path / value), "PYTHONPATH": str(ROOT)}
    ops = OperatorClient(broker.port, KIOSK)
    admin = tmp_path / "operators" / "ada.key"

    def start() -> subprocess.Popen[bytes]:
        ops.messages.clear()
        with (tmp_path / "agent.log").open("ab") as log_file:
            proc = subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(path)],
                                    env=env, cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT)
        ops.wait_message("status", lambda s: s.get("state") == "online", timeout_s=30)
        return proc

    def stop(proc: subprocess.Popen[bytes]) -> None:
        proc.terminate()
        assert proc.wait(30) == 0, (tmp_path / "agent.log").read_text()[-2000:]

    proc = start()
    try:
        reply = ops.call(admin, "ada", "config.set", {"telemetry.interval_s": 42, "capture.max_attempts": 7})
        assert reply["ok"], reply
        stop(proc)
        proc = start()  # a real restart: a new process, the same file and environment
        got = ops.call(admin, "ada", "config.get")["result"]
        assert got["config"]["telemetry"]["interval_s"] == 42, got["remote_overlay"]
        assert got["config"]["capture"]["max_attempts"] == 7
        assert (tmp_path / "env-state" / "remote" / OVERLAY_NAME).exists()
        assert not (tmp_path / "remote" / OVERLAY_NAME).exists()
    finally:
        if proc.poll() is None:
            stop(proc)
        ops.close()


# --- the audit log -------------------------------------------------------------------------


def test_a_flood_of_refused_commands_neither_fills_the_disk_nor_wipes_the_audit(
        tmp_path: Path, broker: MosquittoBroker) -> None:
    agent = start_kiosk(tmp_path, kiosk_raw(tmp_path, broker.port, telemetry={"interval_s": 0}))
    ops = OperatorClient(broker.port, KIOSK, replies_only=True)
    admin = tmp_path / "operators" / "ada.key"
    db_path = agent.config.remote.state_dir / "remote.db"
    try:
        genuine = [ops.call(admin, "ada", name)["id"] for name in ("ping", "status", "config.get")]
        # Unsigned, with 3 KB of arguments each: what used to cost 3 KB of audit log apiece.
        template = json.loads(ops.sign(admin, "ada", "queue.purge", {"confirm": "x" * 3000}))
        del template["sig"]
        for i in range(1, FLOOD + 1):
            ops.publish("queue.purge", json.dumps(dict(template, id=f"flood-{i}")).encode())
            if i % 200 == 0:  # inside mosquitto's per-client queue, so none is dropped
                wait_until(lambda behind=i - 200 + 3: len(ops.replies) >= behind, 60,
                           what="replies catching up")
        wait_until(lambda: len(ops.replies) >= FLOOD + 3, 120, what="a reply to every refused command")
        assert all(r["error"]["code"] == "unauthenticated" for r in ops.replies[3:])
        size = sum(p.stat().st_size for p in db_path.parent.glob("remote.db*"))
        print(f"audit database after {FLOOD} refused commands: {size:,} bytes (with its WAL)")
        assert size < 1024 * 1024
    finally:
        ops.close()
        agent.stop()
    db = sqlite3.connect(db_path)
    try:
        kept = {row[0] for row in db.execute("SELECT request_id FROM audit WHERE result = 'ok'")}
        assert set(genuine) <= kept, "genuine audit rows were pushed out by refusals"
        rows, refused = db.execute("SELECT count(*), sum(count) FROM refusals").fetchone()
        assert refused == FLOOD and rows < 200, (rows, refused)
        longest = db.execute("SELECT max(length(coalesce(message, '')) + length(coalesce(command, '')) "
                             "+ length(coalesce(operator, '')) + length(coalesce(request_id, ''))) "
                             "FROM refusals").fetchone()[0]
        assert longest < 400
    finally:
        db.close()
    print(f"closed: {db_path.stat().st_size:,} bytes")
