"""The [remote] config section: operators, their roles, limits on commands."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from agent.config_types import Section, TopicSegment

Role = Literal["viewer", "operator", "admin"]



class OperatorConfig(Section):
    """A person allowed to send signed commands to this kiosk (docs/remote-management.md)."""

    #: The operator's Ed25519 public key (PEM), made by `kiosk-agent keys init --operator`.
    public_key: Path
    #: viewer reads status; operator also tests devices, captures, retries the queue, reads
    #: diagnostics and sets the log level; admin also changes config, purges and restarts.
    roles: list[Role] = Field(min_length=1)



class RemoteConfig(Section):
    """Remote management over MQTT: signed commands, audit log, config changes with rollback."""

    #: false: the kiosk subscribes to no commands at all.
    enabled: bool = True
    #: Operators by name; a command names its operator and is verified with that key.
    operators: dict[TopicSegment, OperatorConfig] = Field(default_factory=dict)
    #: Clock difference tolerated between the operator's machine and the kiosk.
    clock_skew_s: float = Field(300.0, ge=0)
    #: Longest lifetime a command may ask for (expires_at - issued_at).
    max_ttl_s: float = Field(3600.0, gt=0)
    #: Audit log, remembered nonces, and the config overlay written by config.set.
    #: Default: a "remote" folder beside the queue (/var/lib/kiosk-agent/remote).
    state_dir: Path | None = None
    #: After config.set, the new config must bring the MQTT connection up within this time,
    #: or the previous config is restored by itself.
    rollback_timeout_s: float = Field(30.0, gt=0)
    #: Longest a command may run before its reply says "timeout" (captures wait for a person).
    command_timeout_s: float = Field(60.0, gt=0)
