"""The reference receiver's config file: [receiver], [mqtt], [logging], [formats]."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError

from agent.config import LoggingConfig, read_raw
from agent.config_types import ConfigError, Section, TopicSegment, describe_errors
from agent.formats.config import FormatsConfig
from agent.transport.config import MqttConfig


class ReceiverConfig(Section):
    """The reference receiver (central side); ignored by the kiosk daemon."""

    output_dir: Path = Path("/var/lib/kiosk-agent-receiver")
    #: Receivers in one group split the fleet's captures (MQTT 5 shared subscription).
    share_group: TopicSegment = "receivers"
    #: Which kiosks to serve: "+" for all, or one kiosk id.
    kiosk_filter: str = "+"
    name: str = "receiver"
    #: The central service's X25519 private key (`kiosk-agent keys init --central`).
    central_private_key: Path = Path("/var/lib/kiosk-agent-receiver/keys/central.key")
    #: Enrolled kiosks: one `<kiosk_id>.pub` Ed25519 public key file each (`kiosk-agent keys enrol`).
    kiosk_keys_dir: Path = Path("/etc/kiosk-agent/kiosks")



class ReceiverServiceConfig(Section):
    """The reference receiver's own config file: no kiosk, no devices."""

    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    receiver: ReceiverConfig = Field(default_factory=ReceiverConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    #: Accepted and ignored, so one file can serve a kiosk and a receiver in a demo.
    kiosk: dict[str, Any] | None = None
    queue: dict[str, Any] | None = None
    capture: dict[str, Any] | None = None
    security: dict[str, Any] | None = None
    devices: dict[str, Any] | None = None
    remote: dict[str, Any] | None = None
    telemetry: dict[str, Any] | None = None
    quality: dict[str, Any] | None = None
    registration: dict[str, Any] | None = None
    local_api: dict[str, Any] | None = None
    uplink: dict[str, Any] | None = None
    #: The receiver writes each complete registration's ANSI/NIST transaction with these.
    formats: FormatsConfig = Field(default_factory=FormatsConfig)

    def client_id(self) -> str:
        return self.mqtt.client_id or f"kiosk-receiver-{self.receiver.name}"



def load_receiver_config(path: str | os.PathLike[str],
                         environ: dict[str, str] | None = None) -> ReceiverServiceConfig:
    raw = read_raw(path, environ)
    try:
        return ReceiverServiceConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(str(path), describe_errors(exc, (), ReceiverServiceConfig)) from None
