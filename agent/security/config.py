"""The [security] config section: the keys that protect captures."""

from __future__ import annotations

from pathlib import Path

from agent.config_types import Section


class SecurityConfig(Section):
    """Keys that protect captures before they touch disk (see docs/security.md)."""

    #: The kiosk's Ed25519 private key; `kiosk-agent keys init` creates it (mode 0600).
    kiosk_key: Path = Path("/var/lib/kiosk-agent/keys/kiosk.key")
    #: The central service's X25519 public key: captures are encrypted to it.
    central_public_key: Path = Path("/etc/kiosk-agent/central.pub")
