"""The raw baseline's far end: a plain paho-mqtt subscriber in its own process.

It subscribes at QoS 1 (MQTT 5, library defaults, ``loop_start``), counts what arrives and,
with ``--echo``, answers each message at QoS 1 on the sibling ``receipts`` topic with the
message's first 8 bytes (the raw counterpart of a receipt). It does nothing else: no
decryption, no storage. On stdout: ``ready`` once subscribed, then ``count N T`` lines (messages
so far, monotonic time of the latest). Stops on SIGTERM.

    python -m bench.raw_peer --port 1883 --filter '$share/raw/kiosk/+/captures' [--echo]
"""

from __future__ import annotations

import argparse
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
    client.connect(args.host, args.port)
    client.loop_start()
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
    client.disconnect()
    client.loop_stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
