"""The read-only queue reader (``queue stats`` while the agent runs) on any folder name.

It opened ``file:<path>?mode=ro`` with the path as it came: in a folder named with ``#`` or
``?`` the rest of the path, ``mode=ro`` included, became the URI's fragment or query, so the
"read-only" reader created an empty database beside the folder and failed ("no such table");
a ``%`` made it open another name. The path is quoted now.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.transport.durable_queue import DurableQueue
from agent.transport.queue_reader import read_only_stats


@pytest.mark.parametrize("name", ["plain", "with#hash", "with?q=1", "pct%41", "space here"])
def test_stats_read_the_queue_itself_and_write_nothing(tmp_path: Path, name: str) -> None:
    folder = tmp_path / name
    folder.mkdir()
    queue = DurableQueue(folder / "queue.db", max_bytes=10**8, min_free_bytes=0)
    queue.close()
    before = sorted(p.name for p in tmp_path.iterdir())
    stats = read_only_stats(folder / "queue.db", 10**8)
    assert stats.pending == 0 and stats.by_state == {"queued": 0, "sent": 0, "rejected": 0}
    assert sorted(p.name for p in tmp_path.iterdir()) == before, "nothing made beside the folder"
