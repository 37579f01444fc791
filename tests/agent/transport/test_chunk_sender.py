"""The kiosk's chunked-transfer state machine (agent/transport/chunk_sender.py), without a broker.

The wire behaviour end to end, with cuts and corruption, is in
tests/reliability/test_chunked_transfer.py; here each transition on its own."""

from __future__ import annotations

from collections.abc import Iterable

from agent.transport.chunk_sender import ChunkTransfer
from agent.transport.chunking import ChunkStatus, StatusState
from agent.transport.durable_queue import QueuedItem

ID = "0190f0aa-0000-7000-8000-000000000001"
PAYLOAD = bytes(range(50))  # 5 chunks of 10 bytes
TIMEOUT_S = 60.0


def transfer(expects_status: bool = True) -> ChunkTransfer:
    item = QueuedItem(seq=7, id=ID, kind="capture", payload=PAYLOAD, attempts=0, created=0.0)
    t = ChunkTransfer.of(item, "van-07", 10, expects_status=expects_status)
    t.announced(now=0.0)
    return t


def status(t: ChunkTransfer, state: StatusState = "partial", have: Iterable[int] = (),
           bad: Iterable[int] = ()) -> ChunkStatus:
    return ChunkStatus(t.id, t.manifest.sha256, state, t.manifest.count, frozenset(have), frozenset(bad),
                       receiver="r1")


def send(t: ChunkTransfer, mid: int, now: float = 1.0) -> int:
    """Send the chunk the transfer names next as message ``mid``; its index."""
    chunk = t.next_chunk()
    assert chunk is not None
    t.chunk_sent(mid, len(chunk.encode()), now)
    return chunk.index


def test_after_the_manifest_nothing_goes_until_the_receiver_answers() -> None:
    t = transfer()
    assert t.manifest.count == 5 and t.phase == "announced"
    assert t.next_chunk() is None
    assert not t.overdue(TIMEOUT_S - 1, TIMEOUT_S)
    assert t.overdue(TIMEOUT_S, TIMEOUT_S), "no status within the timeout: the manifest goes again"


def test_only_the_chunks_the_receiver_lacks_go_in_order() -> None:
    t = transfer()
    assert t.on_status(status(t, have={0, 2})) == 0
    assert t.phase == "sending" and t.pending == [1, 3, 4]
    assert [send(t, mid) for mid in (11, 12, 13)] == [1, 3, 4]
    assert t.phase == "draining" and t.next_chunk() is None
    assert not t.overdue(1000.0, TIMEOUT_S), "chunks in flight: waiting for PUBACKs, not overdue"
    for mid in (11, 12, 13):
        assert t.acknowledged(mid, now=2.0)
    assert t.phase == "handed-over" and t.inflight_bytes == 0
    assert not t.settled_by_broker, "receipt mode: the receipt ends the transfer"
    assert not t.overdue(2.0 + TIMEOUT_S - 1, TIMEOUT_S) and t.overdue(2.0 + TIMEOUT_S, TIMEOUT_S)


def test_a_status_for_another_transfer_is_not_taken() -> None:
    t = transfer()
    other = ChunkStatus(t.id, "0" * 64, "partial", 5, frozenset(), frozenset(), "r1")
    assert not t.answers(other) and t.answers(status(t))
    assert not t.acknowledged(999, now=1.0), "a PUBACK for a message that is not one of its chunks"


def test_a_corrupted_chunk_goes_again_first_and_only_once() -> None:
    t = transfer()
    t.on_status(status(t))
    assert [send(t, mid) for mid in (11, 12, 13)] == [0, 1, 2]
    t.acknowledged(11, now=1.5)
    # Chunk 0 failed its hash; chunk 1 is still on its way; chunk 3 is already pending.
    assert t.on_status(status(t, bad={0, 1, 3})) == 1
    assert t.pending == [0, 3, 4]
    assert send(t, 14) == 0


def test_unknown_asks_for_the_manifest_and_chunks_in_flight_stay_counted() -> None:
    t = transfer()
    t.on_status(status(t))
    send(t, 11)
    t.on_status(status(t, "unknown"))
    # Not at once: a forged "unknown" must not make the manifest go on every message.
    assert not t.overdue(TIMEOUT_S - 1, TIMEOUT_S) and t.overdue(TIMEOUT_S, TIMEOUT_S)
    t.announced(now=TIMEOUT_S)  # the publisher sent the manifest again
    assert t.phase == "announced" and 11 in t.inflight
    # Chunk 0 is still on its way: it is not counted missing, and its PUBACK still lands.
    t.on_status(status(t))
    assert t.pending == [1, 2, 3, 4]
    assert t.acknowledged(11, now=3.5) and t.inflight_bytes == 0


def test_complete_settles_nothing_and_changes_nothing() -> None:
    # The receiver sends "complete" with the receipt again; the signed receipt ends the
    # transfer, and until the partial answer comes the kiosk keeps waiting for one.
    t = transfer()
    assert t.on_status(status(t, "complete")) == 0
    assert t.phase == "announced" and t.next_chunk() is None
    t.on_status(status(t, have={0}))
    assert t.pending == [1, 2, 3, 4]
    t.on_status(status(t, "complete"))
    assert t.phase == "sending" and t.pending == [1, 2, 3, 4]


def test_without_a_receiver_every_chunk_goes_and_the_broker_settles_it() -> None:
    t = transfer(expects_status=False)
    assert t.phase == "sending" and t.pending == [0, 1, 2, 3, 4]
    mids = list(range(20, 25))
    assert [send(t, mid) for mid in mids] == [0, 1, 2, 3, 4]
    for mid in mids[:-1]:
        t.acknowledged(mid, now=2.0)
        assert not t.settled_by_broker
    t.acknowledged(mids[-1], now=2.0)
    assert t.settled_by_broker


def test_bytes_in_flight_stay_within_the_limit_but_one_chunk_always_may() -> None:
    t = transfer()
    t.on_status(status(t))
    assert t.has_room(10_000, limit=100), "nothing in flight: one chunk goes whatever its size"
    send(t, 11)
    size = t.inflight_bytes
    assert size > 0
    assert t.has_room(100 - size, limit=100) and not t.has_room(101 - size, limit=100)


# --- forged statuses: anyone on the broker can publish one with the id and hash in the clear


def test_statuses_never_count_as_progress() -> None:
    t = transfer()
    t.on_status(status(t, have=range(5)))
    assert t.phase == "handed-over"
    for _ in range(200):  # one a second, as long as the attacker likes
        t.on_status(status(t, "complete"))
        t.on_status(status(t, have=range(5)))
    assert t.overdue(TIMEOUT_S, TIMEOUT_S), "the manifest goes again one timeout after it went"


def test_a_forged_have_everything_that_beats_the_receiver_holds_nothing_back() -> None:
    t = transfer()
    t.on_status(status(t, have=range(5)))  # forged, first after the manifest
    assert t.pending == []
    t.on_status(status(t, have={1}))  # the receiver's genuine answer
    assert t.pending == [0, 2, 3, 4]


def test_each_chunk_goes_once_per_announcement_on_a_status_word() -> None:
    t = transfer()
    t.on_status(status(t))
    sent = [send(t, mid) for mid in (11, 12, 13, 14, 15)]
    for mid in (11, 12, 13, 14, 15):
        t.acknowledged(mid, now=2.0)
    assert sent == [0, 1, 2, 3, 4] and t.phase == "handed-over"
    # Forged: "I have nothing", "they were all corrupted", again and again.
    assert t.on_status(status(t)) == 0 and t.pending == []
    assert t.on_status(status(t, bad=range(5))) == 5 and t.pending == [0, 1, 2, 3, 4]
    for mid in range(20, 25):
        send(t, mid)
        t.acknowledged(mid, now=3.0)
    for _ in range(100):
        assert t.on_status(status(t, bad=range(5))) == 0
        t.on_status(status(t))
    assert t.pending == [] and t.phase == "handed-over"
    # After the next manifest (one timeout later at the soonest) the receiver's word counts again.
    t.announced(now=3.0 + TIMEOUT_S)
    t.on_status(status(t, have={0, 1, 2, 3}, bad={1}))
    assert t.pending == [1, 4]


def test_unknown_while_the_manifest_is_awaited_changes_nothing() -> None:
    t = transfer()
    for _ in range(10):
        t.on_status(status(t, "unknown"))
    assert not t.reannounce and t.phase == "announced"


def test_a_status_with_another_count_is_not_taken() -> None:
    t = transfer()
    other = ChunkStatus(t.id, t.manifest.sha256, "partial", 6_000_000, receiver="r1")
    assert not t.answers(other)
