"""Power loss under the receiver's capture store and the kiosk's session store, on crashfs
(tests/support/crashfs): what a store reported done is in every image a power cut can
leave, and comes back the same; what it reported erased stays erased. Each harness is also
run against a deliberately unsafe store and must catch it."""

from __future__ import annotations

import hashlib
import json
import random
import sqlite3
from pathlib import Path

import pytest

from agent.registration.store import SessionState, SessionStore
from receiver.chunks import ChunkAssembly
from receiver.store import CaptureStore
from tests.reliability.common import SOAK, integrity, rng
from tests.support.config import keys_for
from tests.support.crashfs.runner import Cut, cut_while_writing

CUTS = 200 if SOAK else 12
MUTATION_CUTS = 5
# The soak's hundreds of cuts take longer than the suite's 300 s per test.
pytestmark = pytest.mark.timeout(3600 if SOAK else 300)
#: The stores only grow, so an image is checked for its newest NEWEST reports and SAMPLE of the
#: older ones (a soak would otherwise spend its time re-reading the same files): a store never
#: rewrites what it finished, and each report was checked in full by the cuts after it.
NEWEST, SAMPLE = 1000, 200


def newest_and_sample(reports: dict[str, str], cut: Cut) -> dict[str, str]:
    items = list(reports.items())  # in the order reported
    if len(items) <= NEWEST + SAMPLE:
        return reports
    return dict(items[-NEWEST:] + random.Random(cut.number).sample(items[:-NEWEST], SAMPLE))


def check_receiver(cut: Cut) -> list[str]:
    """Every capture the store reported stored: its JSON names its image's hash, and the
    image has that hash (so a resend is answered "duplicate", never stored anew)."""
    problems = []
    stored = newest_and_sample(cut.before.get("stored"), cut)
    for image in cut.images:
        where = f"cut {cut.number} ({image.name})"
        store = CaptureStore(image / "out")
        lost, damaged = [], []
        for name, sha in stored.items():
            kiosk_id, item_id = name.split("/")
            image_path, meta_path = store.paths(kiosk_id, item_id, "png")
            try:
                meta = json.loads(meta_path.read_bytes())
                held = hashlib.sha256(image_path.read_bytes()).hexdigest()
            except FileNotFoundError:
                lost.append(name)
                continue
            except ValueError:
                damaged.append(name)
                continue
            if meta.get("image_sha256") != sha or held != sha:
                damaged.append(name)
        if lost:
            problems.append(f"{where}: lost {len(lost)} of {len(stored)} stored captures, e.g. {lost[:2]}")
        if damaged:
            problems.append(f"{where}: {len(damaged)} stored captures damaged, e.g. {damaged[:2]}")
    return problems


def check_chunks(cut: Cut) -> list[str]:
    """Every chunk reported held is whole on disk and indexed by a restarted receiver (unless
    its transfer was being finished); every finished transfer still answers its receipt."""
    finishing = set(cut.after.get("finishing"))
    held = newest_and_sample({k: v for k, v in cut.before.get("held").items()
                              if k.rsplit(":", 1)[0] not in finishing}, cut)
    finished = newest_and_sample(cut.before.get("finished"), cut)
    problems = []
    for image in cut.images:
        where = f"cut {cut.number} ({image.name})"
        assembly = ChunkAssembly(image / "out", quota_bytes=1 << 40)
        assembly.rebuild()
        lost, damaged = [], []
        for name, sha in held.items():
            transfer_key, index = name.rsplit(":", 1)
            transfer = assembly.lookup(*transfer_key.split("/"))
            if transfer is None or not transfer.has(int(index)):
                lost.append(name)
            elif hashlib.sha256((transfer.folder / f"{index}.part").read_bytes()).hexdigest() != sha:
                damaged.append(name)
        receipts = [k for k, sha in finished.items()
                    if hashlib.sha256(assembly.done_receipt(*k.split("/")) or b"").hexdigest() != sha]
        if lost:
            problems.append(f"{where}: lost {len(lost)} of {len(held)} held chunks, e.g. {lost[:2]}")
        if damaged:
            problems.append(f"{where}: {len(damaged)} held chunks damaged, e.g. {damaged[:2]}")
        if receipts:
            problems.append(f"{where}: lost the receipts of {len(receipts)} of {len(finished)} finished "
                            f"transfers, e.g. {receipts[:2]}")
    return problems


def check_sessions(cut: Cut) -> list[str]:
    """Every item the store reported saved has its capture id; erased sessions are gone."""
    erasing = set(cut.after.get("erasing"))
    saved = newest_and_sample({k: v for k, v in cut.before.get("saved").items()
                               if k.split(":")[0] not in erasing}, cut)
    erased = set(newest_and_sample(cut.before.get("erased"), cut))
    problems = []
    for image in cut.images:
        where = f"cut {cut.number} ({image.name})"
        path = image / "state" / "registrations.db"
        try:
            store = SessionStore(path)
        except sqlite3.DatabaseError as exc:
            problems.append(f"{where}: the session store does not open: {exc}")
            continue
        try:
            if aside := sorted(p.name for p in path.parent.glob("*.unreadable-*")):
                problems.append(f"{where}: sessions set aside as unreadable: {aside}")
            sessions = {sid: store.get(sid) for sid in {k.split(":")[0] for k in saved} | erased}
        except sqlite3.DatabaseError as exc:
            problems.append(f"{where}: the session store is damaged: {exc}")
            continue
        finally:
            store.close()
        if (verdict := integrity(path)) != "ok":
            problems.append(f"{where}: integrity_check says {verdict}")
        lost = sorted(k for k, capture_id in saved.items() if not _holds(sessions, k, capture_id))
        if lost:
            problems.append(f"{where}: lost {len(lost)} of {len(saved)} saved items, e.g. {lost[:2]}")
        if back := sorted(sid for sid in erased if sessions[sid] is not None):
            problems.append(f"{where}: {len(back)} erased sessions came back, e.g. {back[:2]}")
    return problems


def _holds(sessions: dict[str, SessionState | None], key: str, capture_id: str) -> bool:
    session_id, item = key.split(":")
    session = sessions[session_id]
    # An unsafe store can lose the item's row while keeping its session: that is a loss too.
    kept = session.items.get(item) if session is not None else None
    return kept is not None and kept.capture_id == capture_id


def run(tmp_path: Path, kind: str, cuts: int, mutation: str = ""
        ) -> tuple[dict[int, list[str]], int, dict[str, int]]:
    keys = keys_for(tmp_path, "k").kiosk_key.parent
    check = {"receiver": check_receiver, "chunks": check_chunks, "sessions": check_sessions}[kind]
    seed = rng(f"power-loss {kind} {mutation}".strip())
    problems, ledger, counts = cut_while_writing(tmp_path / "run", kind, keys, cuts, seed, check, mutation)
    reports = ledger.get({"receiver": "stored", "chunks": "held", "sessions": "saved"}[kind])
    assert len(reports) > cuts, f"the {kind} writer really wrote between the cuts"
    return problems, len(reports), counts


def caught_losing(problems: dict[int, list[str]]) -> list[int]:
    return [n for n, found in problems.items() if any("lost" in p for p in found)]


def test_receiver_store_keeps_every_stored_capture(tmp_path: Path) -> None:
    problems, stored, counts = run(tmp_path, "receiver", CUTS)
    found = [p for cut in problems.values() for p in cut]
    assert not found, "\n".join(found[:20])
    print(f"power-loss receiver: {CUTS} cuts, {2 * CUTS} images, {stored} captures stored, "
          f"{counts['fsync']} fsyncs and {counts['fsyncdir']} directory fsyncs seen; none lost or damaged")


def test_harness_catches_a_receiver_store_without_directory_fsync(tmp_path: Path) -> None:
    problems, stored, counts = run(tmp_path, "receiver", MUTATION_CUTS, "no-dirsync")
    caught = caught_losing(problems)
    # Left: one per new folder (make_dirs), none per capture.
    assert counts["fsyncdir"] < stored / 10, "the mutation removed the store's directory fsyncs"
    assert len(caught) == MUTATION_CUTS, problems
    print(f"power-loss receiver without directory fsync: {len(caught)} of {MUTATION_CUTS} cuts caught "
          f"losing captures ({stored} stored), e.g. {problems[caught[0]][0]}")


def test_chunk_assembly_keeps_every_held_chunk_and_receipt(tmp_path: Path) -> None:
    problems, held, counts = run(tmp_path, "chunks", CUTS)
    found = [p for cut in problems.values() for p in cut]
    assert not found, "\n".join(found[:20])
    print(f"power-loss chunks: {CUTS} cuts, {2 * CUTS} images, {held} chunks held, "
          f"{counts['fsyncdir']} directory fsyncs seen; none lost or damaged, every receipt kept")


def test_harness_catches_chunk_assembly_without_directory_fsync(tmp_path: Path) -> None:
    problems, held, _ = run(tmp_path, "chunks", MUTATION_CUTS, "no-dirsync")
    caught = caught_losing(problems)
    assert len(caught) == MUTATION_CUTS, problems
    print(f"power-loss chunks without directory fsync: {len(caught)} of {MUTATION_CUTS} cuts caught "
          f"losing chunks ({held} held), e.g. {problems[caught[0]][0]}")


def test_session_store_keeps_every_saved_item(tmp_path: Path) -> None:
    problems, saved, counts = run(tmp_path, "sessions", CUTS)
    found = [p for cut in problems.values() for p in cut]
    assert not found, "\n".join(found[:20])
    print(f"power-loss sessions: {CUTS} cuts, {2 * CUTS} images, {saved} items saved, "
          f"{counts['fsync']} fsyncs seen; none lost, no erased session back")


def test_harness_catches_a_session_store_without_fsync(tmp_path: Path) -> None:
    problems, saved, _ = run(tmp_path, "sessions", MUTATION_CUTS, "sync-off")
    caught = caught_losing(problems)
    assert len(caught) == MUTATION_CUTS, problems
    print(f"power-loss sessions, synchronous=OFF: {len(caught)} of {MUTATION_CUTS} cuts caught losing "
          f"items ({saved} saved), e.g. {problems[caught[0]][0]}")
