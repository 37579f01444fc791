"""The pure parts of remote management: command signatures and the config overlay."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.config import MqttConfig, load_config, overlay_location
from agent.remote import audit
from agent.remote.audit import RemoteStore
from agent.remote.auth import CommandError, Operator, sign_command, verify_command
from agent.remote.overlay import (
    OVERLAY_NAME,
    PREVIOUS_NAME,
    OverlayError,
    changes_to_tree,
    restore_previous,
    write_overlay,
)
from agent.remote.settable import broker_move_problems
from agent.transport.events import EventBus
from agent.transport.telemetry import cpu_temperature_c
from tests.support.config import security_section, to_toml

KEY = Ed25519PrivateKey.generate()
OPS = {"ada": Operator("ada", KEY.public_key(), frozenset({"operator"}))}


def verify(payload: bytes, now: float | None = None, name: str = "ping"):  # type: ignore[no-untyped-def]
    return verify_command(json.loads(payload), kiosk_id="k1", topic_name=name, operators=OPS,
                          skew_s=300, max_ttl_s=3600, now=now)


def test_a_signed_command_verifies_and_every_field_is_covered() -> None:
    payload = sign_command(KEY, operator="ada", kiosk="k1", name="ping", args={"a": 1}, ttl_s=60)
    command, operator = verify(payload)
    assert command.name == "ping" and command.args == {"a": 1} and operator.name == "ada"
    body = json.loads(payload)
    for field, value in (("args", {"a": 2}), ("issued_at", body["issued_at"] + 1), ("nonce", "0" * 32),
                         ("id", "other"), ("reply_to", "kiosk/operators/x")):
        forged = dict(body, **{field: value})
        with pytest.raises(CommandError) as err:
            verify(json.dumps(forged).encode())
        assert err.value.code == "unauthenticated", field


def test_time_window_allows_the_configured_skew_only() -> None:
    now = time.time()
    payload = sign_command(KEY, operator="ada", kiosk="k1", name="ping", ttl_s=60, now=now)
    verify(payload, now=now + 60 + 299)  # expired 299 s ago: within the skew
    with pytest.raises(CommandError, match="expired") as err:
        verify(payload, now=now + 60 + 301)
    assert err.value.code == "expired"
    verify(payload, now=now - 299)  # issued 299 s "in the future": a slow kiosk clock
    with pytest.raises(CommandError, match="future"):
        verify(payload, now=now - 301)


def test_roles_are_cumulative() -> None:
    admin = Operator("a", KEY.public_key(), frozenset({"admin"}))
    viewer = Operator("v", KEY.public_key(), frozenset({"viewer"}))
    assert admin.may("viewer") and admin.may("operator") and admin.may("admin")
    assert viewer.may("viewer") and not viewer.may("operator") and not viewer.may("admin")
    assert OPS["ada"].may("operator") and not OPS["ada"].may("admin")


def test_changes_to_tree_takes_allow_listed_keys_only() -> None:
    tree = changes_to_tree({"mqtt.keepalive_s": 20, "telemetry.interval_s": 5}, tls_enabled=False)
    assert tree == {"mqtt": {"keepalive_s": 20}, "telemetry": {"interval_s": 5}}
    assert changes_to_tree({"queue.max_bytes": 2**30}, False) == {"queue": {"max_bytes": 2**30}}
    for bad in ("remote.operators.x.roles", "security.kiosk_key", "queue.path", "kiosk.id",
                "kiosk.state_dir", "remote", "mqtt.tls.enabled", "mqtt.tls", "mqtt.password_file",
                "mqtt.client_id", "local_api.unix_socket", "quality.finger.assessor",
                "devices.cam.source", "registration.face_device", "mqtt..port", "", ".x"):
        with pytest.raises(OverlayError):
            changes_to_tree({bad: 1}, tls_enabled=True)
    # Every refused key is named at once, with the allowed ones left out.
    with pytest.raises(OverlayError) as err:
        changes_to_tree({"telemetry.interval_s": 5, "mqtt.tls.enabled": False, "mqtt.username": "x"}, True)
    assert "mqtt.tls.enabled" in str(err.value) and "mqtt.username" in str(err.value)
    assert "telemetry" not in str(err.value)
    # The broker itself only while TLS is on.
    with pytest.raises(OverlayError, match="only while TLS is on"):
        changes_to_tree({"mqtt.host": "broker2.lan"}, tls_enabled=False)
    assert changes_to_tree({"mqtt.host": "broker2.lan", "mqtt.port": 8884}, tls_enabled=True) == {
        "mqtt": {"host": "broker2.lan", "port": 8884}}


def test_precedence_environment_over_overlay_over_file(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(to_toml({"kiosk": {"id": "k1"}, "queue": {"path": str(tmp_path / "q.db")},
                             "mqtt": {"port": 1883, "keepalive_s": 30, "allow_plaintext": True},
                             "security": security_section(tmp_path, "k1")}))
    overlay = tmp_path / "remote" / OVERLAY_NAME
    write_overlay(overlay, {"mqtt": {"receipt_timeout_s": 20.0, "keepalive_s": 40}})
    config = load_config(path, environ={"KIOSK_AGENT_MQTT__KEEPALIVE_S": "50"})
    assert config.mqtt.receipt_timeout_s == 20 and config.mqtt.keepalive_s == 50
    assert config.remote.state_dir == tmp_path / "remote"
    write_overlay(overlay, {"mqtt": {"receipt_timeout_s": 30.0}})
    assert (overlay.with_name(PREVIOUS_NAME)).read_text().count("20.0") == 1
    assert load_config(path, environ={}).mqtt.receipt_timeout_s == 30
    restore_previous(overlay)
    assert load_config(path, environ={}).mqtt.receipt_timeout_s == 20
    restore_previous(overlay)  # nothing before the first overlay: back to the file alone
    assert not overlay.exists() and load_config(path, environ={}).mqtt.receipt_timeout_s == 60
    overlay.write_text("this is [not toml")
    with pytest.raises(Exception, match="overlay"):
        load_config(path, environ={})


def test_nonces_are_remembered_across_reopening(tmp_path: Path) -> None:
    store = RemoteStore(tmp_path / "remote.db")
    assert store.remember_nonce("n" * 32, time.time() + 600)
    assert not store.remember_nonce("n" * 32, time.time() + 600)
    store.audit(request_id="r1", operator="ada", command="config.set",
                args={"mqtt.password": "hunter2", "telemetry.interval_s": 5}, result="ok")
    store.close()
    store = RemoteStore(tmp_path / "remote.db")
    assert not store.remember_nonce("n" * 32, time.time() + 600)
    entry = store.recent_audit(1)[0]
    assert entry["args"] == {"mqtt.password": "**********", "telemetry.interval_s": 5}
    store.close()
    assert b"hunter2" not in (tmp_path / "remote.db").read_bytes()


def test_event_bus_counts_what_it_had_to_drop() -> None:
    bus = EventBus(max_pending=3)
    for i in range(5):
        bus.emit("device_added", n=i)
    batch = bus.take()
    assert [e["n"] for e in batch] == [2, 3, 4] and batch[0]["dropped_before"] == 2
    bus.put_back(batch)
    assert [e["n"] for e in bus.take()] == [2, 3, 4]


def test_cpu_temperature_from_a_thermal_zone(tmp_path: Path) -> None:
    zone = tmp_path / "thermal_zone0"
    zone.mkdir()
    (zone / "type").write_text("cpu-thermal\n")
    (zone / "temp").write_text("48312\n")
    assert cpu_temperature_c(tmp_path) == pytest.approx(48.312)
    assert cpu_temperature_c(tmp_path / "none") is None


@pytest.mark.parametrize("environ", [{}, {"KIOSK_AGENT_QUEUE__PATH": "/srv/q/queue.db"},
                                     {"KIOSK_AGENT_KIOSK__STATE_DIR": "/srv/state"},
                                     {"KIOSK_AGENT_REMOTE__STATE_DIR": "/srv/remote"}])
def test_the_overlay_is_where_the_config_puts_the_remote_folder(tmp_path: Path,
                                                                environ: dict[str, str]) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(to_toml({"kiosk": {"id": "k1"}, "queue": {"path": str(tmp_path / "q.db")},
                             "mqtt": {"allow_plaintext": True} if "allow_plaintext" in MqttConfig.model_fields
                             else {}, "security": security_section(tmp_path, "k1")}))
    config = load_config(path, environ=environ)
    assert overlay_location(path, environ) == config.remote.state_dir / OVERLAY_NAME


def test_a_new_broker_needs_tls_and_the_credentials_in_force() -> None:
    tls = {"enabled": True, "ca_file": "/etc/kiosk-agent/ca.pem"}
    old = MqttConfig.model_validate({"host": "a.lan", "port": 8883, "tls": tls, "username": "k1"})
    assert broker_move_problems(old, old.model_copy(update={"host": "b.lan"})) == []
    for changed in ({"username": "k2"}, {"password_file": Path("/tmp/pw")},
                    {"tls": old.tls.model_copy(update={"ca_file": Path("/tmp/ca.pem")})},
                    {"tls": old.tls.model_copy(update={"enabled": False})}):
        assert broker_move_problems(old, old.model_copy(update={"host": "b.lan", **changed})), changed


def test_refusals_are_small_rate_limited_and_never_push_out_the_audit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = RemoteStore(tmp_path / "remote.db")
    store.audit(request_id="r1", operator="ada", command="ping", args={}, result="ok")
    recorded = [store.refusal(request_id="x" * 10_000, operator="o" * 10_000, command="c" * 10_000,
                              code="unauthenticated", message="m" * 10_000) for _ in range(1000)]
    assert sum(r is not None for r in recorded) == audit.REFUSALS_PER_MINUTE
    assert all(len(r[k]) <= audit.FIELD_CHARS for r in recorded if r for k in ("request_id", "operator",
                                                                                 "command"))
    summary = store.flush_refusals(force=True)
    assert summary is not None and summary["count"] == 1000 - audit.REFUSALS_PER_MINUTE
    assert "unauthenticated" in summary["message"]
    # Refusals have their own retention: however many, the audit rows stay.
    monkeypatch.setattr(audit, "REFUSALS_PER_MINUTE", 10**6)
    monkeypatch.setattr(audit, "MAX_REFUSAL_ROWS", 50)
    for _ in range(500):
        store.refusal(request_id=None, operator=None, command="ping", code="bad_request", message="no")
    entries = store.recent_audit(10_000)
    assert sum(1 for e in entries if e.get("refused")) == 50
    assert [e["request_id"] for e in entries if not e.get("refused")] == ["r1"]
    store.close()


def test_the_overlay_is_written_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path = tmp_path / "remote" / OVERLAY_NAME
        write_overlay(path, {"telemetry": {"interval_s": 30}})
        write_overlay(path, {"telemetry": {"interval_s": 60}})  # replaces, keeping the previous
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.with_name(PREVIOUS_NAME).stat().st_mode) == 0o600
