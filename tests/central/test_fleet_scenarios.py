"""Fleet scenarios with the agent's own transport code in every kiosk (bench/fleet.py: a
durable queue, sealing, the publisher in receipt mode and the MQTT link per kiosk, many
kiosks per worker process), reference receivers in one share group (each its own process)
and PostgreSQL. Each scenario ends with every kiosk's queue empty, which a kiosk allows only
for captures a verified receipt named, and asserts that every capture any kiosk made is one
row in the database, no row twice and none extra: lost = 0, no duplicate rows.

The default suite runs them scaled down; KIOSK_AGENT_SOAK=1 runs the issue's sizes (1,000
kiosks in the storm, 200 kiosks x 50 captures). Figures of the soak run: docs/performance.md,
"The central side".
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from bench.common import BenchBroker, Workspace
from bench.fleet import Fleet, Receivers, fleet_settings
from devtools.broker import free_port
from receiver.storage.migrate import migrate
from tests.support.postgres import server_bindir
from tests.support.soak import SOAK

#: Storm: kiosks; backlog: kiosks x captures each; the other scenarios: kiosks x captures.
STORM_KIOSKS = 1000 if SOAK else 40
BACKLOG = (200, 50) if SOAK else (20, 6)
STREAM = (100, 20) if SOAK else (8, 8)
#: Worker processes for the kiosks: each is a Python process to start, seconds on two cores.
WORKERS = 4 if SOAK else 1
#: Small images outside the soak: the scenarios are about delivery, not bytes.
IMAGE_BYTES = 100_000 if SOAK else 10_000
#: A capture sent to a receiver that dies, or whose batch did not commit, goes again after
#: this long (mqtt.receipt_timeout_s). Short in the scaled-down runs, so a scenario does not
#: wait a minute for it; the product's 60 s in the soak: with 3 s, 200 kiosks resending
#: their whole windows every 3 s to receivers that needed minutes for the backlog grew the
#: broker (then run with max_queued_messages 0, no limit; now with docs/deployment.md's bounded
#: settings, bench/common.py BenchBroker) to 20 GB until the kernel killed it
#: (docs/deployment.md, "mosquitto settings that matter").
RECEIPT_TIMEOUT_S = 60.0 if SOAK else 3.0
TIMEOUT_S = 1800.0 if SOAK else 90.0

#: The soak's sizes take many minutes on two cores (1,000 kiosks' queues and links to build).
pytestmark = pytest.mark.timeout(3600 if SOAK else 300)


@dataclass
class Central:
    ws: Workspace
    broker: BenchBroker
    dsn: str
    receivers: Receivers

    def fleet(self, kiosks: int, prefix: str = "fleet") -> Fleet:
        settings = fleet_settings(self.ws, self.broker.port)
        settings["mqtt"]["receipt_timeout_s"] = RECEIPT_TIMEOUT_S
        return Fleet(self.ws, self.broker.port, kiosks, min(WORKERS, kiosks), prefix=prefix,
                     settings=settings, image_bytes=IMAGE_BYTES)


@contextmanager
def central(dsn: str, names: tuple[str, ...] = ("r1", "r2"), *receiver_args: str) -> Iterator[Central]:
    with Workspace() as ws, BenchBroker() as broker:
        receivers = Receivers(ws, broker.port, dsn, names, extra_args=receiver_args)
        try:
            receivers.launch()  # ready by the time the kiosks' workers are (see running)
            yield Central(ws, broker, dsn, receivers)
        finally:
            receivers.kill()


@contextmanager
def running(c: Central, fleet: Fleet) -> Iterator[Fleet]:
    """The fleet's workers built (their kiosks' queues open, links not started) while the
    receivers start: both are Python processes starting up, which takes seconds here."""
    try:
        fleet.start_workers()
        c.receivers.wait_ready()
        yield fleet
    finally:
        fleet.kill()


def rows_of(dsn: str) -> tuple[set[tuple[str, str]], int]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT kiosk_id, capture_id FROM captures"
                            " WHERE kiosk_id LIKE 'fleet-%'").fetchall()
    return set(rows), len(rows)


def assert_delivered(dsn: str, created: dict[str, list[str]], expected_total: int) -> None:
    made = {(kiosk, cid) for kiosk, ids in created.items() for cid in ids}
    assert len(made) == expected_total, "every kiosk made its captures, each with its own id"
    rows, count = rows_of(dsn)
    lost = made - rows
    assert not lost, f"{len(lost)} captures receipted (deleted from their kiosk's queue) but not stored"
    assert count == len(rows), f"{count - len(rows)} duplicate rows"
    assert rows == made, f"{len(rows - made)} rows no kiosk made"


def drain(c: Central, fleet: Fleet, total: int, during=None) -> dict[str, list[str]]:  # type: ignore[no-untyped-def]
    """Start every kiosk, let ``during(progress)`` act while it drains, wait for empty queues."""
    fleet.command("start")
    if during is not None:
        during()
    fleet.wait("drained", lambda p: p.pending == 0 and p.acked == total, TIMEOUT_S)
    return fleet.finish()


# --- scenarios --------------------------------------------------------------------------------


def phase(started: float, what: str) -> None:
    print(f"\n  {time.monotonic() - started:7.1f} s  {what}", end="", flush=True)


def test_reconnect_storm_after_a_broker_restart(pg_dsn: str) -> None:
    kiosks = STORM_KIOSKS
    t0 = time.monotonic()
    with central(pg_dsn) as c:
        with running(c, c.fleet(kiosks)) as fleet:
            phase(t0, f"{kiosks} kiosks built")
            fleet.add(1)
            phase(t0, "one capture queued in each")
            fleet.command("start")
            fleet.wait("online", lambda p: p.online == kiosks and p.pending == 0, TIMEOUT_S)
            phase(t0, "all online, queues empty")
            c.broker.stop()
            fleet.wait("offline", lambda p: p.online == 0, 60)
            fleet.add(2)  # taken while the broker was away
            c.broker.start()
            back = time.monotonic()
            # Every kiosk's backoff is jittered: they come back spread out, not in lock-step.
            online = fleet.wait("online again", lambda p: p.online == kiosks, TIMEOUT_S) - back
            drained = fleet.wait("drained", lambda p: p.pending == 0 and p.acked == 3 * kiosks,
                                 TIMEOUT_S) - back
            created = fleet.finish()
        c.receivers.stop()
    assert_delivered(pg_dsn, created, 3 * kiosks)
    print(f"\nstorm: {kiosks} kiosks online {online:.1f} s after the broker came back, "
          f"drained in {drained:.1f} s")


def test_kiosks_flush_their_backlogs(pg_dsn: str) -> None:
    kiosks, each = BACKLOG
    with central(pg_dsn) as c:
        with running(c, c.fleet(kiosks)) as fleet:
            fleet.add(each)
            started = time.monotonic()
            created = drain(c, fleet, kiosks * each)
            took = time.monotonic() - started
        c.receivers.stop()
    assert_delivered(pg_dsn, created, kiosks * each)
    print(f"\nbacklog: {kiosks} x {each} captures in {took:.1f} s ({kiosks * each / took:.0f}/s)")


def test_a_receiver_sigkilled_mid_stream(pg_dsn: str) -> None:
    kiosks, each = STREAM
    total = kiosks * each
    with central(pg_dsn) as c:
        with running(c, c.fleet(kiosks)) as fleet:
            fleet.add(each)

            def kill_one() -> None:
                fleet.wait("a third receipted", lambda p: p.acked >= total // 3, TIMEOUT_S)
                os.kill(c.receivers.pid("r1"), signal.SIGKILL)
                c.receivers.procs["r1"].proc.wait(10)  # type: ignore[union-attr]

            created = drain(c, fleet, total, kill_one)
        c.receivers.procs["r1"].kill()
        c.receivers.procs["r2"].stop()
    assert_delivered(pg_dsn, created, total)


def test_one_receiver_of_three_slowed_down(pg_dsn: str) -> None:
    kiosks, each = STREAM
    total = kiosks * each
    with central(pg_dsn, ("r1", "r2", "r3")) as c:
        slow = c.receivers.pid("r3")
        stop = threading.Event()

        def stutter() -> None:
            # Stopped 0.6 s of every 0.8 s: its share of the group's messages waits for it.
            while not stop.is_set():
                os.kill(slow, signal.SIGSTOP)
                stop.wait(0.6)
                os.kill(slow, signal.SIGCONT)
                stop.wait(0.2)

        cycler = threading.Thread(target=stutter, name="sigstop-cycles")
        with running(c, c.fleet(kiosks)) as fleet:
            fleet.add(each)
            cycler.start()
            try:
                created = drain(c, fleet, total)
            finally:
                stop.set()
                cycler.join()
                os.kill(slow, signal.SIGCONT)
        c.receivers.stop()
    assert_delivered(pg_dsn, created, total)


# --- PostgreSQL restarted mid-stream: a private server --------------------------------------


class PrivatePostgres:
    """A PostgreSQL cluster of this test's own (initdb/pg_ctl of the newest installed server,
    as scripts/start-postgres.sh picks it, in a temporary folder, on a free loopback port), so
    restarting it leaves the machine's server alone. As root the server runs as user
    postgres, which PostgreSQL requires."""

    def __init__(self, bindir: Path) -> None:
        self.bin = bindir
        self.dir = Path(tempfile.mkdtemp(prefix="kiosk-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.as_postgres = os.geteuid() == 0
        if self.as_postgres:
            shutil.chown(self.dir, "postgres", "postgres")
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
                  "--no-sync", "-E", "UTF8")
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        cmd = (["runuser", "-u", "postgres", "--"] if self.as_postgres else []) + list(args)
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1"
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", opts, "-l", str(self.dir / "log"),
                  "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def close(self) -> None:
        try:
            self.stop("immediate")
        except subprocess.CalledProcessError:
            pass  # not running
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    pg = PrivatePostgres(server_bindir())
    try:
        pg.start()
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            migrate(conn)  # before the receivers: they would each wait for the others' migration
        yield pg
    finally:
        pg.close()


def test_postgresql_restarted_mid_stream(private_pg: PrivatePostgres) -> None:
    kiosks, each = STREAM
    total = kiosks * each
    dsn = private_pg.dsn
    with central(dsn) as c:
        with running(c, c.fleet(kiosks)) as fleet:
            fleet.add(each)

            def restart() -> None:
                fleet.wait("a third receipted", lambda p: p.acked >= total // 3, TIMEOUT_S)
                # Immediate: a crash as far as the receivers' open transactions are concerned.
                private_pg.stop("immediate")
                time.sleep(1.0)
                private_pg.start()

            created = drain(c, fleet, total, restart)
        c.receivers.stop()
    assert_delivered(dsn, created, total)


# --- the harness must notice a receiver that loses captures -----------------------------------


def test_the_harness_catches_a_receiver_that_receipts_what_it_dropped(pg_dsn: str) -> None:
    """The mutation every scenario above must be able to see: a receiver that answers
    ``stored`` for every tenth capture without filing it."""
    kiosks, each = 6, 5
    with central(pg_dsn, ("r1",), "--drop-every", "10") as c:
        with running(c, c.fleet(kiosks)) as fleet:
            fleet.add(each)
            created = drain(c, fleet, kiosks * each)
        c.receivers.stop()
    with pytest.raises(AssertionError, match="receipted .* but not stored"):
        assert_delivered(pg_dsn, created, kiosks * each)
