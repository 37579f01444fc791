"""A support engineer's MQTT client for the remote-management tests: signs commands (or sends
raw payloads) and collects the kiosk's replies."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.remote.auth import sign_command
from agent.security.keys import create_signing_key, load_signing_key

PREFIX = "kiosk"
REPLY_TOPIC = f"{PREFIX}/operators/tests/replies"


def make_operator_key(directory: Path, name: str) -> Path:
    path = directory / f"{name}.key"
    if not path.exists():
        create_signing_key(path)
    return path


class OperatorClient:
    def __init__(self, port: int, kiosk_id: str, *, protocol: str = "5", replies_only: bool = False) -> None:
        self.kiosk_id = kiosk_id
        self.v5 = protocol == "5"
        self.replies: list[dict[str, Any]] = []
        self.correlations: list[bytes | None] = []
        self.messages: list[tuple[str, bytes]] = []
        self._cond = threading.Condition()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"ops-{time.monotonic_ns()}",
                                  protocol=mqtt.MQTTv5 if self.v5 else mqtt.MQTTv311)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        topics = [REPLY_TOPIC, f"{PREFIX}/{kiosk_id}/replies", f"{PREFIX}/{kiosk_id}/replies/#"]
        if not replies_only:
            topics += [f"{PREFIX}/{kiosk_id}/{leaf}" for leaf in ("events", "telemetry", "status")]
        for topic in topics:
            self.client.subscribe(topic, qos=1)
        time.sleep(0.2)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_message(self, client, userdata, message) -> None:  # type: ignore[no-untyped-def]
        with self._cond:
            if "/replies" in message.topic:
                try:
                    body = json.loads(message.payload)
                except ValueError:
                    body = {"unparsable": message.payload}
                body["_topic"] = message.topic
                self.replies.append(body)
                props = getattr(message, "properties", None)
                self.correlations.append(getattr(props, "CorrelationData", None))
            else:
                self.messages.append((message.topic, message.payload))
            self._cond.notify_all()

    # --- sending ----------------------------------------------------------------------------

    def sign(self, key_path: Path, operator: str, name: str, args: dict[str, Any] | None = None,
             **overrides: Any) -> bytes:
        kw: dict[str, Any] = {"ttl_s": 60.0, "kiosk": self.kiosk_id}
        kw.update(overrides)
        return sign_command(load_signing_key(key_path), operator=operator, name=name, args=args, **kw)

    def publish(self, name: str, payload: bytes, *, response_topic: str | None = REPLY_TOPIC,
                correlation: bytes | None = None) -> None:
        props = None
        if self.v5 and response_topic:
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = response_topic
            if correlation is not None:
                props.CorrelationData = correlation
        self.client.publish(f"{PREFIX}/{self.kiosk_id}/commands/{name}", payload, qos=1, properties=props)

    def call(self, key_path: Path, operator: str, name: str, args: dict[str, Any] | None = None,
             timeout_s: float = 30.0, **overrides: Any) -> dict[str, Any]:
        payload = self.sign(key_path, operator, name, args, **overrides)
        self.publish(name, payload, correlation=b"corr-" + name.encode())
        return self.wait_reply(json.loads(payload)["id"], timeout_s)

    def wait_reply(self, request_id: str | None, timeout_s: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                for reply in self.replies:
                    if reply.get("id") == request_id:
                        return reply
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no reply for {request_id} within {timeout_s} s; "
                                         f"replies: {self.replies[-3:]}")
                self._cond.wait(left)

    def wait_message(self, topic_leaf: str, predicate=lambda body: True,  # type: ignore[no-untyped-def]
                     timeout_s: float = 15.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                for topic, payload in self.messages:
                    if topic.endswith("/" + topic_leaf):
                        body = json.loads(payload)
                        if predicate(body):
                            return body
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {topic_leaf} message matching within {timeout_s} s")
                self._cond.wait(left)
