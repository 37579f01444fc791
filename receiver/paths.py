"""The receiver's file names: every name that comes from a message passes here first.

A kiosk's envelope carries ids it chose; a stolen kiosk key signs whatever its holder
writes. So nothing from a message becomes part of a path until it has passed one of two
checks: the kiosk id (the name the verifying key is enrolled under) must be a plain topic
level, and an item id (capture or registration) must be an id as the kiosk makes them
(agent.capture.ids.is_item_id). The path built from them is then resolved and must still
lie inside the kiosk's own folder, so a symlink planted there cannot lead out either.
"""

from __future__ import annotations

from pathlib import Path

from agent.capture.ids import is_item_id
from agent.config_types import topic_segment
from agent.transport.protocol import ProtocolError


class UnsafeName(ProtocolError):
    """A name from a message that must not reach the file system: a security event, not a
    damaged message (the sender's key may have verified it)."""


def check_item_id(value: object, what: str = "id") -> str:
    if not is_item_id(value):
        raise UnsafeName(f"{what} {value!r} is not an item id (a UUIDv7 in canonical form)")
    return value  # type: ignore[return-value]


def kiosk_folder(root: Path, kiosk_id: str) -> Path:
    """``root/<kiosk_id>``, for a kiosk id that is one plain topic level ("." and ".." are not)."""
    try:
        topic_segment(kiosk_id)
    except (ValueError, TypeError):
        raise UnsafeName(f"kiosk id {kiosk_id!r} cannot name a folder") from None
    return _inside(root, root / kiosk_id)


def item_path(folder: Path, item_id: str, suffix: str, what: str = "id") -> Path:
    """``folder/<item_id><suffix>`` for a checked id, never outside ``folder``."""
    return _inside(folder, folder / f"{check_item_id(item_id, what)}{suffix}")


def _inside(folder: Path, path: Path) -> Path:
    # The checks above already exclude separators and dot-names; resolving as well catches
    # what a name check cannot see: a symlink inside the output folder pointing elsewhere.
    if not path.resolve().is_relative_to(folder.resolve()):
        raise UnsafeName(f"{path} resolves outside {folder}")
    return path
