"""Config sections of the transport: [mqtt], [mqtt.tls], [queue], [uplink], [telemetry]."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, SecretStr, model_validator

from agent.config_types import ConfigError, Port, Section
from agent.config_types import topic_prefix as _topic_prefix
from agent.transport.windows import parse_window

#: Why a config without TLS is refused, and the two ways out.
PLAINTEXT_REFUSED = (
    "TLS is off: enable [mqtt.tls] (enabled = true, ca_file = ...; port 8883) to reach the broker, "
    "or, for a lab or demo broker only, set mqtt.allow_plaintext = true"
)


class TlsConfig(Section):
    """TLS to the broker. When enabled there is no plaintext fallback, ever."""

    enabled: bool = False
    #: CA certificate(s) that signed the broker's certificate (PEM).
    ca_file: Path | None = None
    #: Client certificate and its private key (PEM), for brokers that require them.
    cert_file: Path | None = None
    key_file: Path | None = None
    #: Warn (log, later telemetry) when the client certificate expires within this many days.
    expiry_warning_days: int = Field(30, ge=0)

    @model_validator(mode="after")
    def _check(self) -> TlsConfig:
        if self.enabled and self.ca_file is None:
            raise ValueError("ca_file is required when TLS is enabled (the broker must be verified)")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("set both cert_file and key_file, or neither")
        return self


class MqttConfig(Section):
    host: str = "127.0.0.1"
    port: Port = 1883
    protocol: Literal["5", "3.1.1"] = "5"
    #: Default: kiosk-agent-<kiosk id>. Two clients with one id knock each other off.
    client_id: str | None = None
    username: str | None = None
    password: SecretStr | None = None
    #: Read the password from this file instead (for example a systemd credential).
    password_file: Path | None = None
    keepalive_s: int = Field(30, ge=5, le=3600)
    topic_prefix: Annotated[str, AfterValidator(_topic_prefix)] = "kiosk"
    #: Captures handed to the broker and not yet acknowledged; the durable queue holds the rest.
    inflight_window: int = Field(16, ge=1, le=1000)
    #: QoS 1/2 messages the broker may have on their way to us unacknowledged (MQTT 5 Receive
    #: Maximum; 3.1.1 has none): commands and receipts on a kiosk, captures on a receiver.
    receive_maximum: int = Field(16, ge=1, le=65535)
    reconnect_min_s: float = Field(1.0, gt=0)
    reconnect_max_s: float = Field(60.0, gt=0)
    #: A connection up this long resets the backoff to reconnect_min_s.
    stable_after_s: float = Field(30.0, ge=0)
    connect_timeout_s: float = Field(10.0, gt=0)
    #: "receipt": delete a capture once the central service's receipt arrives (end to end).
    #: "puback": delete once the broker has it (weaker: the broker may still lose it).
    ack_mode: Literal["receipt", "puback"] = "receipt"
    #: Send a capture again when its receipt has not come within this time.
    receipt_timeout_s: float = Field(60.0, gt=0)
    tls: TlsConfig = Field(default_factory=TlsConfig)
    #: Plain MQTT (no [mqtt.tls]) for a lab or demo broker. Off: a config without TLS is
    #: refused, so no kiosk sends its broker password and metadata in clear by omission.
    allow_plaintext: bool = False

    @model_validator(mode="after")
    def _check(self) -> MqttConfig:
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must not be less than reconnect_min_s")
        if self.password is not None and self.password_file is not None:
            raise ValueError("set either password or password_file, not both")
        if not self.tls.enabled and not self.allow_plaintext:
            raise ValueError(PLAINTEXT_REFUSED)
        return self

    def plaintext_warning(self) -> str | None:
        """What check-config says about a config that runs plain MQTT; None with TLS."""
        if self.tls.enabled:
            return None
        return (f"mqtt: plain MQTT to {self.host}:{self.port} (allow_plaintext = true): the broker "
                "password, topics and client id cross the network in clear; for a lab or demo "
                "broker only, enable [mqtt.tls] in production")

    def resolved_password(self) -> str | None:
        if self.password_file is not None:
            try:
                return self.password_file.read_text().strip()
            except OSError as exc:
                raise ConfigError(
                    "mqtt.password_file", [f"cannot read {self.password_file}: {exc.strerror}"]
                ) from exc
        return self.password.get_secret_value() if self.password else None


class QueueConfig(Section):
    #: Default: queue.db in kiosk.state_dir (/var/lib/kiosk-agent/queue.db).
    path: Path | None = None
    #: Quota for queued data; new captures are refused beyond it, none already queued is dropped.
    max_bytes: int = Field(2 * 1024**3, ge=1024 * 1024)
    #: Refuse new captures when the queue's file system would have less free space than this.
    min_free_bytes: int = Field(256 * 1024**2, ge=0)
    #: After acknowledgements, the WAL is checkpointed and truncated at most this often, so
    #: erased captures leave no copy in the WAL file either.
    erase_interval_s: float = Field(5.0, ge=0)
    #: Disk space kept in reserve beside the queue and given back when the disk fills up, so
    #: the backlog can still drain (deleting a capture needs room in the WAL first).
    reserve_bytes: int = Field(16 * 1024**2, ge=0)


class TelemetryConfig(Section):
    #: Seconds between telemetry messages on <prefix>/<kiosk_id>/telemetry; 0 turns them off.
    interval_s: float = Field(60.0, ge=0)


def _windows(value: list[str]) -> list[str]:
    for text in value:
        parse_window(text)  # ValueError names the bad range; pydantic adds its index
    return value


class UplinkConfig(Section):
    """Cellular awareness for captures (agent/transport/uplink.py, docs/protocol.md "Chunked transfer").

    Commands, replies, status, telemetry and events are never held back by these limits.
    """

    #: Captures larger than this go in chunks (resumable after a cut); 0: only when the
    #: broker's Maximum Packet Size requires it. 128 KiB is AWS IoT Core's message limit.
    chunk_bytes: int = Field(128 * 1024, ge=0)
    #: Chunk bytes handed to the broker and not yet acknowledged (PUBACK), at most, for all
    #: the chunked transfers in progress together.
    inflight_bytes: int = Field(512 * 1024, ge=1024)
    #: Chunked transfers in progress at once (agent/transport/transfers.py): the next large
    #: capture goes while the last one's receipt is on its way, instead of after a round trip.
    #: Each holds its capture in memory. 1: one at a time.
    chunk_window: int = Field(2, ge=1, le=8)
    #: Bandwidth cap for captures in bytes per second (token bucket); 0: none.
    max_bytes_per_s: int = Field(0, ge=0)
    #: Bytes of captures sent per local day; when reached, captures wait for the next day
    #: (event "quota_reached"). Kept across restarts in uplink-state.json in kiosk.state_dir. 0: none.
    daily_budget_bytes: int = Field(0, ge=0)
    #: Local-time ranges "HH:MM-HH:MM" when captures may be sent; may wrap midnight
    #: ("22:00-06:00"). Empty: always.
    windows: Annotated[list[str], AfterValidator(_windows)] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> UplinkConfig:
        if 0 < self.chunk_bytes < 1024:
            raise ValueError("chunk_bytes must be 0 (only when the broker requires it) or at least 1024")
        return self
