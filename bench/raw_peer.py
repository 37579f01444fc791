"""The raw baseline's far end: a plain paho-mqtt subscriber in its own process.

It subscribes at QoS 1 (MQTT 5, library defaults, ``loop_start``), counts what arrives and,
with ``--echo``, answers each message at QoS 1 on the sibling ``receipts`` topic with the
message's first 8 bytes (the raw counterpart of a receipt). It does nothing else: no
decryption, no storage. On stdout: ``ready`` once subscribed, then ``count N T`` lines (messages
so far, monotonic time of the latest). Stops on SIGTERM.

With ``--store DSN`` it is the raw counterpart of a receiver on the PostgreSQL store
(bench/central_ingest.py): on one thread running paho's loop, as the receiver does, it
gathers messages for ``--window-ms`` (at most ``--batch`` of them), inserts them with one
psycopg ``executemany`` into ``raw_captures`` (kiosk from the topic, SHA-256 of the payload,
the payload as bytea; the table exists beforehand), commits, and only then sends each
message's 8-byte answer. No decryption, no signatures, no per-capture metadata.

    python -m bench.raw_peer --port 1883 --filter '$share/raw/kiosk/+/captures' [--echo]
    python -m bench.raw_peer --port 1883 --filter '$share/raw/rawingest/+/captures' --store DSN
"""

from __future__ import annotations

import argparse
import hashlib
import signal
import sys
import threading
import time
from types import FrameType

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

#: How often progress is reported; the time reported is the message's own, not the report's.
REPORT_S = 0.02


class Peer:
    def __init__(self, echo: bool) -> None:
        self.echo = echo
        self.changed = threading.Condition()
        self.count = 0
        self.last = 0.0

    def on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        now = time.monotonic()
        with self.changed:
            self.count += 1
            self.last = now
            self.changed.notify()
        if self.echo:
            reply = message.topic.rsplit("/", 1)[0] + "/receipts"
            client.publish(reply, message.payload[:8], qos=1)


class StoringPeer:
    """Batched inserts, answers after COMMIT; everything on the caller's (paho loop) thread."""

    INSERT = ("INSERT INTO raw_captures (kiosk_id, digest, payload) VALUES (%s, %s, %s)"
              " ON CONFLICT (kiosk_id, digest) DO NOTHING")

    def __init__(self, dsn: str, window_s: float, batch: int, peer: Peer) -> None:
        import psycopg  # the `central` extra, as for the receiver's store

        self.conn = psycopg.connect(dsn)
        self.window_s = window_s
        self.batch = batch
        self.peer = peer
        self.rows: list[tuple[str, bytes, bytes]] = []
        self.answers: list[tuple[str, bytes]] = []
        self.opened_at = 0.0

    def on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        if not self.rows:
            self.opened_at = time.monotonic()
        payload = bytes(message.payload)
        kiosk = message.topic.split("/")[1]
        self.rows.append((kiosk, hashlib.sha256(payload).digest(), payload))
        self.answers.append((message.topic.rsplit("/", 1)[0] + "/receipts", payload[:8]))
        if len(self.rows) >= self.batch:
            self.flush(client)

    def due(self) -> bool:
        return bool(self.rows) and time.monotonic() - self.opened_at >= self.window_s

    def flush(self, client: mqtt.Client) -> None:
        rows, self.rows = self.rows, []
        answers, self.answers = self.answers, []
        with self.conn.cursor() as cur:
            cur.executemany(self.INSERT, rows)
        self.conn.commit()
        for topic, answer in answers:
            client.publish(topic, answer, qos=1)
        with self.peer.changed:
            self.peer.count += len(rows)
            self.peer.last = time.monotonic()
            self.peer.changed.notify()


def say(line: str, lock: threading.Lock) -> None:
    with lock:  # the paho thread and the main thread both write
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--filter", required=True, help="topic filter to subscribe to at QoS 1")
    parser.add_argument("--client-id", default="raw-peer")
    parser.add_argument("--echo", action="store_true", help="answer each message on .../receipts")
    parser.add_argument("--store", help="PostgreSQL DSN: insert in batches, answer after COMMIT")
    parser.add_argument("--window-ms", type=float, default=5.0, help="batch window (--store)")
    parser.add_argument("--batch", type=int, default=256, help="messages per batch at most (--store)")
    args = parser.parse_args(argv)

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    out_lock = threading.Lock()
    peer = Peer(args.echo)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=args.client_id, protocol=mqtt.MQTTv5)
    client.on_connect = lambda c, u, f, rc, p: c.subscribe(args.filter, qos=1)
    client.on_subscribe = lambda *a: say("ready", out_lock)
    client.on_message = peer.on_message
    if args.store:
        # Max inflight as the receiver sets it: a committed batch's answers leave at once.
        client.max_inflight_messages_set(min(1000, args.batch))
        storing = StoringPeer(args.store, args.window_ms / 1000, args.batch, peer)
        client.on_message = storing.on_message
        client.connect(args.host, args.port)
        threading.Thread(target=report_loop, args=(peer, stop, out_lock), daemon=True).start()
        while not stop.is_set():
            client.loop(timeout=0.0 if storing.rows else 0.05)
            if storing.due():
                storing.flush(client)
        client.disconnect()
        storing.conn.close()
        return 0
    client.connect(args.host, args.port)
    client.loop_start()
    report_loop(peer, stop, out_lock)
    client.disconnect()
    client.loop_stop()
    return 0


def report_loop(peer: Peer, stop: threading.Event, out_lock: threading.Lock) -> None:
    reported = 0
    while not stop.is_set():
        # Sleeps while idle (its idle footprint is a reference); at most one report per REPORT_S.
        with peer.changed:
            if peer.count == reported:
                peer.changed.wait(timeout=0.5)
            count, last = peer.count, peer.last
        if count != reported:
            say(f"count {count} {last!r}", out_lock)
            reported = count
            time.sleep(REPORT_S)


if __name__ == "__main__":
    sys.exit(main())
