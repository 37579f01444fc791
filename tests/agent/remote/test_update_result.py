"""The updater's outcome reaches the operators: a real kiosk agent on a real mosquitto finds the
result the updater wrote (with the updater's own writer), emits one ``update_result`` event,
carries the outcome in telemetry, and does not announce it again after a restart."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

from agent.update.outcome import PUBLISHED, announce, last_outcome
from agent.update.spool import RESULT, spool_dir, write_result
from devtools.broker import MosquittoBroker
from tests.support.remote_client import OperatorClient
from tests.support.remote_kiosk import KIOSK, kiosk_raw, start_kiosk


def _result(outcome: str, reason: str) -> dict[str, object]:
    return {"ok": False, "error": reason, "version": "1.2.0", "outcome": outcome, "reason": reason,
            "id": uuid.uuid4().hex, "at": time.time()}


def _announced(ops: OperatorClient) -> list[dict[str, object]]:
    bodies = [json.loads(p) for t, p in list(ops.messages) if t.endswith("/events")]
    return [b for b in bodies if b.get("event") == "update_result"]


def test_a_rollback_is_announced_exactly_once(tmp_path: Path, broker: MosquittoBroker) -> None:
    raw = kiosk_raw(tmp_path, broker.port)
    ops = OperatorClient(broker.port, KIOSK)
    agent = start_kiosk(tmp_path, raw)
    spool = spool_dir(agent.config.kiosk.state_dir)
    spool.mkdir(exist_ok=True)
    reason = "1.2.0 failed its health gate and was rolled back to 1.1.0: not connected within 45 s"
    try:
        write_result(spool, _result("rolled_back", reason))
        told = ops.wait_message("events", lambda b: b.get("event") == "update_result")
        assert (told["version"], told["outcome"], told["reason"]) == ("1.2.0", "rolled_back", reason)
        telemetry = ops.wait_message("telemetry", lambda b: (b.get("update") or {}).get("outcome")
                                     == "rolled_back")
        assert telemetry["update"]["reason"] == reason and telemetry["version"]
        time.sleep(1.6)  # three more telemetry turns
    finally:
        agent.stop()
    # The agent is restarted by every switch and rollback: the outcome is not news then.
    agent = start_kiosk(tmp_path, raw)
    try:
        ops.wait_message("telemetry", lambda b: b["at"] > time.time() - 0.2 and b.get("update"))
        time.sleep(1.1)
        assert len(_announced(ops)) == 1, _announced(ops)
    finally:
        agent.stop()
        ops.close()


def test_hostile_or_partial_results_are_ignored(tmp_path: Path) -> None:
    spool = tmp_path / "updates"
    spool.mkdir()
    emitted: list[dict[str, object]] = []

    def emit(kind: str, **fields: object) -> None:
        emitted.append({"event": kind, **fields})

    for body in (b"not json", b"[1]", json.dumps({"outcome": "pwned", "id": "x"}).encode(),
                 json.dumps({"outcome": "committed"}).encode(), b"{" + b" " * 100_000 + b"}"):
        (spool / RESULT).write_bytes(body)
        assert announce(spool, emit) is None
    # A link where the result should be is not followed (the spool is the agent user's).
    (spool / RESULT).unlink()
    (tmp_path / "elsewhere.json").write_text(json.dumps(_result("committed", "healthy")))
    os.symlink(tmp_path / "elsewhere.json", spool / RESULT)
    assert last_outcome(spool) is None
    (spool / RESULT).unlink()
    write_result(spool, {**_result("refused", "x" * 5000), "version": 7})
    outcome = announce(spool, emit)
    assert outcome is not None and len(outcome["reason"]) == 500 and outcome["version"] is None
    assert announce(spool, emit) == outcome and len(emitted) == 1
    assert (spool / PUBLISHED).read_text() == outcome["id"]
