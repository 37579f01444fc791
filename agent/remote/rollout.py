"""``kiosk-agent remote rollout``: an update to many kiosks, a batch at a time.

Each kiosk of a batch gets a signed ``update.apply`` (the bundle's URL and pinned SHA-256);
its reply says whether it took the bundle, and its outcome comes later, once its updater has
committed or rolled back: an ``update_result`` event on its events topic, or (when the event
was missed) a new ``update`` entry in its retained telemetry. A kiosk that refuses, rolls
back, or says nothing within ``--timeout`` counts as a failure; when failures pass
``--max-failures`` no further batch is sent (as rollout groups do in fleet update systems).

Replies, events and telemetry are any broker client's word (they are not signed): shown
through ``printable`` and only counted, never acted on beyond stopping the rollout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt

from agent.remote.output import printable
from agent.transport.mqtt_link import BrokerLimits, MqttLink

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
#: How long retained statuses are gathered for --all-online.
DISCOVERY_S = 1.5
DONE = ("committed", "rolled_back", "refused", "no_reply", "timeout")


@dataclass
class Target:
    kiosk_id: str
    state: str = "waiting"  # waiting, sent, accepted, then one of DONE
    detail: str = ""
    request_id: str = ""
    #: The outcome id in the kiosk's retained telemetry before we asked: not this update's.
    baseline: str | None = None
    sent_at: float = 0.0
    version: str | None = None
    changes: list[str] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.state in DONE

    @property
    def ok(self) -> bool:
        return self.state == "committed"


class Rollout:
    """A link handler: the link's thread sends, receives and records; the caller's thread waits."""

    def __init__(self, prefix: str, reply_topic: str) -> None:
        self.prefix, self.reply_topic = prefix, reply_topic
        self.lock = threading.Condition()
        self.targets: dict[str, Target] = {}
        self.online: dict[str, str] = {}  # kiosk -> retained status state
        self.telemetry: dict[str, str | None] = {}  # kiosk -> last update outcome id
        self.outbox: list[tuple[str, bytes]] = []
        self.connected = threading.Event()

    # --- link events (the link's thread) ------------------------------------------------

    def on_connected(self, link: MqttLink, limits: BrokerLimits) -> None:
        for leaf in ("status", "telemetry", "events"):
            link.subscribe(f"{self.prefix}/+/{leaf}", qos=1)
        link.subscribe(self.reply_topic, qos=1)
        self.connected.set()

    def tick(self, link: MqttLink) -> bool:
        with self.lock:
            batch, self.outbox = self.outbox, []
        for topic, payload in batch:
            link.publish(topic, payload, qos=1)
        return bool(batch)

    def on_message(self, link: MqttLink, message: mqtt.MQTTMessage) -> None:
        try:
            body = json.loads(message.payload)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return
        if not isinstance(body, dict):
            return
        with self.lock:
            if message.topic == self.reply_topic:
                self._reply(body)
            else:
                parts = message.topic.split("/")
                if len(parts) >= 3:
                    self._kiosk_message(parts[-2], parts[-1], body)
            self.lock.notify_all()

    def on_disconnected(self, link: MqttLink) -> None: ...
    def on_puback(self, link: MqttLink, mid: int) -> None: ...
    def on_stopping(self, link: MqttLink) -> None: ...

    def _reply(self, body: dict[str, Any]) -> None:
        rid = body.get("id")
        target = next((t for t in self.targets.values() if t.request_id and t.request_id == rid), None)
        if target is None or target.state != "sent":
            return
        if body.get("ok"):
            self._move(target, "accepted", "bundle fetched and handed to the updater")
        else:
            err = body.get("error") if isinstance(body.get("error"), dict) else {}
            self._move(target, "refused", f"{err.get('code')}: {err.get('message')}")

    def _kiosk_message(self, kiosk: str, leaf: str, body: dict[str, Any]) -> None:
        target = self.targets.get(kiosk)
        if leaf == "status":
            self.online[kiosk] = str(body.get("state"))
            return
        if leaf == "telemetry":
            update = body.get("update") if isinstance(body.get("update"), dict) else {}
            oid = update.get("id") if isinstance(update.get("id"), str) else None
            if target is None or target.state not in ("sent", "accepted"):
                self.telemetry[kiosk] = oid
            elif oid is not None and oid != target.baseline:
                self._outcome(target, update)
            return
        if leaf == "events" and body.get("event") == "update_result" and target is not None \
                and target.state in ("sent", "accepted"):
            self._outcome(target, body)

    def _outcome(self, target: Target, body: dict[str, Any]) -> None:
        outcome = body.get("outcome")
        version = body.get("version")
        target.version = version if isinstance(version, str) else None
        if outcome not in ("committed", "rolled_back", "refused"):
            return
        self._move(target, outcome, str(body.get("reason") or ""))

    def _move(self, target: Target, state: str, detail: str) -> None:
        target.state, target.detail = state, detail[:300]
        target.changes.append(state)

    # --- the caller's thread ----------------------------------------------------------------

    def send(self, target: Target, topic: str, payload: bytes, request_id: str) -> None:
        with self.lock:
            target.baseline = self.telemetry.get(target.kiosk_id)
            target.request_id, target.sent_at = request_id, time.monotonic()
            self._move(target, "sent", "update.apply sent")
            self.outbox.append((topic, payload))


def batches(kiosks: list[str], size: int) -> list[list[str]]:
    return [kiosks[i:i + size] for i in range(0, len(kiosks), size)]


class Progress:
    """Prints each kiosk's changes as they happen: a line for people, or JSON lines."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.shown: dict[str, int] = {}

    def show(self, targets: list[Target]) -> None:
        for t in targets:
            for state in t.changes[self.shown.get(t.kiosk_id, 0):]:
                self.line({"kiosk": t.kiosk_id, "state": state, "version": t.version, "detail": t.detail})
            self.shown[t.kiosk_id] = len(t.changes)

    def line(self, record: dict[str, Any]) -> None:
        if self.as_json:
            print(json.dumps(record), flush=True)
        elif "kiosk" in record:
            version = f" {record['version']}" if record.get("version") else ""
            print(printable(f"{record['kiosk']:<20} {record['state']:<12}{version}  {record['detail']}"),
                  flush=True)
        else:
            print(printable(record["message"]), flush=True)


def run_rollout(config: Any, args: argparse.Namespace) -> int:
    """``kiosk-agent remote rollout URL --sha256 H (--kiosks A,B | --all-online) ...``."""
    from agent.remote.auth import sign_command
    from agent.security.keys import KeyFileError, load_signing_key

    url = args.command_name
    if not url or not args.sha256 or not (args.kiosks or args.all_online) or args.args:
        print("error: remote rollout BUNDLE_URL --sha256 HEX (--kiosks K1,K2,... | --all-online)",
              file=sys.stderr)
        return EXIT_USAGE
    if args.batch < 1 or args.max_failures < 0:
        print("error: --batch must be 1 or more and --max-failures 0 or more", file=sys.stderr)
        return EXIT_USAGE
    try:
        key = load_signing_key(config.operator.key, "operator.key")
    except KeyFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    prefix = config.mqtt.topic_prefix
    rollout = Rollout(prefix, f"{prefix}/operators/{config.operator.name}/{os.urandom(6).hex()}")
    link = MqttLink(config.mqtt, rollout, client_id=f"kiosk-operator-{os.urandom(4).hex()}", name="rollout")
    progress = Progress(args.json)
    link.start()
    try:
        if not rollout.connected.wait(args.timeout):
            print(f"error: cannot reach broker {config.mqtt.host}:{config.mqtt.port}", file=sys.stderr)
            return EXIT_FAILED
        time.sleep(DISCOVERY_S)  # retained statuses and telemetry: who is online, the last outcomes
        with rollout.lock:
            kiosks = ([k for k in (s.strip() for s in args.kiosks.split(",")) if k] if args.kiosks else
                      sorted(k for k, state in rollout.online.items() if state == "online"))
            rollout.targets = {k: Target(k) for k in kiosks}
        if not kiosks:
            print("error: no kiosks to update", file=sys.stderr)
            return EXIT_FAILED
        failures = 0
        for number, batch in enumerate(batches(kiosks, args.batch), 1):
            progress.line({"message": f"batch {number}: {', '.join(batch)}", "batch": number,
                           "kiosks": batch})
            for kiosk in batch:
                payload = sign_command(key, operator=config.operator.name, kiosk=kiosk, name="update.apply",
                                       args={"url": url, "sha256": args.sha256}, ttl_s=config.operator.ttl_s,
                                       reply_to=rollout.reply_topic)
                rollout.send(rollout.targets[kiosk], f"{prefix}/{kiosk}/commands/update.apply", payload,
                             json.loads(payload)["id"])
            failures += _wait_batch(rollout, [rollout.targets[k] for k in batch], args.timeout, progress)
            if failures > args.max_failures:
                progress.line({"message": f"stopped: {failures} failures, more than --max-failures "
                                          f"{args.max_failures}", "stopped": True})
                break
    finally:
        link.stop()
    targets = list(rollout.targets.values())
    done = sum(t.ok for t in targets)
    summary = {"message": f"{done} of {len(targets)} kiosks updated, {failures} failed, "
                          f"{sum(t.state == 'waiting' for t in targets)} not attempted",
               "updated": done, "failed": failures, "kiosks": len(targets)}
    progress.line(summary)
    return EXIT_OK if done == len(targets) else EXIT_FAILED


def _wait_batch(rollout: Rollout, batch: list[Target], timeout_s: float, progress: Progress) -> int:
    """Waits for every kiosk of the batch to finish (or time out); the number that failed."""
    with rollout.lock:
        while True:
            now = time.monotonic()
            for t in batch:
                if not t.done and now - t.sent_at > timeout_s:
                    rollout._move(t, "no_reply" if t.state == "sent" else "timeout",
                                  f"nothing within {timeout_s:.0f} s")
            progress.show(batch)
            if all(t.done for t in batch):
                return sum(not t.ok for t in batch)
            rollout.lock.wait(0.5)
