"""systemd/61-kiosk-serial.rules: every bridge the docs promise, group dialout, stable names.

(`udevadm test` parses it without complaint; it is not run here because it needs the rules
installed under /etc/udev.)"""

from __future__ import annotations

import re

from tests.support.paths import ROOT

RULES = ROOT / "systemd" / "61-kiosk-serial.rules"
KEY = re.compile(r'^(?:[A-Z_]+(?:\{[^}]+\})?)\s*(?:==|!=|\+=|=|:=)\s*"[^"]*"$')


def rules() -> list[str]:
    return [line for line in RULES.read_text().splitlines() if line.strip() and not line.startswith("#")]


def test_every_line_is_well_formed() -> None:
    for line in rules():
        for assignment in line.split(", "):
            assert KEY.match(assignment), f"not a udev key: {assignment!r} in {line!r}"


def test_the_usual_bridges_get_group_dialout_and_stable_names() -> None:
    text = "\n".join(rules())
    for vendor, product in [("10c4", "ea60"), ("1a86", "7523"), ("0403", "6001"), ("0403", "6015"),
                            ("067b", "2303")]:
        assert f'ATTRS{{idVendor}}=="{vendor}", ATTRS{{idProduct}}=="{product}"' in text
    assert 'GROUP="dialout", MODE="0660"' in text
    assert 'SYMLINK+="kiosk-serial-%n"' in text
    assert "ID_SERIAL_SHORT" in text and "ID_PATH" in text
    labels = re.findall(r'GOTO="(\w+)"', text)
    assert labels and all(f'LABEL="{label}"' in text for label in labels)
