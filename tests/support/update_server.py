"""An HTTPS server on loopback with a test CA, serving one update bundle and the answers a
hostile or broken server gives (a redirect, a body with no end)."""

from __future__ import annotations

import http.server
import os
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.support.certs import CA

BUNDLE = os.urandom(300_000)
CAP = 1_000_000


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
        if self.path == "/moved":
            self.send_response(302)
            self.send_header("Location", "https://evil.example/b")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path == "/endless":  # no Content-Length: only the running count can stop it
            self.send_response(200)
            self.end_headers()
            try:
                for _ in range(CAP // 65536 + 10):
                    self.wfile.write(b"\0" * 65536)
            except OSError:
                pass  # the kiosk hung up, as it should
            self.close_connection = True
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(BUNDLE)))
        self.end_headers()
        self.wfile.write(BUNDLE)

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def update_server(tmp_path: Path, *, expired: bool = False) -> Iterator[tuple[int, Path]]:
    """(port, the CA file that verifies it); ``expired``: its certificate ended yesterday."""
    ca = CA(tmp_path, "update-ca")
    cert, key = ca.issue("updates", server=True, expired=expired)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    # The handshake in the handler's thread (on its first read), not in the accepting loop,
    # where one client that never speaks would hold up every other.
    server.socket = context.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    server.daemon_threads = False  # server_close then joins the handlers: no socket outlives the test
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], ca.path
    finally:
        server.shutdown()
        server.server_close()
