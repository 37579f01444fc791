"""Quality analytics recorded by a running agent: a registration session over the local API
with simulated devices (a retry, a force-captured finger, an exception), the aggregates in
telemetry on a real mosquitto with the operator as a pseudonym, and ``kiosk-agent quality
stats`` reading them after the agent has stopped."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import load_config
from agent.daemon import Agent
from agent.quality import analytics as qa
from cli.main import main
from devtools.broker import MosquittoBroker
from tests.support.config import security_section, to_toml
from tests.support.local_api import Api, local_api_section
from tests.support.waiting import wait_until

OPERATOR = "Ifeoma Okonkwo-Registrar"


class TelemetryWatch:
    def __init__(self, port: int, topic: str) -> None:
        self.messages: list[dict[str, Any]] = []
        self.raw: list[bytes] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(topic, qos=1)
        self.client.loop_start()

    def _on_message(self, client, userdata, message) -> None:  # type: ignore[no-untyped-def]
        with self._lock:
            self.raw.append(message.payload)
            self.messages.append(json.loads(message.payload))

    def with_quality(self) -> list[dict[str, Any]]:
        with self._lock:
            return [m["quality_stats"] for m in self.messages if "quality_stats" in m]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_a_session_is_counted_and_published_under_a_pseudonym(
        tmp_path: Path, broker: MosquittoBroker, capsys: pytest.CaptureFixture[str]) -> None:
    raw = {
        "security": security_section(tmp_path, "kiosk-q1"),
        "kiosk": {"id": "kiosk-q1", "site": "test-site", "state_dir": str(tmp_path / "state")},
        "mqtt": {"host": "127.0.0.1", "port": broker.port, "allow_plaintext": True,
                 "reconnect_min_s": 0.1, "reconnect_max_s": 1.0},
        "queue": {"min_free_bytes": 0},
        "capture": {"mode": "on-demand"},
        "telemetry": {"interval_s": 0.3},
        "devices": {"finger": {"driver": "sim-finger", "seed": 11,
                               "faults": ["ok", "no-finger", "ok", "poor", "poor", "poor"]},
                    "camera": {"driver": "sim-camera", "seed": 2}},
        "registration": {"max_attempts": 3},
        "local_api": local_api_section(tmp_path),
    }
    config_file = tmp_path / "agent.toml"
    config_file.write_text(to_toml(raw))
    agent = Agent(load_config(config_file))
    watch = TelemetryWatch(broker.port, "kiosk/kiosk-q1/telemetry")
    agent.start()
    try:
        api = Api.for_agent(agent)
        sid = api.ok("POST", "/v1/sessions", {"applicant_ref": "APP-1", "operator_id": OPERATOR})["id"]
        assert api.ok("POST", f"/v1/sessions/{sid}/capture")["attempts"] == 1  # finger 1
        assert api.ok("POST", f"/v1/sessions/{sid}/capture")["attempts"] == 2  # no finger, then fine
        forced = api.ok("POST", f"/v1/sessions/{sid}/capture")  # three poor prints
        assert forced["force_captured"] is True and forced["attempts"] == 3
        for reason in ("amputated", "amputated (corrected)"):  # the same finger twice: one exception
            api.ok("POST", f"/v1/sessions/{sid}/exceptions", {"position": 4, "code": "XX", "reason": reason})

        service = agent.registration_service()
        assert service is not None and service.analytics is not None
        alias = service.analytics.pseudonym(OPERATOR)
        (row,) = service.analytics.read("2000-01-01").outcomes
        assert (row.operator, row.modality) == (alias, "finger")
        assert (row.items, row.attempts, row.attempts_hist) == (3, 6, [1, 1, 1, 0, 0])
        assert (row.judged, row.force_captured, row.items_passed) == (5, 1, 2)  # "no finger" is not judged
        assert (row.exceptions, row.exception_codes, row.fingers) == (1, {"XX": 1}, 3)
        minimum = next(c for c in service.analytics.read("2000-01-01").checks
                       if c.name == "registration_min_quality")
        assert minimum.n == 5 and minimum.failed == 3

        # Telemetry carries the day's aggregates with the pseudonym, never the operator's id.
        def published() -> list[dict[str, Any]]:
            return [q for q in watch.with_quality() if q["outcomes"] and q["outcomes"][0]["items"] == 3]

        wait_until(published, 20, what="quality aggregates in telemetry")
        latest = published()[-1]
        assert latest["outcomes"][0]["operator"] == alias
        assert all(OPERATOR.encode() not in m and b"Okonkwo" not in m for m in watch.raw)
        # Unchanged aggregates go out as their latest day only (a day less on the link), yet in
        # every message: telemetry is retained, each message replacing the last.
        count = len(watch.messages)
        wait_until(lambda: len(watch.messages) >= count + 4, 20, what="more telemetry")
        later = watch.messages[count + 1:]
        assert all("quality_stats" in m for m in later)
        today = qa.utc_day(time.time())
        assert {m["quality_stats"]["since"] for m in later} <= {today, latest["since"]}
        assert any(m["quality_stats"]["since"] == today != latest["since"] for m in later)
        # A collector that subscribes after the figures were produced is handed them.
        late = TelemetryWatch(broker.port, "kiosk/kiosk-q1/telemetry")
        try:
            wait_until(lambda: late.messages, 10, what="the retained telemetry")
            first = late.messages[0]["quality_stats"]
            assert first["outcomes"][0]["items"] == 3 and first["outcomes"][0]["operator"] == alias
        finally:
            late.close()
    finally:
        watch.close()
        agent.stop()

    # After the agent stopped: the file keeps it, and the command line reads it.
    stored = b"".join(p.read_bytes() for p in (tmp_path / "state").glob(f"{qa.FILE_NAME}*"))
    assert OPERATOR.encode() not in stored and b"Okonkwo" not in stored
    assert main(["quality", "stats", "--config", str(config_file), "--by", "operator",
                 "--operator", OPERATOR, "--json"]) == 0
    (row_out,) = json.loads(capsys.readouterr().out)["rows"]
    assert row_out["operator"] == alias and row_out["operator_id"] == OPERATOR
    assert row_out["items"] == 3 and row_out["force_captured_rate"] == round(1 / 3, 4)
    assert row_out["exception_rate"] == 0.25  # 1 of the 4 fingers asked for
