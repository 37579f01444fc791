"""The receiver's file store names a capture's two files in one step and syncs their folder
once (receiver/store.py). crashfs keeps each folder's changes in order, as ext4's journal
does; a file system that made the JSON's name durable and lost the image's must still never
turn a resend into a receipt for a capture without its image. Real files, real store."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import pytest

from agent.capture.record import CaptureRecord
from receiver import store as receiver_store
from receiver.store import CaptureStore
from tests.support.hostile import record


def _json_without_image(tmp_path: Path) -> tuple[CaptureStore, CaptureRecord, Path, Path]:
    store = CaptureStore(tmp_path / "out")
    rec = record("kiosk-1", None, os.urandom(5000))
    assert store.store(rec.kiosk_id, rec) == "stored"
    image_path, meta_path = store.paths(rec.kiosk_id, rec.id, rec.image_format)
    image_path.unlink()  # what such a power cut leaves: the JSON's name, not the image's
    return store, rec, image_path, meta_path


def test_a_resend_after_the_image_name_was_lost_links_the_image_again(tmp_path: Path) -> None:
    store, rec, image_path, meta_path = _json_without_image(tmp_path)
    assert store.store(rec.kiosk_id, rec) == "duplicate"
    assert hashlib.sha256(image_path.read_bytes()).hexdigest() == rec.image_sha256
    assert store.load(rec.kiosk_id, rec.id) is not None
    assert not [p for p in image_path.parent.iterdir() if p.name.startswith(".tmp-")]


def test_other_bytes_under_that_id_are_still_a_conflict_and_link_nothing(tmp_path: Path) -> None:
    store, rec, image_path, _ = _json_without_image(tmp_path)
    other = dataclasses.replace(rec, image=os.urandom(5000))
    other = dataclasses.replace(other, image_sha256=hashlib.sha256(other.image).hexdigest())
    assert store.store(other.kiosk_id, other) == "conflict"
    assert not image_path.exists()
    assert not [p for p in image_path.parent.iterdir() if p.name.startswith(".tmp-")]


def test_three_fsyncs_per_capture_and_the_folder_synced_before_the_answer(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two files' data and one folder sync, the folder's the last thing done before the
    outcome is returned (a receipt follows it)."""
    store = CaptureStore(tmp_path / "out")
    store.store("kiosk-1", record("kiosk-1", None, b"x" * 100))  # the kiosk's folder made first
    calls: list[str] = []
    real_fsync, real_link = os.fsync, os.link

    def fsync(fd: int) -> None:
        calls.append("dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "file")
        real_fsync(fd)

    def link(src: str, dst: str | Path) -> None:
        calls.append("link")
        real_link(src, dst)

    monkeypatch.setattr(receiver_store.os, "fsync", fsync)
    monkeypatch.setattr(receiver_store.os, "link", link)
    assert store.store("kiosk-1", record("kiosk-1", None, os.urandom(5000))) == "stored"
    assert calls == ["file", "file", "link", "link", "dir"]
