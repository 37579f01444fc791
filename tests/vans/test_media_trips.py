"""Registrations on a drive, the other ways a trip goes: the van back in coverage before the
drive reaches the office (MQTT first, then the drive), a capture the central side rejects
arriving by drive (handled as over MQTT), and a drive really pulled mid-export (its mount
gone under the export's feet), then put back and the export rerun. Everything real: the
agent, mosquitto, the receiver's store, the command line, mounts."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.capture.ids import uuid7
from devtools.broker import MosquittoBroker
from receiver.service import Receiver
from tests.support.config import receiver_config
from tests.support.waiting import wait_until
from tests.vans.van import ITEMS, KIOSK, Van, central_import, export, import_receipts

Cap = pytest.CaptureFixture[str]


def states(van: Van) -> dict[str, tuple[str, str | None]]:
    """The queue's items as its SQLite file holds them: id -> (state, reason)."""
    db = sqlite3.connect(van.root / "state" / "queue.db")
    try:
        return {i: (s, r) for i, s, r in db.execute("SELECT id, state, reason FROM items")}
    finally:
        db.close()


def over_mqtt(van: Van, broker: MosquittoBroker, settled: Any) -> Receiver:
    """The van back in coverage: its agent sends its queue to a receiver (named as the
    office's, so receipts read the same both ways) until ``settled(agent)``."""
    from agent.daemon import Agent

    config = van.agent_config(broker.port)
    receiver = Receiver(receiver_config(van.out, config, "office-1"))
    receiver.start()
    agent = Agent(config)
    try:
        wait_until(lambda: receiver.link.subscribed, what="receiver subscribed")
        agent.start()
        wait_until(lambda: settled(agent), 30, what="the queue settled over MQTT")
    finally:
        agent.stop()
        receiver.stop()
    return receiver


def files(van: Van) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in (van.out / KIOSK).rglob("*")
            if p.is_file() and not p.name.endswith(".status.json")}


# --- MQTT first, then the drive -----------------------------------------------------------------


def test_what_came_over_mqtt_first_is_not_stored_again_from_the_drive(van: Van, capsys: Cap,
                                                                     broker: MosquittoBroker) -> None:
    assert export(van, capsys)[0] == 0
    receiver = over_mqtt(van, broker, lambda a: a.queue is not None and a.queue.totals()[0] == 0)
    assert receiver.counters.stored == ITEMS - 1  # the manifest is filed as a registration
    assert states(van) == {}, "settled over MQTT: deleted"
    before = files(van)
    code, result, err = central_import(van, capsys)
    (kiosk,) = result["kiosks"]
    assert code == 0 and kiosk["duplicate"] == ITEMS and kiosk["stored"] == 0, err
    assert kiosk["receipts_written"] == ITEMS
    assert files(van) == before, "nothing stored twice or rewritten"
    # Those duplicate receipts are genuine and for this export, yet settle nothing twice.
    code, applied, err = import_receipts(van, capsys)
    assert code == 0 and applied["already_gone"] == ITEMS and applied["deleted"] == 0, err
    assert applied["refused"] == {} and applied["rejected"] == 0


# --- a rejected capture, by drive and over MQTT ------------------------------------------------


def _queue_a_capture_the_receiver_rejects(van: Van) -> str:
    """Authentic (the kiosk's key signs it) but unusable: its record's sequence number is not
    its envelope's, which the receiver answers ``rejected``."""
    from agent.security.keys import load_encryption_public, load_signing_key
    from agent.security.sealing import Sealer
    from agent.transport.durable_queue import DurableQueue
    from agent.transport.protocol import encode_capture
    from tests.support.hostile import record

    sealer = Sealer(load_signing_key(van.root / "keys" / "kiosk.key"),
                    load_encryption_public(van.root / "keys" / "central.key.pub"))
    item_id = uuid7()
    queue = DurableQueue(van.root / "state" / "queue.db", max_bytes=1 << 34, min_free_bytes=0)
    try:
        queue.put(item_id, "capture", lambda seq: sealer.seal(
            item_id=item_id, kiosk_id=KIOSK, seq=seq, kind="capture",
            inner=encode_capture(record(KIOSK, item_id, seq=seq + 1000))))
    finally:
        queue.close()
    return item_id


def test_a_rejected_receipt_by_drive_sets_the_item_aside_as_mqtt_does(
        van: Van, template: tuple[Path, str], tmp_path: Path, capsys: Cap, broker: MosquittoBroker) -> None:
    bad = _queue_a_capture_the_receiver_rejects(van)
    (tmp_path / "twin").mkdir()
    twin = Van(template[0], tmp_path / "twin", template[1])
    bad_twin = _queue_a_capture_the_receiver_rejects(twin)
    # By drive.
    assert export(van, capsys)[0] == 0
    code, result, _ = central_import(van, capsys)
    assert result["kiosks"][0]["rejected"] == 1 and result["kiosks"][0]["receipts_written"] == ITEMS + 1
    code, applied, err = import_receipts(van, capsys)
    assert code == 0 and applied["deleted"] == ITEMS, err
    assert applied["rejected"] == 1 and applied["waiting"] == 0
    by_drive = states(van)
    # Over MQTT (the twin van, the same registration and the same kind of bad capture).
    receiver = over_mqtt(twin, broker, lambda a: a.queue is not None and a.queue.totals()[0] == 1
                         and a.publisher.counters.rejected == 1)
    assert receiver.counters.rejected == 1
    by_mqtt = states(twin)
    # The same outcome: everything else deleted, the bad capture kept aside, same reason.
    assert list(by_drive) == [bad] and list(by_mqtt) == [bad_twin]
    (drive_state, drive_reason), (mqtt_state, mqtt_reason) = by_drive[bad], by_mqtt[bad_twin]
    assert drive_state == mqtt_state == "rejected"
    assert drive_reason is not None and drive_reason.startswith("rejected by office-1: ")
    assert drive_reason.replace(bad, "<id>") == mqtt_reason.replace(bad_twin, "<id>")  # type: ignore[union-attr]
    # And, as over MQTT, it is not sent again: the next export does not carry it.
    code, summary, _ = export(van, capsys)
    assert code == 0 and summary["items"] == 0 and van.items() == []


# --- a drive pulled for real --------------------------------------------------------------------


def _mount(*args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.fail(f"`mount {' '.join(args)}` failed ({done.stderr.strip()}): this test pulls a drive "
                    "by unmounting it, which needs root (the test machines and CI run as root)")


class PullingStderr:
    """The export's progress goes to stderr: on its first line (one item copied) the drive is
    pulled, in the export's own thread, so the next write meets a vanished mount."""

    def __init__(self, real: Any, mount: Path) -> None:
        self.real, self.mount, self.pulled = real, mount, False

    def write(self, text: str) -> int:
        if not self.pulled and text.startswith("exported 1/"):
            subprocess.run(["umount", "-l", str(self.mount)], check=True)
            self.pulled = True
        return self.real.write(text)

    def flush(self) -> None:
        self.real.flush()


def test_a_drive_pulled_mid_export_loses_nothing_and_a_rerun_completes(
        van: Van, tmp_path: Path, capsys: Cap, monkeypatch: pytest.MonkeyPatch) -> None:
    stick = tmp_path / "stick"  # what the drive holds, mounted (bind) where export writes
    stick.mkdir()
    mount = tmp_path / "media"
    mount.mkdir()
    _mount("--bind", str(stick), str(mount))
    try:
        pulling = PullingStderr(sys.stderr, mount)
        monkeypatch.setattr(sys, "stderr", pulling)
        code, summary, err = export(van, capsys, mount)
        monkeypatch.setattr(sys, "stderr", pulling.real)
        assert pulling.pulled, "the drive was pulled during the export"
        assert code == 1 and not summary["complete"]
        assert f"writing to {mount} failed after 1 item(s) copied" in summary["error"]
        assert "drive removed or damaged?" in summary["error"] and "Nothing was removed from the queue" \
            in summary["error"] and "run `kiosk-agent export` again" in summary["error"]
        assert len(states(van)) == ITEMS, "the queue lost nothing"
        # What the drive holds: one whole item, the marker, no index.
        folder = stick / "kiosk-media" / KIOSK
        assert len(list((folder / "items").glob("*.kas"))) == 1 and (folder / ".exporting").exists()
        assert not (folder / "index.kmi").exists()
        # Plugged back in: the rerun continues the same export and completes it.
        _mount("--bind", str(stick), str(mount))
        code, summary, err = export(van, capsys, mount)
        assert code == 0 and summary["continued"] and summary["already_there"] == 1, err
        assert summary["written"] == ITEMS - 1 and summary["items"] == ITEMS
        code, result, _ = central_import(van, capsys, mount)
        assert code == 0 and result["kiosks"][0]["stored"] == ITEMS
        assert import_receipts(van, capsys, mount)[1]["deleted"] == ITEMS and states(van) == {}
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False, capture_output=True)
