"""Typed configuration: TOML files validated by one pydantic model per component.

Devices are ``[devices.NAME]`` tables; each is validated by the config model of the driver
its ``driver`` key names (drivers/registry.py). Environment variables override any setting
as ``KIOSK_AGENT_<SECTION>__<KEY>`` (``KIOSK_AGENT_MQTT__PORT=1884``,
``KIOSK_AGENT_DEVICES__FINGER__SEED=7``). Every problem is reported at once, each with its
dotted path, so an operator fixes a file in one pass.
"""

from __future__ import annotations

import json
import logging
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SerializeAsAny, ValidationError, model_validator

from agent.capture.config import CaptureConfig
from agent.clock.config import ClockConfig
from agent.config_types import ConfigError, Section, TopicSegment, describe_errors, topic_segment
from agent.console.config import ConsoleConfig
from agent.formats.config import FormatsConfig
from agent.position.config import PositionConfig
from agent.quality.config import FaceQualityConfig, FingerQualityConfig, QualityConfig
from agent.registration.config import LocalApiConfig, RegistrationConfig
from agent.remote.config import OperatorConfig, RemoteConfig, Role
from agent.remote.overlay import OVERLAY_NAME, OverlayError, allowed_part, merge, read_overlay
from agent.remote.settable import tls_enabled
from agent.security.config import SecurityConfig
from agent.transport.config import MqttConfig, QueueConfig, TelemetryConfig, TlsConfig, UplinkConfig
from agent.update.config import UpdateConfig
from drivers import DriverConfig, driver_class, driver_names

#: Re-exported: code and tests that need one section import it from here or from its component.
__all__ = [
    "AgentConfig", "CaptureConfig", "ConfigError", "FaceQualityConfig", "FingerQualityConfig",
    "FormatsConfig", "KioskConfig", "LocalApiConfig", "LoggingConfig", "MqttConfig", "OperatorConfig",
    "QualityConfig", "QueueConfig", "RegistrationConfig", "RemoteConfig", "Role", "SecurityConfig",
    "TelemetryConfig", "TlsConfig", "TopicSegment", "UplinkConfig", "config_path", "json_schema",
    "load_config", "overlay_location", "read_raw", "read_toml", "redacted", "validate_config",
]

DEFAULT_CONFIG_PATH = Path("/etc/kiosk-agent/agent.toml")
ENV_PREFIX = "KIOSK_AGENT_"
CONFIG_ENV = "KIOSK_AGENT_CONFIG"
DEFAULT_STATE_DIR = Path("/var/lib/kiosk-agent")

log = logging.getLogger(__name__)


class KioskConfig(Section):
    id: TopicSegment
    site: str = ""
    #: The registration officer signed in, when the kiosk knows it.
    operator_id: str | None = None
    #: Where the kiosk keeps its state: the queue (unless queue.path says otherwise), the
    #: remote-management folder, registration sessions, the uplink budget. Default: the folder
    #: that holds queue.path, else /var/lib/kiosk-agent. Resolved once, here; components
    #: are handed the resolved path.
    state_dir: Path | None = None


class LoggingConfig(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    #: "auto": journald-friendly (no timestamps) under systemd, timestamps on a terminal.
    format: Literal["auto", "journal", "text", "json"] = "auto"


class AgentConfig(Section):
    kiosk: KioskConfig
    #: Validated even when the file has no [mqtt] table: the defaults alone are plain MQTT, refused.
    mqtt: MqttConfig = Field(default_factory=dict, validate_default=True)
    queue: QueueConfig = Field(default_factory=QueueConfig)
    capture: CaptureConfig = Field(default_factory=CaptureConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    security: SecurityConfig = Field(default_factory=SecurityConfig)
    #: The reference receiver's table: accepted and ignored, so one file can serve both in a demo.
    receiver: dict[str, Any] | None = None
    remote: RemoteConfig = Field(default_factory=RemoteConfig)
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    quality: QualityConfig = Field(default_factory=QualityConfig)
    formats: FormatsConfig = Field(default_factory=FormatsConfig)
    registration: RegistrationConfig = Field(default_factory=RegistrationConfig)
    local_api: LocalApiConfig = Field(default_factory=LocalApiConfig)
    uplink: UplinkConfig = Field(default_factory=UplinkConfig)
    update: UpdateConfig = Field(default_factory=UpdateConfig)
    #: The operator console for officers and supervisors (agent/console/, docs/console.md).
    console: ConsoleConfig = Field(default_factory=ConsoleConfig)
    #: How the agent judges its clock before stamping registrations (agent/clock/, docs/vans.md).
    clock: ClockConfig = Field(default_factory=ClockConfig)
    #: A GNSS receiver and the kiosk's assigned area (agent/position/, docs/vans.md).
    position: PositionConfig = Field(default_factory=PositionConfig)
    #: Filled from the [devices.NAME] tables by load_config, each with its driver's model.
    devices: dict[str, SerializeAsAny[DriverConfig]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _resolve_state_dir(self) -> AgentConfig:
        # The one place where the state folder and the paths inside it are worked out.
        state, self.remote.state_dir = state_dirs(self.kiosk.state_dir, self.queue.path,
                                                  self.remote.state_dir)
        self.kiosk.state_dir = state
        if self.queue.path is None:
            self.queue.path = state / "queue.db"
        if self.registration.store_path is None:
            self.registration.store_path = state / "registrations.db"
        if self.console.users_file is None:
            self.console.users_file = state / "console-users.json"
        return self

    @property
    def state_dir(self) -> Path:
        assert self.kiosk.state_dir is not None  # the validator above fills it in
        return self.kiosk.state_dir

    def client_id(self) -> str:
        return self.mqtt.client_id or f"kiosk-agent-{self.kiosk.id}"


# --- loading -----------------------------------------------------------------------------


def config_path(cli_path: str | os.PathLike[str] | None) -> Path:
    """--config beats KIOSK_AGENT_CONFIG beats the default path."""
    if cli_path:
        return Path(cli_path)
    return Path(os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH)


def state_dirs(kiosk_state_dir: Path | None, queue_path: Path | None,
               remote_state_dir: Path | None) -> tuple[Path, Path]:
    """(kiosk.state_dir, remote.state_dir) as given or by default: the folder of queue.path,
    else /var/lib/kiosk-agent; the remote folder inside it. AgentConfig and the overlay's
    location both come from here, so config.set writes where the next start reads."""
    state = kiosk_state_dir or (queue_path.parent if queue_path is not None else DEFAULT_STATE_DIR)
    return state, remote_state_dir or state / "remote"


def load_config(path: str | os.PathLike[str], environ: dict[str, str] | None = None) -> AgentConfig:
    """Read, override from the environment and validate; raise ConfigError naming every problem."""
    return validate_config(read_raw(path, environ), str(path))


def read_raw(path: str | os.PathLike[str], environ: dict[str, str] | None = None,
             overlay: dict[str, Any] | None = None) -> dict[str, Any]:
    """The file, the remote overlay over it (``overlay``, or the one on disk), the environment
    over both: the tree a kiosk runs with, not yet validated."""
    environ = os.environ if environ is None else environ
    raw = read_toml(path)
    # The overlay's folder and whether TLS is on come from the file and the environment only:
    # the overlay can set neither, so it cannot move itself or turn on its own broker keys.
    base = merge(raw, {})
    apply_env_overrides(base, environ)
    location = _overlay_location(base)
    try:
        overlay = read_overlay(location) if overlay is None else overlay
    except OverlayError as exc:
        raise ConfigError(str(path), [str(exc)]) from None
    overlay, dropped = allowed_part(overlay, tls_enabled(base))
    if dropped:
        log.warning("%s: ignoring %s: not settable remotely (written by an older version, or by "
                    "someone else); remove them from that file", location, ", ".join(dropped))
    raw = merge(raw, overlay)
    apply_env_overrides(raw, environ)
    return raw


def overlay_location(path: str | os.PathLike[str], environ: dict[str, str] | None = None) -> Path:
    """Where the remote overlay of the kiosk configured by ``path`` is read and written."""
    raw = read_toml(path)
    apply_env_overrides(raw, os.environ if environ is None else environ)
    return _overlay_location(raw)


def _overlay_location(raw: dict[str, Any]) -> Path:
    def setting(section: str, key: str) -> Path | None:
        table = raw.get(section)
        value = table.get(key) if isinstance(table, dict) else None
        # Anything but a path string fails validation later; the default serves till then.
        return Path(value) if isinstance(value, str) and value else None

    _, remote = state_dirs(setting("kiosk", "state_dir"), setting("queue", "path"),
                           setting("remote", "state_dir"))
    return remote / OVERLAY_NAME


def read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A config file's TOML tree alone (no overlay, no environment), or ConfigError saying why."""
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
    return raw


def validate_config(raw: dict[str, Any], source: str = "<config>") -> AgentConfig:
    raw = dict(raw)
    devices_raw = raw.pop("devices", {})
    problems: list[str] = []
    config: AgentConfig | None = None
    try:
        config = AgentConfig.model_validate(raw)
    except ValidationError as exc:
        problems += describe_errors(exc, (), AgentConfig)
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
        topic_segment(name)
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
        problems += describe_errors(exc, ("devices", name), model)
        return None


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

