"""The [security] config section: the keys that protect captures."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from agent.config_types import Section


class SecurityConfig(Section):
    """Keys that protect captures before they touch disk (see docs/security.md)."""

    #: The kiosk's Ed25519 private key; `kiosk-agent keys init` creates it (mode 0600).
    kiosk_key: Path = Path("/var/lib/kiosk-agent/keys/kiosk.key")
    #: The central service's X25519 public key: captures are encrypted to it.
    central_public_key: Path = Path("/etc/kiosk-agent/central.pub")
    #: The user the agent runs as (systemd User=). It owns the kiosk's own key and must not be
    #: able to read any operator's private key: the agent refuses to start if it could.
    service_user: str = "kiosk"
    #: The central service's Ed25519 receipt-signing public keys: a capture is deleted only on a
    #: receipt signed by one of them. Several while the central service rotates its key.
    receipt_keys: list[Path] = Field(default_factory=lambda: [Path("/etc/kiosk-agent/receipt-signing.pub")])
