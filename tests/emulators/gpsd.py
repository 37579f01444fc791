"""gpsd's side of its JSON protocol (https://gpsd.io/gpsd_json.html) on a loopback port.

It greets each client with VERSION, waits for ``?WATCH``, sends the scripted reports (TPV,
SKY, DEVICES or raw bytes), then, like gpsd with a receiver attached, whatever ``epoch()``
returns every ``interval_s`` (e.g. a TPV stamped with the current time) until closed.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable
from typing import Any

Report = dict[str, Any] | bytes


def _line(report: Report) -> bytes:
    return report if isinstance(report, bytes) else json.dumps(report).encode() + b"\n"


class FakeGpsd:
    def __init__(self, reports: list[Report], epoch: Callable[[], list[Report]] | None = None,
                 interval_s: float = 0.5) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.reports, self.epoch, self.interval_s = reports, epoch, interval_s
        self.watch = b""
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._done = threading.Event()

    def __enter__(self) -> FakeGpsd:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self.server.close()
        self._thread.join(5)

    def _serve(self) -> None:
        try:
            conn, _ = self.server.accept()
        except OSError:
            return
        with conn:
            try:
                conn.sendall(_line({"class": "VERSION", "release": "3.25", "proto_major": 3,
                                    "proto_minor": 15}))
                self.watch = conn.recv(1024)
                for report in self.reports:
                    conn.sendall(_line(report))
                while not self._done.wait(self.interval_s if self.epoch else 10):
                    for report in self.epoch() if self.epoch else []:
                        conn.sendall(_line(report))
            except OSError:
                pass  # the client went away
