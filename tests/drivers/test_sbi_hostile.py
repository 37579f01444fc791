"""The SBI adapter facing a hostile device service: redirects, oversized, endless and dripping
answers, deep JSON, loose base64 and forged tokens are refused, each within its bounds."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from drivers.sbi_http import SbiEndpoint, SbiProtocolError, SbiTimeout
from drivers.sbi_jws import SignatureRefused, b64url_decode, load_trusted, parse_json_object, verify_jws
from tests.emulators.sbi_pki import DevicePki


@pytest.fixture
def raw_server() -> Iterator[Callable[[Callable[[socket.socket], None]], int]]:
    """A one-connection TCP server on 127.0.0.1 whose answer the test writes byte by byte."""
    made: list[tuple[socket.socket, threading.Thread]] = []
    stop = threading.Event()

    def start(answer: Callable[[socket.socket], None]) -> int:
        listener = socket.create_server(("127.0.0.1", 0))

        def serve() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(65536)
                try:
                    answer(conn)
                except OSError:
                    pass
                stop.wait(5)

        thread = threading.Thread(target=serve, name="hostile-sbi", daemon=True)
        thread.start()
        made.append((listener, thread))
        return listener.getsockname()[1]

    start.stop = stop  # type: ignore[attr-defined]
    yield start
    stop.set()
    for listener, thread in made:
        listener.close()
        thread.join(5)


def _call(port: int, timeout_s: float = 2.0, max_bytes: int = 4096) -> object:
    return SbiEndpoint("127.0.0.1", port).call("MOSIPDINFO", "/info", None, timeout_s, max_bytes)


def test_a_redirect_is_not_followed(raw_server) -> None:
    port = raw_server(lambda c: c.sendall(b"HTTP/1.1 302 Found\r\nLocation: http://203.0.113.9/\r\n"
                                          b"Content-Length: 0\r\n\r\n"))
    with pytest.raises(SbiProtocolError, match="HTTP 302"):
        _call(port)


def test_an_oversized_or_endless_answer_stops_at_the_limit(raw_server) -> None:
    port = raw_server(lambda c: c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 999999999\r\n\r\n[]"))
    with pytest.raises(SbiProtocolError, match="exceeds the 4096-byte limit"):
        _call(port)

    def endless(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
        for _ in range(100):
            conn.sendall(b"[" * 1024)

    with pytest.raises(SbiProtocolError, match="exceeds the 4096-byte limit"):
        _call(raw_server(endless))


def test_a_dripping_answer_is_cut_at_the_overall_deadline(raw_server) -> None:
    stop = raw_server.stop

    def drip(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
        while not stop.wait(0.1):  # one byte every 0.1 s: each read alone is quick
            conn.sendall(b" ")

    started = time.monotonic()
    with pytest.raises(SbiTimeout):
        _call(raw_server(drip), timeout_s=0.8)
    assert time.monotonic() - started < 1.6


def test_deep_json_and_loose_base64_are_refused() -> None:
    with pytest.raises(ValueError, match="deeper than 16"):
        parse_json_object(("{\"a\": " + "[" * 20 + "1" + "]" * 20 + "}").encode(), "x")
    with pytest.raises(ValueError, match="not JSON"):
        parse_json_object(b"[" * 100000, "x")
    for loose in ("ab+c", "ab/c", "ab c", "a\nb", "abcde"):
        with pytest.raises(ValueError):
            b64url_decode(loose, "bioValue")
    assert b64url_decode("SVNP", "bioValue") == b"ISO"


def test_forged_tokens_are_refused(tmp_path: Path) -> None:
    pki = DevicePki.make()
    trusted = load_trusted([pki.write_ca(tmp_path / "ca.pem")])
    good = pki.sign({"serialNo": "S1"})
    assert verify_jws(good, trusted).json() == {"serialNo": "S1"}
    # A device certificate from the trusted CA, but the token signed by another key.
    thief = DevicePki.make("thief")
    forged = DevicePki(pki.ca_key, pki.ca_cert, thief.device_key, pki.device_cert).sign({"serialNo": "S1"})
    with pytest.raises(SignatureRefused, match="does not verify"):
        verify_jws(forged, trusted)
    # The trusted CA's own certificate is not a device: a leaf must be issued by it.
    head, body, sig = good.split(".")
    header = json.loads(base64.urlsafe_b64decode(head + "=="))
    from cryptography.hazmat.primitives import serialization

    header["x5c"] = [base64.b64encode(pki.ca_cert.public_bytes(serialization.Encoding.DER)).decode()]
    swapped = base64.urlsafe_b64encode(json.dumps(header).encode()).rstrip(b"=").decode()
    with pytest.raises(SignatureRefused):
        verify_jws(f"{swapped}.{body}.{sig}", trusted)
    for token in ("", "a.b", body, f"{head}.{body}", 5, None):
        with pytest.raises(SignatureRefused):
            verify_jws(token, trusted)
    with pytest.raises(SignatureRefused, match="'HS256' is refused"):
        header["alg"] = "HS256"
        verify_jws(base64.urlsafe_b64encode(json.dumps(header).encode()).rstrip(b"=").decode()
                   + f".{body}.{sig}", trusted)


def test_a_trust_file_holding_a_device_certificate_is_refused(tmp_path: Path) -> None:
    pki = DevicePki.make()
    from cryptography.hazmat.primitives import serialization

    path = tmp_path / "device.pem"
    path.write_bytes(pki.device_cert.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(ValueError, match="not a CA certificate"):
        load_trusted([path])
