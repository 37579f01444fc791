"""Remote config changes, kept apart from the hand-written config file.

``config.set`` never rewrites /etc/kiosk-agent/agent.toml (its comments and layout are the
installer's); it writes the changed keys to an overlay file in ``remote.state_dir`` that is
merged over the file at every load. Precedence: environment > overlay > config file. The
overlay in force before a change is kept as ``config-overlay.previous.toml``, so a change
that fails is undone by putting that file back.
"""

from __future__ import annotations

import copy
import os
import tomllib
from pathlib import Path
from typing import Any

from agent.errors import PermanentError

OVERLAY_NAME = "config-overlay.toml"
PREVIOUS_NAME = "config-overlay.previous.toml"
DEFAULT_STATE_DIR = Path("/var/lib/kiosk-agent/remote")

#: Keys config.set refuses: who may command the kiosk, its keys and where its queue lives
#: are changed on the kiosk itself, never over the network.
LOCKED_PREFIXES = ("remote", "security", "queue.path", "kiosk.id", "kiosk.state_dir")


class OverlayError(PermanentError, ValueError):
    """A config change that cannot be applied; the message says which key and why."""


def overlay_path(raw: dict[str, Any]) -> Path:
    """Where the overlay lives, read from the raw tree the way AgentConfig resolves it."""
    remote, queue, kiosk = raw.get("remote"), raw.get("queue"), raw.get("kiosk")
    state_dir = remote.get("state_dir") if isinstance(remote, dict) else None
    if isinstance(state_dir, str):
        return Path(state_dir) / OVERLAY_NAME
    kiosk_state = kiosk.get("state_dir") if isinstance(kiosk, dict) else None
    if isinstance(kiosk_state, str):
        return Path(kiosk_state) / "remote" / OVERLAY_NAME
    queue_path = queue.get("path") if isinstance(queue, dict) else None
    if isinstance(queue_path, str):
        return Path(queue_path).parent / "remote" / OVERLAY_NAME
    return DEFAULT_STATE_DIR / OVERLAY_NAME


def read_overlay(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise OverlayError(f"{path}: cannot read the remote config overlay ({exc}); fix or remove "
                           "it to return to the config file alone") from None


def merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """Tables merge key by key; any other value in the overlay replaces the base's."""
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def changes_to_tree(changes: dict[str, Any]) -> dict[str, Any]:
    """{"mqtt.port": 1884} -> {"mqtt": {"port": 1884}}; refuses locked and malformed keys."""
    tree: dict[str, Any] = {}
    for dotted, value in changes.items():
        parts = dotted.split(".")
        if not dotted or any(not p for p in parts):
            raise OverlayError(f"{dotted!r}: not a dotted config key such as 'mqtt.port'")
        if any(dotted == p or dotted.startswith(p + ".") for p in LOCKED_PREFIXES):
            raise OverlayError(f"{dotted}: cannot be changed remotely (remote.*, security.*, queue.path "
                               "and kiosk.id are set on the kiosk itself)")
        if value is None:
            raise OverlayError(f"{dotted}: null is not a config value")
        node = tree
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise OverlayError(f"{dotted}: conflicts with another key in the same change")
            node = child
        node[parts[-1]] = value
    return tree


def write_overlay(path: Path, overlay: dict[str, Any]) -> None:
    """Atomically replace the overlay, keeping the one it replaces as the previous file."""
    import tomli_w

    path.parent.mkdir(parents=True, exist_ok=True)
    previous = path.with_name(PREVIOUS_NAME)
    data = tomli_w.dumps(overlay).encode()
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    if path.exists():
        os.replace(path, previous)
    else:
        previous.unlink(missing_ok=True)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def restore_previous(path: Path) -> None:
    """Undo the last write_overlay: the previous overlay (or none) is in force again."""
    previous = path.with_name(PREVIOUS_NAME)
    if previous.exists():
        os.replace(previous, path)
    else:
        path.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
