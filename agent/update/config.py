"""The ``[update]`` section: which release keys the kiosk trusts, and the health gate."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from agent.config_types import Section


class UpdateConfig(Section):
    #: Public keys (PEM, from ``keys init --release``) whose bundles this kiosk installs.
    #: Release keys are not operator keys: a remote operator cannot sign software.
    release_keys: list[Path] = Field(default_factory=list)
    #: The new release must be ready, connected and have its devices back within this time.
    health_timeout_s: float = Field(default=180.0, gt=0, le=3600)
    #: Where the releases live (the updater's tree; the agent only reads it).
    root: Path = Path("/opt/kiosk-agent")
    #: The largest bundle accepted, in bytes (the download counts against the uplink budget).
    max_bundle_bytes: int = Field(default=400 * 1024 * 1024, gt=0)
    #: Hosts a remote ``update.apply`` may fetch a bundle from (exact names; HTTPS only).
    allowed_hosts: list[str] = Field(default_factory=list)
    #: Or an exact URL prefix ("https://updates.example.org/kiosk/"): a bundle URL must start
    #: with it. Empty: only ``allowed_hosts``. It must reach past the host to a "/", or
    #: "https://updates.example.org" would also admit "https://updates.example.org.evil.net".
    bundle_url_prefix: str = Field(default="", pattern=r"^(https://[^/?#@\s]+/[^?#\s]*)?$")
    #: The CA bundle that verifies the update server (default: the system's trust store).
    ca_file: Path | None = None
    #: A download that stalls this long (seconds without a byte) is abandoned.
    download_timeout_s: float = Field(default=60.0, gt=0, le=3600)
