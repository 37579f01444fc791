"""The central side of registrations: a registration is complete only when its manifest and
every capture it lists have arrived; then its ANSI/NIST-ITL transaction is written.

Where manifests, their state and the files built are kept is the store's
(RegistrationRecords: files beside the file store's captures,
receiver/storage/file_registrations.py, or tables beside PostgreSQL's,
receiver/storage/pg_registrations.py). This module decides; the records keep.

Parts arrive in any order (resends after an outage reorder them), and with several receivers
at different receivers at once, so completeness is checked when the manifest arrives and
again whenever one of its captures does, each check under the records' lock on the
registration: the check that finds the last part sees every part committed before it, and
the registration is completed, and handed to the outbox, exactly once. When assembling fails
with every part present, the records say so until a retry (receiver/retries.py) succeeds.

Every id here (the registration's and each capture's it lists) passes receiver/paths.py
before it names a file or a row, so a manifest can neither write outside its kiosk's folder
nor pull another kiosk's capture into its transaction. Nor another registration's: a listed
capture whose own header names another registration (or none) fails assembly
(ForeignCapture), so one kiosk cannot list the same captures in any number of manifests.
Everything else assembly reads is checked when the manifest arrives
(receiver/manifest_rules.py).
"""

from __future__ import annotations

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
from receiver.storage import registration_records
from receiver.storage.base import Outcome, State, Store

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
        self.records = registration_records(captures)
        self.options = options or TransactionOptions()
        self.completed = 0

    def folder(self, kiosk_id: str) -> Path:
        """The kiosk's registrations folder (the file records' layout)."""
        return self.captures.folder(kiosk_id) / "registrations"

    def path(self, kiosk_id: str, registration_id: str, suffix: str) -> Path:
        """A registration's file (the file records' layout); UnsafeName for a hostile id."""
        return item_path(self.folder(kiosk_id), registration_id, suffix, "registration id")

    def _checked(self, kiosk_id: str, registration_id: str) -> None:
        self.captures.folder(kiosk_id)  # UnsafeName for a kiosk id no store may use
        check_item_id(registration_id, "registration id")

    def store_manifest(self, kiosk_id: str, manifest: dict[str, Any]) -> Outcome:
        """File a manifest under the verified kiosk; the same id with other content is a
        conflict (never overwritten, never a duplicate)."""
        self._checked(kiosk_id, manifest["id"])
        return self.records.put_manifest(kiosk_id, manifest)

    def has_manifest(self, kiosk_id: str, registration_id: str) -> bool:
        self._checked(kiosk_id, registration_id)
        return self.records.get(kiosk_id, registration_id) is not None

    def foreign_part(self, kiosk_id: str, manifest: dict[str, Any]) -> bool:
        """A capture ``manifest`` lists is stored here and its own header names another
        registration. (One that names none is not refused here, but fails assembly:
        try_complete.)"""
        present = self.records.present(kiosk_id, [e["id"] for e in manifest["captures"]], manifest["id"])
        return any(owner not in (None, manifest["id"]) for owner in present.values())

    @staticmethod
    def registration_of(record: CaptureRecord) -> str | None:
        """The registration a capture belongs to (its id checked), or None."""
        if not record.registration:
            return None
        return check_item_id(record.registration.get("id"), "registration id")

    def status(self, kiosk_id: str, registration_id: str) -> State:
        """ "complete", "cancelled", "failed" (assembly failed; retried), "waiting" (manifest
        here, captures missing) or "unknown"."""
        self._checked(kiosk_id, registration_id)
        found = self.records.get(kiosk_id, registration_id)
        return "unknown" if found is None else found[1]

    # --- assembly that failed ---------------------------------------------------------------

    def record_failure(self, kiosk_id: str, registration_id: str, error: str, attempts: int,
                       retry_in_s: float | None, code: str = "internal") -> None:
        """Leave a record that this registration is incomplete because assembling it failed
        (``retry_in_s`` None: not retried in this run, its data cannot be built)."""
        self._checked(kiosk_id, registration_id)
        self.records.record_failure(kiosk_id, registration_id, code, error, attempts, retry_in_s)

    def clear_failure(self, kiosk_id: str, registration_id: str) -> None:
        self._checked(kiosk_id, registration_id)
        self.records.clear_failure(kiosk_id, registration_id)

    def failures(self) -> Iterator[tuple[str, str]]:
        """(kiosk id, registration id) of every failure on record (read at start)."""
        return self.records.failures()

    # --- assembly ------------------------------------------------------------------------------

    def try_complete(self, kiosk_id: str, registration_id: str) -> bool:
        self._checked(kiosk_id, registration_id)
        self.records.lock(kiosk_id, registration_id)  # then every part committed before is seen
        found = self.records.get(kiosk_id, registration_id)
        if found is None or found[1] in ("complete", "cancelled"):
            return False
        manifest = found[0]
        if manifest["state"] == "cancelled":
            summary = {"id": registration_id, "state": "cancelled", "reason": manifest.get("reason")}
            self.records.cancel(kiosk_id, registration_id, summary)
            log.info(
                "registration %s from %s was cancelled at the kiosk: %s",
                registration_id,
                kiosk_id,
                manifest.get("reason"),
            )
            return False
        listed = [entry["id"] for entry in manifest["captures"]]
        # Which parts are here, and whose they say they are, before any image is read.
        present = self.records.present(kiosk_id, listed, registration_id)
        if any(owner != registration_id for owner in present.values()):
            raise ForeignCapture(f"a capture listed by registration {registration_id} belongs "
                                 "to another registration")
        if len(present) < len(listed):
            log.debug("registration %s waits for %d of %d captures", registration_id,
                      len(listed) - len(present), len(listed))
            return False
        parts = {}
        for capture_id in listed:
            part = self._load(kiosk_id, capture_id)
            if part is None:
                raise FileNotFoundError(f"capture {capture_id} of registration {registration_id} "
                                        "vanished while it was assembled")
            parts[capture_id] = part
        record = self._record(manifest, parts)
        transaction = build_transaction(record, self.options)

        def outputs() -> Iterator[tuple[str, bytes]]:
            # Built as the records take them: a file store that cannot write the transaction
            # fails before the ISO records are built.
            yield ".an2", transaction
            for suffix, build in ((".fir", lambda: self._finger_record(record, self.options.iso_edition)),
                                  (".fac", lambda: self._face_record(manifest, parts, record.created_at)),
                                  (".iir", lambda: iris_record(record.irises, record.created_at))):
                data = build()
                if data is not None:
                    yield suffix, data

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
        if self.records.complete(kiosk_id, registration_id, outputs(), summary):
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

