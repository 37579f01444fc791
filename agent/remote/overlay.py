"""Remote config changes, kept apart from the hand-written config file.

``config.set`` never rewrites /etc/kiosk-agent/agent.toml (its comments and layout are the
installer's); it writes the changed keys to an overlay file in ``remote.state_dir`` that is
merged over the file at every load. Precedence: environment > overlay > config file. The
overlay in force before a change is kept as ``config-overlay.previous.toml``, so a change
that fails is undone by putting that file back.

Where the overlay lives is worked out by agent/config.py (``overlay_location``), the one
place that resolves the state folders, so config.set writes where the next start reads.
Only settings on agent/remote/settable.py's allow-list are taken from it, at config.set and
again at every load (an overlay written by an older version, or by anyone who could write
the state folder, cannot smuggle a path or a host in).
"""

from __future__ import annotations

import copy
import os
import tomllib
from pathlib import Path
from typing import Any

from agent.errors import PermanentError
from agent.remote.settable import flatten, refusals
from agent.security.private_files import create_private, fsync_dir

OVERLAY_NAME = "config-overlay.toml"
PREVIOUS_NAME = "config-overlay.previous.toml"


class OverlayError(PermanentError, ValueError):
    """A config change that cannot be applied; the message says which key and why."""


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


def changes_to_tree(changes: dict[str, Any], tls_enabled: bool) -> dict[str, Any]:
    """{"mqtt.keepalive_s": 20} -> {"mqtt": {"keepalive_s": 20}}; refuses malformed keys and
    every key not on the allow-list (all named at once), before any value is looked at."""
    malformed = [f"{dotted!r}: not a dotted config key such as 'telemetry.interval_s'"
                 for dotted in changes if not dotted or any(not p for p in dotted.split("."))]
    if malformed:
        raise OverlayError("; ".join(malformed))
    refused = refusals(changes, tls_enabled)
    if refused:
        raise OverlayError("; ".join(refused))
    tree: dict[str, Any] = {}
    for dotted, value in changes.items():
        parts = dotted.split(".")
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


def allowed_part(overlay: dict[str, Any], tls_enabled: bool) -> tuple[dict[str, Any], list[str]]:
    """The overlay's settings that may come from a remote change, and the keys left out."""
    kept: dict[str, Any] = {}
    dropped = []
    for dotted, value in flatten(overlay).items():
        if refusals([dotted], tls_enabled):
            dropped.append(dotted)
            continue
        node = kept
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return kept, dropped


def write_overlay(path: Path, overlay: dict[str, Any]) -> None:
    """Atomically replace the overlay, keeping the one it replaces as the previous file."""
    import tomli_w

    path.parent.mkdir(parents=True, exist_ok=True)
    previous = path.with_name(PREVIOUS_NAME)
    data = tomli_w.dumps(overlay).encode()
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)  # a leftover of a crash: create_private wants a new file
    with os.fdopen(create_private(tmp), "wb") as fh:  # 0600 whatever the umask
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    if path.exists():
        os.replace(path, previous)
    else:
        previous.unlink(missing_ok=True)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def restore_previous(path: Path) -> None:
    """Undo the last write_overlay: the previous overlay (or none) is in force again."""
    previous = path.with_name(PREVIOUS_NAME)
    if previous.exists():
        os.replace(previous, path)
    else:
        path.unlink(missing_ok=True)
    fsync_dir(path.parent)

