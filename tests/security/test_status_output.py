"""``kiosk-agent receiver status`` prints what kiosks sent: no escape sequence may reach the
operator's terminal raw.

Measured by the red team: a hostile kiosk's manifest named an item ``ESC[2J`` (clear screen)
or with a bidi override; the registration was stored, reported incomplete with that item
missing, and the item printed raw. Now such a manifest is refused on arrival (item names are
the plan's fixed set, receiver/manifest_rules.py), and whatever is on disk already (stored by
an older receiver) is printed escaped (receiver/status_report.py, receiver/status.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.capture.ids import uuid7
from cli.main import main
from devtools.broker import MosquittoBroker
from receiver.assembly import RegistrationAssembler
from receiver.status import StatusReporter
from receiver.store import CaptureStore
from tests.support.hostile import KIOSK_A, record, registration_manifest, rig, sealed_manifest

#: Clear screen and home, a right-to-left override, a line separator, a C1 CSI, a bell.
HOSTILE_ITEMS = ["\x1b[2J\x1b[Hfinger-1", "finger-\u202e2-tfel", "finger-3\u2028forged line",
                 "\x9b31mfinger-4", "finger-5\x07"]
RAW = ("\x1b", "\u202e", "\u2028", "\x9b", "\x07")


def status_output(tmp_path: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """`kiosk-agent receiver status` (text, for a person) on the receiver's folder."""
    config = tmp_path / "receiver-status.toml"
    config.write_text(f'[mqtt]\nallow_plaintext = true\n[receiver]\noutput_dir = "{out}"\n')
    capsys.readouterr()
    main(["receiver", "status", "--config", str(config)])
    return capsys.readouterr().out


def hostile_manifest(registration_id: str) -> dict:
    manifest = registration_manifest(KIOSK_A, registration_id, [record(KIOSK_A, position=n + 1)
                                                                for n in range(len(HOSTILE_ITEMS))])
    for entry, item in zip(manifest["captures"], HOSTILE_ITEMS, strict=True):
        entry["item"] = item
    return manifest


def test_hostile_item_names_are_refused_on_arrival(tmp_path: Path, broker: MosquittoBroker,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    registration_id = uuid7()
    with rig(tmp_path, broker, incomplete_after_s=0.2) as r:
        # Its captures never come: the registration would be listed as incomplete, items missing.
        r.send(KIOSK_A, sealed_manifest(r.sealers[KIOSK_A], KIOSK_A, hostile_manifest(registration_id)))
        receipt = r.wire.receipt(registration_id)
        r.settle()
        printed = status_output(tmp_path, r.out, capsys)
    assert not any(ch in printed for ch in RAW), f"printed raw: {printed!r}"
    assert receipt["status"] == "rejected" and "item" in receipt["reason"]
    assert not any(ch in receipt["reason"] for ch in RAW), "the refusal does not echo the name"


def test_what_an_older_receiver_stored_is_printed_escaped(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """A manifest stored before items were checked, and the status it was sent: both name the
    hostile items. Neither the status the receiver signs now nor the operator's listing
    carries them raw."""
    out = tmp_path / "out"
    registration_id = uuid7()
    folder = out / KIOSK_A / "registrations"
    folder.mkdir(parents=True)
    manifest = hostile_manifest(registration_id)
    (folder / f"{registration_id}.manifest.json").write_text(json.dumps(manifest))
    missing = [{"item": item, "position": 1, "id": entry["id"]}
               for item, entry in zip(HOSTILE_ITEMS, manifest["captures"], strict=True)]
    (folder / f"{registration_id}.status.json").write_text(json.dumps(
        {"id": registration_id, "state": "incomplete", "seq": 1, "missing": missing, "reason": None,
         "files": [], "kiosk_id": KIOSK_A, "updated_at": "2026-11-30T12:00:00Z"}))
    failed_id = uuid7()
    (folder / f"{failed_id}.manifest.json").write_text(json.dumps(hostile_manifest(failed_id)))
    (folder / f"{failed_id}.error.json").write_text("{}")
    (folder / f"{failed_id}.status.json").write_text(json.dumps(
        {"id": failed_id, "state": "failed", "seq": 1, "missing": [], "files": [],
         "reason": {"code": "bad-data", "message": "\x1b]0;owned\x07 forged", "attempts": 1}}))
    printed = status_output(tmp_path, out, capsys)
    reporter = StatusReporter(RegistrationAssembler(CaptureStore(out)), None, "kiosk", 600)  # type: ignore[arg-type]
    signed_items = [m.item for m in reporter.current(KIOSK_A, registration_id).missing]
    assert not any(ch in printed for ch in RAW), f"printed raw: {printed!r}"
    assert "\\x1b[2J" in printed and "\\u202e" in printed, "shown, escaped"
    assert len(signed_items) == len(HOSTILE_ITEMS)
    assert not any(ch in item for item in signed_items for ch in RAW), signed_items
