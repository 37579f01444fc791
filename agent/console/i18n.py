"""The console's text, from one JSON catalogue per language (agent/console/locale/LANG.json).

A flat JSON object of message id -> text, with ``{name}`` placeholders, is what a translator
can edit in any editor and check with any JSON validator, with no build step (gettext's .po
files would need compiling at build and test time for the same result). English is the
reference: a message missing from another catalogue falls back to it, and a test checks
every catalogue has every English message and the same placeholders.
"""

from __future__ import annotations

import json
import string
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

LOCALE_DIR = Path(__file__).parent / "locale"
#: Language code -> (its own name, writing direction).
LANGUAGES = {"en": ("English", "ltr"), "ur": ("اردو", "rtl")}


@cache
def catalogue(language: str) -> dict[str, str]:
    data = json.loads((LOCALE_DIR / f"{language}.json").read_text(encoding="utf-8"))
    return {k: v for k, v in data.items() if not k.startswith("_")}


def placeholders(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


class Translator:
    def __init__(self, language: str) -> None:
        self.language = language if language in LANGUAGES else "en"
        self.direction = LANGUAGES[self.language][1]
        self._texts = catalogue(self.language)
        self._english = catalogue("en")

    def __call__(self, key: str, **values: object) -> str:
        text = self._texts.get(key) or self._english.get(key) or key
        return text.format(**values) if values else text

    def message(self, key: str, values: Mapping[str, Any]) -> str:
        """``key`` filled with ``values``, where a value that is a list of ``{"text": message id,
        "values": {...}}`` parts (the clock's reasons) becomes those messages, translated and
        joined (agent/registration/gates.py, Refusal). KeyError for an id no catalogue has: the
        caller shows the agent's English rather than an id."""
        if not self.has(key):
            raise KeyError(key)
        return self(key, **{name: self.join(v) if isinstance(v, list) else v for name, v in values.items()})

    def join(self, parts: list[Mapping[str, Any]]) -> str:
        return self("list.separator").join(self.message(str(p["text"]), p.get("values") or {}) for p in parts)

    def has(self, key: str) -> bool:
        return key in self._english
