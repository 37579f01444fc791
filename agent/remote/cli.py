"""The operator's side of remote management: ``kiosk-agent remote``.

``kiosk-agent remote KIOSK_ID COMMAND [KEY=VALUE ...] --config OPERATOR.toml`` signs a
command with the operator's key, publishes it, waits for the one reply and prints it.
``kiosk-agent remote --list`` lists kiosks from their retained status and telemetry.
``kiosk-agent remote rollout BUNDLE_URL --sha256 H ...`` updates kiosks in batches
(agent/remote/rollout.py; ``rollout`` is therefore not a usable kiosk id here).
Exit codes: 0 the command succeeded, 1 it failed or no reply came in time, 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.config import ConfigError, MqttConfig, TopicSegment, read_toml
from agent.remote.output import printable, reply_text
from agent.transport.mqtt_link import BrokerLimits, MqttLink

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class OperatorIdentity(BaseModel):
    model_config = ConfigDict(extra="forbid")
    #: The name the kiosks list under remote.operators.
    name: TopicSegment
    #: The operator's Ed25519 private key (`kiosk-agent keys init --operator PATH`).
    key: Path
    #: Lifetime of a signed command; the kiosks accept at most their remote.max_ttl_s.
    ttl_s: float = Field(120.0, gt=0)


class OperatorToolConfig(BaseModel):
    """The operator's own config file (config/operator.toml)."""

    model_config = ConfigDict(extra="forbid")
    operator: OperatorIdentity
    #: Validated even when the file has no [mqtt] table: the defaults alone are plain MQTT, refused.
    mqtt: MqttConfig = Field(default_factory=dict, validate_default=True)


def load_operator_config(path: Path) -> OperatorToolConfig:
    raw = read_toml(path)  # the operator's own file: no kiosk overlay, no environment
    try:
        return OperatorToolConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(str(path), [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                                      for e in exc.errors()]) from None


def add_parser(sub: Any) -> None:
    p = sub.add_parser("remote", help="send a signed command to a kiosk and print its reply, or "
                                      "--list the kiosks")
    p.add_argument("kiosk_id", nargs="?", metavar="KIOSK_ID")
    p.add_argument("command_name", nargs="?", metavar="COMMAND",
                   help="ping, status, config.get, config.set, devices.list, devices.rescan, "
                        "devices.test, capture, queue.stats, queue.retry, queue.purge, log.level, "
                        "diagnostics, restart, update.apply")
    p.add_argument("args", nargs="*", metavar="KEY=VALUE",
                   help="arguments; values are read as JSON when they parse (30, true, \"x\"), "
                        "otherwise as text")
    p.add_argument("--config", required=True, metavar="OPERATOR.toml",
                   help="the operator's config: [operator] name and key, [mqtt] broker")
    p.add_argument("--list", action="store_true", help="list kiosks, online or offline, last seen")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the reply (30)")
    p.add_argument("--json", action="store_true", help="print the reply (or the list) as JSON")
    r = p.add_argument_group("rollout", "kiosk-agent remote rollout BUNDLE_URL --sha256 HEX (--kiosks "
                                        "K1,K2 | --all-online): update.apply to batches of kiosks, each "
                                        "batch waiting for its outcomes (--timeout per batch)")
    r.add_argument("--sha256", metavar="HEX", help="the bundle file's SHA-256, pinned in every command")
    r.add_argument("--kiosks", metavar="K1,K2,...", help="the kiosks to update, in this order")
    r.add_argument("--all-online", action="store_true", help="every kiosk whose status says online")
    r.add_argument("--batch", type=int, default=1, metavar="N", help="kiosks per batch (1)")
    r.add_argument("--max-failures", type=int, default=0, metavar="K",
                   help="stop before the next batch once more than K kiosks failed (0)")
    p.set_defaults(func=cmd_remote)


def parse_kv(items: list[str]) -> dict[str, Any]:
    args: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{item!r}: arguments are KEY=VALUE")
        try:
            args[key] = json.loads(value)
        except json.JSONDecodeError:
            args[key] = value
    return args


def cmd_remote(args: argparse.Namespace) -> int:
    config = load_operator_config(Path(args.config))
    if args.list:
        return _list(config, args)
    if args.kiosk_id == "rollout":
        from agent.remote.rollout import run_rollout

        return run_rollout(config, args)
    if not args.kiosk_id or not args.command_name:
        print("error: give KIOSK_ID and COMMAND, or --list", file=sys.stderr)
        return EXIT_USAGE
    try:
        command_args = parse_kv(args.args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from agent.remote.auth import sign_command
    from agent.security.keys import KeyFileError, load_signing_key

    try:
        key = load_signing_key(config.operator.key, "operator.key")
    except KeyFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    reply_topic = f"{config.mqtt.topic_prefix}/operators/{config.operator.name}/{os.urandom(6).hex()}"
    payload = sign_command(key, operator=config.operator.name, kiosk=args.kiosk_id,
                           name=args.command_name, args=command_args, ttl_s=config.operator.ttl_s,
                           reply_to=reply_topic)
    request_id = json.loads(payload)["id"]
    topic = f"{config.mqtt.topic_prefix}/{args.kiosk_id}/commands/{args.command_name}"
    status_topic = f"{config.mqtt.topic_prefix}/{args.kiosk_id}/status"
    handler = _request(config.mqtt, _Requester(topic, payload, reply_topic, request_id, status_topic),
                       args.timeout)
    reply = handler.reply
    if reply is None:
        print(f"error: {no_reply_message(args.kiosk_id, args.timeout, handler)}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps(reply))
    elif reply.get("ok"):
        print(reply_text(reply))
    else:
        print(reply_error_text(reply), file=sys.stderr)
    return EXIT_OK if reply.get("ok") else EXIT_FAILED


def reply_error_text(reply: dict[str, Any]) -> str:
    """The line for a refused command. A reply is any broker client's word (replies are
    unsigned): nothing in it may act on the operator's terminal."""
    err = reply.get("error")
    err = err if isinstance(err, dict) else {}
    return printable(f"error: {err.get('code')}: {err.get('message')}")


def no_reply_message(kiosk_id: str, timeout_s: float, handler: _Requester) -> str:
    """Why no reply came, as far as the kiosk's retained status tells; never a promise of a
    later delivery (kiosks use clean sessions: the broker keeps nothing for them)."""
    said = f"no reply from kiosk {kiosk_id} within {timeout_s:.0f} s"
    if not handler.connected:
        return f"{said}: the broker could not be reached"
    later = "the command is not delivered later: send it again when the kiosk is online"
    if handler.kiosk_state is None:
        return (f"{said}: no kiosk {kiosk_id!r} has reported to this broker (a typo? "
                "`kiosk-agent remote --list` shows the kiosks it knows)")
    if handler.kiosk_state != "online":
        return (f"{said}: the kiosk is {printable(str(handler.kiosk_state))} "
                f"(`kiosk-agent remote --list`); {later}")
    return (f"{said}, though its status says online: it may be restarting or cut off from the "
            f"broker; {later} (or wait longer: --timeout)")


class _Requester:
    """Link handler: subscribe to the reply topic, then publish the command once."""

    def __init__(self, topic: str, payload: bytes, reply_topic: str, request_id: str,
                 status_topic: str = "") -> None:
        self.topic, self.payload, self.reply_topic, self.request_id = topic, payload, reply_topic, request_id
        #: The kiosk's retained status topic: when no reply comes, its state says why.
        self.status_topic = status_topic
        self.kiosk_state: str | None = None
        self.connected = False
        self.reply: dict[str, Any] | None = None
        self.done = threading.Event()
        self._sent = False

    def on_connected(self, link: MqttLink, limits: BrokerLimits) -> None:
        self.connected = True
        link.subscribe(self.reply_topic, qos=1)
        if self.status_topic:
            link.subscribe(self.status_topic, qos=1)
        if self._sent:
            return  # the same signed command again would be refused as a replay
        props = None
        if link.v5:
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = self.reply_topic
            props.CorrelationData = self.request_id.encode()
        link.publish(self.topic, self.payload, qos=1, properties=props)
        self._sent = True

    def on_message(self, link: MqttLink, message: mqtt.MQTTMessage) -> None:
        try:
            body = json.loads(message.payload)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return
        if not isinstance(body, dict):
            return
        if message.topic == self.status_topic:
            state = body.get("state")
            self.kiosk_state = state if isinstance(state, str) else "unknown"
        elif message.topic == self.reply_topic and body.get("id") == self.request_id:
            self.reply = body
            self.done.set()

    def on_disconnected(self, link: MqttLink) -> None: ...
    def on_puback(self, link: MqttLink, mid: int) -> None: ...
    def on_stopping(self, link: MqttLink) -> None: ...
    def tick(self, link: MqttLink) -> bool:
        return False


def _request(mqtt_cfg: MqttConfig, handler: _Requester, timeout_s: float) -> _Requester:
    link = MqttLink(mqtt_cfg, handler, client_id=f"kiosk-operator-{os.urandom(4).hex()}", name="remote")
    link.start()
    try:
        handler.done.wait(timeout_s)
    finally:
        link.stop()
    return handler


class _Lister:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.kiosks: dict[str, dict[str, Any]] = {}

    def on_connected(self, link: MqttLink, limits: BrokerLimits) -> None:
        link.subscribe(f"{self.prefix}/+/status", qos=1)
        link.subscribe(f"{self.prefix}/+/telemetry", qos=1)

    def on_message(self, link: MqttLink, message: mqtt.MQTTMessage) -> None:
        parts = message.topic.split("/")
        try:
            body = json.loads(message.payload)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return
        if not isinstance(body, dict) or len(parts) < 2:
            return
        entry = self.kiosks.setdefault(parts[-2], {"kiosk_id": parts[-2]})
        if parts[-1] == "status":
            entry.update(state=body.get("state"), site=body.get("site"), version=body.get("version"))
        else:
            entry.update(last_seen=body.get("at"), pending=(body.get("queue") or {}).get("pending"))

    def on_disconnected(self, link: MqttLink) -> None: ...
    def on_puback(self, link: MqttLink, mid: int) -> None: ...
    def on_stopping(self, link: MqttLink) -> None: ...
    def tick(self, link: MqttLink) -> bool:
        return False


def _list(config: OperatorToolConfig, args: argparse.Namespace) -> int:
    handler = _Lister(config.mqtt.topic_prefix)
    link = MqttLink(config.mqtt, handler, client_id=f"kiosk-operator-{os.urandom(4).hex()}", name="list")
    link.start()
    # Retained messages arrive right after SUBACK; wait for the connection, then a moment more.
    deadline = time.monotonic() + args.timeout
    while not link.connected and time.monotonic() < deadline:
        time.sleep(0.05)
    connected = link.connected
    time.sleep(min(1.5, max(0.0, deadline - time.monotonic())))
    link.stop()
    if not connected:
        print(f"error: cannot reach broker {config.mqtt.host}:{config.mqtt.port}", file=sys.stderr)
        return EXIT_FAILED
    rows = sorted(handler.kiosks.values(), key=lambda r: r["kiosk_id"])
    if args.json:
        print(json.dumps({"kiosks": rows}))
        return EXIT_OK
    if not rows:
        print("no kiosks have reported to this broker")
    now = time.time()
    for r in rows:
        seen = r.get("last_seen")
        ago = f"{now - seen:.0f} s ago" if isinstance(seen, int | float) else "never"
        # Retained statuses are any broker client's word: shown, never acted on by a terminal.
        print(printable(f"{r['kiosk_id']:<20} {r.get('state') or '?':<8} last seen {ago:<14} "
                        f"pending {r.get('pending', '?')}  {r.get('site') or ''}"))
    return EXIT_OK
