"""Power loss under the durable queue: the real queue commits sealed captures and deletes
acknowledged ones on crashfs (tests/support/crashfs), which keeps what a disk holds apart
from what the page cache holds. At random moments the power is cut: each cut leaves two
images, only what was fsynced and that plus a random, possibly torn part of the rest, and
each image is opened as the agent opens its queue after a crash.

The property: every capture reported committed is present and intact (same sealed bytes),
no capture whose deletion was reported done is back, the queue opens without being moved
aside and passes integrity_check. The same run against a queue with synchronous=OFF must
fail: that is what shows the harness can see a missing fsync at all.
"""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from agent.transport.durable_queue import DurableQueue
from tests.reliability.common import SOAK, rng
from tests.support.config import keys_for
from tests.support.crashfs.runner import Cut, cut_while_writing

CUTS = 300 if SOAK else 40
MUTATION_CUTS = 6
# The soak's hundreds of cuts take longer than the suite's 300 s per test.
pytestmark = pytest.mark.timeout(3600 if SOAK else 300)


def check_queue(cut: Cut) -> list[str]:
    """What is wrong with the queue in this cut's images (nothing, for correct code)."""
    acking = cut.after.get("acking")
    must = {i: sha for i, sha in cut.before.get("committed").items() if i not in acking}
    gone = set(cut.before.get("acked"))
    problems = []
    for image in cut.images:
        where = f"cut {cut.number} ({image.name})"
        try:
            queue = DurableQueue(image / "queue" / "queue.db", max_bytes=1 << 40, min_free_bytes=0)
        except sqlite3.DatabaseError as exc:
            problems.append(f"{where}: the queue does not open (the agent would not start): {exc}")
            continue
        try:
            if queue.quarantined is not None:
                problems.append(f"{where}: the queue was moved aside: {queue.quarantined['error']}")
                continue
            if (integrity := queue.integrity_check()) != "ok":
                problems.append(f"{where}: integrity_check says {integrity}")
            present = {item.id: hashlib.sha256(item.payload).hexdigest()
                       for item in queue.next_batch(0, 1 << 30)}
        except sqlite3.DatabaseError as exc:  # damage the checks at open did not see
            problems.append(f"{where}: the queue is damaged ({exc}): lost what it held")
            present = {}
        finally:
            queue.close()
        if lost := sorted(set(must) - set(present)):
            problems.append(f"{where}: lost {len(lost)} of {len(must)} committed captures, e.g. {lost[:2]}")
        if damaged := sorted(i for i in must if i in present and present[i] != must[i]):
            problems.append(f"{where}: {len(damaged)} captures damaged, e.g. {damaged[:2]}")
        if back := sorted(gone & set(present)):
            problems.append(f"{where}: {len(back)} deleted (acknowledged) captures came back, "
                            f"e.g. {back[:2]}")
    return problems


def test_every_committed_capture_survives_power_cuts(tmp_path: Path) -> None:
    keys = keys_for(tmp_path, "k").kiosk_key.parent
    problems, ledger, counts = cut_while_writing(tmp_path / "run", "queue", keys, CUTS,
                                                 rng("power-loss queue"), check_queue)
    found = [p for cut in problems.values() for p in cut]
    assert not found, "\n".join(found[:20])
    committed, acked = len(ledger.get("committed")), len(ledger.get("acked"))
    assert committed > CUTS, "the writer really wrote between the cuts"
    print(f"power-loss queue: {CUTS} cuts, {2 * CUTS} images; {committed} commits and {acked} deletions "
          f"reported; {counts['fsync']} fsyncs, {counts['fsyncdir']} directory fsyncs, "
          f"{counts['write']} writes seen; nothing lost, damaged or back")


def test_harness_catches_a_queue_without_fsync(tmp_path: Path) -> None:
    """Mutation run: the same queue with synchronous=OFF loses reported commits."""
    keys = keys_for(tmp_path, "k").kiosk_key.parent
    problems, ledger, counts = cut_while_writing(tmp_path / "run", "queue", keys, MUTATION_CUTS,
                                                 rng("power-loss queue sync-off"), check_queue,
                                                 mutation="sync-off")
    # Caught: commits lost, or the queue torn beyond opening and moved aside (its captures are
    # then missing from the queue as well; which of the two a cut shows depends on where it lands).
    caught = [n for n, found in problems.items() if any("lost" in p or "moved aside" in p for p in found)]
    # Only the opening (before the mutation switches synchronous off) still syncs.
    assert counts["fsync"] < 20 < len(ledger.get("committed")), counts
    # Every cut shows the loss: in its durable image no commit since the opening survives.
    assert len(caught) == MUTATION_CUTS, problems
    # Even so, a damaged queue is moved aside, never left to stop the agent at start.
    assert not [p for found in problems.values() for p in found if "does not open" in p], problems
    print(f"power-loss queue, synchronous=OFF: {len(caught)} of {MUTATION_CUTS} cuts caught losing "
          f"captures ({len(ledger.get('committed'))} commits reported), e.g. {problems[caught[0]][0]}")
