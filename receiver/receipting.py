"""The receiver's receipts: signed, naming the bytes received and the kiosk's send.

A receipt is what makes a kiosk delete its copy, so the receiver signs every one with the
central receipt-signing key (agent/transport/receipts.py) and names in it the SHA-256 of
the sealed envelope it got and the nonce of that send: the transmission frame's for a
single message, the signed manifest's for a chunked transfer. For a chunked transfer the
nonce of the latest verified manifest is remembered here until the transfer completes; a
finished transfer keeps its receipt unsigned (``.done``) and it is signed anew for each
later manifest, with that manifest's nonce.

Runs on the receiver's MQTT thread.
"""

from __future__ import annotations

import json
import logging

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.transport.chunking import Manifest
from agent.transport.mqtt_link import MqttLink
from agent.transport.protocol import ProtocolError, Topics
from agent.transport.receipts import Receipt, ReceiptError, ReceiptSigner
from receiver.chunks import Transfer
from receiver.warnings_limit import OncePerInterval

log = logging.getLogger(__name__)

#: Transfers whose latest nonce is remembered at most (oldest forgotten first; the manifest
#: on disk then stands in).
MAX_REMEMBERED = 10_000
#: Receipts in one frame at most: well inside the format's 1,000 entries and 1 MiB header
#: even with 500-character reasons.
RECEIPTS_PER_FRAME = 500
#: A kiosk is sent the same hint at most this often (it resends every receipt timeout).
HINT_INTERVAL_S = 60.0


class Receipts:
    def __init__(self, key: Ed25519PrivateKey, prefix: str) -> None:
        self.signer = ReceiptSigner(key)
        self.prefix = prefix
        self._nonces: dict[tuple[str, str, str], str] = {}
        self._hinted = OncePerInterval(HINT_INTERVAL_S, MAX_REMEMBERED)

    def hint(self, link: MqttLink, kiosk_id: str, hint: str, receiver: str) -> None:
        """Tell a kiosk what it can fix when it gets no receipt (``not_enrolled``): unsigned,
        QoS 0, at most once a minute per kiosk (docs/protocol.md, "Hints"). The kiosk only
        logs it and shows it in telemetry (agent/transport/central_hints.py)."""
        if self._hinted.allow((kiosk_id, hint)):
            link.publish(f"{self.prefix}/{kiosk_id}/hints",
                         json.dumps({"hint": hint, "receiver": receiver}).encode(), qos=0)

    def send(self, link: MqttLink, kiosk_id: str, receipt: Receipt) -> None:
        self.send_many(link, kiosk_id, [receipt])

    def send_many(self, link: MqttLink, kiosk_id: str, receipts: list[Receipt]) -> None:
        """One frame per RECEIPTS_PER_FRAME receipts, all for ``kiosk_id``."""
        for start in range(0, len(receipts), RECEIPTS_PER_FRAME):
            link.publish(Topics(self.prefix, kiosk_id).receipts,
                         self.signer.sign(kiosk_id, receipts[start:start + RECEIPTS_PER_FRAME]), qos=1)

    def announced(self, kiosk_id: str, manifest: Manifest) -> None:
        """A verified manifest arrived: its nonce is the one the transfer's receipt echoes."""
        key = (kiosk_id, manifest.id, manifest.sha256)
        self._nonces.pop(key, None)
        self._nonces[key] = manifest.nonce
        while len(self._nonces) > MAX_REMEMBERED:
            del self._nonces[next(iter(self._nonces))]

    def nonce_of(self, transfer: Transfer) -> str:
        """The nonce of the transfer's latest manifest seen here; when another receiver of the
        share group took it, the one on disk (if the kiosk has sent another since, the kiosk
        refuses this receipt as stale and its next manifest gets one signed for its nonce)."""
        nonce = self._nonces.pop((transfer.kiosk_id, transfer.id, transfer.sha256), None)
        if nonce is None:
            try:
                nonce = Manifest.decode((transfer.folder / "manifest").read_bytes()).nonce
            except (OSError, ProtocolError):
                nonce = ""
        return nonce

    def send_again(self, link: MqttLink, kiosk_id: str, manifest: Manifest, kept: bytes) -> None:
        """A finished transfer announced again: its kept receipt, signed for this manifest."""
        try:
            receipt = Receipt.from_record(kept, manifest.id, manifest.sha256, manifest.nonce)
        except ReceiptError as exc:
            log.error("transfer %s from kiosk %s: %s; not answered", manifest.id, kiosk_id, exc)
            return
        self.send(link, kiosk_id, receipt)
