"""A TCP proxy on loopback that the test controls: pass, stall, slow, drop.

One thread runs a select loop over every socket, so stopping it leaves nothing behind.
- stall: stop forwarding in both directions but keep the connections open (a half-open
  link, as when a cellular modem loses its carrier without a FIN or RST);
- slow: forward at most ``slow_bytes_per_s``;
- drop(): reset every open connection at once.
"""

from __future__ import annotations

import select
import socket
import struct
import threading
import time

from devtools.broker import free_port


class FaultyProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.port = free_port()
        self.mode = "pass"
        self.slow_bytes_per_s = 20_000
        self.connections = 0
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._pairs: dict[socket.socket, socket.socket] = {}
        self._lock = threading.Lock()
        self._drop = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-proxy", daemon=True)
        self._thread.start()

    def drop(self) -> None:
        with self._lock:
            self._drop = True

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._reset_all()
        self._listener.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                if self._drop:
                    self._drop = False
                    self._reset_all()
            readable = [self._listener] + ([] if self.mode == "stall" else list(self._pairs))
            ready, _, _ = select.select(readable, [], [], 0.05)
            for sock in ready:
                if sock is self._listener:
                    self._accept()
                elif sock in self._pairs:
                    self._forward(sock)

    def _accept(self) -> None:
        client, _ = self._listener.accept()
        try:
            server = socket.create_connection(self.upstream, timeout=2)
        except OSError:
            client.close()
            return
        self._pairs[client] = server
        self._pairs[server] = client
        self.connections += 1

    def _forward(self, sock: socket.socket) -> None:
        limit = self.slow_bytes_per_s // 20 if self.mode == "slow" else 65536
        try:
            data = sock.recv(limit)
        except OSError:
            data = b""
        peer = self._pairs[sock]
        if not data:
            self._close_pair(sock, peer)
            return
        try:
            peer.sendall(data)
        except OSError:
            self._close_pair(sock, peer)
        if self.mode == "slow":
            time.sleep(0.05)

    def _close_pair(self, a: socket.socket, b: socket.socket) -> None:
        for sock in (a, b):
            self._pairs.pop(sock, None)
            sock.close()

    def _reset_all(self) -> None:
        for sock in list(self._pairs):
            # SO_LINGER 0: close with RST, as a dropped NAT mapping or a modem reset would.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        self._pairs.clear()
