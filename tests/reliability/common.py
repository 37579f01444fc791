"""Shared parts of the fault-injection suite.

KIOSK_AGENT_SOAK=1 runs the long version (more kills, more snapshots, longer outages).
"""

from __future__ import annotations

import os
import random
import sqlite3
from pathlib import Path

from tests.support.soak import SOAK  # noqa: F401 (the reliability tests import it from here)


def rng(name: str) -> random.Random:
    """A seeded random source; KIOSK_AGENT_SEED replays a failing run."""
    seed = int(os.environ.get("KIOSK_AGENT_SEED", "0")) or random.randrange(1, 1 << 30)
    print(f"{name}: KIOSK_AGENT_SEED={seed}")
    return random.Random(seed)


def integrity(path: Path) -> str:
    db = sqlite3.connect(path)
    try:
        return db.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        db.close()


def committed_ids(log_text: str) -> set[str]:
    """Ids the agent reported as committed (its DEBUG line after the queue's commit returned)."""
    ids = set()
    for line in log_text.splitlines():
        if "agent.capture.service: capture " in line and " committed (seq " in line:
            ids.add(line.split("agent.capture.service: capture ", 1)[1].split(" ", 1)[0])
    return ids
