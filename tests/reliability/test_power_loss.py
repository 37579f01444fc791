"""Power loss: the queue's files copied at random moments while a writer commits and
deletes, each copy opened as the agent would open it after a crash."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from agent.transport.durable_queue import DurableQueue
from tests.reliability.common import SOAK, integrity, rng
from tests.support.config import keys_for

SNAPSHOTS = 150 if SOAK else 40


def read_available(stream) -> list[str]:  # type: ignore[no-untyped-def]
    """Every complete line the (stopped) writer has printed so far."""
    data = b""
    while True:
        try:
            chunk = os.read(stream.fileno(), 1 << 16)
        except BlockingIOError:
            break
        if not chunk:
            break
        data += chunk
    return data.decode().splitlines(keepends=True)


def test_crash_copies_are_consistent_and_complete(tmp_path: Path) -> None:
    random = rng("power-loss")
    keys = keys_for(tmp_path, "k")
    queue_path = tmp_path / "queue.db"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[2]))
    writer = subprocess.Popen([sys.executable, "-m", "tests.reliability.writer", str(queue_path),
                               str(keys.kiosk_key.parent)], stdout=subprocess.PIPE, env=env)
    assert writer.stdout is not None
    os.set_blocking(writer.stdout.fileno(), False)
    committed: set[str] = set()
    acked: set[str] = set()
    partial = ""
    snapshots = []
    try:
        time.sleep(1.0)  # let it start writing
        for i in range(SNAPSHOTS):
            time.sleep(random.uniform(0.02, 0.25))
            writer.send_signal(signal.SIGSTOP)  # the "power cut": the files freeze mid-write
            for line in read_available(writer.stdout):
                line = partial + line
                partial = ""
                if not line.endswith("\n"):
                    partial = line
                    continue
                verb, item_id = line.split()
                (committed if verb == "committed" else acked).add(item_id)
            snap = tmp_path / f"snap-{i}"
            snap.mkdir()
            for suffix in ("", "-wal", "-shm"):
                src = Path(f"{queue_path}{suffix}")
                if src.exists():
                    shutil.copyfile(src, snap / f"queue.db{suffix}")
            snapshots.append((snap, committed - acked))
            writer.send_signal(signal.SIGCONT)
    finally:
        writer.kill()
        writer.wait()
        writer.stdout.close()
    assert len(committed) > SNAPSHOTS, "the writer really wrote between the snapshots"
    for snap, must_have in snapshots:
        # Open as the agent would after the crash: a damaged file would be moved aside.
        queue = DurableQueue(snap / "queue.db", max_bytes=1 << 40, min_free_bytes=0)
        present = {item.id for item in queue.next_batch(0, 1_000_000)}
        queue.close()
        assert not list(snap.glob("*.corrupt-*")), f"{snap.name} was damaged"
        assert integrity(snap / "queue.db") == "ok", snap.name
        assert must_have <= present, f"{snap.name} lost {sorted(must_have - present)[:3]}"
    print(f"power-loss: {SNAPSHOTS} crash copies, {len(committed)} commits and {len(acked)} "
          "deletions during the run; every copy consistent, no acknowledged-to-the-operator "
          "capture missing")
