"""Finger positions (ANSI/NIST-ITL friction ridge codes): the one list of what a position may be.

The kiosk's local API, the capture header the receiver decodes (agent/transport/protocol.py)
and the record writers (agent/formats/) all check positions against these sets, so a
position the kiosk accepts is a position the central side accepts.

A position is a JSON integer, strictly: ``true`` is not finger 1 and ``6.0`` is not finger 6
(Python counts both as equal to an int; an app that sends them has a bug worth hearing about).
"""

from __future__ import annotations

import json
from typing import Any

#: 0: unknown, or not a finger (a face).
UNKNOWN = 0
FINGER_NAMES = {
    1: "right thumb",
    2: "right index",
    3: "right middle",
    4: "right ring",
    5: "right little",
    6: "left thumb",
    7: "left index",
    8: "left middle",
    9: "left ring",
    10: "left little",
}
#: Plain slaps and the fingers each holds.
SLAPS: dict[int, tuple[int, ...]] = {13: (2, 3, 4, 5), 14: (7, 8, 9, 10), 15: (1, 6)}
SLAP_NAMES = {13: "right four fingers", 14: "left four fingers", 15: "both thumbs"}

#: Eye labels of ANSI/NIST-ITL 17.003 ELR and ISO/IEC 19794-6 (the same codes in both): an iris
#: capture's position is its eye label.
EYE_UNDEFINED, RIGHT_EYE, LEFT_EYE = 0, 1, 2
EYE_LABELS = {EYE_UNDEFINED: "eye undefined", RIGHT_EYE: "right eye", LEFT_EYE: "left eye"}
EYES = frozenset({RIGHT_EYE, LEFT_EYE})

#: One finger: what an exception (a missing finger) names.
FINGERS = frozenset(FINGER_NAMES)
SLAP_POSITIONS = frozenset(SLAPS)
#: What one captured image may be: unknown (or a face), a finger, a slap. 11 and 12 (unknown
#: palm/hand codes in other standards) are not: no writer here files them.
CAPTURE_POSITIONS = frozenset({UNKNOWN} | FINGERS | SLAP_POSITIONS)


def describe(allowed: frozenset[int]) -> str:
    """``allowed`` as a reader takes it in: "0..10 or 13..15"."""
    runs: list[list[int]] = []
    for p in sorted(allowed):
        if runs and runs[-1][-1] == p - 1:
            runs[-1].append(p)
        else:
            runs.append([p])
    return " or ".join(str(r[0]) if len(r) == 1 else f"{r[0]}..{r[-1]}" for r in runs)


def position_problem(value: Any, allowed: frozenset[int]) -> str | None:
    """What is wrong with ``value`` as a position from ``allowed``, or None when nothing is."""
    if isinstance(value, bool) or not isinstance(value, int):
        return f"must be an integer ({describe(allowed)}), not {json.dumps(value, default=repr)}"
    if value not in allowed:
        return f"{value} is not allowed: positions are {describe(allowed)}"
    return None


def check_position(value: Any, allowed: frozenset[int], what: str = "position") -> int:
    """``value`` as a position from ``allowed``; ValueError naming ``what`` and the allowed set."""
    problem = position_problem(value, allowed)
    if problem is not None:
        raise ValueError(f"{what} {problem}")
    return int(value)
