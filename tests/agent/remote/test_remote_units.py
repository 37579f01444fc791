"""The pure parts of remote management: command signatures and the config overlay."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.config import load_config
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


def test_changes_to_tree_refuses_locked_and_malformed_keys() -> None:
    tree = changes_to_tree({"mqtt.port": 1, "mqtt.tls.enabled": True})
    assert tree == {"mqtt": {"port": 1, "tls": {"enabled": True}}}
    for bad in ("remote.operators.x.roles", "security.kiosk_key", "queue.path", "kiosk.id",
                "kiosk.state_dir", "remote", "mqtt..port", "", ".x"):
        with pytest.raises(OverlayError):
            changes_to_tree({bad: 1})
    with pytest.raises(OverlayError, match="conflicts"):
        changes_to_tree({"mqtt.tls": 1, "mqtt.tls.enabled": True})
    assert changes_to_tree({"queue.max_bytes": 2**30}) == {"queue": {"max_bytes": 2**30}}


def test_precedence_environment_over_overlay_over_file(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(to_toml({"kiosk": {"id": "k1"}, "queue": {"path": str(tmp_path / "q.db")},
                             "mqtt": {"port": 1883, "keepalive_s": 30},
                             "security": security_section(tmp_path, "k1")}))
    overlay = tmp_path / "remote" / OVERLAY_NAME
    write_overlay(overlay, {"mqtt": {"port": 2000, "keepalive_s": 40}})
    config = load_config(path, environ={"KIOSK_AGENT_MQTT__KEEPALIVE_S": "50"})
    assert config.mqtt.port == 2000 and config.mqtt.keepalive_s == 50
    assert config.remote.state_dir == tmp_path / "remote"
    write_overlay(overlay, {"mqtt": {"port": 3000}})
    assert (overlay.with_name(PREVIOUS_NAME)).read_text().count("2000") == 1
    assert load_config(path, environ={}).mqtt.port == 3000
    restore_previous(overlay)
    assert load_config(path, environ={}).mqtt.port == 2000
    restore_previous(overlay)  # nothing before the first overlay: back to the file alone
    assert not overlay.exists() and load_config(path, environ={}).mqtt.port == 1883
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
