"""A receiver SIGKILLed mid-stream loses nothing it receipted: every capture the kiosk side
saw a ``stored`` or ``duplicate`` receipt for is a row in PostgreSQL. The same run against
a receiver that receipts before COMMIT must find a loss, or this test proves nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg

from devtools.broker import MosquittoBroker
from tests.support.config import agent_config, receiver_config
from tests.support.hostile import KIOSK_A, Wire, record, sealed_capture, sealers
from tests.support.paths import ROOT

#: A long window (and no count limit) keeps a batch open all the time: the first opens with
#: the first capture and commits a second later; the kill comes half way through the next.
WINDOW_MS = 1000.0


def start_receiver(tmp_path: Path, port: int, dsn: str, *extra: str) -> subprocess.Popen[str]:
    config = receiver_config(tmp_path / "out", agent_config(tmp_path, port))
    config = config.model_copy(update={"receiver": config.receiver.model_copy(
        update={"store": dsn, "group_commit_ms": WINDOW_MS, "group_commit_max": 10000})})
    path = tmp_path / "receiver.json"
    path.write_text(json.dumps(config.model_dump(mode="json")))
    proc = subprocess.Popen([sys.executable, "-m", "tests.central.receiver_process", str(path), *extra],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def run_and_kill(tmp_path: Path, broker: MosquittoBroker, dsn: str, *extra: str) -> tuple[set[str], set[str]]:
    """(ids receipted as kept, ids in the database) after a SIGKILL in the middle of a stream."""
    kiosk = sealers(tmp_path)[KIOSK_A]
    wire = Wire(broker.port)
    proc = start_receiver(tmp_path, broker.port, dsn, *extra)
    try:
        started = time.monotonic()
        # A steady stream, a few hundred a second (no flood: receipts keep pace).
        while time.monotonic() - started < 1.5 * WINDOW_MS / 1000:
            wire.publish(KIOSK_A, "captures", sealed_capture(kiosk, record(KIOSK_A, image=os.urandom(800))))
            time.sleep(0.002)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        time.sleep(0.5)  # receipts already on their way to the test client
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        assert proc.stdout is not None
        proc.stdout.close()
        wire.close()
    kept = {r["id"] for _, r in wire.receipts if r["status"] in ("stored", "duplicate")}
    with psycopg.connect(dsn) as conn:
        rows = {cid for (cid,) in conn.execute("SELECT capture_id FROM captures").fetchall()}
    assert kept, "the receiver receipted nothing before it was killed: the test saw no stream"
    return kept, rows


def test_a_killed_receiver_lost_nothing_it_receipted(tmp_path: Path, broker: MosquittoBroker,
                                                     pg_dsn: str) -> None:
    kept, rows = run_and_kill(tmp_path, broker, pg_dsn)
    assert kept - rows == set(), f"{len(kept - rows)} receipted capture(s) lost"
    print(f"\nkill test: {len(kept)} receipted, {len(rows)} rows")


def test_the_kill_test_catches_receipts_sent_before_commit(tmp_path: Path, broker: MosquittoBroker,
                                                           pg_dsn: str) -> None:
    kept, rows = run_and_kill(tmp_path, broker, pg_dsn, "--receipts-before-commit")
    print(f"\nbroken receiver: {len(kept)} receipted, {len(rows)} rows, {len(kept - rows)} lost")
    assert kept - rows, "receipts sent before COMMIT and a kill inside the batch must show a loss"
