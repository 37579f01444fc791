"""Chunked transfers overlap their round trips (``uplink.chunk_window``, agent/transport/
transfers.py). Over a link with a long round trip and bandwidth to spare, one transfer at a
time leaves the link idle while each capture's chunk status and receipt travel; with two, the
next capture's manifest and chunks go meanwhile. The same backlog drains through the same link
both ways, each run with nothing lost; the two-at-a-time run must be clearly faster, and both
drain times are printed (docs/performance.md, "What holds the drain back now").

Real parts, as in test_netns_profiles.py: `python -m agent run` in a kiosk namespace,
mosquitto and the reference receiver in a central one, the latency relay between them.
"""

from __future__ import annotations

from pathlib import Path

from tests.reliability.netns_harness import CellularRun, Profile, Result
from tests.support.waiting import wait_until

#: 400 ms round trip (a loaded cellular link), 8 Mbit/s each way: the round trips, not the
#: bandwidth, set the pace.
LONG_ROUND_TRIP = Profile("long round trip", 8000, 8000, 200)
CAPTURES = 8
#: ~70 KB fingerprints (320 x 320 PNG) in 16 KiB chunks: five chunks each.
SIZE_PX, CHUNK, INFLIGHT = 320, 16 * 1024, 64 * 1024


def drain(tmp_path: Path, window: int) -> Result:
    work = tmp_path / f"window-{window}"
    work.mkdir()
    path = CellularRun(work, LONG_ROUND_TRIP, captures=CAPTURES, size_px=SIZE_PX, chunk_bytes=CHUNK,
                       inflight_bytes=INFLIGHT, chunk_window=window)
    try:
        started, wire_before = path.start_and_open()
        wait_until(path.drained, timeout_s=300, interval_s=0.1, what="the backlog drained")
        result = path.finish(started, wire_before)
    finally:
        path.close()
    print(f"chunk_window {window}: {result.line()}")
    return result


def test_two_transfers_at_a_time_drain_a_long_round_trip_faster(tmp_path: Path) -> None:
    one = drain(tmp_path, 1)
    two = drain(tmp_path, 2)
    for result in (one, two):
        assert result.lost == 0 and result.stored == result.captures == CAPTURES, result.line()
        assert result.transfers_started >= CAPTURES and result.duplicates == 0, result.line()
    # Each capture costs one transfer's round trips (status, then receipt) with a window of one;
    # with two, half of them overlap. The margin leaves room for a loaded machine.
    assert two.drain_s < 0.8 * one.drain_s, f"window 1: {one.drain_s:.1f} s, window 2: {two.drain_s:.1f} s"
