"""Remote management over MQTT: receive signed commands, run them, reply exactly once.

Threads: commands arrive on the MQTT link's thread, which only parses and verifies them
(fast, and never blocks on a device). Verified commands go to one of two worker threads:
``quick`` (status, queue statistics ...) and ``slow`` (captures, device tests, config
changes: one at a time; a second gets a ``busy`` reply). Replies wait in an outbox that the
link's thread publishes first on each loop turn, before any capture.

Reply address: MQTT 5's response topic and correlation data when the command has them;
otherwise the command's ``reply_to`` field; otherwise <prefix>/<kiosk_id>/replies. A reply
topic must be under <prefix>/operators/ or <prefix>/<kiosk_id>/replies, so a command
cannot make a kiosk publish onto another kiosk's or its own data topics.
"""

from __future__ import annotations

import collections
import json
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.config import RemoteConfig
from agent.guard import log_and_continue
from agent.remote.audit import RemoteStore
from agent.remote.auth import (
    Command,
    CommandError,
    Operator,
    parse_unverified,
    request_id_of,
    verify_command,
)
from agent.remote.commands import COMMANDS, parse_args
from agent.runtime import Runtime
from agent.security.key_access import exposure, private_key_of, service_accounts
from agent.security.keys import KeyFileError, load_public
from agent.transport.mqtt_link import BrokerLimits, MqttLink
from agent.transport.protocol import Topics

log = logging.getLogger(__name__)

QUICK_QUEUE = 64


@dataclass(frozen=True)
class Reply:
    topic: str
    payload: bytes
    correlation: bytes | None


def load_operators(config: RemoteConfig) -> tuple[dict[str, Operator], list[str]]:
    """The operators whose keys load, and a problem line for each one that does not.

    An unreadable operator key costs that operator remote access, never the kiosk its
    captures: the agent starts without them and says why.
    """
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    operators = {}
    problems = []
    for name, op in config.operators.items():
        try:
            key = load_public(op.public_key, f"remote.operators.{name}.public_key", Ed25519PublicKey)
        except KeyFileError as exc:
            problems.append(f"{exc}; operator {name} cannot send commands until it is fixed")
            continue
        operators[name] = Operator(name, key, frozenset(op.roles))  # type: ignore[arg-type]
    return operators, problems


def operator_key_exposure(remote: RemoteConfig, service_user: str) -> list[str]:
    """A problem line for each operator whose private key (the public key's path without
    ``.pub``) the kiosk's service user could read. The agent refuses to start on any: an
    operator key signs commands for the whole fleet, not for this kiosk alone."""
    accounts = service_accounts(service_user)
    problems = []
    for name, op in sorted(remote.operators.items()):
        private = private_key_of(op.public_key)
        why = exposure(private, accounts) if private is not None else None
        if why is not None:
            problems.append(f"remote.operators.{name}.public_key: the operator's private key {private} is "
                            f"{why}; an operator key signs commands for every kiosk and must not be "
                            "readable by the kiosk's service user (move it off the kiosk, or make it "
                            "root-owned with mode 0600)")
    return problems


class RemoteControl:
    """A link handler, plus the two worker threads that run commands."""

    def __init__(self, runtime: Runtime, store: RemoteStore) -> None:
        self.runtime = runtime
        #: Remembered nonces (replay protection) and the audit log.
        self.store = store
        self.operators, problems = load_operators(runtime.config.remote)
        for problem in problems:
            log.error("%s", problem)
            runtime.events.emit("operator_key_unusable", problem=problem)
        self._outbox: collections.deque[Reply] = collections.deque()
        self._quick: queue.Queue[tuple[Command, Reply] | None] = queue.Queue(QUICK_QUEUE)
        self._slow: queue.Queue[tuple[Command, Reply] | None] = queue.Queue(1)
        self._threads = [threading.Thread(target=self._work, args=(q,), name=f"remote-{n}", daemon=True)
                         for n, q in (("quick", self._quick), ("slow", self._slow))]
        self.replied = 0

    # --- life cycle ---------------------------------------------------------------------

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        for q in (self._quick, self._slow):
            q.put(None)
        for t in self._threads:
            t.join(timeout_s)

    @property
    def topics(self) -> Topics:
        return self.runtime.topics

    def _command_filter(self) -> str:
        return f"{self.topics.prefix}/{self.topics.kiosk_id}/commands/+"

    # --- link events (the link's thread) ------------------------------------------------

    def on_connected(self, link: MqttLink, limits: BrokerLimits) -> None:
        link.subscribe(self._command_filter(), qos=1)

    def on_disconnected(self, link: MqttLink) -> None:
        pass

    def on_puback(self, link: MqttLink, mid: int) -> None:
        pass

    def on_stopping(self, link: MqttLink) -> None:
        self.tick(link)

    def tick(self, link: MqttLink) -> bool:
        summary = None
        with log_and_continue(log, "cannot write the audit log"):
            summary = self.store.flush_refusals()
        if summary is not None:
            self._announce_refusals(summary)
        sent = False
        while self._outbox:
            reply = self._outbox[0]
            props = None
            if reply.correlation is not None and link.v5:
                props = Properties(PacketTypes.PUBLISH)
                props.CorrelationData = reply.correlation
            try:
                link.publish(reply.topic, reply.payload, qos=1, properties=props)
            except OSError as exc:
                log.warning("cannot publish a command reply now: %s", exc)
                break
            self._outbox.popleft()
            sent = True
        return sent

    def on_message(self, link: MqttLink, message: mqtt.MQTTMessage) -> None:
        prefix = f"{self.topics.prefix}/{self.topics.kiosk_id}/commands/"
        if not message.topic.startswith(prefix):
            return
        name = message.topic[len(prefix):]
        body: dict[str, Any] = {}
        reply = self._reply_address(message, body)
        #: Until the nonce is new, the sender is not established: a replayed or expired command
        #: carries a genuine signature but may come from anyone who saw it on the broker.
        fresh = False
        try:
            body = parse_unverified(message.payload)
            reply = self._reply_address(message, body)
            remote = self.runtime.config.remote
            command, operator = verify_command(
                body, kiosk_id=self.topics.kiosk_id, topic_name=name, operators=self.operators,
                skew_s=remote.clock_skew_s, max_ttl_s=remote.max_ttl_s)
            if not self.store.remember_nonce(command.nonce, command.expires_at + remote.clock_skew_s):
                raise CommandError("replayed", "this command was already received (same nonce); "
                                   "sign a new one", command.id)
            fresh = True
            spec = COMMANDS.get(command.name)
            if spec is None:
                raise CommandError("unknown_command", f"unknown command {command.name!r}; known: "
                                   f"{', '.join(sorted(COMMANDS))}", command.id)
            if not operator.may(spec.role):
                raise CommandError("forbidden", f"operator {operator.name} (roles "
                                   f"{', '.join(sorted(operator.roles))}) may not run {command.name}; "
                                   f"it needs the {spec.role} role", command.id)
            lane = self._slow if spec.lane == "slow" else self._quick
            try:
                lane.put_nowait((command, reply))
            except queue.Full:
                raise CommandError("busy", f"another {spec.lane} command is running; try again when "
                                   "it has answered", command.id) from None
        except CommandError as exc:
            if fresh:
                self._answer_error(reply, exc, body, name)
            else:
                self._answer_refusal(reply, exc, body, name)

    def _reply_address(self, message: mqtt.MQTTMessage, body: dict[str, Any]) -> Reply:
        default = f"{self.topics.prefix}/{self.topics.kiosk_id}/replies"
        props = getattr(message, "properties", None)
        topic = getattr(props, "ResponseTopic", None) if props is not None else None
        correlation = getattr(props, "CorrelationData", None) if props is not None else None
        if not isinstance(topic, str) or not self._allowed(topic):
            reply_to = body.get("reply_to")
            topic = reply_to if isinstance(reply_to, str) and self._allowed(reply_to) else default
        return Reply(topic, b"", bytes(correlation) if correlation is not None else None)

    def _allowed(self, topic: str) -> bool:
        if not topic or "+" in topic or "#" in topic or "\0" in topic or len(topic) > 512:
            return False
        replies = f"{self.topics.prefix}/{self.topics.kiosk_id}/replies"
        return (topic == replies or topic.startswith(replies + "/")
                or topic.startswith(f"{self.topics.prefix}/operators/"))

    # --- replies ------------------------------------------------------------------------

    def _answer_refusal(self, reply: Reply, exc: CommandError, body: dict[str, Any], name: str) -> None:
        """Refused before the sender was established: one reply as always, but only a small,
        rate-limited audit row (and log line and event), whatever the sender puts in it."""
        rid = exc.request_id or request_id_of(body)
        claimed = body.get("operator") if isinstance(body.get("operator"), str) else None
        entry = None
        with log_and_continue(log, "cannot write the audit log"):  # it must never stop a reply
            entry = self.store.refusal(request_id=rid, operator=claimed, command=name, code=exc.code,
                                       message=exc.message)
        if entry is not None:
            level = logging.WARNING if exc.code in ("unauthenticated", "replayed") else logging.INFO
            log.log(level, "command %s from %s refused: %s: %s", entry["command"], entry["operator"] or "?",
                    exc.code, entry["message"])
            self.runtime.events.emit("command", **{k: v for k, v in entry.items() if k != "at"})
        self._send(reply, {"v": 1, "id": rid, "ok": False, "command": name[:64],
                           "error": {"code": exc.code, "message": exc.message}})

    def _announce_refusals(self, summary: dict[str, Any]) -> None:
        log.warning("%s", summary["message"])
        self.runtime.events.emit("commands_refused", count=summary["count"], message=summary["message"])

    def _answer_error(self, reply: Reply, exc: CommandError, body: dict[str, Any], name: str) -> None:
        rid = exc.request_id or request_id_of(body)
        operator = body.get("operator") if isinstance(body.get("operator"), str) else None
        level = logging.WARNING if exc.code in ("unauthenticated", "forbidden", "replayed") else logging.INFO
        log.log(level, "command %s from %s refused: %s: %s", name[:64], (operator or "?")[:64], exc.code,
                exc.message)
        self._record(rid, operator, name[:64], body.get("args") if isinstance(body.get("args"), dict)
                     else None, "error", exc.code, exc.message)
        self._send(reply, {"v": 1, "id": rid, "ok": False, "command": name[:64],
                           "error": {"code": exc.code, "message": exc.message}})

    def _send(self, reply: Reply, body: dict[str, Any]) -> None:
        payload = json.dumps(body, default=str, separators=(",", ":")).encode()
        self._outbox.append(Reply(reply.topic, payload, reply.correlation))
        self.replied += 1

    def _record(self, rid: str | None, operator: str | None, command: str, args: dict[str, Any] | None,
                result: str, code: str | None = None, message: str | None = None) -> None:
        entry = None
        with log_and_continue(log, "cannot write the audit log"):  # it must never stop a reply
            entry = self.store.audit(request_id=rid, operator=operator, command=command, args=args,
                                     result=result, code=code, message=message)
        if entry is not None:
            self.runtime.events.emit("command", **{k: v for k, v in entry.items() if k != "at"})

    # --- workers ------------------------------------------------------------------------

    def _work(self, lane: queue.Queue[tuple[Command, Reply] | None]) -> None:
        while True:
            entry = lane.get()
            if entry is None:
                return
            command, reply = entry
            self._run(command, reply)

    def _run(self, command: Command, reply: Reply) -> None:
        spec = COMMANDS[command.name]
        started = time.monotonic()
        try:
            if self.runtime.reloading:
                raise CommandError("busy", "the agent is restarting its components; try again shortly")
            args = parse_args(spec, command.args)
            result = spec.run(self.runtime, args)
        except CommandError as exc:
            exc.request_id = command.id
            self._answer_error(reply, exc, {"operator": command.operator, "args": command.args}, command.name)
            return
        except Exception as exc:  # a bug in one command must not take the worker down
            log.exception("command %s failed", command.name)
            self._answer_error(reply, CommandError("failed", f"{type(exc).__name__}: {exc}", command.id),
                               {"operator": command.operator, "args": command.args}, command.name)
            return
        log.info("command %s from %s done in %.2f s", command.name, command.operator,
                 time.monotonic() - started)
        self._record(command.id, command.operator, command.name, command.args, "ok")
        self._send(reply, {"v": 1, "id": command.id, "ok": True, "command": command.name, "result": result})
