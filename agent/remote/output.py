"""How ``kiosk-agent remote`` shows a reply to a person: indented ``key: value`` lines.

``--json`` prints the reply as it came; this is for reading. Nested objects indent, lists
of plain values stay on one line, lists of objects become ``-`` items; numbers stay as sent
(a person comparing with telemetry sees the same figures).
"""

from __future__ import annotations

import unicodedata
from typing import Any

INDENT = "  "
#: Shown escaped: control characters (C0, C1: terminal escape sequences start with them),
#: bidi and other format characters, line and paragraph separators. A reply is unsigned, so
#: whoever answers first may put them there.
_HIDDEN = frozenset({"Cc", "Cf", "Zl", "Zp"})


def printable(text: str) -> str:
    """``text`` with every character a terminal would act on, or that reorders or hides text,
    written as its Python escape (``\\x1b``, ``\\u202e``)."""
    if text.isprintable():
        return text
    return "".join(ch.encode("unicode_escape").decode("ascii") if unicodedata.category(ch) in _HIDDEN
                   else ch for ch in text)


def render(value: Any, depth: int = 0) -> list[str]:
    """Lines for ``value`` at ``depth``; a plain value is one line."""
    pad = INDENT * depth
    if isinstance(value, dict):
        if not value:
            return [f"{pad}(nothing)"]
        lines: list[str] = []
        for key, item in value.items():
            if _plain(item):
                lines.append(f"{pad}{printable(str(key))}: {_scalar(item)}")
            else:
                lines.append(f"{pad}{printable(str(key))}:")
                lines += render(item, depth + 1)
        return lines
    if isinstance(value, list):
        if not value:
            return [f"{pad}(none)"]
        lines = []
        for item in value:
            if _plain(item):
                lines.append(f"{pad}- {_scalar(item)}")
            else:
                nested = render(item, depth + 1)
                lines.append(f"{pad}- {nested[0].lstrip()}")
                lines += nested[1:]
        return lines
    return [f"{pad}{_scalar(value)}"]


def _plain(value: Any) -> bool:
    """A value shown on its key's line: scalars, empty containers, short lists of scalars."""
    if isinstance(value, dict | list) and not value:
        return True
    if isinstance(value, list):
        return all(not isinstance(v, dict | list) for v in value) and len(", ".join(map(str, value))) <= 60
    return not isinstance(value, dict)


def _scalar(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(_scalar(v) for v in value) if value else "(none)"
    if isinstance(value, dict):
        return "(nothing)"
    return printable(str(value))


def reply_text(reply: dict[str, Any]) -> str:
    """A successful reply's result, for a person."""
    return "\n".join(render(reply.get("result")))
