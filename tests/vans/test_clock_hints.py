"""Certificate failures the kiosk's clock can cause say so: an update download refused for an
expired server certificate, the broker's TLS handshake, the client certificate's expiry log,
and an SBI device certificate outside its validity. Real TLS servers and certificates; the
clock is judged from injected clocks (the test machine's is never touched)."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.clock import watch as clock_watch
from agent.clock.config import ClockConfig
from agent.clock.watch import ClockWatch
from tests.support.certs import CA

SAMPLES = Path(__file__).parent / "samples"
HINT = "this kiosk's clock may be the cause"


@pytest.fixture(autouse=True)
def forget_the_clock() -> Iterator[None]:
    """The last judgement is process-wide (the messages read it): none leaks out."""
    yield
    clock_watch._latest = None


def judge(trusted: bool) -> None:
    """The agent's judgement of its clock: synchronised by chrony, or a cold boot in 1970."""
    if trusted:
        chrony = (SAMPLES / "chronyc-tracking-ntp.txt").read_text()
        now = datetime.now(UTC).timestamp()
    else:
        chrony, now = None, datetime(1970, 1, 2, tzinfo=UTC).timestamp()
    ClockWatch(ClockConfig(), clock=lambda: now, run=lambda argv, t: chrony if argv[0] == "chronyc" else None
               ).state(fresh=True)


# --- update downloads --------------------------------------------------------------------------


class _Kiosk:
    """What download() reads of the running agent: its config, and no uplink budget."""

    def __init__(self, config: Any) -> None:
        self.config = config

    def uplink(self) -> None:
        return None


def _download(tmp_path: Path, port: int, ca_file: Path) -> str:
    from agent.config import validate_config
    from agent.remote.auth import CommandError
    from agent.update.fetch import download
    from tests.vans.van import kiosk_raw

    raw = kiosk_raw(tmp_path, 1)
    raw["update"] = {"allowed_hosts": ["127.0.0.1"], "ca_file": str(ca_file), "download_timeout_s": 10}
    kiosk = _Kiosk(validate_config(raw, "van"))
    kiosk.config.state_dir.mkdir(exist_ok=True)
    with pytest.raises(CommandError) as err:
        download(f"https://127.0.0.1:{port}/b.bundle", hashlib.sha256(b"x").hexdigest(), kiosk)  # type: ignore[arg-type]
    return str(err.value)


def test_an_update_refused_for_an_expired_certificate_names_the_clock(tmp_path: Path) -> None:
    from tests.support.update_server import update_server

    for folder in ("expired", "foreign"):
        (tmp_path / folder).mkdir()
    with update_server(tmp_path / "expired", expired=True) as (port, ca_file):
        judge(trusted=False)
        message = _download(tmp_path, port, ca_file)
        assert "certificate has expired" in message and f"{HINT}: the clock says 1970-01-02" in message
        judge(trusted=True)
        message = _download(tmp_path, port, ca_file)
        assert "certificate has expired" in message and HINT not in message
    # A certificate from a CA the kiosk does not trust: no clock makes that right.
    with update_server(tmp_path / "foreign") as (port, _):
        judge(trusted=False)
        message = _download(tmp_path, port, CA(tmp_path, "other-ca").path)
        assert "certificate verify failed" in message and HINT not in message


# --- the broker ----------------------------------------------------------------------------------


def _handshake_failure(tmp_path: Path, caplog: pytest.LogCaptureFixture, expired: bool) -> str:
    """The real agent, its clock judged wrong (the release floor moved past today), against a
    broker whose certificate has expired (``expired``) or comes from a CA the kiosk does not
    trust: the first handshake failure's log message."""
    from agent.config import validate_config
    from agent.daemon import Agent
    from agent.security.keys import provision
    from devtools.broker import MosquittoBroker
    from tests.support.waiting import wait_until
    from tests.vans.van import KIOSK, kiosk_raw

    ca = CA(tmp_path, "ca")
    issuer = ca if expired else CA(tmp_path, "other-ca")
    cert, key = issuer.issue("broker", server=True, expired=expired)
    client, client_key = ca.issue("van-07-client")
    broker = MosquittoBroker(tls={"cafile": str(ca.path), "certfile": str(cert), "keyfile": str(key)})
    broker.start()
    provision(tmp_path / "keys", KIOSK)
    raw = kiosk_raw(tmp_path, broker.port)
    raw["mqtt"] = {k: v for k, v in raw["mqtt"].items() if k != "allow_plaintext"}
    raw["mqtt"]["tls"] = {"enabled": True, "ca_file": str(ca.path), "cert_file": str(client),
                          "key_file": str(client_key)}
    raw["clock"] = {"not_before": "2100-01-01"}
    agent = Agent(validate_config(raw, "van"))
    caplog.set_level(logging.WARNING, logger="agent.transport.mqtt_link")
    try:
        agent.start()

        def handshake() -> list[str]:
            return [r.getMessage() for r in caplog.records if "TLS handshake with broker" in r.getMessage()]

        wait_until(handshake, timeout_s=20, what="the handshake's failure logged")
        assert agent.link is not None and agent.link.connects == 0
        return handshake()[0]
    finally:
        agent.stop()
        broker.close()


def test_a_broker_handshake_failing_on_dates_names_the_clock(tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    message = _handshake_failure(tmp_path, caplog, expired=True)
    assert "certificate has expired" in message
    assert f"{HINT}: the clock says" in message and "before this release's date 2100-01-01" in message


def test_a_broker_handshake_failing_on_trust_does_not_blame_the_clock(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """No clock makes an unknown CA trusted: even with the clock judged wrong, the message
    sends the officer to the CA file, not to the date."""
    message = _handshake_failure(tmp_path, caplog, expired=False)
    assert "unable to get local issuer certificate" in message and HINT not in message


def test_the_client_certificate_expiry_log_names_the_clock(tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    from agent.transport.broker_tls import check_certificate_expiry
    from agent.transport.config import TlsConfig

    ca = CA(tmp_path, "ca")
    good, good_key = ca.issue("kiosk", days=365)
    old, old_key = ca.issue("kiosk-old", expired=True)

    def logged(cert: Path, key: Path, now: datetime) -> str:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="agent.transport.mqtt_link"):
            tls = TlsConfig(enabled=True, ca_file=ca.path, cert_file=cert, key_file=key)
            check_certificate_expiry(tls, now)
        return " | ".join(r.getMessage() for r in caplog.records)

    judge(trusted=False)
    # A clock in 1970: a good certificate is not valid yet, and the log says the clock may be why.
    message = logged(good, good_key, datetime(1970, 1, 2, tzinfo=UTC))
    assert "is not valid before" in message and "now 1970-01-02" in message and HINT in message
    message = logged(old, old_key, datetime.now(UTC))
    assert "expired on" in message and HINT in message
    judge(trusted=True)
    message = logged(old, old_key, datetime.now(UTC))
    assert "expired on" in message and HINT not in message, "a trusted clock: the certificate is the cause"
    assert logged(good, good_key, datetime.now(UTC)) == "", "valid for a year: nothing to say"


# --- SBI device certificates ---------------------------------------------------------------------


def test_a_device_certificate_outside_its_dates_names_the_kiosks_clock() -> None:
    from drivers.sbi_jws import SignatureRefused, verify_jws
    from tests.emulators.sbi_pki import DevicePki

    pki = DevicePki.make(device_valid_days=(-1, 30))
    token = pki.sign({"deviceStatus": "Ready"})
    now = datetime.now(UTC)
    assert verify_jws(token, [pki.ca_cert], now) is not None
    later = now + timedelta(days=40)  # a clock 40 days fast: the device's certificate looks expired
    with pytest.raises(SignatureRefused) as err:
        verify_jws(token, [pki.ca_cert], later)
    message = str(err.value)
    assert "the device's certificate" in message and "not valid now" in message
    assert f"this kiosk's clock says {later:%Y-%m-%d %H:%M} UTC" in message
    assert "the clock is the cause" in message
