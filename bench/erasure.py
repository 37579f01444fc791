"""Erasure options, per capture (alone; not a step of make bench): the time and the bytes
written (``write()`` calls: WAL and checkpoint) to put N captures of 100,860 bytes and delete
them, WAL mode with synchronous=FULL, a checkpoint and truncate at the end; each option three
times, the range printed. docs/performance.md ("Erasure: what it costs") has one run's table.

Options: raw sqlite3 with secure_delete ON (one DELETE per transaction, as the persisting drain
baseline, and 16 per transaction), OFF and FAST (which erase nothing, resp. leave freed overflow
pages), the queue of schema 1 (read from git: commit SCHEMA_1_COMMIT, secure_delete) and the
current queue (crypto-shredding), 1 and 16 acknowledgements per transaction.

    .venv/bin/python -m bench.erasure [N] [RUNS]
"""

from __future__ import annotations

import importlib.util
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from agent.transport import durable_queue
from bench.common import REPO

#: The last commit with the schema-1 queue.
SCHEMA_1_COMMIT = "7d87da2"
SIZE = 100_860


def schema_1_queue(scratch: Path) -> ModuleType:
    source = subprocess.run(["git", "show", f"{SCHEMA_1_COMMIT}:agent/transport/durable_queue.py"],
                            cwd=REPO, capture_output=True, text=True, check=True).stdout
    path = scratch / "durable_queue_v1.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("durable_queue_v1", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["durable_queue_v1"] = module
    spec.loader.exec_module(module)
    return module


def written() -> int:
    with open("/proc/self/io") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("wchar:"))


def remove(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", ".reserve"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def raw(path: Path, payloads: list[bytes], n: int, mode: str, batch: int) -> tuple[float, int, float, int]:
    remove(path)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute(f"PRAGMA secure_delete={mode}")
    db.execute("CREATE TABLE t (seq INTEGER PRIMARY KEY, payload BLOB)")
    w, t = written(), time.perf_counter()
    for i in range(n):
        db.execute("INSERT INTO t VALUES (?, ?)", (i + 1, payloads[i % len(payloads)]))
    put = (time.perf_counter() - t, written() - w)
    w, t = written(), time.perf_counter()
    for start in range(1, n + 1, batch):
        db.execute("BEGIN")
        for seq in range(start, min(n + 1, start + batch)):
            db.execute("DELETE FROM t WHERE seq = ?", (seq,))
        db.execute("COMMIT")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    delete = (time.perf_counter() - t, written() - w)
    db.close()
    remove(path)
    return put[0], put[1], delete[0], delete[1]


def queue(path: Path, payloads: list[bytes], n: int, module: ModuleType,
          batch: int) -> tuple[float, int, float, int]:
    remove(path)
    q = module.DurableQueue(path, max_bytes=1 << 40, min_free_bytes=0, erase_interval_s=3600)
    w, t = written(), time.perf_counter()
    for i in range(n):
        q.put(f"id-{i}", "capture", lambda seq, i=i: payloads[i % len(payloads)])
    put = (time.perf_counter() - t, written() - w)
    w, t = written(), time.perf_counter()
    for start in range(0, n, batch):
        q.ack([f"id-{i}" for i in range(start, min(n, start + batch))])
    q.erase_if_due(force=True)
    delete = (time.perf_counter() - t, written() - w)
    q.close()
    remove(path)
    return put[0], put[1], delete[0], delete[1]


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 400
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    payloads = [os.urandom(SIZE) for _ in range(16)]
    with tempfile.TemporaryDirectory(prefix="kiosk-erasure-") as tmp:
        scratch = Path(tmp)
        v1, db = schema_1_queue(scratch), scratch / "e.db"
        cases: list[tuple[str, Callable[[], tuple[float, int, float, int]]]] = [
            ("raw, secure_delete=ON, 1 per transaction", lambda: raw(db, payloads, n, "ON", 1)),
            ("raw, secure_delete=ON, 16 per transaction", lambda: raw(db, payloads, n, "ON", 16)),
            ("raw, secure_delete=OFF, 16 per transaction", lambda: raw(db, payloads, n, "OFF", 16)),
            ("raw, secure_delete=FAST, 16 per transaction", lambda: raw(db, payloads, n, "FAST", 16)),
            ("queue schema 1, 1 per transaction", lambda: queue(db, payloads, n, v1, 1)),
            ("queue schema 1, 16 per transaction", lambda: queue(db, payloads, n, v1, 16)),
            ("queue schema 2, 1 per transaction", lambda: queue(db, payloads, n, durable_queue, 1)),
            ("queue schema 2, 16 per transaction", lambda: queue(db, payloads, n, durable_queue, 16)),
        ]
        for name, case in cases:
            results = [case() for _ in range(runs)]
            put = [r[0] / n * 1e3 for r in results]
            delete = [r[2] / n * 1e3 for r in results]
            put_kib, delete_kib = results[0][1] / n / 1024, results[0][3] / n / 1024
            print(f"{name}: put {min(put):.2f}-{max(put):.2f} ms, {put_kib:.0f} KiB written; "
                  f"delete {min(delete):.2f}-{max(delete):.2f} ms, {delete_kib:.0f} KiB written", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
