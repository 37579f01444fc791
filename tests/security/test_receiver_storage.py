"""The receiver's storage against a holder of a stolen kiosk key and a plain broker client.

Every attack runs against a real Receiver on a real mosquitto, with envelopes sealed with
real kiosk keys and published by a plain paho client (tests/support/hostile.py). Each test
fails if its hole reopens: ids that walk out of the kiosk's folder, a capture stored in
another kiosk's name and answered ``duplicate`` there, a stored capture overwritten, chunks
written for kiosks that are not enrolled or beyond a kiosk's quota, a chunk whose cost grows
with the chunks already held, reassembly that holds the whole item in memory, and a
registration whose failed assembly is never tried again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.capture.ids import is_item_id, uuid7
from agent.security.sealing import Sealer
from agent.transport.chunking import Chunk, Manifest, chunk_of, make_manifest
from devtools.broker import MosquittoBroker
from tests.support.hostile import (
    KIOSK_A,
    KIOSK_B,
    Rig,
    files_under,
    finger_captures,
    manifest_for,
    record,
    registration_manifest,
    rig,
    sealed_capture,
    sealed_manifest,
    sealers,
    security_warnings,
)
from tests.support.paths import ROOT
from tests.support.waiting import wait_until


def outside(r: Rig, before: set[Path], allowed: Path) -> list[Path]:
    """Files created since ``before`` anywhere under the test folder but in ``allowed``."""
    return sorted(p for p in files_under(r.tmp_path) - before if not p.is_relative_to(allowed))


# --- 1. path traversal --------------------------------------------------------------------

HOSTILE_IDS = ["../../tmp-x", "../kiosk-b/{uuid}", "{abs}", "..", "{uuid}/../../../x", "{upper}",
               "{uuid}\n", "{uuid}.png", "x" * 36, "registrations/{uuid}"]


@pytest.mark.parametrize("pattern", HOSTILE_IDS)
def test_a_hostile_capture_id_is_refused_and_writes_nothing(tmp_path: Path, broker: MosquittoBroker,
                                                           caplog: pytest.LogCaptureFixture,
                                                           pattern: str) -> None:
    caplog.set_level(logging.WARNING, "receiver")
    good = uuid7()
    hostile = pattern.format(uuid=good, upper=good.upper(), abs=str(tmp_path / "abs-target"))
    with rig(tmp_path, broker) as r:
        before = files_under(tmp_path)
        r.send(KIOSK_A, sealed_capture(r.sealers[KIOSK_A], record(KIOSK_A, hostile)))
        receipt = r.wire.receipt(hostile)
        r.settle()
    assert receipt["status"] == "rejected" and "not an item id" in receipt["reason"]
    assert outside(r, before, r.out / KIOSK_A) == [], "nothing written outside the kiosk's folder"
    assert len(files_under(r.out / KIOSK_A) - before) == 2, "only the settling capture was stored"
    assert r.receiver.counters.security_events == 1 and r.receiver.counters.stored == 1
    (warning,) = security_warnings(caplog)
    assert KIOSK_A in warning and "not an item id" in warning


def test_hostile_registration_ids_are_refused(tmp_path: Path, broker: MosquittoBroker,
                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "receiver")
    with rig(tmp_path, broker) as r:
        a, b = r.sealers[KIOSK_A], r.sealers[KIOSK_B]
        victim = record(KIOSK_B)  # kiosk B's genuine capture, stored first
        r.send(KIOSK_B, sealed_capture(b, victim))
        assert r.wire.receipt(victim.id)["status"] == "stored"
        before = files_under(tmp_path)
        # A registration id that walks out: its manifest and transaction would land outside.
        walker = registration_manifest(KIOSK_A, "../../../x", [])
        r.send(KIOSK_A, sealed_manifest(a, KIOSK_A, walker))
        # A manifest naming kiosk B's capture, to pull B's image into A's transaction.
        own = record(KIOSK_A, position=2)
        r.send(KIOSK_A, sealed_capture(a, own))
        puller = registration_manifest(KIOSK_A, uuid7(), [own, record(KIOSK_A, f"../{KIOSK_B}/{victim.id}")])
        r.send(KIOSK_A, sealed_manifest(a, KIOSK_A, puller))
        # A capture whose registration reference walks out (it names the folder assembly reads).
        tagged = record(KIOSK_A, registration={"id": f"../../{KIOSK_B}/registrations/x", "item": "finger-1"})
        r.send(KIOSK_A, sealed_capture(a, tagged))
        r.settle()
        receipts = {i: r.wire.receipt(i) for i in ("../../../x", puller["id"], tagged.id, own.id)}
    assert [receipts[i]["status"] for i in ("../../../x", puller["id"], tagged.id)] == ["rejected"] * 3
    assert receipts[own.id]["status"] == "stored"
    assert outside(r, before, r.out / KIOSK_A) == []
    assert not list((r.out / KIOSK_A).glob("registrations/*")), "no registration file for A at all"
    assert not (r.out / KIOSK_A / f"{tagged.id}.json").exists()
    assert r.receiver.counters.security_events == 3 and len(security_warnings(caplog)) >= 1


# --- 2. capture hijack --------------------------------------------------------------------


def test_another_kiosks_capture_cannot_be_taken_over(tmp_path: Path, broker: MosquittoBroker) -> None:
    """With kiosk A's key, ``../kiosk-b/X`` sent first used to be filed as B's capture X, so
    B's genuine X was answered ``duplicate`` (and deleted on B) while the file held A's image."""
    with rig(tmp_path, broker) as r:
        genuine = record(KIOSK_B, image=b"kiosk B's image" * 100)
        forged = record(KIOSK_A, f"../{KIOSK_B}/{genuine.id}", image=b"kiosk A's image" * 100)
        r.send(KIOSK_A, sealed_capture(r.sealers[KIOSK_A], forged))
        assert r.wire.receipt(forged.id)["status"] == "rejected"
        r.send(KIOSK_B, sealed_capture(r.sealers[KIOSK_B], genuine))
        assert r.wire.receipt(genuine.id)["status"] == "stored"
    assert (r.out / KIOSK_B / f"{genuine.id}.png").read_bytes() == genuine.image
    assert not (r.out / KIOSK_A / f"{genuine.id}.png").exists()


def test_the_same_id_with_other_content_is_refused_not_a_duplicate(tmp_path: Path, broker: MosquittoBroker,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "receiver")
    with rig(tmp_path, broker) as r:
        a = r.sealers[KIOSK_A]
        first = record(KIOSK_A, image=b"first" * 400)
        r.send(KIOSK_A, sealed_capture(a, first))
        assert r.wire.receipt(first.id)["status"] == "stored"
        other = record(KIOSK_A, first.id, image=b"other" * 400, seq=2)
        r.send(KIOSK_A, sealed_capture(a, other))
        r.send(KIOSK_A, sealed_capture(a, first))  # a genuine resend: at-least-once delivery
        manifest = registration_manifest(KIOSK_A, uuid7(), [first])
        r.send(KIOSK_A, sealed_manifest(a, KIOSK_A, manifest))
        r.send(KIOSK_A, sealed_manifest(a, KIOSK_A, {**manifest, "applicant_ref": "SOMEONE-ELSE"}, seq=3))
        r.settle()
        statuses = [x["status"] for x in r.wire.receipts_for(first.id)]
        manifest_statuses = [x["status"] for x in r.wire.receipts_for(manifest["id"])]
    assert statuses == ["stored", "rejected", "duplicate"]
    assert "other content" in r.wire.receipts_for(first.id)[1]["reason"]
    assert manifest_statuses == ["stored", "rejected"]
    assert (r.out / KIOSK_A / f"{first.id}.png").read_bytes() == first.image, "never overwritten"
    kept = r.out / KIOSK_A / "registrations" / f"{manifest['id']}.manifest.json"
    assert b"SOMEONE-ELSE" not in kept.read_bytes()
    assert r.receiver.counters.security_events == 2
    assert security_warnings(caplog) and "other content" in security_warnings(caplog)[0]


# --- hostile fields, generated ------------------------------------------------------------

PIECES = ["..", ".", "/", "\\", "kiosk-b", "registrations", ".chunks", "\x00", "%2e%2e", "~", "*", "+", "#"]
hostile_ids = st.one_of(
    st.lists(st.sampled_from(PIECES + ["{uuid}"]), min_size=1, max_size=6).map("".join),
    st.lists(st.sampled_from(PIECES + ["{uuid}"]), min_size=1, max_size=4).map("/".join),
    st.text(min_size=0, max_size=40),
).map(lambda s: s.replace("{uuid}", uuid7())).filter(lambda s: not is_item_id(s))


def test_verified_envelopes_with_hostile_fields_never_escape(tmp_path: Path, broker: MosquittoBroker) -> None:
    with rig(tmp_path, broker) as r:
        a = r.sealers[KIOSK_A]
        baseline = files_under(tmp_path)

        @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
        @given(item_id=hostile_ids,
               header_kiosk=st.sampled_from([KIOSK_A, KIOSK_A, KIOSK_B, "../kiosk-b", "."]),
               inner_kiosk=st.sampled_from([KIOSK_A, KIOSK_A, "../kiosk-b", KIOSK_B]),
               kind=st.sampled_from(["capture", "registration", "../capture", ""]),
               registration=st.one_of(st.none(), hostile_ids), valid_id=st.booleans())
        def attack(item_id: str, header_kiosk: str, inner_kiosk: str, kind: str, registration: str | None,
                   valid_id: bool) -> None:
            # At least one field is hostile: the id itself, or (with a valid id) the
            # registration reference or a kiosk id.
            if valid_id and not registration and KIOSK_A == header_kiosk == inner_kiosk:
                registration = item_id or ".."
            item = uuid7() if valid_id else item_id
            if kind == "registration":
                inner = registration_manifest(inner_kiosk, item, [record(KIOSK_A, registration or uuid7())])
                payload = sealed_manifest(a, header_kiosk, inner)
            else:
                rec = record(inner_kiosk, item, registration={"id": registration} if registration else None)
                payload = sealed_capture(a, rec, header_kiosk=header_kiosk, kind=kind)
            r.send(KIOSK_A, payload)
            r.settle()
            answered = [x["status"] for x in r.wire.receipts_for(item)]
            assert not {"stored", "duplicate"} & set(answered), f"{item!r} answered {answered}"
            for path in files_under(tmp_path) - baseline:
                # Only the settling captures: <kiosk A>/<a valid id>.png|.json.
                assert path.parent == r.out / KIOSK_A and is_item_id(path.name.rsplit(".", 1)[0]), path

        attack()


# --- 3. chunks ----------------------------------------------------------------------------


def chunked_capture(sealer: Sealer, kiosk_id: str, image_bytes: int,
                    chunk_size: int) -> tuple[bytes, Manifest]:
    """A genuine sealed capture and its chunk manifest (the manifest names the capture's id)."""
    rec = record(kiosk_id, image=os.urandom(image_bytes))
    payload = sealed_capture(sealer, rec)
    return payload, make_manifest(rec.id, kiosk_id, rec.seq, "capture", payload, chunk_size)


def test_chunks_for_a_kiosk_that_is_not_enrolled_are_not_written(tmp_path: Path, broker: MosquittoBroker,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "receiver")
    big = Manifest(uuid7(), "ghost", 1, "capture", 40 << 20, "ab" * 32, 1 << 20,
                   tuple(hashlib.sha256(bytes([i])).digest() for i in range(40)))
    with rig(tmp_path, broker) as r:
        before = files_under(tmp_path)
        r.send("ghost", big.encode(r.sealers[KIOSK_A]), "chunks")  # a stolen key, an unknown name
        r.send("ghost", Chunk(big.id, "ghost", big.sha256, 0, big.count, b"x" * (1 << 20)).encode(), "chunks")
        r.settle()
    assert outside(r, before, r.out / KIOSK_A) == [] and not (r.out / ".chunks").exists()
    assert [s for k, s in r.wire.statuses if k == "ghost"] == [], "not answered either"
    assert r.receiver.counters.security_events == 2
    assert "ghost" in security_warnings(caplog)[0] and "not enrolled" in security_warnings(caplog)[0]


def test_a_kiosks_chunk_quota_is_enforced_without_touching_other_kiosks(
        tmp_path: Path, broker: MosquittoBroker, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "receiver")
    size = 1 << 20  # the smallest quota the config accepts
    with rig(tmp_path, broker, chunk_quota_bytes=size) as r:
        a, b = r.sealers[KIOSK_A], r.sealers[KIOSK_B]
        first, m1 = chunked_capture(a, KIOSK_A, 600_000, 65536)
        second, m2 = chunked_capture(a, KIOSK_A, 600_000, 65536)
        _, mb = chunked_capture(b, KIOSK_B, 600_000, 65536)
        r.send(KIOSK_A, m1.encode(a), "chunks")
        for index in range(m1.count - 1):
            r.send(KIOSK_A, chunk_of(m1, first, index).encode(), "chunks")
        r.send(KIOSK_A, m2.encode(a), "chunks")  # would not fit beside the first
        r.send(KIOSK_B, mb.encode(b), "chunks")  # another kiosk's quota is its own
        r.settle()
        answered = {s["id"] for _, s in r.wire.statuses}
        held_a = sorted(p.name for p in (r.out / ".chunks" / KIOSK_A).rglob("*"))
        assert m1.id in answered and mb.id in answered and m2.id not in answered
        assert not any(name.startswith(m2.id) for name in held_a), "nothing written for the refused one"
        assert r.receiver.counters.over_quota == 1
        assert any("quota" in m and KIOSK_A in m for m in caplog.messages)
        # The first completes: its chunks are freed, and the second fits now.
        r.send(KIOSK_A, chunk_of(m1, first, m1.count - 1).encode(), "chunks")
        assert r.wire.receipt(m1.id)["status"] == "stored"
        r.send(KIOSK_A, m2.encode(a), "chunks")
        wait_until(lambda: m2.id in {s["id"] for _, s in r.wire.statuses}, what="the second one accepted")
        for index in range(m2.count):
            r.send(KIOSK_A, chunk_of(m2, second, index).encode(), "chunks")
        assert r.wire.receipt(m2.id)["status"] == "stored"
    assert (r.out / ".chunks" / KIOSK_B / f"{mb.key}" / "manifest").exists(), "kiosk B's transfer untouched"


@pytest.fixture
def fast_disk(tmp_path: Path) -> Iterator[Path]:
    """A folder in memory (tmpfs) where there is one: fsync costs nothing there, so what a
    chunk costs is the receiver's own work, which is what must not grow."""
    shm = Path("/dev/shm")
    usable = shm.is_dir() and os.access(shm, os.W_OK)
    folder = Path(tempfile.mkdtemp(dir=shm)) if usable else tmp_path / "fast"
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_a_chunk_costs_the_same_however_many_are_held(tmp_path: Path, broker: MosquittoBroker,
                                                      fast_disk: Path) -> None:
    """15,000 one-byte chunks once delayed a genuine capture by two minutes: each chunk
    listed the transfer's folder. Batches of chunks must take as long late as early."""
    count, batch = 10_000, 1_000
    payload = os.urandom(count)
    manifest = manifest_for(KIOSK_A, payload, 1)
    with rig(tmp_path, broker, fast_disk) as r:
        r.send(KIOSK_A, manifest.encode(r.sealers[KIOSK_A]), "chunks")
        wait_until(lambda: r.wire.statuses, what="the manifest answered")
        times = []
        for start in range(0, count - 1, batch):  # the last chunk never comes: no reassembly
            t0 = time.monotonic()
            indexes = range(start, min(start + batch, count - 1))
            for index in indexes:
                chunk = chunk_of(manifest, payload, index).encode()
                r.wire.client.publish(f"kiosk/{KIOSK_A}/chunks", chunk, qos=1)
            wait_until(lambda n=indexes.stop: r.receiver.counters.chunks_received >= n, timeout_s=120,
                       what="the batch stored")
            times.append(time.monotonic() - t0)
        t0 = time.monotonic()
        r.settle()
        capture_delay = time.monotonic() - t0
    first, last = sum(times[:2]) / 2, sum(times[-2:]) / 2
    print(f"{count - 1} one-byte chunks in batches of {batch}: first batches {first:.2f} s, last "
          f"{last:.2f} s; a genuine capture afterwards answered in {capture_delay * 1000:.0f} ms")
    assert last < 2 * first, f"chunk cost grew with chunks held: {times}"


STREAM_SCRIPT = """
import os, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from agent.transport.chunking import Manifest
from receiver import store
if not hasattr(store, "ChunkAssembly"):
    from receiver.chunks import ChunkAssembly
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
base = hwm()  # after every import: what follows is the reassembly's own
if hasattr(store, "ChunkAssembly"):  # the code before streaming: joined the chunks in memory
    folder = next(Path(sys.argv[2], ".chunks").glob("*/*"))
    m = Manifest.decode((folder / "manifest").read_bytes())
    whole, bad = store.ChunkAssembly(sys.argv[2]).assemble(folder.parent.name, m)
    ok = whole is not None and len(whole) == m.size
else:
    a = ChunkAssembly(sys.argv[2], 1 << 40)
    a.rebuild()
    (t,) = a._transfers.values()
    path, bad = a.assemble(t)
    ok = path is not None and not bad and os.path.getsize(path) == t.size
print(ok, base, hwm())
"""


def test_reassembly_streams_instead_of_holding_the_item(tmp_path: Path) -> None:
    """A 64 MiB transfer in 1 MiB chunks is reassembled with about one chunk in memory."""
    size, chunk_size = 64 << 20, 1 << 20
    folder = tmp_path / "out" / ".chunks" / KIOSK_A
    whole, digests = hashlib.sha256(), []
    item = uuid7()
    parts = folder / "tmp"
    parts.mkdir(parents=True)
    for index in range(size // chunk_size):
        data = hashlib.sha256(str(index).encode()).digest() * (chunk_size // 32)
        whole.update(data)
        digests.append(hashlib.sha256(data).digest())
        (parts / f"{index}.part").write_bytes(data)
    manifest = Manifest(item, KIOSK_A, 1, "capture", size, whole.hexdigest(), chunk_size, tuple(digests))
    (parts / "manifest").write_bytes(manifest.encode(sealers(tmp_path)[KIOSK_A]))
    parts.rename(folder / manifest.key)
    site = str(Path(__import__("receiver").__file__).parent.parent)
    # Its own process: the peak (VmHWM) of this one would include the test run's.
    done = subprocess.run([sys.executable, "-c", STREAM_SCRIPT, site, str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    ok, base, peak = done.stdout.split()
    grew = int(peak) - int(base)
    print(f"reassembling {size >> 20} MiB in {chunk_size >> 20} MiB chunks raised the peak RSS by "
          f"{grew / 2**20:.1f} MiB")
    assert ok == "True" and grew < 16 << 20, f"peak grew by {grew / 2**20:.0f} MiB"


# --- 4. a failed registration assembly is retried -----------------------------------------


def send_registration(r: Rig, captures: list[Any], registration_id: str) -> None:
    """A registration's captures (tagged with it) and then its manifest, from kiosk A."""
    tagged = [dataclasses.replace(c, registration={"id": registration_id, "item": f"finger-{c.position}"})
              for c in captures]
    for capture in tagged:
        r.send(KIOSK_A, sealed_capture(r.sealers[KIOSK_A], capture))
    manifest = registration_manifest(KIOSK_A, registration_id, tagged)
    r.send(KIOSK_A, sealed_manifest(r.sealers[KIOSK_A], KIOSK_A, manifest, seq=len(tagged) + 1))
    for item in [*(c.id for c in tagged), registration_id]:
        assert r.wire.receipt(item)["status"] == "stored", "a part's receipt never waits on assembly"


def assembly_errors(caplog: pytest.LogCaptureFixture, registration_id: str) -> list[str]:
    return [m.getMessage() for m in caplog.records
            if m.levelno == logging.ERROR and registration_id in m.getMessage()]


def test_a_failed_assembly_is_retried_without_any_new_part(tmp_path: Path, broker: MosquittoBroker,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "receiver")
    captures = finger_captures(KIOSK_A, [1, 2])
    registration_id = uuid7()
    with rig(tmp_path, broker, assembly_retry_s=0.3, assembly_retry_max_s=0.6) as r:
        folder = r.out / KIOSK_A / "registrations"
        folder.mkdir(parents=True)
        # A real failure, even for root: a directory where the transaction file must go.
        (folder / f"{registration_id}.an2").mkdir()
        send_registration(r, captures, registration_id)
        wait_until(lambda: assembly_errors(caplog, registration_id), what="the failure logged")
        time.sleep(1.5)  # the fault stays: retries keep failing, with backoff
        error = (folder / f"{registration_id}.error.json")
        record_while_failing = error.read_text() if error.exists() else ""
        status_while_failing = r.receiver.registrations.status(KIOSK_A, registration_id)
        assert not (folder / f"{registration_id}.complete.json").exists()
        (folder / f"{registration_id}.an2").rmdir()  # the fault clears; no part is sent again
        wait_until(lambda: (folder / f"{registration_id}.complete.json").exists(), timeout_s=10,
                   what="completed by a retry of the receiver's own")
        wait_until(lambda: r.receiver.counters.assembly_recovered == 1, what="the recovery counted")
        failures = r.receiver.counters.assembly_failures
    assert '"state": "incomplete"' in record_while_failing and "IsADirectoryError" in record_while_failing
    assert status_while_failing == "failed" and 3 <= failures <= 8, "retried, with backoff"
    assert not error.exists() and (folder / f"{registration_id}.an2").stat().st_size > 0
    assert "incomplete" in assembly_errors(caplog, registration_id)[0]


def test_a_failed_assembly_is_retried_after_a_restart(tmp_path: Path, broker: MosquittoBroker,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    captures = finger_captures(KIOSK_A, [3])
    registration_id = uuid7()
    with rig(tmp_path, broker, assembly_retry_s=3600, assembly_retry_max_s=3600) as r:
        folder = r.out / KIOSK_A / "registrations"
        folder.mkdir(parents=True)
        (folder / f"{registration_id}.an2").mkdir()
        send_registration(r, captures, registration_id)
        wait_until(lambda: assembly_errors(caplog, registration_id), what="the failure logged")
        r.receiver.stop()
        (folder / f"{registration_id}.an2").rmdir()
        r.start()  # the next retry would be an hour away: the restart must pick it up
        wait_until(lambda: (folder / f"{registration_id}.complete.json").exists(), timeout_s=10,
                   what="completed after the restart")
    assert not (folder / f"{registration_id}.error.json").exists()
