"""Text the local API takes (applicant_ref, operator_id, reasons): any script, but nothing that
reorders or splits what a person later reads.

Bidi embedding, override and isolate controls (U+202A..U+202E, U+2066..U+2069) make a
reference display as another one ("Trojan Source"): the central side's operator reads
"APP-4321" where the transaction holds "APP-\\u202e1234". Line and paragraph separators
(U+2028, U+2029) break a reference over lines in logs and listings, and U+FEFF hides in it.
All were accepted; now they are refused like control characters, by the models and by the
OpenAPI document's pattern alike. Names in any script still pass, joiners included.
"""

from __future__ import annotations

import re

import pytest

from agent.registration.bodies import TEXT_PATTERN, StartSession, parse

HIDDEN = {"RLO": "APP-\u202e1234", "LRE": "A\u202aB", "PDF": "A\u202cB", "RLI": "A\u2067B",
          "PDI": "A\u2069B", "line separator": "APP\u2028X", "paragraph separator": "APP\u2029X",
          "BOM": "\ufeffAPP"}


@pytest.mark.parametrize("name", HIDDEN)
def test_text_that_reorders_or_splits_is_refused(name: str) -> None:
    text = HIDDEN[name]
    with pytest.raises(ValueError, match="applicant_ref must be printable text"):
        parse(StartSession, {"applicant_ref": text, "operator_id": "op"})
    assert re.search(TEXT_PATTERN, text) is None  # the document says so too


NAMES = ["Łukasz Żółć", "李小龍", "محمد\u200cرضا", "क्\u200dष", "Zoë-O'Neil", "שרה כהן"]


@pytest.mark.parametrize("text", NAMES)
def test_names_in_any_script_still_pass(text: str) -> None:
    assert parse(StartSession, {"applicant_ref": text, "operator_id": "op"}).applicant_ref == text
