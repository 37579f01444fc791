"""drivers/sbi.py against the SBI emulator (tests/emulators/sbi_service.py), a real HTTP server:
discovery on the port range, the signed device info, slap and face captures with the device's
scores, the hash chain across captures, and every scripted fault."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from drivers.base import CaptureRequest
from drivers.errors import CaptureRetry, PermanentDeviceError, TransientDeviceError
from drivers.sbi import DeviceUntrusted, SbiConfig, SbiDriver, SbiFaceConfig, SbiFaceDriver
from drivers.sbi_http import SbiTimeout
from drivers.sbi_jws import EMPTY_HASH
from tests.emulators.sbi_pki import DevicePki
from tests.emulators.sbi_service import SbiService, chain


@pytest.fixture(scope="module")
def pki() -> DevicePki:
    return DevicePki.make()


@pytest.fixture
def ca(pki: DevicePki, tmp_path: Path) -> Path:
    return pki.write_ca(tmp_path / "provider-ca.pem")


def finger(service: SbiService, ca: Path, **cfg: object) -> SbiDriver:
    # Generous: the emulator makes each print on first use, and the machine may be busy.
    settings: dict[str, object] = {"capture_timeout_s": 8.0, "answer_grace_s": 2.0, **cfg}
    config = SbiConfig(trusted_certs=[ca], port_min=service.port, port_max=service.port, **settings)
    return SbiDriver("finger", config)


def captures(service: SbiService) -> list[dict]:
    return [body for method, body in service.requests if method == "RCAPTURE"]


@pytest.fixture
def service(pki: DevicePki) -> Iterator[SbiService]:
    with SbiService(pki) as svc:
        yield svc


class _NotSbi(http.server.BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


def test_discovery_finds_the_device_on_the_range_past_other_services(pki: DevicePki, ca: Path) -> None:
    # Another HTTP service below it in the range (it answers 501 to MOSIPDISC) is skipped.
    decoy = None
    for port in range(4501, 4601):
        try:
            decoy = http.server.ThreadingHTTPServer(("127.0.0.1", port), _NotSbi)
            break
        except OSError:
            continue
    assert decoy is not None
    thread = threading.Thread(target=decoy.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        with SbiService(pki) as svc:
            assert svc.port > decoy.server_address[1]
            driver = SbiDriver("finger", SbiConfig(trusted_certs=[ca]))  # the default range 4501-4600
            info = driver.open()
            assert info.serial == "SBI0000000001" and info.model == "Emulated SBI Finger"
            assert info.extra["port"] == svc.port and info.extra["certification"] == "L0"
            assert [m for m, _ in svc.requests] == ["MOSIPDISC", "MOSIPDINFO"]
            assert svc.requests[0][1] == {"type": "Finger"}
            driver.close()
            wrong = SbiDriver("finger", SbiConfig(trusted_certs=[ca], serial="OTHER-SERIAL",
                                                  port_min=svc.port, port_max=svc.port))
            with pytest.raises(TransientDeviceError, match="with serial OTHER-SERIAL"):
                wrong.open()
    finally:
        decoy.shutdown()
        decoy.server_close()
        thread.join(5)


def test_a_device_signed_by_an_untrusted_provider_is_refused(service: SbiService, tmp_path: Path) -> None:
    other = DevicePki.make("another provider").write_ca(tmp_path / "other-ca.pem")
    with pytest.raises(DeviceUntrusted, match="not issued by any trusted device-provider certificate"):
        finger(service, other).open()
    assert not captures(service)


def test_an_expired_device_certificate_is_refused(ca: Path, pki: DevicePki) -> None:
    expired = DevicePki(pki.ca_key, pki.ca_cert, *_device_with_validity(pki, (-40, -10)))
    with SbiService(expired) as svc, pytest.raises(DeviceUntrusted, match="not valid now"):
        finger(svc, ca).open()


def _device_with_validity(pki: DevicePki, days: tuple[int, int]) -> tuple:
    made = DevicePki.make(device_valid_days=days)
    # The same CA as ``pki`` must issue it: re-sign the new device certificate with pki's CA key.
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    cert = made.device_cert
    builder = (x509.CertificateBuilder().subject_name(cert.subject).issuer_name(pki.ca_cert.subject)
               .public_key(made.device_key.public_key()).serial_number(cert.serial_number)
               .not_valid_before(cert.not_valid_before_utc).not_valid_after(cert.not_valid_after_utc))
    return made.device_key, builder.sign(pki.ca_key, hashes.SHA256())


def test_untrusted_config_is_named(service: SbiService) -> None:
    with pytest.raises(PermanentDeviceError, match="trusted_certs is empty"):
        SbiDriver("finger", SbiConfig(port_min=service.port, port_max=service.port)).open()


def test_a_slap_comes_back_with_each_fingers_image_and_the_devices_scores(service: SbiService,
                                                                          ca: Path) -> None:
    driver = finger(service, ca)
    driver.open()
    image = driver.capture(CaptureRequest(position=13))
    request = captures(service)[0]
    bio = request["bio"][0]
    assert request["purpose"] == "Registration" and request["specVersion"] == "0.9.5"
    assert bio["deviceSubId"] == 2 and bio["count"] == 4 and bio["previousHash"] == EMPTY_HASH
    assert bio["bioSubType"] == ["Right IndexFinger", "Right MiddleFinger", "Right RingFinger",
                                 "Right LittleFinger"]
    # The emulator scores finger p as 60 + p: the device's scores, and their average as quality.
    assert image.quality_detail["device_scores"] == {"2": 62.0, "3": 63.0, "4": 64.0, "5": 65.0}
    assert image.quality == 64 and image.ppi == 500 and image.image_format == "png"
    gray = cv2.imdecode(np.frombuffer(image.image, np.uint8), cv2.IMREAD_GRAYSCALE)
    # Lossless all the way: the first finger on the platen is the device's image, pixel for pixel.
    assert np.array_equal(gray[:320, :256], service.print_of(2))
    from agent.quality.slap import count_fingers

    assert count_fingers(gray, 500) == 4


def test_exceptions_are_sent_and_the_chain_runs_across_captures(service: SbiService, ca: Path) -> None:
    driver = finger(service, ca)
    driver.open()
    first = driver.capture(CaptureRequest(position=14, exceptions=(8,)))
    bio = captures(service)[0]["bio"][0]
    assert bio["count"] == 3 and bio["exception"] == ["Left MiddleFinger"] and bio["deviceSubId"] == 1
    assert set(first.quality_detail["device_scores"]) == {"7", "9", "10"}
    driver.capture(CaptureRequest(position=1))
    second = captures(service)[1]["bio"][0]
    assert second["previousHash"] == first.quality_detail["hash"] != EMPTY_HASH
    assert second["bioSubType"] == ["Right Thumb"] and second["deviceSubId"] == 3


def test_each_session_has_its_own_chain(service: SbiService, ca: Path) -> None:
    driver = finger(service, ca)
    driver.open()
    a1 = driver.capture(CaptureRequest(position=15, session="A"))
    b1 = driver.capture(CaptureRequest(position=15, session="B"))
    driver.capture(CaptureRequest(position=15, session="A"))
    sent = [body["bio"][0]["previousHash"] for body in captures(service)]
    assert sent == [EMPTY_HASH, EMPTY_HASH, a1.quality_detail["hash"]]
    assert driver.chain_of("B") == b1.quality_detail["hash"] != a1.quality_detail["hash"]


def test_the_hash_rule_is_the_specifications() -> None:
    # A worked value: the empty-string start, then one capture of b"ISO".
    import hashlib

    assert EMPTY_HASH == "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855"
    inner = hashlib.sha256(b"ISO").hexdigest().upper()
    expected = hashlib.sha256((EMPTY_HASH + inner).encode()).hexdigest().upper()
    from drivers.sbi_jws import next_hash

    assert next_hash(EMPTY_HASH, b"ISO") == expected == chain(EMPTY_HASH, b"ISO")


@pytest.mark.parametrize("fault, error, text", [
    ("busy", TransientDeviceError, "busy"),
    ("not-ready", TransientDeviceError, "not ready"),
    ("no-finger", CaptureRetry, "no finger"),
])
def test_device_error_codes_map_to_the_error_tree(pki: DevicePki, ca: Path, fault: str, error: type,
                                                  text: str) -> None:
    with SbiService(pki, faults=[fault]) as svc:
        driver = finger(svc, ca)
        driver.open()
        with pytest.raises(error, match=text) as raised:
            driver.capture(CaptureRequest(position=15))
        assert not isinstance(raised.value, PermanentDeviceError)
        assert driver.capture(CaptureRequest(position=15)).quality == 64  # it passes: the next one works


def test_a_device_that_never_answers_times_out_as_transient(pki: DevicePki, ca: Path) -> None:
    with SbiService(pki, faults=["timeout"]) as svc:
        driver = finger(svc, ca, capture_timeout_s=0.5, answer_grace_s=0.5)
        driver.open()
        started = time.monotonic()
        with pytest.raises(SbiTimeout):
            driver.capture(CaptureRequest(position=15))
        assert time.monotonic() - started < 0.5 + 0.5 + 1.0  # timeout + grace, and little more


@pytest.mark.parametrize("fault, text", [
    ("bad-signature", "signature does not verify"),
    ("alg-none", "algorithm 'none' is refused"),
    ("broken-chain", "does not continue the session's hash chain"),
])
def test_a_capture_that_does_not_verify_is_refused_and_the_chain_stays(pki: DevicePki, ca: Path, fault: str,
                                                                       text: str) -> None:
    with SbiService(pki, faults=["ok", fault]) as svc:
        driver = finger(svc, ca)
        driver.open()
        good = driver.capture(CaptureRequest(position=15))
        with pytest.raises(DeviceUntrusted, match=text):
            driver.capture(CaptureRequest(position=15))
        assert driver.chain_of("") == good.quality_detail["hash"]  # the refused capture did not move it
        driver.capture(CaptureRequest(position=15))
        assert captures(svc)[2]["bio"][0]["previousHash"] == good.quality_detail["hash"]


def test_preview_gives_a_frame_and_a_slow_stream_times_out(pki: DevicePki, ca: Path) -> None:
    with SbiService(pki) as svc:
        driver = finger(svc, ca)
        driver.open()
        assert driver.preview().shape == (240, 320, 3)
    with SbiService(pki, slow_stream=True) as svc:
        driver = finger(svc, ca, preview_timeout_s=0.5)
        driver.open()
        started = time.monotonic()
        with pytest.raises(SbiTimeout):
            driver.preview()
        assert time.monotonic() - started < 1.5


def test_a_face_is_captured_and_left_for_the_kiosk_to_judge(pki: DevicePki, ca: Path) -> None:
    with SbiService(pki, bio_type="Face") as svc:
        config = SbiFaceConfig(trusted_certs=[ca], port_min=svc.port, port_max=svc.port)
        driver = SbiFaceDriver("camera", config)
        assert driver.open().model == "Emulated SBI Face"
        image = driver.capture(CaptureRequest())
        assert image.image_format == "jpeg" and (image.width, image.height) == (640, 480)
        assert image.quality == 88 and "checks" not in image.quality_detail
        bio = captures(svc)[0]["bio"][0]
        assert bio["type"] == "Face" and bio["count"] == 1 and bio["previousHash"] == EMPTY_HASH


def test_the_host_must_be_loopback() -> None:
    with pytest.raises(ValueError, match="loopback"):
        SbiConfig(host="10.0.0.5")
