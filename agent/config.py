"""Typed configuration: TOML files validated by one pydantic model per component.

Devices are ``[devices.NAME]`` tables; each is validated by the config model of the driver
its ``driver`` key names (drivers/registry.py). Environment variables override any setting
as ``KIOSK_AGENT_<SECTION>__<KEY>`` (``KIOSK_AGENT_MQTT__PORT=1884``,
``KIOSK_AGENT_DEVICES__FINGER__SEED=7``). Every problem is reported at once, each with its
dotted path, so an operator fixes a file in one pass.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    SerializeAsAny,
    ValidationError,
    model_validator,
)

from drivers import DriverConfig, driver_class, driver_names

DEFAULT_CONFIG_PATH = Path("/etc/kiosk-agent/agent.toml")
ENV_PREFIX = "KIOSK_AGENT_"
CONFIG_ENV = "KIOSK_AGENT_CONFIG"


class ConfigError(Exception):
    """A config that cannot be used; ``problems`` lists every ``path: reason``."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


def _port(value: int) -> int:
    if not 1 <= value <= 65535:
        raise ValueError("must be between 1 and 65535")
    return value


def _topic_segment(value: str) -> str:
    # An id becomes one MQTT topic level: wildcards or slashes would route captures to
    # other kiosks' topics.
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", value):
        raise ValueError(
            "must be 1-64 characters of letters, digits, '.', '_' or '-', starting with a "
            "letter or digit (it becomes an MQTT topic level)"
        )
    return value


def _topic_prefix(value: str) -> str:
    for level in value.split("/"):
        _topic_segment(level)
    return value


Port = Annotated[int, AfterValidator(_port)]
TopicSegment = Annotated[str, AfterValidator(_topic_segment)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KioskConfig(Section):
    id: TopicSegment
    site: str = ""
    #: The registration officer signed in, when the kiosk knows it.
    operator_id: str | None = None


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


class SecurityConfig(Section):
    """Keys that protect captures before they touch disk (see docs/security.md)."""

    #: The kiosk's Ed25519 private key; `kiosk-agent keys init` creates it (mode 0600).
    kiosk_key: Path = Path("/var/lib/kiosk-agent/keys/kiosk.key")
    #: The central service's X25519 public key: captures are encrypted to it.
    central_public_key: Path = Path("/etc/kiosk-agent/central.pub")


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

    @model_validator(mode="after")
    def _check(self) -> MqttConfig:
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must not be less than reconnect_min_s")
        if self.password is not None and self.password_file is not None:
            raise ValueError("set either password or password_file, not both")
        return self

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
    path: Path = Path("/var/lib/kiosk-agent/queue.db")
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


class CaptureConfig(Section):
    #: "on-demand": captures are requested (registration app, remote command).
    #: "continuous": the agent captures by itself from every enabled device (demos, soak tests).
    mode: Literal["on-demand", "continuous"] = "on-demand"
    #: Continuous mode: captures per second across all devices; 0 = as fast as the path allows.
    rate_per_s: float = Field(1.0, ge=0)
    #: Continuous mode: stop capturing after this many captures; 0 = never.
    max_captures: int = Field(0, ge=0)
    #: Continuous mode: finger positions (ANSI/NIST 1..10) cycled through on finger devices.
    finger_positions: list[Annotated[int, Field(ge=0, le=10)]] = Field(
        default_factory=lambda: list(range(1, 11))
    )
    #: Attempts per capture when the person must retry (no finger, no face).
    max_attempts: int = Field(3, ge=1, le=20)


class LoggingConfig(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    #: "auto": journald-friendly (no timestamps) under systemd, timestamps on a terminal.
    format: Literal["auto", "journal", "text", "json"] = "auto"


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


class TelemetryConfig(Section):
    #: Seconds between telemetry messages on <prefix>/<kiosk_id>/telemetry; 0 turns them off.
    interval_s: float = Field(60.0, ge=0)


def _windows(value: list[str]) -> list[str]:
    from agent.uplink import parse_window

    for text in value:
        parse_window(text)  # ValueError names the bad range; pydantic adds its index
    return value


class UplinkConfig(Section):
    """Cellular awareness for captures (agent/uplink.py, docs/protocol.md "Chunked transfer").

    Commands, replies, status, telemetry and events are never held back by these limits.
    """

    #: Captures larger than this go in chunks (resumable after a cut); 0: only when the
    #: broker's Maximum Packet Size requires it. 128 KiB is AWS IoT Core's message limit.
    chunk_bytes: int = Field(128 * 1024, ge=0)
    #: Chunk bytes handed to the broker and not yet acknowledged (PUBACK), at most.
    inflight_bytes: int = Field(512 * 1024, ge=1024)
    #: Bandwidth cap for captures in bytes per second (token bucket); 0: none.
    max_bytes_per_s: int = Field(0, ge=0)
    #: Bytes of captures sent per local day; when reached, captures wait for the next day
    #: (event "quota_reached"). Kept across restarts in uplink-state.json beside the queue. 0: none.
    daily_budget_bytes: int = Field(0, ge=0)
    #: Local-time ranges "HH:MM-HH:MM" when captures may be sent; may wrap midnight
    #: ("22:00-06:00"). Empty: always.
    windows: Annotated[list[str], AfterValidator(_windows)] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> UplinkConfig:
        if 0 < self.chunk_bytes < 1024:
            raise ValueError("chunk_bytes must be 0 (only when the broker requires it) or at least 1024")
        return self


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


class FaceQualityConfig(Section):
    """Thresholds of the face checks (agent/face_quality.py, docs/face-quality.md).

    Defaults follow ICAO 9303 part 3 / ISO/IEC 19794-5 where they give a number; the
    sharpness and background limits have none and were calibrated on the test images.
    """

    #: A YuNet ONNX model (cv2.FaceDetectorYN) to use instead of the Haar cascades.
    yunet_model: Path | None = None
    #: Faces smaller than this (box width, pixels) are not looked for; smaller is slower.
    min_face_px: int = Field(80, ge=20)
    #: Distance between the eye centres, pixels (ICAO: at least 90).
    min_eye_distance_px: float = Field(90.0, gt=0)
    #: Horizontal position of the eye midpoint, as a share of the image width.
    centre_min: float = Field(0.45, ge=0, le=1)
    centre_max: float = Field(0.55, ge=0, le=1)
    #: Height of the eye line above the bottom edge, as a share of the image height.
    eye_line_min: float = Field(0.50, ge=0, le=1)
    eye_line_max: float = Field(0.70, ge=0, le=1)
    #: Head roll from the eye line, degrees either way.
    max_roll_deg: float = Field(8.0, ge=0, le=90)
    #: Mean luminance (0..255) of the face region.
    luminance_min: float = Field(70.0, ge=0, le=255)
    luminance_max: float = Field(200.0, ge=0, le=255)
    #: Face pixels at or below dark_level / at or above bright_level count as clipped.
    dark_level: int = Field(25, ge=0, le=255)
    bright_level: int = Field(247, ge=0, le=255)
    #: Largest share of clipped dark / bright pixels in the face region.
    max_dark_share: float = Field(0.05, ge=0, le=1)
    max_bright_share: float = Field(0.05, ge=0, le=1)
    #: Laplacian variance of the face region normalised by its grey variance (see the doc).
    min_sharpness: float = Field(0.04, ge=0)
    #: Mean gradient magnitude of the background around the head (grey levels per pixel).
    max_background_gradient: float = Field(8.0, ge=0)

    @model_validator(mode="after")
    def _check(self) -> FaceQualityConfig:
        for low, high in (("centre_min", "centre_max"), ("eye_line_min", "eye_line_max"),
                          ("luminance_min", "luminance_max"), ("dark_level", "bright_level")):
            if getattr(self, low) >= getattr(self, high):
                raise ValueError(f"{low} must be less than {high}")
        return self


def _finger_assessor(value: str) -> str:
    # Resolved at load time so a typo stops the kiosk at start-up, not at the first capture.
    if value != "builtin":
        from agent.finger_quality import resolve_factory

        resolve_factory(value)
    return value


class FingerQualityConfig(Section):
    """Fingerprint quality (agent/finger_quality.py, docs/finger-quality.md); not NFIQ 2.

    NFIQ 2's gates keep its numbers (50,000 foreground pixels at 500 ppi); the other limits
    were calibrated on synthetic prints.
    """

    #: "builtin", or "module:callable": a factory called with this table that returns an
    #: object with assess(gray, ppi) -> QualityReport (for example a certified NFIQ 2 wrapper).
    assessor: Annotated[str, AfterValidator(_finger_assessor)] = "builtin"
    #: The overall score (0..100) a print needs to pass.
    min_score: int = Field(40, ge=0, le=100)
    #: Grey levels between the 5th and 95th percentile of the foreground (empty/low-contrast gate).
    min_contrast: float = Field(40.0, ge=0, le=255)
    #: Standard deviation of the whole image (uniform-image gate).
    min_std: float = Field(2.0, ge=0)
    #: Foreground pixels at 500 ppi (NFIQ 2's gate).
    min_foreground_px: int = Field(50_000, ge=0)
    #: A 32 x 32 block is foreground when its grey standard deviation (lightly blurred) is this high.
    foreground_min_std: float = Field(10.0, gt=0)
    #: Mean structure-tensor coherence of the foreground blocks, 0..1.
    min_orientation_certainty: float = Field(0.35, ge=0, le=1)
    #: Plausible ridge period at 500 ppi, pixels, and the share of blocks that must lie in it.
    ridge_period_min_px: float = Field(5.0, gt=0)
    ridge_period_max_px: float = Field(15.0, gt=0)
    min_ridge_frequency_in_band: float = Field(0.7, ge=0, le=1)
    #: Share of a block's spectral energy in its dominant ridge wave, 0..1.
    min_clarity: float = Field(0.15, ge=0, le=1)

    @model_validator(mode="after")
    def _check(self) -> FingerQualityConfig:
        if self.ridge_period_min_px >= self.ridge_period_max_px:
            raise ValueError("ridge_period_min_px must be less than ridge_period_max_px")
        return self


class QualityConfig(Section):
    """Image-quality thresholds, one table per modality ([quality.face], ...)."""

    face: FaceQualityConfig = Field(default_factory=FaceQualityConfig)
    finger: FingerQualityConfig = Field(default_factory=FingerQualityConfig)


class FormatsConfig(Section):
    """How registrations are encoded (agent/formats/, docs/formats.md)."""

    #: Fingerprint images: "png" (lossless) or "wsq" (the FBI's wavelet codec), native resolution.
    finger_format: Literal["png", "wsq"] = "png"
    #: WSQ bits per pixel. The wsq package fixes its encoder at 0.75 (the FBI's rate for 500 ppi
    #: prints), so no other value is accepted rather than one that would be silently ignored.
    wsq_bitrate: Literal[0.75] = 0.75
    #: ANSI/NIST-ITL Type-1 type of transaction (1.004), e.g. "CAR" (criminal answer required).
    transaction_type: str = Field("CAR", pattern=r"^[A-Z0-9]{1,16}$")
    #: Originating agency (1.008 ORI, also the source agency 14.004/10.004) and destination (1.007 DAI).
    originating_agency: str = Field("KIOSK", pattern=r"^[A-Za-z0-9]{1,35}$")
    destination_agency: str = Field("CENTRAL", pattern=r"^[A-Za-z0-9]{1,35}$")


class RegistrationConfig(Section):
    """Registration sessions (agent/registration.py, docs/local-api.md)."""

    #: "ten-flat": ten fingers one by one; "slaps-442": right four, left four, both thumbs.
    plan: Literal["ten-flat", "slaps-442"] = "ten-flat"
    #: Take the face too, after the fingers.
    face: bool = True
    #: The [devices.NAME] that takes fingers (a slap scanner for "slaps-442") and the face.
    finger_device: str = "finger"
    face_device: str = "camera"
    #: A finger capture passes at this score (agent/finger_quality.py, 0..100) or above.
    finger_min_quality: int = Field(40, ge=0, le=100)
    #: A face passes when every face check passes and its score is at least this.
    face_min_quality: int = Field(50, ge=0, le=100)
    #: Attempts per item; the best is kept, flagged force_captured, when none passes.
    max_attempts: int = Field(3, ge=1, le=10)
    #: Sessions are kept here (no images: those go to the queue, sealed, as they are taken).
    #: Default: registrations.db beside the queue.
    store_path: Path | None = None


def _loopback(value: str) -> str:
    import ipaddress

    try:
        if ipaddress.ip_address(value).is_loopback:
            return value
    except ValueError:
        if value == "localhost":
            return value
    raise ValueError("must be a loopback address (127.0.0.1, ::1): the local API has no "
                     "authentication and serves only the registration app on this machine")


class LocalApiConfig(Section):
    """The HTTP API for the kiosk's registration app (docs/local-api.md)."""

    #: Off by default: a kiosk without a registration app (a capture-only station, a demo)
    #: opens no port. The kiosk config examples turn it on.
    enabled: bool = False
    host: Annotated[str, AfterValidator(_loopback)] = "127.0.0.1"
    #: 0: any free port (tests); the port in use is logged.
    port: int = Field(8765, ge=0, le=65535)
    #: Serve on this Unix socket instead of TCP (file permissions then decide who may call).
    unix_socket: Path | None = None
    #: Frames per second of the live camera preview (MJPEG).
    preview_fps: float = Field(5.0, ge=1, le=30)


class AgentConfig(Section):
    kiosk: KioskConfig
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    queue: QueueConfig = Field(default_factory=QueueConfig)
    capture: CaptureConfig = Field(default_factory=CaptureConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    security: SecurityConfig = Field(default_factory=SecurityConfig)
    receiver: ReceiverConfig = Field(default_factory=ReceiverConfig)
    remote: RemoteConfig = Field(default_factory=RemoteConfig)
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    quality: QualityConfig = Field(default_factory=QualityConfig)
    formats: FormatsConfig = Field(default_factory=FormatsConfig)
    registration: RegistrationConfig = Field(default_factory=RegistrationConfig)
    local_api: LocalApiConfig = Field(default_factory=LocalApiConfig)
    uplink: UplinkConfig = Field(default_factory=UplinkConfig)
    #: Filled from the [devices.NAME] tables by load_config, each with its driver's model.
    devices: dict[str, SerializeAsAny[DriverConfig]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _remote_state_beside_queue(self) -> AgentConfig:
        if self.remote.state_dir is None:
            self.remote.state_dir = self.queue.path.parent / "remote"
        if self.registration.store_path is None:
            self.registration.store_path = self.queue.path.parent / "registrations.db"
        return self

    def client_id(self) -> str:
        return self.mqtt.client_id or f"kiosk-agent-{self.kiosk.id}"


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


# --- loading -----------------------------------------------------------------------------


def config_path(cli_path: str | os.PathLike[str] | None) -> Path:
    """--config beats KIOSK_AGENT_CONFIG beats the default path."""
    if cli_path:
        return Path(cli_path)
    return Path(os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH)


def load_config(path: str | os.PathLike[str], environ: dict[str, str] | None = None) -> AgentConfig:
    """Read, override from the environment and validate; raise ConfigError naming every problem."""
    return validate_config(read_raw(path, environ), str(path))


def load_receiver_config(path: str | os.PathLike[str],
                         environ: dict[str, str] | None = None) -> ReceiverServiceConfig:
    raw = read_raw(path, environ)
    try:
        return ReceiverServiceConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(str(path), _describe(exc, (), ReceiverServiceConfig)) from None


def read_raw(path: str | os.PathLike[str], environ: dict[str, str] | None = None) -> dict[str, Any]:
    """The TOML tree with environment overrides applied, not yet validated."""
    path = Path(path)
    source = str(path)
    try:
        with path.open("rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(
            source,
            ["file not found; pass --config PATH or set KIOSK_AGENT_CONFIG "
             "(examples are in the config/ folder of the project)"],
        ) from None
    except IsADirectoryError:
        raise ConfigError(source, ["is a directory, not a TOML file"]) from None
    except PermissionError:
        raise ConfigError(source, ["permission denied; run as the kiosk user or fix the file mode"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, [f"TOML syntax error: {exc}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(source, [f"not UTF-8 text: {exc}"]) from None
    from agent.config_overlay import OverlayError, merge, overlay_path, read_overlay

    try:
        raw = merge(raw, read_overlay(overlay_path(raw)))
    except OverlayError as exc:
        raise ConfigError(source, [str(exc)]) from None
    apply_env_overrides(raw, os.environ if environ is None else environ)
    return raw


def validate_config(raw: dict[str, Any], source: str = "<config>") -> AgentConfig:
    raw = dict(raw)
    devices_raw = raw.pop("devices", {})
    problems: list[str] = []
    config: AgentConfig | None = None
    try:
        config = AgentConfig.model_validate(raw)
    except ValidationError as exc:
        problems += _describe(exc, (), AgentConfig)
    devices: dict[str, DriverConfig] = {}
    if not isinstance(devices_raw, dict):
        problems.append("devices: must be a table of [devices.NAME] tables")
        devices_raw = {}
    for name, table in devices_raw.items():
        device = _validate_device(name, table, problems)
        if device is not None:
            devices[name] = device
    if problems or config is None:
        raise ConfigError(source, problems)
    return config.model_copy(update={"devices": devices})


def _validate_device(name: str, table: Any, problems: list[str]) -> DriverConfig | None:
    where = f"devices.{name}"
    try:
        _topic_segment(name)
    except ValueError as exc:
        problems.append(f"{where}: device name {exc}")
        return None
    if not isinstance(table, dict):
        problems.append(f"{where}: must be a table with at least a driver key")
        return None
    driver = table.get("driver")
    if driver is None:
        problems.append(f"{where}.driver: missing; one of: {', '.join(driver_names())}")
        return None
    try:
        model = driver_class(str(driver)).config_model
    except KeyError as exc:
        problems.append(f"{where}.driver: {exc.args[0]}")
        return None
    try:
        return model.model_validate(table)
    except ValidationError as exc:
        problems += _describe(exc, ("devices", name), model)
        return None


def _describe(exc: ValidationError, prefix: tuple[str, ...], model: type[BaseModel]) -> list[str]:
    out = []
    for err in exc.errors(include_url=False):
        loc = prefix + tuple(str(p) for p in err["loc"])
        where = ".".join(loc) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            known = _known_keys(model, err["loc"][:-1])
            msg = "unknown key" + (f"; known keys here: {', '.join(known)}" if known else "")
        elif err["type"] == "missing":
            msg = "missing; this setting is required"
        out.append(f"{where}: {msg}")
    return out


def _known_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The field names at ``loc`` inside ``model``, for 'did you mean' style help."""
    current: Any = model
    for part in loc:
        field = getattr(current, "model_fields", {}).get(part)
        if field is None or not isinstance(field.annotation, type):
            return []
        current = field.annotation
    fields = getattr(current, "model_fields", None)
    return sorted(fields) if fields else []


def apply_env_overrides(raw: dict[str, Any], environ: Any) -> None:
    """Apply KIOSK_AGENT_<SECTION>__<KEY>[__<KEY>...] variables onto the raw TOML tree."""
    for key, value in environ.items():
        if not key.startswith(ENV_PREFIX) or "__" not in key:
            continue
        path = [p.lower() for p in key[len(ENV_PREFIX):].split("__")]
        node = raw
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                break
        else:
            node[path[-1]] = _env_value(value)


def _env_value(value: str) -> Any:
    # Lists and tables come as JSON; everything else stays a string for pydantic to coerce.
    if value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def json_schema() -> dict[str, Any]:
    """JSON Schema of the config file, with each driver's table, for editors to validate."""
    schema = AgentConfig.model_json_schema()
    variants = []
    for name in driver_names():
        sub = driver_class(name).config_model.model_json_schema()
        for def_name, definition in sub.pop("$defs", {}).items():
            schema.setdefault("$defs", {})[def_name] = definition
        variants.append(sub)
    schema["properties"]["devices"] = {
        "type": "object",
        "description": "One [devices.NAME] table per device; `driver` selects its settings.",
        "additionalProperties": {"oneOf": variants},
    }
    return schema


def redacted(config: AgentConfig) -> dict[str, Any]:
    """The config as plain data with secrets masked, for logs and diagnostics."""
    data = config.model_dump(mode="json")
    if data["mqtt"].get("password"):
        data["mqtt"]["password"] = "**********"
    return data
