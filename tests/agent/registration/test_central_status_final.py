"""A final word stays final: ``complete`` or ``cancelled`` is not undone by a later ``unknown``.

A receiver answers anyone's query (it is unsigned) with a freshly signed status, and says
``unknown`` of a registration whose files it no longer has (archived off its output folder,
another store in its share group). Any broker client could so turn a kiosk's kept
``complete`` into ``unknown`` (measured with a real receiver, /tmp/redteam/p_regress.py), and
the kiosk then asked about it again every few minutes for 30 days. Now that status is
refused ("regressed") and changes nothing; a genuine change of word still passes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.capture.ids import uuid7
from agent.registration.central_status import CentralStatus
from agent.registration.store import SessionStore
from agent.security.keys import load_receipt_keys, load_receipt_signing_key
from agent.transport.protocol import Topics
from agent.transport.receipts import ReceiptSigner, RegistrationStatus
from tests.support.config import keys_for


@pytest.mark.parametrize("final", ["complete", "cancelled"])
def test_unknown_after_a_final_word_changes_nothing(tmp_path: Path, final: str) -> None:
    keys = keys_for(tmp_path, "k1")
    signer = ReceiptSigner(load_receipt_signing_key(keys.receipt_key))
    store = SessionStore(tmp_path / "registrations.db")
    central = CentralStatus(store, Topics("kiosk", "k1"), load_receipt_keys([keys.receipt_public]))
    sid = uuid7()
    store.create(sid, "APP-1", "op-1", "ten-flat", False, ["finger-1"])
    store.set_state(sid, "completed")
    try:
        assert central.take(signer.sign_status("k1", RegistrationStatus(sid, "incomplete", 1))) == "accepted"
        assert central.take(signer.sign_status("k1", RegistrationStatus(sid, final, 2))) == "accepted"
        assert central.take(signer.sign_status("k1", RegistrationStatus(sid, "unknown", 3))) == "regressed"
        assert store.central(sid)["state"] == final
        assert sid not in store.central_due(10**12, 64), "not asked about again"
        assert central.counters.refused_by_reason == {"regressed": 1}
    finally:
        store.close()
