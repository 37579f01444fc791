"""The queue's figures, read without writing: for ``queue stats`` while the agent runs.

Opening a ``DurableQueue`` writes (its reserve file, the schema, erasure at close, a damaged
file moved aside), which only the agent holding the state folder's lock may do. SQLite's
read-only mode still sees the agent's committed rows through the shared WAL index.
"""

from __future__ import annotations

import shutil
import sqlite3
import time
from pathlib import Path
from urllib.parse import quote

from agent.transport.durable_queue import QueueStats


def read_only_stats(path: Path, max_bytes: int) -> QueueStats:
    # Quoted: a "#", "?" or "%" in a folder name would cut off mode=ro (or name another file).
    db = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, timeout=30)
    try:
        items, size = db.execute("SELECT items, bytes FROM totals").fetchone()
        oldest = db.execute("SELECT created FROM items ORDER BY seq LIMIT 1").fetchone()
        by_state = dict(db.execute("SELECT state, count(*) FROM items GROUP BY state").fetchall())
    finally:
        db.close()
    return QueueStats(
        pending=items,
        pending_bytes=size,
        oldest_age_s=round(time.time() - oldest[0], 3) if oldest else None,
        by_state={s: by_state.get(s, 0) for s in ("queued", "sent", "rejected")},
        max_bytes=max_bytes,
        disk_free_bytes=shutil.disk_usage(path.parent).free,
    )
