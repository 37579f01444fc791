"""Durable commit: captures committed per second, the agent against raw sqlite3.

Agent: the real capture path, one capture at a time and each waited for (as the continuous
capture loop does): CaptureService hands the job to the device's thread, the fixed-image
device returns a 100 KB image, then record (SHA-256, UUIDv7), capture envelope, sealing
(Ed25519 signature, X25519 + HKDF + AES-256-GCM) and DurableQueue.put (quota and free-disk
checks; the payload wrapped under a fresh key of its own, AES-256-GCM, for erasure by
crypto-shredding; one transaction: the payload row, the small row with the key, the running
totals; WAL with synchronous=FULL).

Raw: sqlite3 in WAL mode with synchronous=FULL, in the same folder, inserting the same
number of sealed 100 KB captures (the same bytes the agent commits) as one row per
transaction. It runs before and after the agent; the faster run is the baseline.

Same work: the raw libraries doing what the agent must do for each capture, without its
threads, records or queue bookkeeping: hashlib's SHA-256 of the image, json of a header,
``cryptography``'s X25519 (a fresh key and the exchange), HKDF, AES-256-GCM of the image,
SHA-256 of the ciphertext, an Ed25519 signature of a ~300-byte header, AES-256-GCM again
under a fresh random key (crypto-shredding), then sqlite3 (WAL, synchronous=FULL) inserting
the wrapped payload and its key in one transaction. ``commit_ratio_vs_same_work`` shows the
agent's own overhead; ``commit_ratio_vs_sqlite`` the whole price of sealing and erasability.

The agent's queue is kept: it is the backlog the drain and start-up benchmarks use.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from bench.common import (
    KIOSK_ID,
    BenchError,
    ImagePool,
    Sizes,
    Workspace,
    capture_service,
    ms,
    open_queue,
    percentile,
    ratio,
    seal_capture,
)


@dataclass
class CommitRun:
    count: int
    seconds: float
    latencies: list[float]

    @property
    def per_s(self) -> float:
        return self.count / self.seconds

    def summary(self) -> dict[str, float]:
        return {"per_s": round(self.per_s, 1), "p50_ms": ms(percentile(self.latencies, 50)),
                "p99_ms": ms(percentile(self.latencies, 99)),
                "max_ms": ms(max(self.latencies)), "mean_ms": ms(self.seconds / self.count)}


def agent_commits(ws: Workspace, pool: ImagePool, db_path: Path, count: int) -> CommitRun:
    config = ws.agent_config(port=1883, queue_path=db_path)  # no broker: nothing is sent
    queue = open_queue(config)
    try:
        with capture_service(config, queue, ws.sealer(), pool) as service:
            latencies = []
            started = time.perf_counter()
            for i in range(count):
                t = time.perf_counter()
                service.capture("bench", position=1 + i % 10).result(timeout=60)
                latencies.append(time.perf_counter() - t)
            seconds = time.perf_counter() - started
        items, _ = queue.totals()
    finally:
        queue.close()
    if items != count:
        raise BenchError(f"the agent's queue holds {items} captures, expected {count}")
    return CommitRun(count, seconds, latencies)


def raw_commits(db_path: Path, payloads: list[bytes], count: int) -> CommitRun:
    db = sqlite3.connect(db_path, isolation_level=None)  # autocommit: one transaction per INSERT
    try:
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            raise BenchError(f"{db_path}: SQLite refused WAL mode ({mode})")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE blobs (seq INTEGER PRIMARY KEY, payload BLOB NOT NULL)")
        latencies = []
        source = itertools.cycle(payloads)
        started = time.perf_counter()
        for _ in range(count):
            payload = next(source)
            t = time.perf_counter()
            db.execute("INSERT INTO blobs (payload) VALUES (?)", (payload,))
            latencies.append(time.perf_counter() - t)
        seconds = time.perf_counter() - started
    finally:
        db.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db_path}{suffix}").unlink(missing_ok=True)
    return CommitRun(count, seconds, latencies)


def same_work_commits(db_path: Path, images: list[bytes], count: int, signing_key: Ed25519PrivateKey,
                      recipient: X25519PublicKey) -> CommitRun:
    """The agent's per-capture work done with the raw libraries, one transaction per capture."""
    db = sqlite3.connect(db_path, isolation_level=None)
    try:
        if db.execute("PRAGMA journal_mode=WAL").fetchone()[0] != "wal":
            raise BenchError(f"{db_path}: SQLite refused WAL mode")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE items (seq INTEGER PRIMARY KEY, key BLOB NOT NULL)")
        db.execute("CREATE TABLE blobs (seq INTEGER PRIMARY KEY, payload BLOB NOT NULL)")
        latencies = []
        source = itertools.cycle(images)
        started = time.perf_counter()
        for seq in range(1, count + 1):
            image = next(source)
            t = time.perf_counter()
            header = json.dumps({"seq": seq, "sha256": hashlib.sha256(image).hexdigest(),
                                 "kiosk_id": KIOSK_ID, "position": 1}).encode()
            ephemeral = X25519PrivateKey.generate()
            shared = ephemeral.exchange(recipient)
            key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                       info=b"bench" + ephemeral.public_key().public_bytes_raw()).derive(shared)
            nonce = os.urandom(12)
            ciphertext = AESGCM(key).encrypt(nonce, header + image, header)
            outer = json.dumps({"seq": seq, "nonce": base64.b64encode(nonce).decode(),
                                "sha256": hashlib.sha256(nonce + ciphertext).hexdigest()}).encode()
            sealed = outer + signing_key.sign(outer) + ciphertext
            erase_key = os.urandom(32)
            wrapped = AESGCM(erase_key).encrypt(bytes(12), sealed, None)
            db.execute("BEGIN")
            db.execute("INSERT INTO items (seq, key) VALUES (?, ?)", (seq, erase_key))
            db.execute("INSERT INTO blobs (seq, payload) VALUES (?, ?)", (seq, wrapped))
            db.execute("COMMIT")
            latencies.append(time.perf_counter() - t)
        seconds = time.perf_counter() - started
    finally:
        db.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db_path}{suffix}").unlink(missing_ok=True)
    return CommitRun(count, seconds, latencies)


def run(ws: Workspace, sizes: Sizes) -> tuple[dict[str, Any], Path]:
    """Returns the figures and the agent's queue (a backlog of ``sizes.backlog`` captures)."""
    pool = ImagePool()
    # The agent seals each image afresh; the raw side inserts the same kind of sealed bytes.
    payloads = [seal_capture(ws.sealer(), KIOSK_ID, seq, image)[1]
                for seq, image in enumerate(pool.images, 1)]
    raw_dir = ws.fresh_dir("raw-sqlite")
    def same_work() -> CommitRun:
        return same_work_commits(raw_dir / "same.db", pool.images, sizes.backlog, ws.signing_key,
                                 ws.central_public)

    def settled(run: Callable[[], CommitRun]) -> CommitRun:
        # Each run writes ~200 MB: the next one's fsyncs must not queue behind its write-back
        # (unsynced, the two same-work runs of one make bench gave 751 and 928 captures/s).
        os.sync()
        return run()

    backlog = ws.fresh_dir("backlog") / "queue.db"
    raw_before = settled(lambda: raw_commits(raw_dir / "raw.db", payloads, sizes.backlog))
    same_before = settled(same_work)
    agent = settled(lambda: agent_commits(ws, pool, backlog, sizes.backlog))
    same_after = settled(same_work)
    raw_after = settled(lambda: raw_commits(raw_dir / "raw.db", payloads, sizes.backlog))
    raw = max(raw_before, raw_after, key=lambda r: r.per_s)
    same = max(same_before, same_after, key=lambda r: r.per_s)
    figures = {
        "commit_ratio_vs_sqlite": ratio(agent.per_s, raw.per_s),
        "commit_ratio_vs_same_work": ratio(agent.per_s, same.per_s),
        "commit_p50_ms": ms(percentile(agent.latencies, 50)),
        "commit_p99_ms": ms(percentile(agent.latencies, 99)),
        "commit": {
            "count": sizes.backlog,
            "payload_bytes": len(payloads[0]),
            "agent": agent.summary(),
            "raw_sqlite": raw.summary(),
            "raw_runs_per_s": [round(raw_before.per_s, 1), round(raw_after.per_s, 1)],
            "same_work": same.summary(),
            "same_work_runs_per_s": [round(same_before.per_s, 1), round(same_after.per_s, 1)],
        },
    }
    return figures, backlog
