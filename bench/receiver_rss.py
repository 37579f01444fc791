"""Peak memory of the reference receiver for one large chunked capture.

    python -m bench.receiver_rss [--mib 200] [--chunk-kib 1024]

A private mosquitto, a receiver in its own process (so its VmHWM is its own), and one
sealed capture of ``--mib`` MiB sent as a chunk manifest and chunks by a plain client. The
receiver process reports its peak resident size (VmHWM) before the transfer and once the
capture is stored; the difference is what receiving the capture cost in memory.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.capture.ids import uuid7
from agent.capture.record import CaptureRecord, utc_now_iso
from agent.security.keys import load_encryption_public, load_signing_key, provision, public_path
from agent.security.sealing import Sealer
from agent.transport.chunking import chunk_of, make_manifest
from agent.transport.protocol import encode_capture
from devtools.broker import MosquittoBroker
from drivers import Modality

KIOSK = "bench-kiosk"

RECEIVER = """
import json, sys, time
from pathlib import Path
from receiver.config import ReceiverServiceConfig
from receiver.service import Receiver

def vm(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024

raw = json.loads(sys.argv[1])
try:
    config = ReceiverServiceConfig.model_validate({**raw, "mqtt": {**raw["mqtt"], "allow_plaintext": True}})
except Exception:  # a receiver without that setting
    config = ReceiverServiceConfig.model_validate(raw)
receiver = Receiver(config)
receiver.start()
while not receiver.link.connected:
    time.sleep(0.05)
print(json.dumps({"ready": True, "hwm": vm("VmHWM")}), flush=True)
out = Path(raw["receiver"]["output_dir"])
while not list(out.glob("*/*.json")):
    time.sleep(0.05)
print(json.dumps({"hwm": vm("VmHWM"), "rss": vm("VmRSS")}), flush=True)
receiver.stop()
"""


def sealed_capture(keys_dir: Path, mib: int) -> tuple[str, bytes, Sealer]:
    image = os.urandom(mib << 20)
    record = CaptureRecord(
        id=uuid7(), kiosk_id=KIOSK, site="bench", operator_id=None, device_id="camera", driver="bench",
        device_serial="", modality=Modality.FACE, position=0, captured_at=utc_now_iso(), image_format="png",
        width=1, height=1, ppi=0, image_sha256=hashlib.sha256(image).hexdigest(), quality=None, image=image,
        seq=1)
    sealer = Sealer(load_signing_key(keys_dir / "kiosk.key"),
                    load_encryption_public(public_path(keys_dir / "central.key")))
    return record.id, sealer.seal(item_id=record.id, kiosk_id=KIOSK, seq=1, kind="capture",
                                  inner=encode_capture(record)), sealer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=200)
    parser.add_argument("--chunk-kib", type=int, default=1024)
    opts = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="receiver-rss-"))
    provision(work / "keys", KIOSK)
    item_id, payload, sealer = sealed_capture(work / "keys", opts.mib)
    manifest = make_manifest(item_id, KIOSK, 1, "capture", payload, opts.chunk_kib << 10)
    broker = MosquittoBroker()
    broker.start()
    raw = {"mqtt": {"host": "127.0.0.1", "port": broker.port},
           "receiver": {"output_dir": str(work / "out"), "name": "bench",
                        "central_private_key": str(work / "keys" / "central.key"),
                        "kiosk_keys_dir": str(work / "keys" / "kiosks")}}
    child = subprocess.Popen([sys.executable, "-c", RECEIVER, json.dumps(raw)], stdout=subprocess.PIPE,
                             text=True, cwd=os.getcwd())
    answered = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(64)
    client.on_message = lambda c, u, m: answered.set()
    try:
        before = json.loads(child.stdout.readline())  # type: ignore[union-attr]
        client.connect("127.0.0.1", broker.port)
        client.subscribe(f"kiosk/{KIOSK}/chunk-status", qos=1)
        client.loop_start()
        started = time.monotonic()
        client.publish(f"kiosk/{KIOSK}/chunks", manifest.encode(sealer), qos=1)
        if not answered.wait(30):
            raise SystemExit("the receiver did not answer the manifest")
        for index in range(manifest.count):
            client.publish(f"kiosk/{KIOSK}/chunks", chunk_of(manifest, payload, index).encode(),
                           qos=1).wait_for_publish(30)
        after = json.loads(child.stdout.readline())  # type: ignore[union-attr]
        elapsed = time.monotonic() - started
    finally:
        client.loop_stop()
        client.disconnect()
        child.wait(30)
        broker.close()
    mib = 1 << 20
    print(f"{opts.mib} MiB capture in {manifest.count} chunks of {opts.chunk_kib} KiB, stored in "
          f"{elapsed:.1f} s: receiver peak RSS {before['hwm'] / mib:.0f} MiB before, "
          f"{after['hwm'] / mib:.0f} MiB after (+{(after['hwm'] - before['hwm']) / mib:.0f} MiB)")


if __name__ == "__main__":
    main()
