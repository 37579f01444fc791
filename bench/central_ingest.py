"""Central ingest: captures/s stored in PostgreSQL and receipted by two reference receivers in
one shared-subscription group, against a raw pipeline on the same broker and database.

The kiosks' backlogs are made before the clock starts by the agent's own code: each kiosk's
captures are sealed (agent/security/sealing.py) and committed to its durable queue
(agent/transport/durable_queue.py), read back as the publisher reads them and framed for a
send with a fresh nonce (agent/transport/protocol.py, as the Publisher frames them). The
kiosks' side is then only paho clients publishing those bytes at QoS 1, the same clients
and the same bytes for both pipelines, so the figure measures the central side.

- Receivers: two ``cli receiver`` processes, ``receiver.store`` = the scratch database,
  default group commit (5 ms, 256 captures). Clock: first publish to the last receipt (one
  collector client subscribed to every kiosk's receipts topic). The receipts are verified
  afterwards with the kiosks' code (agent/transport/receipts.py): every capture ``stored``.
- Raw: two bench/raw_peer.py ``--store`` processes in their own share group: a plain paho
  subscriber, batched psycopg inserts of the same payloads (same window and batch size),
  COMMIT, then an 8-byte answer per message. Clock: first publish to the last answer.

Rounds alternate raw and receivers; each figure is the best of its rounds (noise from
the other processes on the machine only ever slows a round down). Between rounds the bench
kiosks' rows are deleted so every round stores new rows. ``db_rows`` fills the captures
table with that many 100 KB rows of other kiosks first (the "grows with the database" figure).

    python -m bench.central_ingest [--captures N] [--kiosks K] [--db-rows R] [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import threading
import time
from collections import Counter
from typing import Any

import paho.mqtt.client as mqtt
import psycopg

from agent.security.keys import load_receipt_keys
from agent.transport.durable_queue import DurableQueue
from agent.transport.protocol import ProtocolError, frame_send, unpack_frame
from agent.transport.receipts import verify_receipts
from bench.common import (
    TOPIC_PREFIX,
    BenchBroker,
    BenchError,
    ImagePool,
    Sizes,
    Workspace,
    ratio,
    seal_capture,
)
from bench.procs import (
    Managed,
    RawPeer,
    connect,
    disconnect,
    new_client,
    receiver_command,
    subscribe,
    wait_receivers,
)
from devtools.postgres import PostgresUnavailable, find_server, scratch_database
from receiver.storage.migrate import migrate

RAW_PREFIX = "rawingest"
#: Distinct 100 KB images in the prefilled rows (content does not change what a row costs).
FILL_BATCH = 2_000


# --- the kiosks' backlogs, made by the agent's code -----------------------------------------


def kiosk_backlog(ws: Workspace, kiosk_id: str, count: int, pool: ImagePool) -> list[tuple[str, bytes]]:
    """(capture id, framed send) for ``count`` captures sealed and committed by the agent's code."""
    sealer = ws.enrol_new_kiosk(kiosk_id)
    queue = DurableQueue(ws.root / "ingest-queues" / f"{kiosk_id}.db", max_bytes=8 * 1024**3,
                         min_free_bytes=0)
    try:
        for seq in range(1, count + 1):
            # Sealed first (put() needs the capture's id), numbered as the fresh queue numbers it.
            capture_id, sealed = seal_capture(sealer, kiosk_id, seq, pool.next())
            if queue.put(capture_id, "capture", lambda _seq, sealed=sealed: sealed) != seq:
                raise BenchError("the durable queue numbered a capture other than expected")
        items = queue.next_batch(0, count)
    finally:
        queue.close()
    # As the Publisher frames each item when it puts it in flight: a fresh nonce per send.
    return [(item.id, frame_send(item.payload, secrets.token_hex(16))) for item in items]


# --- the central side's processes -----------------------------------------------------------


class PgReceiver(Managed):
    """``python -m cli receiver`` on the PostgreSQL store."""

    def __init__(self, ws: Workspace, port: int, dsn: str, name: str) -> None:
        settings = ws.receiver_settings(port=port, output_dir=ws.fresh_dir(f"ingest-{name}"), name=name)
        settings["receiver"]["store"] = dsn
        settings["logging"]["level"] = "WARNING"
        config = ws.write_toml(ws.root / f"ingest-{name}.toml", settings)
        super().__init__(f"receiver {name}", receiver_command(config, name), ws.root / f"ingest-{name}.log")


def receipts_in(frame: bytes) -> int:
    """How many receipts a receipts frame holds (counted, not verified: check_receipts does)."""
    try:
        return len(json.loads(unpack_frame(frame, b"KAR", "receipts", 1 << 20)[0])["receipts"])
    except (ProtocolError, ValueError, KeyError, TypeError):  # counted as one; check_receipts names it
        return 1


class Collector:
    """One client subscribed to every kiosk's receipts (both prefixes): counts, keeps payloads."""

    def __init__(self, port: int) -> None:
        self._cond = threading.Condition()
        self.messages: list[tuple[str, bytes]] = []
        #: Answers so far per topic prefix (receipts for the receivers, messages for raw).
        self.answers: Counter[str] = Counter()
        self.last = 0.0
        self.client = new_client(f"ingest-collector-{os.getpid()}")
        self.client.on_message = self._on_message
        connect(self.client, port)
        for prefix in (TOPIC_PREFIX, RAW_PREFIX):
            subscribe(self.client, f"{prefix}/+/receipts")

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        payload = bytes(message.payload)
        # A receivers' frame holds a batch's receipts for one kiosk; a raw answer is one.
        answers = receipts_in(payload) if message.topic.startswith(TOPIC_PREFIX + "/") else 1
        with self._cond:
            self.messages.append((message.topic, payload))
            self.answers[message.topic.split("/", 1)[0]] += answers
            self.last = time.monotonic()
            self._cond.notify_all()

    def take(self) -> list[tuple[str, bytes]]:
        with self._cond:
            taken, self.messages = self.messages, []
            self.answers.clear()
            return taken

    def wait(self, prefix: str, total: int, timeout_s: float) -> float:
        """Until ``total`` answers on ``prefix`` came in; the time of the last one."""
        def count() -> int:
            return self.answers[prefix]

        with self._cond:
            if not self._cond.wait_for(lambda: count() >= total, timeout_s):
                raise BenchError(f"central ingest: {count()} of {total} answers on {prefix}/ "
                                 f"after {timeout_s:.0f} s")
            return self.last

    def close(self) -> None:
        disconnect(self.client)


class Kiosks:
    """The kiosks' clients: plain paho, one per kiosk, publishing their framed backlogs."""

    def __init__(self, backlogs: dict[str, list[tuple[str, bytes]]], port: int) -> None:
        self.backlogs = backlogs
        self.total = sum(len(b) for b in backlogs.values())
        self.clients = {}
        for kiosk_id in backlogs:
            client = new_client(f"ingest-{kiosk_id}")
            connect(client, port)
            self.clients[kiosk_id] = client

    def publish(self, prefix: str) -> float:
        started = time.monotonic()
        # Round-robin across kiosks, as a fleet's sends interleave at the broker.
        for i in range(max(len(b) for b in self.backlogs.values())):
            for kiosk_id, backlog in self.backlogs.items():
                if i < len(backlog):
                    self.clients[kiosk_id].publish(f"{prefix}/{kiosk_id}/captures", backlog[i][1], qos=1)
        return started

    def close(self) -> None:
        for client in self.clients.values():
            disconnect(client)


# --- the database ---------------------------------------------------------------------------


def bench_database() -> Any:
    """A scratch database (devtools/postgres.py) for one run; no server is a BenchError."""
    try:
        return scratch_database(find_server())
    except PostgresUnavailable as exc:
        raise BenchError(str(exc)) from None


def prepare(dsn: str) -> None:
    """The receivers' schema (their migrations) and the raw pipeline's table, made once here
    so that neither side's first batch pays for it."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        migrate(conn)
        conn.execute("CREATE TABLE raw_captures (kiosk_id text NOT NULL, digest bytea NOT NULL,"
                     " payload bytea NOT NULL, PRIMARY KEY (kiosk_id, digest))")
        # As the captures table stores its images: out of line, no compression attempt.
        conn.execute("ALTER TABLE raw_captures ALTER COLUMN payload SET STORAGE EXTERNAL")


def fill(dsn: str, rows: int, log: Any = print) -> float:
    """``rows`` stored captures of 100 KB from 1,000 other kiosks; returns seconds taken."""
    image = os.urandom(100_000)
    meta = json.dumps({"fill": True})
    started = time.monotonic()
    with psycopg.connect(dsn, autocommit=True) as conn:
        for first in range(0, rows, FILL_BATCH):
            n = min(FILL_BATCH, rows - first)
            conn.execute(
                "INSERT INTO captures (kiosk_id, capture_id, image_sha256, image_format, metadata,"
                " image, stored_by) SELECT 'fill-' || mod(i, 1000), 'fill-' || i, md5(i::text), 'png',"
                " %s::json, %s::bytea || int4send(i), 'fill' FROM generate_series(%s::int, %s::int) AS i",
                (meta, image, first, first + n - 1))
            if first and first % 20_000 == 0:
                log(f"central ingest: {first:,} of {rows:,} rows filled")
        conn.execute("VACUUM ANALYZE captures")
    return time.monotonic() - started


def database_bytes(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        return int(conn.execute("SELECT pg_database_size(current_database())").fetchone()[0])


def clear_round(dsn: str, kiosk_ids: list[str]) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM captures WHERE kiosk_id = ANY(%s)", (kiosk_ids,))
        conn.execute("TRUNCATE raw_captures")


def stored_rows(dsn: str, kiosk_ids: list[str]) -> tuple[int, int]:
    """(receiver rows, raw rows) of the bench kiosks."""
    with psycopg.connect(dsn) as conn:
        ours = conn.execute("SELECT count(*) FROM captures WHERE kiosk_id = ANY(%s)", (kiosk_ids,)).fetchone()
        raw = conn.execute("SELECT count(*) FROM raw_captures").fetchone()
    return int(ours[0]), int(raw[0])


# --- the run --------------------------------------------------------------------------------


def check_receipts(ws: Workspace, messages: list[tuple[str, bytes]], expected: set[str]) -> dict[str, int]:
    """Every receipt verified as a kiosk verifies it; every capture receipted ``stored``."""
    trusted = load_receipt_keys([ws.keys.receipt_public])
    statuses: dict[str, str] = {}
    for topic, payload in messages:
        if topic.startswith(TOPIC_PREFIX + "/"):
            for receipt in verify_receipts(payload, trusted, topic.split("/")[1]):
                statuses.setdefault(receipt.id, receipt.status)
    missing = expected - statuses.keys()
    not_stored = [i for i in expected if statuses.get(i) != "stored"]
    if missing or not_stored:
        raise BenchError(f"central ingest: {len(missing)} captures without a receipt, "
                         f"{len(not_stored)} not receipted 'stored'")
    return {"receipts": len(statuses)}


def run(ws: Workspace, captures: int = 3_000, kiosks: int = 20, rounds: int = 2, db_rows: int = 0,
        receivers: int = 2,
        log: Any = lambda line: print(line, file=sys.stderr, flush=True)) -> dict[str, Any]:
    """``receivers``: receiver processes in the share group, and as many raw subscribers."""
    pool = ImagePool()
    per_kiosk = -(-captures // kiosks)
    kiosk_ids = [f"ingest-{i:03d}" for i in range(kiosks)]
    built = time.monotonic()
    backlogs = {k: kiosk_backlog(ws, k, per_kiosk, pool) for k in kiosk_ids}
    total = sum(len(b) for b in backlogs.values())
    expected = {cid for b in backlogs.values() for cid, _ in b}
    log(f"central ingest: {total} captures sealed and queued by {kiosks} kiosks in "
        f"{time.monotonic() - built:.1f} s")
    timeout = 120 + total / 5  # generous: a loaded machine is slow, only a failure waits this long
    with bench_database() as dsn:
        prepare(dsn)
        fill_s = fill(dsn, db_rows, log) if db_rows else 0.0
        size_before = database_bytes(dsn)
        with BenchBroker() as broker:
            names = tuple(f"r{i + 1}" for i in range(receivers))
            receiver_procs = [PgReceiver(ws, broker.port, dsn, name) for name in names]
            peers = [RawPeer(ws, broker.port, f"$share/raw/{RAW_PREFIX}/+/captures", f"ingest-raw-{i}")
                     for i in range(receivers)]
            for peer in peers:
                peer.args += ["--store", dsn]
            collector = fleet = None
            try:
                for process in (*receiver_procs, *peers):
                    process.start()
                for peer in peers:
                    peer.wait_ready()
                wait_receivers(ws, broker.port, set(names))
                collector = Collector(broker.port)
                fleet = Kiosks(backlogs, broker.port)
                raw_rates, agent_rates = [], []
                for n in range(rounds):
                    clear_round(dsn, kiosk_ids)
                    collector.take()
                    started = fleet.publish(RAW_PREFIX)
                    raw_rates.append(total / (collector.wait(RAW_PREFIX, total, timeout) - started))
                    rows = stored_rows(dsn, kiosk_ids)
                    if rows[1] != total:
                        raise BenchError(f"raw ingest: {rows[1]} rows for {total} captures")
                    collector.take()
                    started = fleet.publish(TOPIC_PREFIX)
                    agent_rates.append(total / (collector.wait(TOPIC_PREFIX, total, timeout) - started))
                    time.sleep(0.2)  # a stray second receipt would show up in the check below
                    checked = check_receipts(ws, collector.take(), expected)
                    rows = stored_rows(dsn, kiosk_ids)
                    if rows[0] != total:
                        raise BenchError(f"central ingest: {rows[0]} rows for {total} receipted captures")
                    log(f"central ingest round {n + 1}: raw {raw_rates[-1]:.0f}/s, "
                        f"receivers {agent_rates[-1]:.0f}/s")
                size_after = database_bytes(dsn)
                for process in (*receiver_procs, *peers):
                    process.stop()
            finally:
                for closing in (fleet, collector):
                    if closing is not None:
                        closing.close()
                for process in (*receiver_procs, *peers):
                    process.kill()
    per_s, raw_per_s = max(agent_rates), max(raw_rates)
    return {
        "central_ingest_per_s": round(per_s, 1),
        "central_ingest_ratio_vs_raw": ratio(per_s, raw_per_s),
        "central_ingest": {
            "captures": total,
            "kiosks": kiosks,
            "receivers": receivers,
            "image_bytes": len(pool.images[0]),
            "rounds": rounds,
            "receivers_per_s_rounds": [round(r, 1) for r in agent_rates],
            "raw_per_s_rounds": [round(r, 1) for r in raw_rates],
            "raw_per_s": round(raw_per_s, 1),
            "db_rows_before": db_rows,
            "db_fill_s": round(fill_s, 1),
            "db_mb_before": round(size_before / 1e6),
            "db_mb_after": round(size_after / 1e6),
            **checked,
        },
    }


#: (captures, kiosks) by bench mode: quick about 20 s of ingest on this machine, full 5x that.
SIZES = {"quick": (2_000, 20), "full": (10_000, 50)}


def run_sized(ws: Workspace, sizes: Sizes) -> dict[str, Any]:
    """The bench/run.py step: an empty database (``--db-rows`` by hand: docs/performance.md)."""
    captures, kiosks = SIZES[sizes.mode]
    # Three rounds a side: the best of two moved the ratio between 0.67 and 0.91 on a quiet
    # machine (the raw side alone varied 311-456/s between rounds).
    return run(ws, captures, kiosks, rounds=3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captures", type=int, default=3_000)
    parser.add_argument("--kiosks", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--db-rows", type=int, default=0, help="stored captures before the run")
    parser.add_argument("--receivers", type=int, default=2, help="receivers (and raw subscribers)")
    args = parser.parse_args(argv)
    with Workspace() as ws:
        result = run(ws, args.captures, args.kiosks, args.rounds, args.db_rows, args.receivers)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
