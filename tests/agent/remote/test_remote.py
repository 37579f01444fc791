"""Remote management against a real mosquitto: signed commands, refusals, config.set with
rollback, telemetry and events, and the operator's command line."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from agent.config import load_config
from agent.daemon import Agent
from agent.remote.overlay import OVERLAY_NAME
from devtools.broker import MosquittoBroker, free_port
from tests.support.remote_client import OperatorClient, make_operator_key
from tests.support.remote_kiosk import KIOSK, kiosk_raw, start_kiosk
from tests.support.tls_brokers import Pki


@pytest.fixture
def kiosk(tmp_path: Path, broker: MosquittoBroker) -> Iterator[tuple[Agent, OperatorClient, Path]]:
    agent = start_kiosk(tmp_path, kiosk_raw(tmp_path, broker.port))
    ops = OperatorClient(broker.port, KIOSK)
    try:
        yield agent, ops, tmp_path / "operators"
    finally:
        ops.close()
        agent.stop()


def test_every_command_answers_once_with_its_result(kiosk) -> None:  # type: ignore[no-untyped-def]
    agent, ops, keys = kiosk
    admin = keys / "ada.key"

    def ok(name: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        reply = ops.call(admin, "ada", name, args)
        assert reply["ok"], reply
        assert reply["_topic"] == "kiosk/operators/tests/replies"
        return reply["result"]

    assert ok("ping")["pong"] is True
    status = ok("status")
    assert status["versions"]["agent"] and status["connectivity"]["connected"] is True
    assert status["devices"][0]["name"] == "finger" and status["devices"][0]["state"] == "online"
    assert abs(status["clock"]["time"] - time.time()) < 5
    assert ok("config.get")["config"]["kiosk"]["id"] == KIOSK
    assert [d["name"] for d in ok("devices.list")["devices"]] == ["finger"]
    assert ok("devices.test", {"device": "finger"})["health"]["ok"] is True
    assert ok("devices.rescan")["devices"][0]["state"] == "online"
    shot = ok("capture", {"device": "finger", "position": 2})
    assert shot["position"] == 2 and shot["image_bytes"] > 1000
    assert ok("queue.stats")["pending"] == 1  # no receiver: the capture waits, sealed
    agent.queue.reject(shot["id"], "test: pretend the central side refused it")
    assert ok("queue.retry")["requeued"] == 1
    level = ok("log.level", {"level": "DEBUG", "logger": "drivers"})
    assert level["previous"] in ("INFO", "WARNING", "NOTSET")
    diag = ok("diagnostics", {"lines": 50})
    assert any("command" in line for line in diag["logs"]) and diag["audit"][0]["command"] == "log.level"
    purged = ok("queue.purge", {"confirm": f"purge {KIOSK}", "states": ["queued", "sent"]})
    assert purged["purged"] == 1 and agent.queue.totals() == (0, 0)
    assert ok("restart")["connected"] is True
    assert ok("ping")["pong"] is True  # answered by the restarted components
    # Every command answered exactly once, with the correlation data it was sent with.
    ids = [r["id"] for r in ops.replies]
    assert len(ids) == len(set(ids)) == 14
    logging.getLogger("drivers").setLevel(logging.NOTSET)
    assert all(c is not None and c.startswith(b"corr-") for c in ops.correlations)


def test_refusals_each_get_one_error_reply_with_its_code(kiosk) -> None:  # type: ignore[no-untyped-def]
    agent, ops, keys = kiosk
    admin, viewer = keys / "ada.key", keys / "vera.key"
    stranger = make_operator_key(keys, "mallory")

    def error(payload: bytes, name: str = "ping") -> dict[str, Any]:
        ops.publish(name, payload)
        body = json.loads(payload) if payload.startswith(b"{") else {}
        reply = ops.wait_reply(body.get("id") if isinstance(body, dict) else None)
        assert reply["ok"] is False, reply
        return reply["error"]

    unsigned = json.loads(ops.sign(admin, "ada", "ping"))
    del unsigned["sig"]
    assert error(json.dumps(unsigned).encode())["code"] == "unauthenticated"
    assert error(ops.sign(stranger, "ada", "ping"))["code"] == "unauthenticated"  # wrong key
    assert error(ops.sign(stranger, "mallory", "ping"))["code"] == "unauthenticated"  # unknown operator
    tampered = json.loads(ops.sign(admin, "ada", "queue.purge", {"confirm": "no"}))
    tampered["args"]["confirm"] = f"purge {KIOSK}"
    assert error(json.dumps(tampered).encode(), "queue.purge")["code"] == "unauthenticated"
    assert error(ops.sign(admin, "ada", "ping", kiosk="kiosk-other"))["code"] == "unauthenticated"
    assert error(ops.sign(admin, "ada", "ping", now=time.time() - 3600))["code"] == "expired"
    assert error(ops.sign(admin, "ada", "ping", now=time.time() + 3600))["code"] == "expired"
    assert error(ops.sign(admin, "ada", "ping", ttl_s=86400))["code"] == "expired"
    assert error(ops.sign(viewer, "vera", "config.set", {"telemetry.interval_s": 5}),
                 "config.set")["code"] == "forbidden"
    assert error(ops.sign(viewer, "vera", "queue.retry"), "queue.retry")["code"] == "forbidden"
    assert error(ops.sign(admin, "ada", "self-destruct"), "self-destruct")["code"] == "unknown_command"
    assert error(ops.sign(admin, "ada", "ping"), "status")["code"] == "bad_request"  # topic mismatch
    assert error(ops.sign(admin, "ada", "capture", {"device": "finger", "position": 11}),
                 "capture")["code"] == "invalid_args"
    assert error(ops.sign(admin, "ada", "devices.test", {"device": "nope"}),
                 "devices.test")["code"] == "invalid_args"
    purge = ops.sign(admin, "ada", "queue.purge", {"confirm": "yes"})
    assert error(purge, "queue.purge")["code"] == "invalid_args"
    assert error(ops.sign(admin, "ada", "config.set", {"security.kiosk_key": "/tmp/x"}),
                 "config.set")["code"] == "invalid_args"
    bad_port = ops.sign(admin, "ada", "config.set", {"mqtt.port": 0})
    assert error(bad_port, "config.set")["code"] == "invalid_args"
    replayed = ops.sign(admin, "ada", "ping")
    ops.publish("ping", replayed)
    first = ops.wait_reply(json.loads(replayed)["id"])
    assert first["ok"] is True
    ops.replies.clear()
    assert error(replayed)["code"] == "replayed"
    assert error(b"\xff not json")["code"] == "bad_request"
    assert error(b"[1, 2]")["code"] == "bad_request"
    # The agent is still fine: captures and commands work.
    assert ops.call(admin, "ada", "capture", {"device": "finger", "position": 1})["ok"] is True
    # The audit log has every refusal, with who and why.
    audit = agent.remote_store.recent_audit(100)
    assert {"unauthenticated", "expired", "forbidden", "replayed", "invalid_args", "bad_request",
            "unknown_command"} <= {a["code"] for a in audit}


def test_replay_is_refused_after_a_restart_too(tmp_path: Path, broker: MosquittoBroker) -> None:
    raw = kiosk_raw(tmp_path, broker.port)
    ops = OperatorClient(broker.port, KIOSK)
    try:
        agent = start_kiosk(tmp_path, raw)
        payload = ops.sign(tmp_path / "operators" / "ada.key", "ada", "ping")
        ops.publish("ping", payload)
        assert ops.wait_reply(json.loads(payload)["id"])["ok"] is True
        agent.stop()
        ops.replies.clear()
        agent = start_kiosk(tmp_path, raw)
        ops.publish("ping", payload)
        assert ops.wait_reply(json.loads(payload)["id"])["error"]["code"] == "replayed"
        agent.stop()
    finally:
        ops.close()


def test_mqtt_311_replies_on_the_documented_topics(tmp_path: Path, broker: MosquittoBroker) -> None:
    agent = start_kiosk(tmp_path, kiosk_raw(tmp_path, broker.port, protocol="3.1.1"))
    ops = OperatorClient(broker.port, KIOSK, protocol="3.1.1")
    admin = tmp_path / "operators" / "ada.key"
    try:
        own = ops.call(admin, "ada", "ping", reply_to="kiosk/operators/tests/replies")
        assert own["ok"] and own["_topic"] == "kiosk/operators/tests/replies"
        default = ops.call(admin, "ada", "ping")
        assert default["ok"] and default["_topic"] == f"kiosk/{KIOSK}/replies"
        # A reply_to outside the allowed trees is not obeyed: the kiosk never publishes on
        # another kiosk's data topics.
        hijack = ops.call(admin, "ada", "ping", reply_to="kiosk/kiosk-other/captures")
        assert hijack["_topic"] == f"kiosk/{KIOSK}/replies"
    finally:
        ops.close()
        agent.stop()


def test_config_set_applies_persists_and_is_audited(kiosk) -> None:  # type: ignore[no-untyped-def]
    agent, ops, keys = kiosk
    reply = ops.call(keys / "ada.key", "ada", "config.set",
                     {"telemetry.interval_s": 17.5, "capture.max_attempts": 5})
    assert reply["ok"], reply
    assert agent.config.telemetry.interval_s == 17.5 and agent.config.capture.max_attempts == 5
    overlay = agent.config.remote.state_dir / OVERLAY_NAME
    assert "interval_s = 17.5" in overlay.read_text()
    # The hand-written file is untouched; the overlay applies at the next start.
    assert "17.5" not in (agent.config_path.read_text())
    assert load_config(agent.config_path, environ={}).capture.max_attempts == 5
    got = ops.call(keys / "vera.key", "vera", "config.get")["result"]
    assert got["remote_overlay"] == {"telemetry": {"interval_s": 17.5}, "capture": {"max_attempts": 5}}
    event = ops.wait_message("events",
                             lambda e: e.get("event") == "command" and e.get("command") == "config.set")
    assert event["operator"] == "ada" and event["result"] == "ok"


def test_config_set_to_an_unreachable_broker_rolls_back(tmp_path: Path) -> None:
    # The broker may be changed remotely only while TLS is on (docs/remote-management.md).
    pki = Pki(tmp_path / "pki")
    broker = pki.broker("broker")
    agent = start_kiosk(tmp_path, kiosk_raw(tmp_path, broker.port, mqtt={"tls": pki.kiosk_tls()}))
    ops = OperatorClient(broker.plain_port, KIOSK)  # type: ignore[attr-defined]
    keys = tmp_path / "operators"
    try:
        dead_port = free_port()
        started = time.monotonic()
        reply = ops.call(keys / "ada.key", "ada", "config.set", {"mqtt.port": dead_port}, timeout_s=30)
        assert reply["ok"] is False and reply["error"]["code"] == "rolled_back", reply
        assert time.monotonic() - started < 20
        assert agent.config.mqtt.port != dead_port and agent.link.connected
        assert not (agent.config.remote.state_dir / OVERLAY_NAME).exists()
        assert load_config(agent.config_path, environ={}).mqtt.port != dead_port
        # Back online: retained status says so, and commands work again.
        ops.wait_message("status", lambda s: s.get("state") == "online")
        assert ops.call(keys / "ada.key", "ada", "ping")["ok"] is True
        ops.wait_message("events", lambda e: e.get("event") == "config_rolled_back")
    finally:
        ops.close()
        agent.stop()
        broker.close()


def test_telemetry_reports_queue_devices_and_connection(kiosk) -> None:  # type: ignore[no-untyped-def]
    agent, ops, keys = kiosk
    assert ops.call(keys / "otto.key", "otto", "capture", {"device": "finger", "position": 3})["ok"]
    t = ops.wait_message("telemetry", lambda b: (b.get("queue") or {}).get("pending") == 1)
    assert t["kiosk_id"] == KIOSK and t["captures_today"] == 1
    assert t["queue"]["pending_bytes"] > 1000 and t["queue"]["oldest_age_s"] >= 0
    assert t["devices"][0]["state"] == "online"
    assert t["connection"]["connected"] is True and t["connection"]["reconnects"] == 0
    assert t["disk"]["free_bytes"] > 0 and t["memory"]["agent_rss_bytes"] > 0
    assert "cpu_temperature_c" in t and t["uptime_s"] >= 0


def test_operator_command_line(kiosk, capsys) -> None:  # type: ignore[no-untyped-def]
    from cli.main import main

    agent, ops, keys = kiosk
    op_cfg = keys.parent / "operator.toml"
    op_cfg.write_text(tomli_w.dumps({"operator": {"name": "ada", "key": str(keys / "ada.key")},
                                     "mqtt": {"host": "127.0.0.1", "port": agent.config.mqtt.port,
                                              "allow_plaintext": True}}))
    assert main(["remote", KIOSK, "ping", "--config", str(op_cfg), "--json"]) == 0
    reply = json.loads(capsys.readouterr().out)
    assert reply["ok"] is True and reply["result"]["pong"] is True
    assert main(["remote", KIOSK, "config.set", "telemetry.interval_s=20", "--config", str(op_cfg)]) == 0
    assert agent.config.telemetry.interval_s == 20
    out = capsys.readouterr().out  # for a person: key: value lines, not JSON
    assert "applied:\n  telemetry.interval_s: 20" in out and "{" not in out
    assert main(["remote", KIOSK, "queue.purge", "confirm=nope", "--config", str(op_cfg)]) == 1
    assert "invalid_args" in capsys.readouterr().err
    assert main(["remote", "--list", "--config", str(op_cfg), "--json", "--timeout", "5"]) == 0
    listed = json.loads(capsys.readouterr().out)["kiosks"]
    assert [(k["kiosk_id"], k["state"]) for k in listed] == [(KIOSK, "online")]
    assert listed[0]["last_seen"] > time.time() - 60
    assert main(["remote", "kiosk-nobody", "ping", "--config", str(op_cfg), "--timeout", "1"]) == 1
    err = capsys.readouterr().err
    assert "no kiosk 'kiosk-nobody' has reported to this broker" in err and "remote --list" in err
    assert "when it reconnects" not in err  # kiosks use clean sessions: nothing is delivered later


def test_a_quarantined_queue_is_reported_as_an_event(tmp_path: Path, broker: MosquittoBroker) -> None:
    (tmp_path / "queue.db").write_bytes(b"this is not a database" * 100)
    ops = OperatorClient(broker.port, KIOSK)
    agent = start_kiosk(tmp_path, kiosk_raw(tmp_path, broker.port))
    try:
        event = ops.wait_message("events", lambda e: e.get("event") == "queue_quarantined")
        assert event["moved_to"][0].startswith(str(tmp_path / "queue.db.corrupt-"))
        assert event["error"] and event["path"] == str(tmp_path / "queue.db")
    finally:
        ops.close()
        agent.stop()


def test_an_unusable_operator_key_costs_only_that_operator(tmp_path: Path, broker: MosquittoBroker) -> None:
    raw = kiosk_raw(tmp_path, broker.port)
    raw["remote"]["operators"]["ghost"] = {"public_key": str(tmp_path / "missing.pub"), "roles": ["admin"]}
    ops = OperatorClient(broker.port, KIOSK)
    agent = start_kiosk(tmp_path, raw)
    try:
        assert ops.call(tmp_path / "operators" / "ada.key", "ada", "ping")["ok"] is True
        ghost = ops.call(tmp_path / "operators" / "ada.key", "ghost", "ping")
        assert ghost["error"]["code"] == "unauthenticated"
        event = ops.wait_message("events", lambda e: e.get("event") == "operator_key_unusable")
        assert "missing.pub" in event["problem"]
    finally:
        ops.close()
        agent.stop()
