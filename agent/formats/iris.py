"""A registration's iris captures as the records the central side writes: ANSI/NIST-ITL
Type-17 entries of the transaction (``IrisImage``) and one ISO/IEC 19794-6:2011 record.

The receiver's assembly (receiver/assembly.py) calls these with the manifest's capture list
and the parts it loaded, as it does for fingers and the face; everything iris-specific lives
here so the assembly only passes the parts along.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from agent.formats.ansi_nist import IRIS_CGA, IrisImage
from agent.formats.iso19794_6 import IrisRecord, IrisView, write_record
from agent.formats.positions import EYE_LABELS

IRIS_MODALITY = "iris"


def iris_images(captures: Sequence[Mapping[str, Any]],
                parts: Mapping[str, tuple[Mapping[str, Any], bytes]]) -> list[IrisImage]:
    """The iris captures a manifest lists, each with its stored image; ValueError for one that
    is not an eye label or not a lossless grey image the records can hold."""
    irises = []
    for entry in captures:
        if entry.get("modality") != IRIS_MODALITY:
            continue
        meta, image = parts[entry["id"]]
        eye, fmt = entry.get("position"), meta.get("image_format")
        if isinstance(eye, bool) or eye not in EYE_LABELS:
            raise ValueError(f"iris capture {entry['id']}: position {eye!r} is not an eye label "
                             f"{sorted(EYE_LABELS)}")
        if fmt not in IRIS_CGA:
            raise ValueError(f"iris capture {entry['id']}: image format {fmt!r} is not one of "
                             f"{sorted(IRIS_CGA)}")
        quality = meta.get("quality")
        irises.append(IrisImage(eye, image, fmt, int(meta["width"]), int(meta["height"]),
                                None if quality is None else int(quality)))
    return irises


def iris_record(irises: Sequence[IrisImage], created: datetime) -> bytes | None:
    """One ISO/IEC 19794-6:2011 record (.iir) of every iris, right eye first; None without any."""
    if not irises:
        return None
    views = tuple(IrisView(i.eye, i.image, i.format, i.width, i.height, i.quality)
                  for i in sorted(irises, key=lambda i: i.eye))
    return write_record(IrisRecord(views, created))
