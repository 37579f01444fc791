"""The reference receiver's config file: [receiver], [mqtt], [logging], [formats]."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, model_validator

from agent.config import LoggingConfig, apply_env_overrides, read_toml
from agent.config_types import ConfigError, Section, TopicSegment, describe_errors
from agent.formats.config import FormatsConfig
from agent.security.keys import RECEIPT_KEY_NAME
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
    #: The central service's Ed25519 receipt-signing key: only receipts it signs let a kiosk
    #: delete a capture. Default: receipt-signing.key beside central_private_key (where
    #: `kiosk-agent keys init --central` creates it along with the encryption key).
    receipt_signing_key: Path | None = None
    #: Enrolled kiosks: one `<kiosk_id>.pub` Ed25519 public key file each (`kiosk-agent keys enrol`).
    kiosk_keys_dir: Path = Path("/etc/kiosk-agent/kiosks")
    #: Chunks a kiosk may have waiting for reassembly, in bytes (files charged in whole 4 KiB
    #: blocks). A kiosk sends one chunked transfer at a time, at most 256 MiB: the default
    #: leaves room for that and for leftovers of transfers purged on the kiosk.
    chunk_quota_bytes: int = Field(1 << 30, ge=1 << 20)
    #: A registration whose assembly failed with every part present is retried after this
    #: long, then twice as long each time, up to assembly_retry_max_s.
    assembly_retry_s: float = Field(30.0, gt=0)
    assembly_retry_max_s: float = Field(3600.0, gt=0)
    #: A registration whose manifest is here but parts are missing is reported ``incomplete``
    #: to its kiosk once it has waited this long (parts in flight are not news).
    incomplete_after_s: float = Field(600.0, gt=0)
    #: Registrations a kiosk may have that cannot finish (waiting for parts, or failed for
    #: their data); beyond it the kiosk's new manifests are refused (receiver/unfinished.py).
    max_unfinished_registrations: int = Field(20, ge=1)
    #: Assembly retries and "incomplete" reports per turn of the receiver's loop take at most
    #: this long; the rest wait for the next turn, after the messages that came meanwhile.
    assembly_tick_budget_ms: float = Field(50.0, gt=0, le=1000)
    #: Registration statuses signed in answer to queries per second, all kiosks together
    #: (each ~0.5 ms); over it queries are dropped and counted (receiver/query_budget.py).
    query_answers_per_s: int = Field(512, ge=1)
    #: Whether sealed envelopes of version 1 (the signature over the whole capture) are still
    #: read. On during a rollout to version 2: a kiosk's queue keeps what it sealed before its
    #: update. Turn it off once the counter envelopes_v1 has stayed at 0 fleet-wide (docs/security.md).
    accept_envelope_v1: bool = True

    #: Where captures are kept: "files" (under output_dir: the demo and small sites) or a
    #: libpq URI, "postgresql://user@host/db" (many receivers, one database). Keep the
    #: password out of it: libpq reads PGPASSWORD or ~/.pgpass (docs/deployment.md).
    store: str = Field("files", pattern=r"^(files|postgres(ql)?://.*)$")
    #: Group commit (PostgreSQL store): what arrives within this many milliseconds is filed
    #: in one transaction, at most group_commit_max messages / group_commit_max_bytes bytes;
    #: its receipts are sent once that transaction has committed.
    group_commit_ms: float = Field(5.0, ge=0, le=1000)
    group_commit_max: int = Field(256, ge=1, le=10000)
    group_commit_max_bytes: int = Field(32 << 20, ge=1 << 16)

    @model_validator(mode="after")
    def _receipt_key_beside_central_key(self) -> ReceiverConfig:
        if self.receipt_signing_key is None:
            self.receipt_signing_key = self.central_private_key.with_name(RECEIPT_KEY_NAME)
        return self

    @property
    def receipt_key(self) -> Path:
        """receipt_signing_key, resolved (set by validation when not configured)."""
        assert self.receipt_signing_key is not None
        return self.receipt_signing_key



class ReceiverServiceConfig(Section):
    """The reference receiver's own config file: no kiosk, no devices."""

    #: Validated even when the file has no [mqtt] table: the defaults alone are plain MQTT, refused.
    mqtt: MqttConfig = Field(default_factory=dict, validate_default=True)
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
    # The file and the environment only: a kiosk's remote overlay never applies to a receiver
    # (in a demo both read one file and may share a state folder).
    raw = read_toml(path)
    apply_env_overrides(raw, os.environ if environ is None else environ)
    try:
        return ReceiverServiceConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(str(path), describe_errors(exc, (), ReceiverServiceConfig)) from None
