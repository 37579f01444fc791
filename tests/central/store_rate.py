"""Captures stored and receipted per second by one receiver, file store vs PostgreSQL store.

    .venv/bin/python -m tests.central.store_rate [COUNT] [IMAGE_BYTES]

One in-process receiver on a private mosquitto, one plain client publishing COUNT sealed
captures as fast as the broker takes them (QoS 1); the clock runs from the first publish to
the last receipt. COUNT stays under 1,000: the test broker keeps mosquitto's default
max_queued_messages, and a flood beyond it is dropped (docs/deployment.md, broker settings).
Figures for docs/performance.md until bench/ takes this over.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from devtools.broker import MosquittoBroker
from tests.support.hostile import KIOSK_A, PREFIX, record, rig, sealed_capture
from tests.support.postgres import scratch_database
from tests.support.waiting import wait_until


def rate(broker: MosquittoBroker, tmp: Path, count: int, size: int, **settings: object) -> float:
    with rig(tmp, broker, **settings) as r:
        payloads = [sealed_capture(r.sealers[KIOSK_A], record(KIOSK_A, image=os.urandom(size)))
                    for _ in range(count)]
        started = time.perf_counter()
        for payload in payloads:
            r.wire.client.publish(f"{PREFIX}/{KIOSK_A}/captures", payload, qos=1)
        wait_until(lambda: len(r.wire.receipts) >= count, timeout_s=120, interval_s=0.01, what="receipts")
        elapsed = time.perf_counter() - started
        assert all(x["status"] == "stored" for _, x in r.wire.receipts)
        return count / elapsed


def main() -> None:
    count = min(900, int(sys.argv[1]) if len(sys.argv) > 1 else 800)
    size = int(sys.argv[2]) if len(sys.argv) > 2 else 20_000
    broker = MosquittoBroker()
    broker.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            files = rate(broker, Path(tmp) / "files", count, size)
        with tempfile.TemporaryDirectory() as tmp, scratch_database() as dsn:
            postgres = rate(broker, Path(tmp) / "pg", count, size, store=dsn)
    finally:
        broker.stop()
    print(f"{count} captures of {size} bytes: file store {files:.0f}/s, PostgreSQL store {postgres:.0f}/s")


if __name__ == "__main__":
    main()
