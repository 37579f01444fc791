"""The remote command ``update.apply`` against a real kiosk agent, a real mosquitto and a real
HTTPS server on loopback with a test CA: who may send it, which URLs and bytes are refused,
and that an accepted bundle reaches the updater's spool with its bytes counted against the
uplink budget."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.update.spool import DOWNLOAD, PENDING, PENDING_BUNDLE, spool_dir
from devtools.broker import MosquittoBroker
from tests.support.certs import CA
from tests.support.remote_client import OperatorClient
from tests.support.remote_kiosk import KIOSK, kiosk_raw, start_kiosk
from tests.support.update_server import BUNDLE, CAP, update_server


@pytest.fixture
def https(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    with update_server(tmp_path) as served:
        yield served


def _kiosk(tmp_path: Path, broker: MosquittoBroker, ca_file: Path, budget: int = 0):  # type: ignore[no-untyped-def]
    raw = kiosk_raw(tmp_path, broker.port,
                    update={"allowed_hosts": ["127.0.0.1"], "ca_file": str(ca_file),
                            "max_bundle_bytes": CAP, "download_timeout_s": 10},
                    uplink={"daily_budget_bytes": budget})
    return start_kiosk(tmp_path, raw)


def test_update_apply_refusals_and_hand_over(tmp_path: Path, broker: MosquittoBroker, https) -> None:  # type: ignore[no-untyped-def]
    port, ca_file = https
    agent = _kiosk(tmp_path, broker, ca_file, budget=10_000_000)
    ops = OperatorClient(broker.port, KIOSK)
    keys = tmp_path / "operators"
    spool = spool_dir(agent.config.kiosk.state_dir)
    url = f"https://127.0.0.1:{port}/kiosk-agent-1.2.0.bundle"
    good = hashlib.sha256(BUNDLE).hexdigest()

    def call(operator: str, args: dict[str, Any]) -> dict[str, Any]:
        return ops.call(keys / f"{operator}.key", operator, "update.apply", args, timeout_s=30)

    def refused(reply: dict[str, Any], code: str, words: str) -> None:
        assert not reply["ok"], reply
        assert reply["error"]["code"] == code and words in reply["error"]["message"], reply
        assert not (spool / PENDING).exists() and not (spool / DOWNLOAD).exists()

    try:
        used_before = agent.uplink().used
        # An operator (below admin) may not install software, whatever the bundle.
        refused(call("otto", {"url": url, "sha256": good}), "forbidden", "")
        # Not the pinned file: downloaded, counted, then dropped before the updater sees it.
        refused(call("ada", {"url": url, "sha256": "0" * 64}), "invalid_args", "not the")
        assert agent.uplink().used - used_before == len(BUNDLE)
        # Hosts and schemes outside the allow-list are refused before any connection.
        refused(call("ada", {"url": f"https://localhost:{port}/b", "sha256": good}), "forbidden",
                "not in update.allowed_hosts")
        refused(call("ada", {"url": f"http://127.0.0.1:{port}/b", "sha256": good}), "invalid_args", "https")
        refused(call("ada", {"url": f"https://u:hunter2@127.0.0.1:{port}/b", "sha256": good}), "invalid_args",
                "credentials")
        assert "hunter2" not in json.dumps(agent.recent_audit(50))  # the audit masks a URL's password
        # A redirect would leave the allow-list: not followed.
        refused(call("ada", {"url": f"https://127.0.0.1:{port}/moved", "sha256": good}), "failed", "302")
        # No Content-Length and more bytes than update.max_bundle_bytes: cut off at the cap.
        refused(call("ada", {"url": f"https://127.0.0.1:{port}/endless", "sha256": good}), "invalid_args",
                "max_bundle_bytes")
        assert agent.uplink().used - used_before <= len(BUNDLE) + CAP + 65536
        before = agent.uplink().used
        reply = call("ada", {"url": url, "sha256": good.upper()})
        assert reply["ok"] and reply["result"] == {"accepted": True, "sha256": good, "bytes": len(BUNDLE)}
        assert (spool / PENDING_BUNDLE).read_bytes() == BUNDLE and (spool / PENDING).exists()
        assert agent.uplink().used - before == len(BUNDLE)
        # One request at a time: a second waits for the updater to take the first.
        refused_reply = call("ada", {"url": url, "sha256": good})
        assert refused_reply["error"]["code"] == "busy", refused_reply
    finally:
        ops.close()
        agent.stop()


def test_update_apply_refuses_untrusted_tls_and_a_spent_budget(tmp_path: Path, broker: MosquittoBroker,
                                                               https) -> None:  # type: ignore[no-untyped-def]
    port, _ = https
    (tmp_path / "other").mkdir()
    other = CA(tmp_path / "other", "other-ca")
    agent = _kiosk(tmp_path, broker, other.path, budget=len(BUNDLE) // 2)
    ops = OperatorClient(broker.port, KIOSK)
    keys = tmp_path / "operators"
    good = hashlib.sha256(BUNDLE).hexdigest()
    try:
        reply = ops.call(keys / "ada.key", "ada", "update.apply",
                         {"url": f"https://127.0.0.1:{port}/b", "sha256": good})
        assert reply["error"]["code"] == "failed" and "CERTIFICATE_VERIFY_FAILED" in reply["error"]["message"]
        assert agent.uplink().used == 0
    finally:
        ops.close()
        agent.stop()
    # The same kiosk trusting the right CA, but half the bundle's size left of today's budget.
    ca_file = next(tmp_path.glob("update-ca.pem"))
    agent = _kiosk(tmp_path, broker, ca_file, budget=len(BUNDLE) // 2)
    ops = OperatorClient(broker.port, KIOSK)
    try:
        reply = ops.call(keys / "ada.key", "ada", "update.apply",
                         {"url": f"https://127.0.0.1:{port}/b", "sha256": good})
        assert reply["error"]["code"] == "failed" and "uplink budget" in reply["error"]["message"], reply
        assert not (spool_dir(agent.config.kiosk.state_dir) / PENDING).exists()
    finally:
        ops.close()
        agent.stop()


@pytest.mark.parametrize(("url", "code"), [
    ("https://updates.example.org/kiosk/1.2.0.bundle", None),
    ("https://updates.example.org/kiosk/a/b.bundle?x=1", None),
    ("https://UPDATES.example.org/kiosk/b", "forbidden"),  # the prefix is compared exactly
    ("https://updates.example.org.evil.net/kiosk/b", "forbidden"),
    ("https://updates.example.org/kiosk2/b", "forbidden"),
    ("https://updates.example.org/kiosk/../admin/b", "invalid_args"),
    ("https://updates.example.org/kiosk/%2E%2E/b", "invalid_args"),
    ("https://updates.example.org:99999/kiosk/b", "invalid_args"),
    ("https://updates.example.org/kiosk/b c", "invalid_args"),
    ("https://updates.example.org/kiosk/\u202eb", "invalid_args"),
    ("file:///etc/shadow", "invalid_args"),
    ("https:///kiosk/b", "invalid_args"),
])
def test_bundle_urls_outside_the_prefix_are_refused(url: str, code: str | None) -> None:
    from agent.remote.auth import CommandError
    from agent.update.config import UpdateConfig
    from agent.update.fetch import check_url

    config = UpdateConfig(bundle_url_prefix="https://updates.example.org/kiosk/")
    if code is None:
        assert check_url(url, config)[0] == "updates.example.org"
        return
    with pytest.raises(CommandError) as caught:
        check_url(url, config)
    assert caught.value.code == code
