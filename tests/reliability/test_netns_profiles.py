"""Cellular link profiles from Linux's own network stack: a backlog drains through each.

Kiosk, relay and central in network namespaces (tests/support/netns.py); bandwidth by tbf,
loss, black holes and a forgetful NAT by nftables, flaps by taking the link down, latency
by a TUN packet relay (tests/support/link_faults.py, tests/support/tun_relay.py). For each
profile: lost = 0, duplicates at most 1 % of the captures, chunked transfers resumed
(chunks received twice stay within what was in flight at each cut), every dead connection
noticed within 1.5 keepalive intervals, and the bytes on the wire per capture reported.

`make test` runs the 3G profile with small captures and the mutation run; KIOSK_AGENT_SOAK=1
runs every profile with 1 MB captures.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.reliability.common import SOAK
from tests.reliability.netns_harness import CellularRun, Profile, Result
from tests.support.link_faults import Flapper, black_hole
from tests.support.netns import PREFIX, NetnsUnavailable, Topology, ip, remove_stale
from tests.support.processes import stored_ids
from tests.support.waiting import wait_until

G2 = Profile("2G/EDGE", 200, 200, 300, loss_up_pct=2, loss_down_pct=2, holes=1, keepalive_s=10)
G3 = Profile("3G", 1000, 1000, 150, loss_up_pct=1, loss_down_pct=1, holes=1)
FLAPPING = Profile("flapping", 1000, 1000, 150, flap=(20, 10))
BLACK_HOLES = Profile("black holes", 1000, 1000, 150, holes=3)
# Receipts lost, captures not: 10 % loss on the downlink only, and a hole that swallows
# only the downlink (captures arrive and are stored; no receipt or PUBACK comes back).
ASYMMETRIC = Profile("asymmetric loss", 1000, 1000, 150, loss_down_pct=10, holes=1, holes_down_only=True)
NAT = Profile("NAT timeout", 1000, 1000, 150, nat_idle_s=4, keepalive_s=10)
PROFILES = [G2, G3, FLAPPING, BLACK_HOLES, ASYMMETRIC, NAT] if SOAK else [G3]
# Soak: about 1 MB of PNG per capture (a simulated 1240 x 1240 fingerprint) in 64 KiB
# chunks, two in flight; the short version: ~70 KB captures in 16 KiB chunks, two in flight.
SIZE_PX, CHUNK, INFLIGHT = (1240, 64 * 1024, 128 * 1024) if SOAK else (320, 16 * 1024, 32 * 1024)
CAPTURES = {G2.name: 3, NAT.name: 3} if SOAK else {}


class Deaths:
    """Moments the link died under a connected agent, and how long the agent took to notice."""

    def __init__(self, path: CellularRun) -> None:
        self.path = path
        self.at: list[float] = []

    def died(self, at: float | None = None) -> None:
        self.at.append(time.time() if at is None else at)

    def wait_noticed(self, timeout_s: float, what: str) -> None:
        since = self.at[-1]
        wait_until(lambda: any(t > since for t in self.path.lost_times()), timeout_s=timeout_s,
                   interval_s=0.1, what=what)

    def noticed_after(self) -> list[float]:
        lost = self.path.lost_times()
        connected = self.path.connected_times()
        out = []
        for died in self.at:
            # A link that died while the agent was already reconnecting has nothing to notice.
            last_lost = max((t for t in lost if t <= died), default=0.0)
            if any(last_lost < t <= died for t in connected):
                out.append(min((t for t in lost if t > died), default=float("inf")) - died)
        return out


def run_profile(tmp_path: Path, profile: Profile, *, captures: int, keepalive_s: int | None = None,
                notice_timeout_s: float | None = None) -> tuple[Result, list[float]]:
    """Drain a backlog through the profile's link; returns the result and, for each time the
    link died under a connected agent, how long the agent took to notice."""
    path = CellularRun(tmp_path, profile, captures=captures, size_px=SIZE_PX, chunk_bytes=CHUNK,
                 inflight_bytes=INFLIGHT, keepalive_s=keepalive_s)
    keepalive = path.keepalive_s
    deaths = Deaths(path)
    flapper = Flapper(path.topo, *profile.flap) if profile.flap else None
    try:
        started, wire_before = path.start_and_open()
        if flapper is not None:
            flapper.start()
        for hole in range(profile.holes):
            # Cut while a transfer is under way, spread over the drain.
            target = captures * (hole + 1) // (profile.holes + 1)
            wait_until(lambda t=target: len(stored_ids(path.out)) >= t, timeout_s=900, interval_s=0.2,
                       what=f"{target} captures stored before black hole {hole + 1}")
            deaths.died()
            black_hole(path.topo, True, down_only=profile.holes_down_only)
            try:
                deaths.wait_noticed(notice_timeout_s or 3 * keepalive,
                                    f"the agent noticing black hole {hole + 1}")
            finally:
                black_hole(path.topo, False)
        wait_until(path.drained, timeout_s=1800, interval_s=0.2, what="the backlog drained")
        if flapper is not None:
            flapper.stop()
            for down in flapper.downs:
                deaths.died(down)
        if profile.nat_idle_s is not None:
            # Idle now: the NAT forgets the connection nat_idle_s after its last packet.
            last = path.quiet_since(timeout_s=4 * keepalive)
            deaths.died(last + profile.nat_idle_s)
            deaths.wait_noticed(3 * keepalive, "the agent noticing the NAT forgot its connection")
            wait_until(lambda: path.connected_times()[-1] > deaths.at[-1], timeout_s=30,
                       what="a new connection through the NAT")
        result = path.finish(started, wire_before)
    finally:
        if flapper is not None:
            flapper.stop()
        path.close()
    assert path.topo.namespaces_left() == [], "the namespaces are gone"
    noticed = deaths.noticed_after()
    print(result.line() + f"; dead link noticed after {', '.join(f'{n:.1f}' for n in noticed) or '-'} s "
          f"(keepalive {keepalive} s)")
    return result, noticed


def check(result: Result, noticed: list[float], keepalive_s: int, cuts: int) -> None:
    assert result.lost == 0 and result.stored == result.captures, result.line()
    assert result.duplicates <= 0.01 * result.captures, f"duplicates above 1 %: {result.line()}"
    # Resume: after a cut only what was in flight (and the chunk being written) may arrive
    # twice, never a whole capture again.
    in_flight = INFLIGHT // CHUNK + 1
    assert result.chunks_duplicate <= cuts * in_flight, f"chunks resent beyond the cuts: {result.line()}"
    assert noticed and max(noticed) <= 1.5 * keepalive_s, (
        f"dead link noticed after {noticed} s, more than 1.5 keepalives ({1.5 * keepalive_s} s)")


@pytest.mark.parametrize("profile", PROFILES, ids=[p.name for p in PROFILES])
def test_backlog_drains_through(tmp_path: Path, profile: Profile) -> None:
    result, noticed = run_profile(tmp_path, profile, captures=CAPTURES.get(profile.name, 5 if SOAK else 6))
    cuts = max(len(result.lost_at), profile.holes)
    check(result, noticed, profile.keepalive_s, cuts)
    if profile.holes:
        assert result.transfers_started > result.captures, "a transfer was cut and resumed"


def test_harness_catches_a_dead_link_noticed_late(tmp_path: Path) -> None:
    """Mutation: the kiosk configured with a 60 s keepalive (dead-link detection as good as
    off) while the check holds it to 5 s: the black hole must not go unnoticed by the test."""
    mutant = Profile("3G, keepalive 60 s", 1000, 1000, 150, holes=1)
    with pytest.raises(AssertionError, match="the agent noticing black hole 1"):
        run_profile(tmp_path, mutant, captures=2, keepalive_s=60, notice_timeout_s=1.5 * 5)
    # A failing run still takes its namespaces with it.
    assert not [ns for ns in ip("netns", "list").split() if ns.startswith(f"{PREFIX}-{os.getpid()}-")]


def test_not_root_fails_plainly(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without root the profiles cannot run: a failure that says why, never a skip."""
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(NetnsUnavailable, match="not running as root"):
        Topology(0, 0)


def test_namespaces_of_a_dead_run_are_removed() -> None:
    stale = f"{PREFIX}-{dead_pid()}-1-k"
    ip("netns", "add", stale)
    try:
        remove_stale()
        assert stale not in ip("netns", "list").split()
    finally:
        subprocess.run(["ip", "netns", "delete", stale], capture_output=True)


def dead_pid() -> int:
    pid = 4_000_000
    while Path(f"/proc/{pid}").exists():
        pid += 1
    return pid
