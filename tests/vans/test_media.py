"""Registrations carried on a removable drive: export on the van, import at the office through
the real receiver, receipts back to the van; and what a pulled, full, foreign or tampered
drive does (docs/vans.md). Everything real: the agent's queue and keys, the receiver's store,
the command line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.capture.ids import uuid7
from agent.lock import StateLock
from agent.media.medium import Index, IndexEntry, sign_index
from agent.security.keys import create_signing_key, load_receipt_signing_key, load_signing_key
from agent.transport.durable_queue import DurableQueue
from agent.transport.receipts import Receipt, ReceiptSigner
from devtools.broker import MosquittoBroker
from receiver.service import Receiver
from tests.support.config import receiver_config
from tests.support.waiting import wait_until
from tests.vans.van import (
    APPLICANT,
    ITEMS,
    KIOSK,
    WHERE,
    Van,
    central_import,
    export,
    import_receipts,
)

Cap = pytest.CaptureFixture[str]


def queued(van: Van) -> int:
    queue = DurableQueue(van.root / "state" / "queue.db", max_bytes=1 << 34, min_free_bytes=0)
    try:
        return queue.totals()[0]
    finally:
        queue.close()


def stored(van: Van) -> set[str]:
    return {p.stem for p in (van.out / KIOSK).glob("*.json")}


def complete(van: Van) -> bool:
    return (van.out / KIOSK / "registrations" / f"{van.registration_id}.complete.json").exists()


# --- the round trip ---------------------------------------------------------------------------


def test_round_trip_export_import_receipts(van: Van, capsys: Cap) -> None:
    assert queued(van) == ITEMS
    code, summary, _ = export(van, capsys)
    assert code == 0 and summary["ok"] and summary["items"] == summary["written"] == ITEMS
    assert queued(van) == ITEMS, "export removes nothing from the queue"
    assert len(van.items()) == ITEMS and not (van.folder / ".exporting").exists()
    code, result, err = central_import(van, capsys)
    (kiosk,) = result["kiosks"]
    assert code == 0 and result["ok"], err
    assert kiosk["stored"] == ITEMS and kiosk["receipts_written"] == ITEMS and kiosk["not_imported"] == 0
    assert complete(van), "the registration was assembled as if it had come over MQTT"
    registrations = van.out / KIOSK / "registrations"
    manifest = json.loads((registrations / f"{van.registration_id}.manifest.json").read_text())
    assert set(manifest["clock"]) >= {"trusted", "wrong", "synchronized", "source", "reason"}
    assert manifest["position"]["fix"] is True and manifest["position"]["source"] == "nmea"
    assert (manifest["position"]["lat"], manifest["position"]["lon"]) == pytest.approx(WHERE, abs=1e-5)
    # Nothing in clear on the drive: no image, no applicant reference.
    image = next((van.out / KIOSK).glob("*.png")).read_bytes()
    for path in van.folder.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert image[64:4096] not in data and APPLICANT.encode() not in data, path
    code, applied, err = import_receipts(van, capsys)
    assert code == 0 and applied["ok"], err
    assert applied["deleted"] == ITEMS and applied["refused"] == {} and applied["waiting"] == 0
    assert queued(van) == 0
    # Again: stored once (duplicates), and the kiosk has nothing more to delete.
    code, again, _ = central_import(van, capsys)
    assert code == 0 and again["kiosks"][0]["duplicate"] == ITEMS and again["kiosks"][0]["stored"] == 0
    assert len(stored(van)) == ITEMS - 1  # the manifest is filed as a registration, not a capture
    code, applied, _ = import_receipts(van, capsys)
    assert code == 0 and applied["already_gone"] == ITEMS and applied["deleted"] == 0
    # The next export has nothing to carry, and clears the settled copies off the drive.
    code, summary, _ = export(van, capsys)
    assert code == 0 and summary["items"] == 0 and summary["removed"] == ITEMS and van.items() == []


def test_what_arrives_both_ways_is_stored_once(van: Van, capsys: Cap,
                                               broker: MosquittoBroker) -> None:
    assert export(van, capsys)[0] == 0
    code, result, _ = central_import(van, capsys)
    assert code == 0 and result["kiosks"][0]["stored"] == ITEMS
    before = {p: p.stat().st_mtime_ns for p in (van.out / KIOSK).rglob("*") if p.is_file()}
    # The van comes back into coverage before its receipts are applied: it sends everything.
    from agent.daemon import Agent

    config = van.agent_config(broker.port)
    receiver = Receiver(receiver_config(van.out, config, "r-mqtt"))
    receiver.start()
    agent = Agent(config)
    try:
        wait_until(lambda: receiver.link.subscribed, what="receiver subscribed")
        agent.start()
        wait_until(lambda: agent.queue is not None and agent.queue.totals()[0] == 0, 30,
                   what="the queue drained over MQTT")
    finally:
        agent.stop()
        receiver.stop()
    assert receiver.counters.duplicates == ITEMS - 1 and receiver.counters.stored == 0
    after = {p: p.stat().st_mtime_ns for p in (van.out / KIOSK).rglob("*") if p.is_file()
             and not p.name.endswith(".status.json")}
    assert {p: before[p] for p in after} == after, "nothing stored twice or rewritten"
    # The drive's receipts now find nothing left to delete, and are no attack either.
    code, applied, err = import_receipts(van, capsys)
    assert code == 0 and applied["already_gone"] == ITEMS and applied["refused"] == {}, err


def test_export_while_the_agent_runs_says_to_stop_it(van: Van, capsys: Cap) -> None:
    with StateLock(van.root / "state"):
        code, summary, err = export(van, capsys)
    assert code == 1 and "stop it first" in summary["error"] and not van.folder.exists()


# --- a pulled drive -----------------------------------------------------------------------------


def test_a_pulled_drive_is_detected_and_a_rerun_completes_it(van: Van, capsys: Cap) -> None:
    assert export(van, capsys)[0] == 0
    # What a drive pulled mid-export holds: the marker, no index yet, one item cut short,
    # one never written, a temporary file.
    marker = {"export_id": uuid7(), "nonce": "ab" * 16}
    (van.folder / ".exporting").write_text(json.dumps(marker))
    (van.folder / "index.kmi").unlink()
    first, second = van.items()[:2]
    first.write_bytes(first.read_bytes()[:100])
    second.unlink()
    (van.folder / "items" / f".tmp-{uuid7()}.kas").write_bytes(b"half")
    code, result, _ = central_import(van, capsys)
    (kiosk,) = result["kiosks"]
    assert code == 1 and "index.kmi" in kiosk["error"] and "missing" in kiosk["error"]
    assert stored(van) == set(), "nothing imported from an export without its index"
    code, summary, _ = export(van, capsys)
    assert code == 0 and summary["continued"] and summary["export_id"] == marker["export_id"]
    assert summary["written"] == 2 and summary["already_there"] == ITEMS - 2 and summary["removed"] == 1
    code, result, _ = central_import(van, capsys)
    assert code == 0 and result["kiosks"][0]["stored"] == ITEMS and complete(van)
    assert import_receipts(van, capsys)[1]["deleted"] == ITEMS


def test_items_cut_short_after_the_index_are_not_imported(van: Van, capsys: Cap) -> None:
    assert export(van, capsys)[0] == 0
    victim = van.items()[3]
    victim.write_bytes(victim.read_bytes()[:-1])
    code, result, _ = central_import(van, capsys)
    (kiosk,) = result["kiosks"]
    assert code == 1 and kiosk["stored"] == ITEMS - 1 and kiosk["not_imported"] == 1
    assert victim.stem in kiosk["problems"][0] and "rerun the export" in kiosk["problems"][0]
    assert victim.stem not in stored(van)
    code, applied, _ = import_receipts(van, capsys)
    assert code == 0 and applied["deleted"] == ITEMS - 1 and applied["waiting"] == 1
    assert queued(van) == 1, "the item without a receipt stays"


# --- a full drive ---------------------------------------------------------------------------------


@pytest.fixture
def small_drive(tmp_path: Path) -> Iterator[Path]:
    """A real file system that fills up: a 160 KiB tmpfs (mounting needs root, which the
    test machines and CI have; without it the test fails, saying why: never skipped)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(mount)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        why = done.stderr.strip() or f"exit {done.returncode}"
        pytest.fail(f"cannot mount the 160 KiB tmpfs this test fills ({why}; running as uid "
                    f"{os.geteuid()}): run the van tests as root, as the test machines and CI do")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_drive_carries_what_fits_and_loses_nothing(van: Van, small_drive: Path,
                                                           capsys: Cap) -> None:
    code, summary, err = export(van, capsys, small_drive)
    assert code == 1 and not summary["ok"] and "is full" in summary["error"] and "is full" in err
    assert 0 < summary["items"] < ITEMS, "what fitted is listed in the index"
    assert queued(van) == ITEMS
    code, result, _ = central_import(van, capsys, small_drive)
    (kiosk,) = result["kiosks"]
    assert kiosk["stored"] == kiosk["listed"] == summary["items"] and kiosk["not_imported"] == 0
    assert "interrupted" in kiosk["warnings"][0]
    carried = summary["items"]
    assert import_receipts(van, capsys, small_drive)[1]["deleted"] == carried
    # The same drive again: the settled copies make room for the rest.
    while queued(van):
        code, summary, _ = export(van, capsys, small_drive)
        assert summary["items"] > 0, "each trip carries something"
        assert central_import(van, capsys, small_drive)[0] == 0
        assert import_receipts(van, capsys, small_drive)[1]["deleted"] == summary["items"]
    assert complete(van) and len(stored(van)) == ITEMS - 1


# --- foreign and tampered drives -----------------------------------------------------------------


def test_a_tampered_item_is_not_imported(van: Van, capsys: Cap) -> None:
    assert export(van, capsys)[0] == 0
    victim = van.items()[0]
    data = bytearray(victim.read_bytes())
    data[-10] ^= 1
    victim.write_bytes(bytes(data))
    code, result, _ = central_import(van, capsys)
    (kiosk,) = result["kiosks"]
    assert code == 1 and kiosk["not_imported"] == 1 and kiosk["stored"] == ITEMS - 1
    assert "altered" in kiosk["problems"][0]


def test_an_envelope_matching_a_doctored_index_is_still_verified(van: Van, capsys: Cap) -> None:
    """With the kiosk's key stolen, the index can be made to match any bytes: the receiver's
    own checks still refuse an envelope that does not decrypt and verify."""
    assert export(van, capsys)[0] == 0
    victim = van.items()[0]
    data = bytearray(victim.read_bytes())
    data[-10] ^= 1
    victim.write_bytes(bytes(data))
    resign(van, lambda e: IndexEntry(e.id, e.kind, e.seq, len(data), _sha(bytes(data)))
           if e.id == victim.stem else e)
    code, result, _ = central_import(van, capsys)
    (kiosk,) = result["kiosks"]
    assert code == 1 and kiosk["not_imported"] == 1 and "does not verify" in kiosk["problems"][0]
    assert victim.stem not in stored(van)


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def resign(van: Van, change: Any, key_path: Path | None = None) -> None:
    """Rewrite the drive's index with ``change`` applied to each entry, signed with the
    kiosk's key (or ``key_path``'s): what a holder of a stolen kiosk key can do."""
    from agent.media.medium import verify_index

    key = load_signing_key(key_path or van.root / "keys" / "kiosk.key")
    own = load_signing_key(van.root / "keys" / "kiosk.key").public_key()
    index = verify_index((van.folder / "index.kmi").read_bytes(), {KIOSK: own}, KIOSK)
    doctored = Index(index.kiosk_id, index.export_id, index.nonce, index.created_at, index.signer,
                     tuple(change(e) for e in index.items))
    (van.folder / "index.kmi").write_bytes(sign_index(doctored, lambda c, m: key.sign(c + m)))


def test_a_stolen_kiosk_key_cannot_swap_a_capture_for_its_receipt(van: Van, capsys: Cap) -> None:
    """Whoever holds the kiosk's key can put another capture under a genuine id on the drive
    and sign an index naming it; the central side stores that one (first come). Its receipt
    names those bytes, not the ones the kiosk holds: the kiosk keeps its genuine capture."""
    from agent.security.keys import load_encryption_public
    from agent.security.sealing import Sealer, read_header
    from tests.support.hostile import record, sealed_capture

    assert export(van, capsys)[0] == 0
    victim = next(p for p in van.items() if read_header(p.read_bytes()).kind == "capture")
    sealer = Sealer(load_signing_key(van.root / "keys" / "kiosk.key"),
                    load_encryption_public(van.root / "keys" / "central.key.pub"))
    forged = sealed_capture(sealer, record(KIOSK, victim.stem, image=b"not the person" * 100,
                                           seq=read_header(victim.read_bytes()).seq))
    victim.write_bytes(forged)
    resign(van, lambda e: IndexEntry(e.id, e.kind, e.seq, len(forged), _sha(forged))
           if e.id == victim.stem else e)
    code, result, _ = central_import(van, capsys)
    assert result["kiosks"][0]["stored"] == ITEMS  # the receiver cannot tell: the key signed it
    code, applied, _ = import_receipts(van, capsys)
    assert applied["deleted"] == ITEMS - 1 and applied["changed"] == 1
    assert applied["refused"] == {"not_in_flight": 1} and code == 1
    assert queued(van) == 1, "the genuine capture stays for support"


def test_an_index_not_signed_by_the_kiosk_imports_nothing(van: Van, capsys: Cap,
                                                           tmp_path: Path) -> None:
    assert export(van, capsys)[0] == 0
    create_signing_key(tmp_path / "other.key")
    resign(van, lambda e: e, tmp_path / "other.key")
    code, result, _ = central_import(van, capsys)
    assert code == 1 and "not signed by kiosk van-07's key" in result["kiosks"][0]["error"]
    assert stored(van) == set() and not list(van.folder.glob("receipts-*"))


@pytest.mark.parametrize("hostile", ["../../../escape", "/etc/passwd", "items/../../x", "ABC"])
def test_path_traversal_in_a_signed_index_is_refused(van: Van, capsys: Cap,
                                                     hostile: str) -> None:
    assert export(van, capsys)[0] == 0
    resign(van, lambda e: IndexEntry(hostile, e.kind, e.seq, e.size, e.sha256))
    code, result, _ = central_import(van, capsys)
    assert code == 1 and "malformed entry" in result["kiosks"][0]["error"] and stored(van) == set()


def test_foreign_folders_and_unknown_kiosks_are_refused(van: Van, capsys: Cap) -> None:
    assert export(van, capsys)[0] == 0
    # Another kiosk's export, signed by a key nobody enrolled, and a folder no export makes.
    stranger = van.drive / "kiosk-media" / "van-99"
    shutil.copytree(van.folder, stranger)
    (van.drive / "kiosk-media" / "not a kiosk").mkdir()
    code, result, _ = central_import(van, capsys)
    by_folder = {Path(k["folder"]).name: k for k in result["kiosks"]}
    assert code == 1 and by_folder[KIOSK]["ok"] and by_folder[KIOSK]["stored"] == ITEMS
    assert "not a kiosk id" in by_folder["not a kiosk"]["error"]
    assert "not enrolled" in by_folder["van-99"]["error"]
    assert not (van.out / "van-99").exists()


def test_symlinks_on_the_drive_are_not_followed(van: Van, capsys: Cap,
                                               tmp_path: Path) -> None:
    assert export(van, capsys)[0] == 0
    victim = van.items()[0]
    outside = tmp_path / "outside.kas"
    shutil.move(victim, outside)
    victim.symlink_to(outside)  # the genuine bytes, but off the drive
    code, result, _ = central_import(van, capsys)
    (kiosk,) = result["kiosks"]
    assert code == 1 and kiosk["not_imported"] == 1 and "symbolic link" in kiosk["problems"][0]
    # A whole folder as a link: refused before anything in it is read.
    items = van.folder / "items"
    shutil.move(items, tmp_path / "items-elsewhere")
    items.symlink_to(tmp_path / "items-elsewhere")
    code, result, _ = central_import(van, capsys)
    assert code == 1 and "symbolic link" in result["kiosks"][0]["error"]


def test_a_huge_file_is_refused_without_reading_it(van: Van, capsys: Cap) -> None:
    assert export(van, capsys)[0] == 0
    victim = van.items()[0]
    with open(victim, "r+b") as fh:
        fh.truncate(64 * 1024 ** 3)  # sparse: 64 GiB that a reader would wait for
    code, result, _ = central_import(van, capsys)
    (kiosk,) = result["kiosks"]
    assert code == 1 and "over the limit" in kiosk["problems"][0] and kiosk["stored"] == ITEMS - 1


# --- receipts coming back ---------------------------------------------------------------------------


def test_receipts_from_an_untrusted_key_delete_nothing(van: Van, capsys: Cap,
                                                       tmp_path: Path) -> None:
    assert export(van, capsys)[0] == 0
    assert central_import(van, capsys)[0] == 0
    receipts = next(van.folder.glob("receipts-*.kar"))
    genuine = _receipts(receipts, van)
    create_signing_key(tmp_path / "forger.key")
    forger = ReceiptSigner(load_signing_key(tmp_path / "forger.key"))
    receipts.write_bytes(forger.sign(KIOSK, genuine))
    code, summary, err = import_receipts(van, capsys)
    assert code == 1 and "unknown_key" in summary["error"] and "Nothing was deleted" in err
    assert queued(van) == ITEMS


def test_altered_receipts_delete_nothing(van: Van, capsys: Cap) -> None:
    """Genuine key id, altered content: the signature no longer verifies."""
    assert export(van, capsys)[0] == 0
    assert central_import(van, capsys)[0] == 0
    receipts = next(van.folder.glob("receipts-*.kar"))
    receipts.write_bytes(receipts.read_bytes().replace(b'"office-1"', b'"office-2"', 1))
    code, summary, _ = import_receipts(van, capsys)
    assert code == 1 and "bad_signature" in summary["error"] and queued(van) == ITEMS


def test_receipts_for_another_kiosk_delete_nothing(van: Van, capsys: Cap) -> None:
    assert export(van, capsys)[0] == 0
    assert central_import(van, capsys)[0] == 0
    receipts = next(van.folder.glob("receipts-*.kar"))
    signer = ReceiptSigner(load_receipt_signing_key(van.root / "keys" / "receipt-signing.key"))
    receipts.write_bytes(signer.sign("van-08", _receipts(receipts, van)))
    code, summary, _ = import_receipts(van, capsys)
    assert code == 1 and "wrong_kiosk" in summary["error"] and queued(van) == ITEMS


def test_receipts_of_an_earlier_export_settle_nothing_in_a_later_one(
        van: Van, capsys: Cap) -> None:
    assert export(van, capsys)[0] == 0
    assert central_import(van, capsys)[0] == 0
    (old,) = van.folder.glob("receipts-*.kar")
    code, summary, err = export(van, capsys)  # a new export: a new id and nonce
    assert code == 0 and "supersedes" in err and old.name != f"receipts-{summary['export_id']}.kar"
    shutil.copy(old, van.folder / f"receipts-{summary['export_id']}.kar")  # replayed under the new name
    code, applied, _ = import_receipts(van, capsys)
    assert code == 1 and applied["refused"] == {"stale_nonce": ITEMS} and applied["deleted"] == 0
    assert queued(van) == ITEMS


def test_receipts_naming_other_bytes_delete_nothing(van: Van, capsys: Cap) -> None:
    assert export(van, capsys)[0] == 0
    assert central_import(van, capsys)[0] == 0
    receipts = next(van.folder.glob("receipts-*.kar"))
    signer = ReceiptSigner(load_receipt_signing_key(van.root / "keys" / "receipt-signing.key"))
    wrong = [Receipt(r.id, r.status, r.receiver, r.reason, "0" * 64, r.nonce)
             for r in _receipts(receipts, van)]
    receipts.write_bytes(signer.sign(KIOSK, wrong))
    code, applied, _ = import_receipts(van, capsys)
    assert code == 1 and applied["refused"] == {"hash_mismatch": ITEMS} and queued(van) == ITEMS


def test_a_truncated_receipts_file_deletes_nothing(van: Van, capsys: Cap) -> None:
    assert export(van, capsys)[0] == 0
    assert central_import(van, capsys)[0] == 0
    receipts = next(van.folder.glob("receipts-*.kar"))
    receipts.write_bytes(receipts.read_bytes()[:-1])
    code, summary, _ = import_receipts(van, capsys)
    assert code == 1 and "malformed" in summary["error"] and queued(van) == ITEMS


def test_import_receipts_before_the_central_import_says_what_to_do(van: Van, capsys: Cap) -> None:
    assert export(van, capsys)[0] == 0
    code, summary, _ = import_receipts(van, capsys)
    assert code == 1 and "receiver import" in summary["error"] and queued(van) == ITEMS


def _receipts(path: Path, van: Van) -> list[Receipt]:
    from agent.security.keys import load_receipt_keys
    from agent.transport.receipts import verify_receipts

    trusted = load_receipt_keys([van.root / "keys" / "receipt-signing.key.pub"])
    return verify_receipts(path.read_bytes(), trusted, KIOSK)


def test_a_drive_without_an_export_is_refused_clearly(van: Van, capsys: Cap) -> None:
    (van.drive / "kiosk-media").symlink_to(van.root)  # a link off the drive, into the kiosk's files
    code, result, err = central_import(van, capsys)
    assert code == 1 and result["ok"] is False and "symbolic link" in result["error"]
    code, summary, _ = export(van, capsys)
    assert code == 1 and "symbolic link" in summary["error"]
    (van.drive / "kiosk-media").unlink()
    code, result, _ = central_import(van, capsys)
    assert code == 1 and "missing" in result["error"]
