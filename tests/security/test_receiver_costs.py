"""What a cheap hostile message may cost the receiver: each test floods a real Receiver on a
real mosquitto and fails if the cost per message grows with the flood, if the flood is
reflected back to the kiosk one answer per message, or if it becomes one log line per message.

- a signed registration manifest listing 50,000 captures that never come made every capture
  of that registration, and every replay of one (answered ``duplicate``), cost 4.4 s;
- chunks for unknown transfers rebuilt a dict of every transfer answered in the last minute,
  per chunk (O(n^2) per flood), and each got an "unknown" status;
- a chunk with wrong bytes for a transfer of 100,000 chunks built and sent a full status
  (10 ms) per 200-byte message;
- junk on a kiosk's captures or chunks topic was one ERROR line per message.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Any

import pytest

from agent.capture.ids import uuid7
from agent.transport.chunking import Chunk, chunk_of
from agent.transport.protocol import frame_send
from devtools.broker import MosquittoBroker
from receiver import assembly
from tests.support.hostile import (
    KIOSK_A,
    Rig,
    finger_captures,
    manifest_for,
    registration_manifest,
    rig,
    sealed_capture,
    sealed_manifest,
    security_warnings,
)
from tests.support.waiting import wait_until

CHUNKS = f"kiosk/{KIOSK_A}/chunks"
# getattr: so that these tests run, and fail, against the code before the cap.
MAX_REGISTRATION_CAPTURES = getattr(assembly, "MAX_REGISTRATION_CAPTURES", 64)


def chunks_handled(r: Rig) -> None:
    """Wait until the receiver has handled everything published on kiosk A's chunks topic: a
    fresh manifest on the same topic is answered only after what came before it."""
    marker = manifest_for(KIOSK_A, b"marker", 16)
    r.wire.client.publish(CHUNKS, marker.encode(r.sealers[KIOSK_A]), qos=1)
    wait_until(lambda: any(s["id"] == marker.id for _, s in r.wire.statuses), timeout_s=120,
               what="the chunks topic drained")


def flood(r: Rig, payloads: list[bytes], topic: str = CHUNKS) -> float:
    """Publish every payload and wait until the receiver has handled them; seconds taken. At
    most about 900 at once: mosquitto drops what exceeds its queue of 1,000 per client."""
    t0 = time.monotonic()
    for payload in payloads:
        r.wire.client.publish(topic, payload, qos=1)
    if topic == CHUNKS:
        chunks_handled(r)
    else:
        r.settle()
    return time.monotonic() - t0


def statuses(r: Rig, item_id: str, **fields: Any) -> list[dict[str, Any]]:
    with r.wire._lock:
        return [s for _, s in r.wire.statuses
                if s["id"] == item_id and all(s.get(k) == v for k, v in fields.items())]


# --- registration manifests -----------------------------------------------------------------


@pytest.mark.parametrize("shape", ["too many", "an id twice"])
def test_a_registration_manifest_no_kiosk_makes_is_refused(tmp_path: Path, broker: MosquittoBroker,
                                                           caplog: pytest.LogCaptureFixture,
                                                           shape: str) -> None:
    caplog.set_level(logging.WARNING, "receiver")
    registration_id = uuid7()
    manifest = registration_manifest(KIOSK_A, registration_id, [])
    if shape == "too many":
        manifest["captures"] = [{"id": uuid7()} for _ in range(MAX_REGISTRATION_CAPTURES + 1)]
    else:
        manifest["captures"] = [{"id": same} for same in [uuid7()] * 2]
    with rig(tmp_path, broker) as r:
        r.send(KIOSK_A, sealed_manifest(r.sealers[KIOSK_A], KIOSK_A, manifest))
        receipt = r.wire.receipt(registration_id)
        r.settle()
    assert receipt["status"] == "rejected"
    assert r.receiver.counters.security_events == 1
    assert not (r.out / KIOSK_A / "registrations" / f"{registration_id}.manifest.json").exists()
    (warning,) = security_warnings(caplog)
    assert registration_id in warning and KIOSK_A in warning


def test_a_replayed_part_does_not_run_assembly_again(tmp_path: Path, broker: MosquittoBroker) -> None:
    """Anyone on the broker can replay a stored capture; each replay re-ran the assembly of its
    registration (the manifest read, every listed capture looked up)."""
    registration_id = uuid7()
    here, late = (dataclasses.replace(c, registration={"id": registration_id, "item": f"finger-{c.position}"})
                  for c in finger_captures(KIOSK_A, [1, 2]))
    manifest = registration_manifest(KIOSK_A, registration_id, [here, late])
    with rig(tmp_path, broker) as r:
        calls: list[str] = []
        assembler = r.receiver.registrations
        original = assembler.try_complete
        assembler.try_complete = lambda kiosk_id, reg_id: calls.append(reg_id) or original(kiosk_id, reg_id)
        seal = r.sealers[KIOSK_A]
        sealed_manifest_ = sealed_manifest(seal, KIOSK_A, manifest, seq=3)
        wire = frame_send(sealed_capture(seal, here), "cd" * 16)
        r.send(KIOSK_A, sealed_manifest_)
        r.send(KIOSK_A, wire)
        assert r.wire.receipt(here.id)["status"] == "stored"
        r.settle()
        first = len(calls)
        for _ in range(20):  # the same bytes again, and the manifest again
            r.send(KIOSK_A, wire)
        r.send(KIOSK_A, sealed_manifest_)
        r.settle()
        replays = len(calls) - first
        duplicates = r.receiver.counters.duplicates
        r.send(KIOSK_A, sealed_capture(seal, late))  # the missing part completes it
        wait_until(lambda: assembler.status(KIOSK_A, registration_id) == "complete",
                   what="the registration completed")
    assert first == 2, "assembled when the manifest and when the capture were stored"
    # Once per registration and receiver run, a duplicate may run it (what finishes a
    # registration whose last part was stored just before a crash); never per replay.
    assert duplicates == 20 and replays <= 1, f"{replays} assembly runs for 21 replayed parts"


def test_a_registration_stored_before_a_crash_completes_on_the_resend(tmp_path: Path,
                                                                      broker: MosquittoBroker) -> None:
    """A receiver that stored a registration's last part and died before assembling it
    leaves every part on disk and no transaction; the kiosk, which got no receipt, sends
    that part again and hears `duplicate`. That resend must finish the registration."""
    registration_id = uuid7()
    parts = [dataclasses.replace(c, registration={"id": registration_id, "item": f"finger-{c.position}"})
             for c in finger_captures(KIOSK_A, [1, 2])]
    with rig(tmp_path, broker) as r:
        seal = r.sealers[KIOSK_A]
        folder = r.out / KIOSK_A / "registrations"
        r.send(KIOSK_A, sealed_manifest(seal, KIOSK_A, registration_manifest(KIOSK_A, registration_id, parts),
                                        seq=3))
        for part in parts:
            r.send(KIOSK_A, sealed_capture(seal, part))
        wait_until(lambda: (folder / f"{registration_id}.complete.json").exists(), what="completed")
        r.receiver.stop()
        # What the crash left: the manifest and every capture stored, nothing assembled.
        for suffix in (".an2", ".fir", ".complete.json"):
            (folder / f"{registration_id}{suffix}").unlink()
        r.start()
        r.send(KIOSK_A, sealed_capture(seal, parts[-1]))
        wait_until(lambda: (folder / f"{registration_id}.complete.json").exists(), timeout_s=10,
                   what="completed by the resent part")
    assert (folder / f"{registration_id}.an2").stat().st_size > 0


# --- chunk floods --------------------------------------------------------------------------------


def test_chunks_of_unknown_transfers_cost_the_same_late_as_early(tmp_path: Path,
                                                                 broker: MosquittoBroker) -> None:
    """Chunks with a fresh transfer id each, from a plain broker client: answered "unknown"
    once per transfer and second, but not one answer per chunk, and at a flat cost."""
    batch, batches = 800, 15  # batches under mosquitto's queue of 1,000 per client, which drops the rest
    with rig(tmp_path, broker) as r:
        times, sent = [], []
        for _ in range(batches):
            chunks = [Chunk(uuid7(), KIOSK_A, "0" * 64, 0, 1, b"x") for _ in range(batch)]
            sent += [c.id for c in chunks]
            times.append(flood(r, [c.encode() for c in chunks]))
        remembered = len(r.receiver._unknown_answered)
        ids = set(sent)
        with r.wire._lock:
            answered = sum(1 for _, s in r.wire.statuses if s["id"] in ids)
    first, last = sum(times[:2]) / 2, sum(times[-2:]) / 2
    print(f"{batch * batches} chunks of unknown transfers in batches of {batch}: first {first:.2f} s, "
          f"last {last:.2f} s; {answered} answered; {remembered} transfers remembered")
    assert answered <= 20 * (sum(times) + 1), f"{answered} 'unknown' answers: one per chunk"
    assert remembered <= 5_000, f"{remembered} transfers remembered: grows with the flood"
    assert last < 3 * first, f"cost per chunk grew with the flood: {times}"


def test_a_bad_chunk_costs_the_same_however_large_its_transfer(tmp_path: Path, broker: MosquittoBroker,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """A key holder announces 100,000 one-byte chunks; then anyone sends chunks with wrong
    bytes for it. Each one built and sent a full status (O(count)); now at most one a second."""
    caplog.set_level(logging.WARNING, "receiver")
    bad_per_transfer = 300
    with rig(tmp_path, broker) as r:
        times, answered = {}, {}
        for count in (1_000, 100_000):
            payload = os.urandom(count)
            manifest = manifest_for(KIOSK_A, payload, 1)
            r.wire.client.publish(CHUNKS, manifest.encode(r.sealers[KIOSK_A]), qos=1)
            wait_until(lambda m=manifest: statuses(r, m.id), timeout_s=60, what="the manifest answered")
            for index in range(10):  # a few good ones: the status has something to list
                r.wire.client.publish(CHUNKS, chunk_of(manifest, payload, index).encode(), qos=1)
            chunks_handled(r)
            bad = [Chunk(manifest.id, KIOSK_A, manifest.sha256, i, count, bytes([payload[i] ^ 1])).encode()
                   for i in range(10, 10 + bad_per_transfer)]
            times[count] = flood(r, bad)
            answered[count] = len([s for s in statuses(r, manifest.id) if s.get("bad")])
        corrupt = r.receiver.counters.chunks_corrupt
    lines = [m for m in caplog.records if "failed its SHA-256" in m.getMessage()]
    print(f"{bad_per_transfer} bad chunks: {times[1_000]:.2f} s for a transfer of 1,000 chunks, "
          f"{times[100_000]:.2f} s for one of 100,000; statuses {answered}; {len(lines)} log lines")
    assert corrupt == 2 * bad_per_transfer, "every bad chunk is counted"
    assert all(n <= 2 * (t + 1) for n, t in zip(answered.values(), times.values(), strict=True)), \
        f"one status per bad chunk: {answered}"
    assert len(lines) <= 2 * (sum(times.values()) + 2), f"{len(lines)} log lines"
    assert times[100_000] < 3 * times[1_000], f"a bad chunk's cost grew with its transfer: {times}"


# --- log floods ----------------------------------------------------------------------------------


def test_junk_from_the_broker_does_not_flood_the_log(tmp_path: Path, broker: MosquittoBroker,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "receiver")
    n = 1_000
    with rig(tmp_path, broker) as r:
        started = time.monotonic()
        flood(r, [b"KAS\x01garbage"] * n, f"kiosk/{KIOSK_A}/captures")  # unauthenticated
        flood(r, [os.urandom(300) for _ in range(n)], f"kiosk/{KIOSK_A}/captures")  # unreadable
        flood(r, [b"XXX" + os.urandom(50) for _ in range(n)])  # neither a manifest nor a chunk
        elapsed = time.monotonic() - started
        counters = r.receiver.counters
    lines = [m for m in caplog.records if m.levelno >= logging.WARNING]
    print(f"{3 * n} junk messages in {elapsed:.1f} s: {len(lines)} log lines")
    assert counters.unauthenticated + counters.unreadable == 3 * n, "every one is counted"
    # One line a second per kiosk and kind, at most: three kinds.
    assert len(lines) <= 3 * (elapsed + 2), f"{len(lines)} lines for {3 * n} junk messages"
