"""The capture record: one image plus everything the central side needs to file it."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from agent.capture.ids import uuid7
from drivers import CapturedImage, Modality


@dataclass(frozen=True)
class CaptureRecord:
    id: str
    kiosk_id: str
    site: str
    operator_id: str | None
    device_id: str
    driver: str
    device_serial: str
    modality: Modality
    #: ANSI/NIST finger position 1..10, 0 = unknown or not a finger.
    position: int
    #: UTC, ISO 8601 with milliseconds and a Z.
    captured_at: str
    image_format: str
    width: int
    height: int
    ppi: int
    image_sha256: str
    quality: int | None
    quality_detail: dict[str, Any] = field(default_factory=dict)
    image: bytes = field(default=b"", repr=False)  # never in repr: it would reach the logs
    #: Monotonic per kiosk; assigned by the durable queue when the capture is committed.
    seq: int = 0
    #: Set when the capture belongs to a registration session: its id, the plan item, the
    #: attempts it took and whether it was force-captured (agent/registration/service.py).
    registration: dict[str, Any] | None = None

    @property
    def image_size(self) -> int:
        return len(self.image)

    def metadata(self) -> dict[str, Any]:
        """Everything but the image, as JSON-ready data."""
        return {
            "id": self.id,
            "kiosk_id": self.kiosk_id,
            "site": self.site,
            "operator_id": self.operator_id,
            "device_id": self.device_id,
            "driver": self.driver,
            "device_serial": self.device_serial,
            "modality": self.modality.value,
            "position": self.position,
            "captured_at": self.captured_at,
            "seq": self.seq,
            "image_format": self.image_format,
            "width": self.width,
            "height": self.height,
            "ppi": self.ppi,
            "image_size": self.image_size,
            "image_sha256": self.image_sha256,
            "quality": self.quality,
            "quality_detail": self.quality_detail,
            **({"registration": self.registration} if self.registration is not None else {}),
        }


def utc_now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_record(
    image: CapturedImage,
    *,
    kiosk_id: str,
    site: str,
    operator_id: str | None,
    device_id: str,
    driver: str,
    device_serial: str,
    registration: dict[str, Any] | None = None,
) -> CaptureRecord:
    return CaptureRecord(
        id=uuid7(),
        kiosk_id=kiosk_id,
        site=site,
        operator_id=operator_id,
        device_id=device_id,
        driver=driver,
        device_serial=device_serial,
        modality=image.modality,
        position=image.position,
        captured_at=utc_now_iso(),
        image_format=image.image_format,
        width=image.width,
        height=image.height,
        ppi=image.ppi,
        image_sha256=hashlib.sha256(image.image).hexdigest(),
        quality=image.quality,
        quality_detail=dict(image.quality_detail),
        image=image.image,
        registration=registration,
    )
