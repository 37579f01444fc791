"""Fuzzed command payloads (hypothesis; 2,000, or 10,000 under KIOSK_AGENT_SOAK=1) against a
running kiosk on a real mosquitto: each gets exactly one error reply, and afterwards the kiosk
still answers signed commands and its queue is intact."""

from __future__ import annotations

import json
import time
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.remote.commands import COMMANDS
from devtools.broker import MosquittoBroker
from tests.support.remote_client import REPLY_TOPIC, OperatorClient
from tests.support.remote_kiosk import KIOSK, kiosk_raw, start_kiosk
from tests.support.soak import SOAK
from tests.support.waiting import wait_until

EXAMPLES = 10_000 if SOAK else 2_000

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)
# Objects shaped like commands, with every field possibly wrong, missing or of the wrong type.
command_like = st.fixed_dictionaries({}, optional={
    "v": st.sampled_from([1, 2, "1", None]), "id": st.text(max_size=200) | st.integers(),
    "kiosk": st.sampled_from([KIOSK, "other", ""]) | values,
    "name": st.sampled_from(sorted(COMMANDS)) | values,
    "args": values, "operator": st.sampled_from(["ada", "otto", "vera", "mallory"]) | values,
    "issued_at": st.floats() | st.integers() | values, "expires_at": st.floats() | st.integers() | values,
    "nonce": st.text(min_size=0, max_size=130), "reply_to": st.text(max_size=60),
    "sig": st.text(max_size=100) | st.binary(max_size=64).map(lambda b: b.hex()),
}).map(lambda d: json.dumps(d).encode())
payloads = st.binary(max_size=300) | command_like | values.map(lambda v: json.dumps(v).encode())
names = st.sampled_from(sorted(COMMANDS) + ["nope", "a.b.c", "x" * 70])


def test_fuzzed_commands_each_get_one_reply_and_change_nothing(tmp_path: Path,
                                                               broker: MosquittoBroker) -> None:
    agent = start_kiosk(tmp_path, kiosk_raw(tmp_path, broker.port, telemetry={"interval_s": 0}))
    ops = OperatorClient(broker.port, KIOSK, replies_only=True)
    admin = tmp_path / "operators" / "ada.key"
    try:
        for position in (1, 2, 3):
            assert ops.call(admin, "ada", "capture", {"device": "finger", "position": position})["ok"]
        before = {item.id for item in agent.queue.next_batch(0, 100)}
        ops.replies.clear()
        ops.correlations.clear()
        sent: list[bytes] = []

        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(name=names, payload=payloads)
        def fuzz(name: str, payload: bytes) -> None:
            correlation = str(len(sent)).encode()
            sent.append(correlation)
            ops.publish(name, payload, response_topic=REPLY_TOPIC, correlation=correlation)
            # Stay well inside mosquitto's per-client queue (1,000 messages) so none is dropped.
            if len(sent) % 200 == 0:
                wait_until(lambda: len(ops.replies) >= len(sent) - 200, 60, what="replies catching up")

        started = time.monotonic()
        fuzz()
        assert len(sent) == EXAMPLES
        wait_until(lambda: len(ops.replies) >= len(sent), 120, what="a reply to every fuzzed command")
        time.sleep(0.5)  # a second reply to any of them would arrive now
        assert len(ops.replies) == len(sent)
        assert sorted(ops.correlations) == sorted(sent)  # exactly one reply each
        assert all(r["ok"] is False for r in ops.replies)
        assert {r["error"]["code"] for r in ops.replies} <= {"bad_request", "unauthenticated", "expired"}
        elapsed = time.monotonic() - started
        # Still responsive, queue intact and sound.
        assert ops.call(admin, "ada", "ping", timeout_s=5)["ok"] is True
        assert {item.id for item in agent.queue.next_batch(0, 100)} == before
        assert agent.queue.integrity_check() == "ok"
        assert agent.link.alive and agent.link.connected
        # Refusals are recorded small and rate-limited: the flood costs the disk next to nothing.
        audit_bytes = sum(p.stat().st_size for p in agent.config.remote.state_dir.glob("remote.db*"))
        assert audit_bytes < 1024 * 1024
        print(f"{EXAMPLES} fuzzed commands answered in {elapsed:.1f} s; audit database {audit_bytes:,} "
              "bytes with its WAL")
    finally:
        ops.close()
        agent.stop()
