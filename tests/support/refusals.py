"""A refusal's sentences in the operator console's catalogues (tests/console/test_refusal_texts.py,
and the rules tested where they are made, e.g. the assigned area in tests/vans)."""

from __future__ import annotations

import re

from agent.console.i18n import Translator
from agent.console.pages import refusal
from agent.registration.gates import Refusal

URDU_LETTERS = re.compile(r"[\u0600-\u06FF]")


def check_texts(found: Refusal | None) -> str:
    """Assert the refusal's sentences read the same from the English catalogue and are
    translated in Urdu with every figure; returns the Urdu message."""
    assert found is not None and found.text, found
    shown = {**found.as_dict(), "text": found.text, "values": found.values}
    english, urdu = Translator("en"), Translator("ur")
    for part in ("message", "action"):
        assert english.has(f"refusal.{found.text}.{part}"), f"refusal.{found.text}.{part} missing"
        assert refusal(english, shown, part) == getattr(found, part)
        translated = refusal(urdu, shown, part)
        assert URDU_LETTERS.search(translated) and translated != getattr(found, part), translated
    message = refusal(urdu, shown, "message")
    for value in found.values.values():
        if isinstance(value, str):
            assert value in message, (value, message)
            continue
        for part in value:  # the clock's reasons: each its own sentence, each translated
            assert URDU_LETTERS.search(urdu.message(part["text"], part["values"])), part
    return message
