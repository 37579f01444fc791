"""Personal data at rest on the kiosk, and no plaintext MQTT by default.

- registrations.db keeps no applicant reference, operator id, exception or cancel reason in
  clear, yet the kiosk reads them back (it holds the data key);
- a session is erased once the central side has its manifest and every capture, for real:
  nothing of it is left in any file of the state folder, not even its ciphertext (SQLite
  secure_delete, the WAL checkpointed and truncated); it stays while anything is undelivered;
- a registrations.db an older version wrote in clear is sealed and scrubbed at open;
- every file the agent creates in its state folder is 0600 (folders 0700) whatever the umask;
- a config without TLS is refused unless mqtt.allow_plaintext says it is a lab or demo, the
  shipped production configs run TLS, and check-config warns about plaintext.

Real parts: a real agent and receiver on a real mosquitto, real SQLite files read byte by byte.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.cli import main as kiosk_main
from agent.config import AgentConfig, ConfigError, validate_config
from agent.daemon import Agent
from agent.registration.erasure import erase_delivered
from agent.registration.service import RegistrationService
from agent.registration.store import ItemState, SessionStore
from agent.transport.durable_queue import DurableQueue
from agent.transport.mqtt_link import MqttLink
from cli.main import main
from devtools.broker import MosquittoBroker
from receiver.config import ReceiverServiceConfig
from receiver.service import Receiver
from tests.support.config import agent_config, receiver_config
from tests.support.paths import ROOT
from tests.support.waiting import wait_until

APPLICANT = "APP-2026-SECRET-0042"
OPERATOR = "op-SECRET-17"
EXCEPTION_REASON = "amputated SECRET work accident"
CANCEL_REASON = "applicant left SECRET"
SECRETS = [s.encode() for s in (APPLICANT, OPERATOR, EXCEPTION_REASON, CANCEL_REASON)]


def kiosk_config(tmp_path: Path, port: int) -> AgentConfig:
    """A kiosk whose state folder (tmp_path/state) the agent creates itself."""
    return agent_config(
        tmp_path, port,
        queue={"path": str(tmp_path / "state" / "queue.db"), "erase_interval_s": 0},
        capture={"mode": "on-demand"},
        registration={"face": False},
        uplink={"daily_budget_bytes": 1 << 30},  # so uplink-state.json is written too
        devices={"finger": {"driver": "sim-finger", "seed": 11}},
    )


def register(service: RegistrationService) -> str:
    """A session with every kind of personal field: one finger taken, one amputated, cancelled."""
    sid = service.start(APPLICANT, OPERATOR)["id"]
    service.capture(sid)
    service.add_exception(sid, 4, "XX", EXCEPTION_REASON)
    service.cancel(sid, CANCEL_REASON)
    return sid


def files_holding(root: Path, needles: list[bytes]) -> list[str]:
    return [f"{needle[:40]!r} in {path.relative_to(root)}"
            for path in sorted(root.rglob("*")) if path.is_file()
            for needle in needles if needle in path.read_bytes()]


def tables_naming(db_path: Path, session_id: str) -> list[str]:
    """The tables with a row holding the session id in any column."""
    db = sqlite3.connect(db_path)
    try:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return [table for table in tables
                if any(session_id in row for row in db.execute(f"SELECT * FROM {table}"))]
    finally:
        db.close()


def rows_naming(db_path: Path, session_id: str) -> list[bytes]:
    """Every value (ids, sealed blobs) of every row in the database that names the session."""
    db = sqlite3.connect(db_path)
    try:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        values = []
        for table in tables:
            if table == "central":
                continue  # the central side's word, kept on purpose (checked on its own below)
            for row in db.execute(f"SELECT * FROM {table}"):
                if session_id in row:
                    values += [v if isinstance(v, bytes) else v.encode()
                               for v in row if isinstance(v, bytes | str) and len(v) >= 16]
        return values
    finally:
        db.close()


@pytest.fixture
def agent(tmp_path: Path, broker: MosquittoBroker) -> Iterator[Agent]:
    running = Agent(kiosk_config(tmp_path, broker.port))
    running.start()
    try:
        yield running
    finally:
        running.stop()


# --- registrations.db: sealed, and erased once delivered -------------------------------------


def test_personal_fields_are_sealed_at_rest_and_the_kiosk_reads_them(agent: Agent, tmp_path: Path) -> None:
    service = agent.registrations
    assert service is not None
    sid = register(service)  # no receiver: everything stays queued, the session stays too
    view = service.view(sid)
    assert (view["applicant_ref"], view["operator_id"]) == (APPLICANT, OPERATOR)
    assert view["reason"] == CANCEL_REASON
    assert view["exceptions"][0]["reason"] == EXCEPTION_REASON
    assert agent.erase_delivered_sessions() == 0, "erased while the central side had nothing"
    state = tmp_path / "state"
    assert (state / "registrations.db").exists()
    # No file of the state folder: the store, its WAL, the queue (sealed to the central key).
    assert files_holding(state, SECRETS) == []


def test_a_session_is_erased_for_good_once_the_central_side_has_all_of_it(
        agent: Agent, tmp_path: Path) -> None:
    service = agent.registrations
    assert service is not None and agent.queue is not None
    sid = register(service)
    state = tmp_path / "state"
    needles = rows_naming(state / "registrations.db", sid)
    assert len(needles) >= 3  # the session id, its sealed fields, the capture id
    stop = threading.Event()
    supervisor = threading.Thread(target=agent.supervise, args=(stop,), name="test-supervise")
    supervisor.start()  # the daemon's main-thread loop: it runs the erasure sweep
    receiver = None
    try:
        time.sleep(2.5)  # the loop turns every second: a sweep or two with nothing delivered yet
        assert service.store.get(sid) is not None, "erased before the central side had it"
        receiver = Receiver(receiver_config(tmp_path / "received", agent.config))
        receiver.start()
        wait_until(lambda: agent.queue.totals() == (0, 0), 30, what="manifest and capture delivered")
        wait_until(lambda: service.store.get(sid) is None, 10, what="the session erased")
    finally:
        stop.set()
        supervisor.join(10)
        if receiver is not None:
            receiver.stop()
    # Nothing of it anywhere in the state folder: not in clear, not as ciphertext, not in a WAL,
    # except the session id in the row that keeps the central side's word about it (states,
    # plan items and reason codes only: nothing personal; agent/registration/store.py).
    naming = tables_naming(state / "registrations.db", sid)
    assert naming in ([], ["central"]), naming
    db = sqlite3.connect(state / "registrations.db")
    try:  # a personal column added to that table later must come through erasure too
        assert [r[1] for r in db.execute("PRAGMA table_info(central)")] == [
            "session_id", "state", "seq", "detail", "updated", "closed", "queried"]
    finally:
        db.close()
    assert files_holding(state, SECRETS + [n for n in needles if n != sid.encode()]) == []
    wal = state / "registrations.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0


def test_a_session_stays_while_any_of_its_parts_is_undelivered(tmp_path: Path) -> None:
    store = SessionStore(tmp_path / "registrations.db")
    queue = DurableQueue(tmp_path / "queue.db", max_bytes=1 << 30, min_free_bytes=0, reserve_bytes=0)
    try:
        store.create("s1", APPLICANT, OPERATOR, "ten-flat", False, ["finger-1", "face"])
        store.save_item("s1", ItemState("finger-1", "captured", capture_id="c1"))
        store.save_item("s1", ItemState("face", "captured", capture_id="c2", token_id="t2"))
        for item_id in ("c1", "c2", "t2", "s1"):  # the captures, the token image, the manifest
            queue.put(item_id, "capture", lambda seq: b"sealed")
        assert erase_delivered(store, queue) == [], "an open session is never erased"
        store.set_state("s1", "completed")
        for acked in ("s1", "c1", "c2"):  # the manifest first: receipts come in any order
            queue.ack([acked])
            assert erase_delivered(store, queue) == [] and store.get("s1") is not None, acked
        queue.ack(["t2"])
        assert erase_delivered(store, queue) == ["s1"] and store.get("s1") is None
    finally:
        queue.close()
        store.close()


def test_an_older_store_in_clear_is_sealed_and_scrubbed_at_open(tmp_path: Path) -> None:
    path = tmp_path / "registrations.db"
    old = sqlite3.connect(path, isolation_level=None)
    old.execute("PRAGMA journal_mode=WAL")
    old.executescript("""
        CREATE TABLE sessions (id TEXT PRIMARY KEY, applicant_ref TEXT NOT NULL, operator_id TEXT NOT NULL,
            plan TEXT NOT NULL, face INTEGER NOT NULL, state TEXT NOT NULL, created REAL NOT NULL,
            updated REAL NOT NULL, reason TEXT);
        CREATE TABLE items (session_id TEXT NOT NULL, key TEXT NOT NULL, status TEXT NOT NULL,
            capture_id TEXT, token_id TEXT, quality INTEGER, force_captured INTEGER NOT NULL DEFAULT 0,
            attempts INTEGER NOT NULL DEFAULT 0, detail TEXT NOT NULL DEFAULT '{}',
            PRIMARY KEY (session_id, key));
        CREATE TABLE exceptions (session_id TEXT NOT NULL, position INTEGER NOT NULL, code TEXT NOT NULL,
            reason TEXT NOT NULL, PRIMARY KEY (session_id, position));
    """)
    old.execute("INSERT INTO sessions VALUES ('s1', ?, ?, 'ten-flat', 0, 'open', 1.0, 1.0, NULL)",
                (APPLICANT, OPERATOR))
    old.execute("INSERT INTO items VALUES ('s1', 'finger-1', 'captured', 'c1', NULL, 80, 0, 1, '{}')")
    old.execute("INSERT INTO items (session_id, key, status) VALUES ('s1', 'finger-4', 'exception')")
    old.execute("INSERT INTO exceptions VALUES ('s1', 4, 'XX', ?)", (EXCEPTION_REASON,))
    # Updated in place without secure_delete: the old row's bytes stay in the page's free space.
    old.execute("UPDATE sessions SET state = 'cancelled', reason = ? WHERE id = 's1'", (CANCEL_REASON,))
    old.close()
    os.chmod(path, 0o644)

    store = SessionStore(path)
    try:
        session = store.get("s1")
        assert session is not None
        assert (session.applicant_ref, session.operator_id, session.reason) == (APPLICANT, OPERATOR,
                                                                               CANCEL_REASON)
        assert session.exceptions == {4: ("XX", EXCEPTION_REASON)}
        assert session.items["finger-1"].capture_id == "c1" and session.items["finger-1"].quality == 80
        assert session.items["finger-4"].status == "exception"
        assert files_holding(tmp_path, SECRETS) == []
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        store.close()


def test_a_lost_data_key_sets_the_sessions_aside_unread(tmp_path: Path) -> None:
    path = tmp_path / "registrations.db"
    store = SessionStore(path)
    store.create("s1", APPLICANT, OPERATOR, "ten-flat", False, ["finger-1"])
    store.close()
    path.with_suffix(".key").unlink()  # lost, or replaced by a restore that forgot it
    store = SessionStore(path)
    try:
        assert store.list_ids() == [] and store.get("s1") is None
        assert list(tmp_path.glob("registrations.db.unreadable-*")), "set aside, not deleted"
        assert stat.S_IMODE(path.with_suffix(".key").stat().st_mode) == 0o600
    finally:
        store.close()


# --- file modes -------------------------------------------------------------------------------


def modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("umask", [0o022, 0o000])
def test_every_file_the_agent_creates_in_its_state_folder_is_0600(
        tmp_path: Path, broker: MosquittoBroker, umask: int) -> None:
    previous = os.umask(umask)
    try:
        running = Agent(kiosk_config(tmp_path, broker.port))
        running.start()
        try:
            assert running.registrations is not None and running.publisher is not None
            register(running.registrations)
            wait_until(lambda: running.publisher.counters.published >= 2, 20, what="captures sent")
            live = modes(tmp_path / "state")  # with the -wal and -shm files of open databases
        finally:
            running.stop()
        after = modes(tmp_path / "state")
    finally:
        os.umask(previous)
    expected = {"queue.db", "queue.db-wal", "queue.db-shm", "queue.db.reserve", "registrations.db",
                "registrations.db-wal", "registrations.db-shm", "registrations.key", "remote/remote.db",
                "remote/remote.db-wal", "remote/remote.db-shm"}
    assert expected <= set(live), sorted(live)
    assert "uplink-state.json" in after
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700
    for name, mode in {**live, **after}.items():
        wanted = 0o700 if (tmp_path / "state" / name).is_dir() or name == "remote" else 0o600
        assert mode == wanted, f"{name} is {mode:o}, not {wanted:o}"


# --- no plaintext MQTT by default -------------------------------------------------------------


def test_a_config_without_tls_is_refused_unless_plaintext_is_allowed(tmp_path: Path) -> None:
    for raw in ({"kiosk": {"id": "k"}}, {"kiosk": {"id": "k"}, "mqtt": {"host": "broker.example"}},
                {"kiosk": {"id": "k"}, "mqtt": {"tls": {"enabled": False}}}):
        with pytest.raises(ConfigError) as info:
            validate_config(raw)
        [problem] = [p for p in info.value.problems if p.startswith("mqtt")]
        assert problem.startswith("mqtt: TLS is off") and "[mqtt.tls]" in problem
        assert "allow_plaintext" in problem
    lab = validate_config({"kiosk": {"id": "k"}, "mqtt": {"allow_plaintext": True}})
    assert lab.mqtt.plaintext_warning() is not None
    tls = validate_config({"kiosk": {"id": "k"}, "mqtt": {"port": 8883,
                                                          "tls": {"enabled": True, "ca_file": "/ca.pem"}}})
    assert not tls.mqtt.allow_plaintext and tls.mqtt.plaintext_warning() is None
    # The receiver's config obeys the same rule.
    with pytest.raises(ValueError, match="TLS is off"):
        ReceiverServiceConfig.model_validate({})
    assert ReceiverServiceConfig.model_validate({"mqtt": {"allow_plaintext": True}}).mqtt.allow_plaintext


def test_the_link_will_not_connect_in_clear_unless_allowed(tmp_path: Path) -> None:
    # A config assembled without validation (model_copy) must not slip through either.
    config = validate_config({"kiosk": {"id": "k"}, "mqtt": {"allow_plaintext": True}})
    unchecked = config.mqtt.model_copy(update={"allow_plaintext": False})
    with pytest.raises(ConfigError, match="TLS is off"):
        MqttLink(unchecked, None, client_id="t", name="t")  # type: ignore[arg-type]


def test_check_config_warns_about_plaintext(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lab = tmp_path / "lab.toml"
    lab.write_text('[kiosk]\nid = "k"\n[mqtt]\nhost = "10.0.0.5"\nallow_plaintext = true\n')
    assert kiosk_main(["check-config", "--no-files", str(lab)]) == 0  # no key files here
    assert "warning: mqtt: plain MQTT to 10.0.0.5:1883" in capsys.readouterr().err
    field = tmp_path / "field.toml"
    field.write_text('[kiosk]\nid = "k"\n[mqtt]\nhost = "10.0.0.5"\n')
    assert kiosk_main(["check-config", str(field)]) == 2
    assert "allow_plaintext" in capsys.readouterr().err
    central = tmp_path / "receiver.toml"  # the receiver's check says the same
    central.write_text('[mqtt]\nhost = "10.0.0.5"\nallow_plaintext = true\n')
    assert main(["check-config", "--receiver", "--no-files", str(central)]) == 0
    assert "warning: mqtt: plain MQTT to 10.0.0.5:1883" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["kiosk-default.toml", "office-kiosk.toml", "mobile-van.toml",
                                  "receiver.toml"])
def test_production_configs_run_tls(name: str) -> None:
    raw = tomllib.loads((ROOT / "config" / name).read_text())
    assert raw["mqtt"]["tls"]["enabled"] is True and raw["mqtt"]["port"] == 8883
    assert not raw["mqtt"].get("allow_plaintext", False)
    if name == "kiosk-default.toml":  # what `make install` writes must also be valid as it is
        text = (ROOT / "config" / name).read_text().replace("@KIOSK_ID@", "k1")
        validate_config(tomllib.loads(text))
