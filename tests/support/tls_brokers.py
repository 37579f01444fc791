"""TLS brokers for the remote-configuration tests: one test CA, brokers whose certificates it
signed (or another CA did), each with a plain listener beside the TLS one so the test's
operator client can stay on plain MQTT while the kiosk uses TLS."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from devtools.broker import MosquittoBroker, free_port, wait_for_port
from tests.support.certs import CA


class Pki:
    """A CA with a client certificate for the kiosk, and a CA nobody trusts."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.dir = directory
        self.ca = CA(directory, "ca")
        self.other_ca = CA(directory, "other-ca")
        self.client, self.client_key = self.ca.issue("kiosk-client")

    def kiosk_tls(self) -> dict[str, Any]:
        """The kiosk's [mqtt.tls] table."""
        return {"enabled": True, "ca_file": str(self.ca.path), "cert_file": str(self.client),
                "key_file": str(self.client_key)}

    def broker(self, name: str, *, trusted: bool = True) -> MosquittoBroker:
        """A started broker: TLS (client certificates required) on ``.port``, plain MQTT on
        ``.plain_port``. ``trusted=False``: its certificate comes from the other CA."""
        ca = self.ca if trusted else self.other_ca
        cert, key = ca.issue(name, server=True)
        broker = MosquittoBroker(tls={"cafile": str(self.ca.path), "certfile": str(cert),
                                      "keyfile": str(key)})
        broker.plain_port = free_port()  # type: ignore[attr-defined]
        # mosquitto's TLS options belong to the listener above them: a listener added after
        # them is plain.
        with broker._conf.open("a") as fh:
            fh.write(f"listener {broker.plain_port} 127.0.0.1\n")  # type: ignore[attr-defined]
        broker.start()
        # start() waits for the TLS listener only; mosquitto may open the plain one a moment
        # later (a loaded CI machine refused the operator client's connection there).
        try:
            wait_for_port("127.0.0.1", broker.plain_port, 10.0)  # type: ignore[attr-defined]
        except TimeoutError:
            broker.close()
            raise
        return broker
