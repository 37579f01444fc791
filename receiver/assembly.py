"""The central side of registrations: a registration is complete only when its manifest and
every capture it lists have arrived; then its ANSI/NIST-ITL transaction is written.

Layout beside the captures (receiver/store.py)::

    <output_dir>/<kiosk_id>/registrations/<registration id>.manifest.json
    <output_dir>/<kiosk_id>/registrations/<registration id>.an2          (complete ones)
    <output_dir>/<kiosk_id>/registrations/<registration id>.fir / .fac / .iir   (ISO/IEC 19794-4 / -5 / -6)
    <output_dir>/<kiosk_id>/registrations/<registration id>.complete.json (written last)
    <output_dir>/<kiosk_id>/registrations/<registration id>.error.json    (while assembly fails)

Parts arrive in any order (resends after an outage reorder them), so completeness is
checked when the manifest arrives and again whenever one of its captures does. Every file is
written durably and the last one with ``link()``, so two receivers sharing the directory
finish a registration exactly once. When assembling fails with every part present, the
``.error.json`` record says so until a retry (receiver/retries.py) succeeds.

Every id here (the registration's and each capture's it lists) passes receiver/paths.py
before it names a file, so a manifest can neither write outside its kiosk's folder nor pull
another kiosk's capture into its transaction. Nor another registration's: a listed capture
whose own header names another registration (or none) fails assembly (ForeignCapture), so
one kiosk cannot list the same captures in any number of manifests. Everything else assembly
reads is checked when the manifest arrives (receiver/manifest_rules.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from agent.capture.record import CaptureRecord
from agent.formats.ansi_nist import (
    FaceImage,
    FingerException,
    FingerImage,
    RegistrationRecord,
    TransactionOptions,
    build_transaction,
)
from agent.formats.iris import iris_images, iris_record
from agent.transport.protocol import ProtocolError
from receiver.manifest_rules import HostileManifest, check_fields
from receiver.paths import check_item_id, item_path
from receiver.storage.base import Outcome, Store
from receiver.store import write_durably

log = logging.getLogger(__name__)

#: The most captures (and exceptions) a registration manifest may list. A plan has about 15
#: items (ten fingers or three slaps, a face, token images); every listed id is resolved each
#: time one of the registration's parts arrives, so an unbounded list let one signed manifest
#: make every later capture cost seconds.
MAX_REGISTRATION_CAPTURES = 64


class ForeignCapture(ValueError):
    """A capture the manifest lists names another registration (or none) in its own header:
    a kiosk lists only its session's captures, so a manifest reusing another's is forged data.
    A ValueError, so reported ``bad-data``; never retried (receiver/retries.py)."""


def parse_manifest(data: bytes, item_id: str, kiosk_id: str) -> dict[str, Any]:
    try:
        manifest = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"registration manifest is not JSON: {exc}", item_id) from None
    if not isinstance(manifest, dict) or manifest.get("type") != "registration":
        raise ProtocolError("not a registration manifest", item_id)
    if manifest.get("id") != item_id or manifest.get("kiosk_id") != kiosk_id:
        raise ProtocolError("the manifest's id or kiosk does not match its envelope", item_id)
    if manifest.get("state") not in ("completed", "cancelled"):
        raise ProtocolError(
            f"manifest state {manifest.get('state')!r} is not completed or cancelled", item_id
        )
    captures = manifest.get("captures")
    if not isinstance(captures, list) or not all(
        isinstance(c, dict) and isinstance(c.get("id"), str) for c in captures
    ):
        raise ProtocolError("manifest captures must be a list of objects with ids", item_id)
    if len(captures) > MAX_REGISTRATION_CAPTURES:
        raise HostileManifest(f"registration manifest lists {len(captures)} captures; at most "
                              f"{MAX_REGISTRATION_CAPTURES} are accepted", item_id)
    if len({entry["id"] for entry in captures}) != len(captures):
        raise HostileManifest("registration manifest lists a capture id twice", item_id)
    for entry in captures:
        check_item_id(entry["id"], "capture id in the registration manifest")
    exceptions = manifest.get("exceptions", [])
    if not isinstance(exceptions, list):
        raise ProtocolError("manifest exceptions must be a list", item_id)
    if len(exceptions) > MAX_REGISTRATION_CAPTURES:
        raise HostileManifest(f"registration manifest lists {len(exceptions)} exceptions; at most "
                              f"{MAX_REGISTRATION_CAPTURES} are accepted", item_id)
    check_fields(manifest, item_id)  # what assembly reads: refused now, not failed on every retry
    return manifest


class RegistrationAssembler:
    def __init__(self, captures: Store, options: TransactionOptions | None = None) -> None:
        self.captures = captures
        self.options = options or TransactionOptions()
        self.completed = 0

    def folder(self, kiosk_id: str) -> Path:
        return self.captures.folder(kiosk_id) / "registrations"

    def path(self, kiosk_id: str, registration_id: str, suffix: str) -> Path:
        """A registration's file; UnsafeName for a hostile kiosk or registration id."""
        return item_path(self.folder(kiosk_id), registration_id, suffix, "registration id")

    def store_manifest(self, kiosk_id: str, manifest: dict[str, Any]) -> Outcome:
        """File a manifest under the verified kiosk; the same id with other content is a
        conflict (never overwritten, never a duplicate)."""
        path = self.path(kiosk_id, manifest["id"], ".manifest.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps(manifest, indent=2, sort_keys=True).encode()
        if write_durably(path, data, replace=False):
            return "stored"
        same = hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(data).digest()
        return "duplicate" if same else "conflict"

    def foreign_part(self, kiosk_id: str, manifest: dict[str, Any]) -> bool:
        """A capture ``manifest`` lists is stored here and its own header names another
        registration. Read in list order, stopping at the first such one. (One that names none
        is not refused here, but fails assembly: try_complete.)"""
        return any(part is not None and _registration(part[0]) not in (None, manifest["id"])
                   for part in (self._load(kiosk_id, entry["id"]) for entry in manifest["captures"]))

    @staticmethod
    def registration_of(record: CaptureRecord) -> str | None:
        """The registration a capture belongs to (its id checked), or None."""
        if not record.registration:
            return None
        return check_item_id(record.registration.get("id"), "registration id")

    def status(self, kiosk_id: str, registration_id: str) -> str:
        """ "complete", "cancelled", "failed" (assembly failed; retried), "waiting" (manifest
        here, captures missing) or "unknown"."""
        if self.path(kiosk_id, registration_id, ".complete.json").exists():
            return "complete"
        if self.path(kiosk_id, registration_id, ".cancelled.json").exists():
            return "cancelled"
        if self.path(kiosk_id, registration_id, ".error.json").exists():
            return "failed"
        return "waiting" if self.path(kiosk_id, registration_id, ".manifest.json").exists() else "unknown"

    # --- assembly that failed ---------------------------------------------------------------

    def record_failure(self, kiosk_id: str, registration_id: str, error: str, attempts: int,
                       retry_in_s: float | None) -> None:
        """Leave a record that this registration is incomplete because assembling it failed
        (``retry_in_s`` None: not retried in this run, its data cannot be built)."""
        record = {"id": registration_id, "state": "incomplete", "kiosk_id": kiosk_id, "error": error,
                  "attempts": attempts, "retry_in_s": None if retry_in_s is None else round(retry_in_s, 1),
                  "failed_at": datetime.now().astimezone().isoformat(timespec="seconds")}
        write_durably(self.path(kiosk_id, registration_id, ".error.json"),
                      json.dumps(record, indent=2).encode(), replace=True)

    def clear_failure(self, kiosk_id: str, registration_id: str) -> None:
        self.path(kiosk_id, registration_id, ".error.json").unlink(missing_ok=True)

    def failures(self) -> Iterator[tuple[str, str]]:
        """(kiosk id, registration id) of every failure record on disk (read at start)."""
        for path in self.captures.root.glob("*/registrations/*.error.json"):
            yield path.parent.parent.name, path.name.removesuffix(".error.json")

    # --- assembly ------------------------------------------------------------------------------

    def try_complete(self, kiosk_id: str, registration_id: str) -> bool:
        manifest_path = self.path(kiosk_id, registration_id, ".manifest.json")
        if not manifest_path.exists() or self.status(kiosk_id, registration_id) in ("complete", "cancelled"):
            return False
        folder = manifest_path.parent
        manifest = json.loads(manifest_path.read_bytes())
        if manifest["state"] == "cancelled":
            summary = {"id": registration_id, "state": "cancelled", "reason": manifest.get("reason")}
            write_durably(
                folder / f"{registration_id}.cancelled.json", json.dumps(summary).encode(), replace=False
            )
            log.info(
                "registration %s from %s was cancelled at the kiosk: %s",
                registration_id,
                kiosk_id,
                manifest.get("reason"),
            )
            return False
        parts = {}
        for entry in manifest["captures"]:
            part = parts[entry["id"]] = self._load(kiosk_id, entry["id"])
            # Checked as each is read, so a manifest reusing another registration's captures
            # costs one read, not the whole list's: any number of them could list the same ones.
            if part is not None and _registration(part[0]) != registration_id:
                raise ForeignCapture(f"a capture listed by registration {registration_id} belongs "
                                     "to another registration")
        missing = sorted(cid for cid, part in parts.items() if part is None)
        if missing:
            log.debug(
                "registration %s waits for %d of %d captures", registration_id, len(missing), len(parts)
            )
            return False
        record = self._record(manifest, parts)  # type: ignore[arg-type]
        transaction = build_transaction(record, self.options)
        write_durably(folder / f"{registration_id}.an2", transaction, replace=True)
        fir = self._finger_record(record, self.options.iso_edition)
        if fir is not None:
            write_durably(folder / f"{registration_id}.fir", fir, replace=True)
        fac = self._face_record(manifest, parts, record.created_at)
        if fac is not None:
            write_durably(folder / f"{registration_id}.fac", fac, replace=True)
        iir = iris_record(record.irises, record.created_at)
        if iir is not None:
            write_durably(folder / f"{registration_id}.iir", iir, replace=True)
        # Into the outbox before the record that ends assembly: a stop in between repeats the
        # hand-off on the next attempt, which the outbox refuses as already there.
        self.captures.publish_registration(kiosk_id, registration_id, folder / f"{registration_id}.an2")
        summary = {
            "id": registration_id,
            "state": "complete",
            "kiosk_id": kiosk_id,
            "applicant_ref": manifest.get("applicant_ref"),
            "captures": sorted(parts),
            "exceptions": manifest.get("exceptions", []),
            "transaction": f"{registration_id}.an2",
            "transaction_bytes": len(transaction),
            "force_captured": [c["item"] for c in manifest["captures"] if c.get("force_captured")],
        }
        if write_durably(
            folder / f"{registration_id}.complete.json", json.dumps(summary, indent=2).encode(), replace=False
        ):
            self.completed += 1
            log.info(
                "registration %s from %s complete: %d captures, %d exceptions, transaction %d bytes",
                registration_id,
                kiosk_id,
                len(parts),
                len(summary["exceptions"]),
                len(transaction),
            )
        return True

    @staticmethod
    def _finger_record(record: RegistrationRecord, edition: str = "2005") -> bytes | None:
        """The fingers as one ISO/IEC 19794-4 finger image record (.fir) of ``edition``, when
        they share a format and resolution (one record has one compression and one scale)."""
        from agent.formats.iso19794_4 import FingerImageRecord, FingerView, acquisition_level
        from agent.formats.iso19794_4_2011 import write_fir

        fingers = list(record.fingers)
        if not fingers or len({(f.format, f.ppi, f.native_ppi) for f in fingers}) != 1:
            return None
        views = tuple(FingerView(f.position, f.image, f.width, f.height, f.quality, f.impression)
                      for f in sorted(fingers, key=lambda f: f.position))
        first = fingers[0]
        return write_fir(FingerImageRecord(first.format, first.ppi, views,
                                           acquisition_level=acquisition_level(first.native_ppi),
                                           scan_ppi=first.native_ppi, captured_at=record.created_at),
                         edition)

    @staticmethod
    def _face_record(manifest: dict[str, Any], parts: dict[str, tuple[dict[str, Any], bytes]],
                     created: datetime) -> bytes | None:
        """The ISO/IEC 19794-5:2011 face record (.fac) of the face's token image, if one came."""
        from agent.formats.iso19794_5 import FaceRecord, write_record

        for entry in manifest["captures"]:
            if entry.get("item") == "face-token" and entry["id"] in parts:
                meta, image = parts[entry["id"]]
                return write_record(FaceRecord(image, meta["width"], meta["height"], created,
                                               meta.get("quality")))
        return None

    def _load(self, kiosk_id: str, capture_id: str) -> tuple[dict[str, Any], bytes] | None:
        return self.captures.load(kiosk_id, capture_id)

    @staticmethod
    def _record(
        manifest: dict[str, Any], parts: dict[str, tuple[dict[str, Any], bytes]]
    ) -> RegistrationRecord:
        fingers, face = [], None
        for entry in manifest["captures"]:
            meta, image = parts[entry["id"]]
            if entry["modality"] == "finger":
                fingers.append(
                    FingerImage(
                        entry["position"],
                        image,
                        meta["image_format"],
                        meta["width"],
                        meta["height"],
                        meta["ppi"],
                        meta.get("quality"),
                        # WSQ resampled to 500 ppi keeps the scanner's own (agent/formats/images.py).
                        scan_ppi=int((meta.get("quality_detail") or {}).get("scan_ppi") or 0),
                    )
                )
            elif entry["item"] == "face":
                # 10.013 SAP: a frame that passed the kiosk's full-frontal checks earns 14.
                face = FaceImage(image, meta["width"], meta["height"],
                                 full_frontal=not entry.get("force_captured", False))
        created = datetime.fromisoformat(manifest["created_at"].replace("Z", "+00:00"))
        return RegistrationRecord(
            id=manifest["id"],
            applicant_ref=manifest.get("applicant_ref") or "",
            operator_id=manifest.get("operator_id") or "",
            kiosk_id=manifest["kiosk_id"],
            site=manifest.get("site") or "",
            created_at=created,
            fingers=fingers,
            exceptions=[
                FingerException(e["position"], e["code"], e.get("reason") or "")
                for e in manifest.get("exceptions", [])
            ],
            face=face,
            irises=iris_images(manifest["captures"], parts),
        )


def _registration(meta: dict[str, Any]) -> Any:
    """The registration id a stored capture's own (signed) header names, or None."""
    registration = meta.get("registration")
    return registration.get("id") if isinstance(registration, dict) else None
