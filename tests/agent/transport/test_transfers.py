"""Several chunked transfers at once (agent/transport/transfers.py): each chunk status reaches the
transfer it is about whatever the others' sizes, a malformed one about a transfer is an error,
and the bytes in flight are one budget for all of them. The drain over a real link with a long
round trip: tests/reliability/test_transfer_window.py."""

from __future__ import annotations

import os

import pytest

from agent.transport.chunk_sender import ChunkTransfer
from agent.transport.chunking import ChunkStatus
from agent.transport.protocol import ProtocolError
from agent.transport.queue_types import QueuedItem
from agent.transport.transfers import Transfers


def transfer(item_id: str, size: int, chunk: int = 1000) -> ChunkTransfer:
    item = QueuedItem(seq=1, id=item_id, kind="capture", payload=os.urandom(size), attempts=0, created=0.0)
    return ChunkTransfer.of(item, "kiosk-1", chunk, expects_status=True)


def status_of(t: ChunkTransfer, have: set[int], **extra: object) -> bytes:
    m = t.manifest
    return ChunkStatus(m.id, m.sha256, "partial", int(extra.pop("count", m.count)), frozenset(have)).encode()


def test_each_status_reaches_its_own_transfer_whatever_the_others_sizes() -> None:
    small, large = transfer("small", 3_000), transfer("large", 400_000)  # 3 and 400 chunks
    window = Transfers(2)
    window.add(small)
    assert not window.full
    window.add(large)
    assert window.full and list(window) == [small, large] and "large" in window
    # A status about the large transfer is larger than any about the small one can be: the
    # small one refuses to read it, the large one takes it.
    many = status_of(large, set(range(0, 400, 2)))
    found = window.status(many)
    assert found is not None and found.id == "large" and window.answering(found) is large
    found = window.status(status_of(small, {0}))
    assert found is not None and window.answering(found) is small
    # About neither (a finished transfer's, another kiosk's): nothing, no error.
    assert window.status(status_of(transfer("gone", 3_000), {0})) is None
    # About one of them but malformed: an error, not silently another transfer's.
    with pytest.raises(ProtocolError, match="counts 7 chunks"):
        window.status(status_of(small, set(), count=7))
    # Too large for every transfer here: an error.
    with pytest.raises(ProtocolError):
        window.status(b"{" + b" " * 200_000 + b"}")
    window.end("small")
    assert list(window) == [large] and not window.full
    window.clear()
    assert len(window) == 0


def test_the_bytes_in_flight_are_one_budget_for_every_transfer() -> None:
    first, second = transfer("a", 10_000), transfer("b", 10_000)
    window = Transfers(2)
    window.add(first)
    window.add(second)
    for t in (first, second):
        t.on_status(ChunkStatus(t.id, t.manifest.sha256, "partial", t.manifest.count, frozenset()))
    first.chunk_sent(101, 1_000, 0.0)
    first.chunk_sent(102, 1_000, 0.0)
    assert window.inflight_bytes == 2_000
    # With a 2,500-byte budget the second transfer has 500 left: none of its 1,000-byte chunks
    # fits beside the first's two... unless it has none in flight (one chunk always may).
    assert window.room(second, 2_500) == 500
    second.chunk_sent(201, 1_000, 0.0)
    assert not second.has_room(1_000, window.room(second, 2_500))
    # A PUBACK goes to the transfer whose message it was, and frees the shared budget.
    assert window.acknowledged(102, 1.0) is first
    assert window.acknowledged(999, 1.0) is None
    assert window.inflight_bytes == 2_000 and window.room(second, 2_500) == 1_500
    assert second.has_room(1_000, window.room(second, 2_500)) is False  # 1,000 + 1,000 > 1,500
    assert window.acknowledged(101, 1.0) is first
    assert second.has_room(1_000, window.room(second, 2_500))
