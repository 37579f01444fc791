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
