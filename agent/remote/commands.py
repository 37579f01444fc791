"""The commands a kiosk obeys (docs/remote-management.md).

Each command has the least role that may run it, a lane (``quick`` commands answer at
once; ``slow`` ones wait for a device, a person or a reconnect, one at a time), a pydantic
model of its arguments, and a function that returns the result as JSON-ready data or raises
CommandError. The functions run on agent/remote/control.py's worker threads, never on the MQTT
link's thread.
"""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import Callable
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent import __version__
from agent.config import ConfigError, load_config, overlay_location, read_raw, redacted, validate_config
from agent.logs import recent_logs
from agent.remote.audit import mask_secrets
from agent.remote.auth import CommandError
from agent.remote.overlay import (
    PREVIOUS_NAME,
    OverlayError,
    allowed_part,
    changes_to_tree,
    merge,
    read_overlay,
    restore_previous,
    write_overlay,
)
from agent.remote.settable import broker_move_problems, out_of_bounds
from agent.runtime import Restarting, Runtime
from agent.transport.durable_queue import QueueError
from agent.transport.telemetry import snapshot
from agent.update.fetch import UpdateApplyArgs, update_apply
from drivers import CaptureRetry, DriverError

log = logging.getLogger(__name__)


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NoArgs(Args):
    pass


class DeviceArgs(Args):
    device: str


class CaptureArgs(Args):
    device: str
    #: ANSI/NIST finger position 0..10 (0 for a face or unknown).
    position: int = Field(0, ge=0, le=10)


class PurgeArgs(Args):
    #: Must be exactly "purge <kiosk_id>": a purge deletes captures for good.
    confirm: str
    states: list[Literal["rejected", "queued", "sent"]] = Field(default_factory=lambda: ["rejected"],
                                                                 min_length=1)


class LogLevelArgs(Args):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"]
    #: A logger name such as "drivers.zfm"; the root logger when absent.
    logger: str = ""


class DiagnosticsArgs(Args):
    lines: int = Field(200, ge=1, le=500)


class ConfigSetArgs(Args):
    #: Dotted keys and their new values, e.g. {"mqtt.port": 8883, "telemetry.interval_s": 30}.
    model_config = ConfigDict(extra="allow")


@dataclass(frozen=True)
class Spec:
    role: Literal["viewer", "operator", "admin"]
    lane: Literal["quick", "slow"]
    args: type[BaseModel]
    run: Callable[[Runtime, Any], dict[str, Any]]
    summary: str


# --- viewer ------------------------------------------------------------------------------


def ping(runtime: Runtime, args: NoArgs) -> dict[str, Any]:
    return {"pong": True, "time": time.time()}


def status(runtime: Runtime, args: NoArgs) -> dict[str, Any]:
    from importlib.metadata import version

    snap = snapshot(runtime)
    return {
        "versions": {"agent": __version__, "python": platform.python_version(),
                     "paho_mqtt": version("paho-mqtt"),
                     "opencv": version("opencv-python-headless")},
        "uptime_s": snap["uptime_s"],
        "devices": snap["devices"],
        "queue": snap["queue"],
        "disk": snap["disk"],
        "connectivity": snap["connection"],
        "clock": {"time": time.time(), "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "timezone": time.strftime("%z")},
    }


def config_get(runtime: Runtime, args: NoArgs) -> dict[str, Any]:
    overlay = read_overlay(overlay_location(runtime.config_path)) if runtime.config_path else {}
    return {"config": redacted(runtime.config), "remote_overlay": mask_secrets(overlay),
            "config_file": str(runtime.config_path) if runtime.config_path else None}


def devices_list(runtime: Runtime, args: NoArgs) -> dict[str, Any]:
    return {"devices": [w.status().as_dict() for w in runtime.device_workers().values()]}


def queue_stats(runtime: Runtime, args: NoArgs) -> dict[str, Any]:
    stats = runtime.queue_stats()
    if stats is None:
        raise CommandError("busy", "the queue is not open (the agent is restarting); try again shortly")
    return stats.as_dict()


# --- operator ----------------------------------------------------------------------------


def _worker(runtime: Runtime, name: str):  # type: ignore[no-untyped-def]
    worker = runtime.device_workers().get(name)
    if worker is None:
        raise CommandError("invalid_args", f"no device {name!r}; devices: "
                                           f"{', '.join(sorted(runtime.device_workers())) or 'none'}")
    return worker


def _timeout(runtime: Runtime) -> float:
    return runtime.config.remote.command_timeout_s


def devices_test(runtime: Runtime, args: DeviceArgs) -> dict[str, Any]:
    worker = _worker(runtime, args.device)
    # A job forces an open attempt when the device is offline, then asks it how it is.
    future = worker.submit(lambda driver: driver.health())
    try:
        health = future.result(timeout=_timeout(runtime))
    except FutureTimeout:
        raise CommandError("timeout", f"device {args.device} did not answer within "
                                      f"{_timeout(runtime):.0f} s") from None
    except DriverError as exc:
        raise CommandError("failed", f"device {args.device}: {exc}") from None
    return {"device": worker.status().as_dict(), "health": {"ok": health.ok, "detail": health.detail}}


def devices_rescan(runtime: Runtime, args: NoArgs) -> dict[str, Any]:
    # Every device not online gets an open attempt now instead of at its next backoff.
    futures = {name: w.submit(lambda driver: None) for name, w in runtime.device_workers().items()
               if w.state != "online"}
    for future in futures.values():
        try:
            future.result(timeout=_timeout(runtime))
        except (DriverError, FutureTimeout):
            pass  # the device's state says why
    return {"reopened": sorted(futures), "devices": devices_list(runtime, NoArgs())["devices"]}


def capture(runtime: Runtime, args: CaptureArgs) -> dict[str, Any]:
    _worker(runtime, args.device)
    try:
        future = runtime.take_capture(args.device, args.position)
    except Restarting as exc:
        raise CommandError("busy", str(exc)) from None
    try:
        outcome = future.result(timeout=_timeout(runtime))
    except FutureTimeout:
        future.cancel()
        raise CommandError("timeout",
                           f"no capture from {args.device} within {_timeout(runtime):.0f} s") from None
    except CaptureRetry as exc:
        raise CommandError("failed", f"{args.device}: {exc.reason} after "
                                     f"{runtime.config.capture.max_attempts} attempts "
                                     f"(the person was asked: {exc.hint})") from None
    except (DriverError, QueueError) as exc:
        raise CommandError("failed", f"{args.device}: {exc}") from None
    # The image itself never travels in a reply: it is queued, sealed, like any capture.
    return {"id": outcome.id, "seq": outcome.seq, "device": outcome.device, "position": outcome.position,
            "attempts": outcome.attempts, "image_bytes": outcome.size}


def queue_retry(runtime: Runtime, args: NoArgs) -> dict[str, Any]:
    count = runtime.retry_rejected()
    return {"requeued": count}


def log_level(runtime: Runtime, args: LogLevelArgs) -> dict[str, Any]:
    logger = logging.getLogger(args.logger or None)
    previous = logging.getLevelName(logger.getEffectiveLevel())
    logger.setLevel(args.level)
    log.warning("log level of %s set to %s (was %s) by remote command; a restart returns to "
                "logging.level", args.logger or "the agent", args.level, previous)
    return {"logger": args.logger or "root", "level": args.level, "previous": previous}


def diagnostics(runtime: Runtime, args: DiagnosticsArgs) -> dict[str, Any]:
    lines = list(recent_logs().lines)[-args.lines:]
    return {"telemetry": snapshot(runtime), "config": redacted(runtime.config), "logs": lines,
            "audit": runtime.recent_audit(20)}


# --- admin -------------------------------------------------------------------------------


def queue_purge(runtime: Runtime, args: PurgeArgs) -> dict[str, Any]:
    expected = f"purge {runtime.config.kiosk.id}"
    if args.confirm != expected:
        raise CommandError("invalid_args", f"confirm must be exactly {expected!r}: a purge deletes "
                                           "captures for good")
    count, size = runtime.purge_queue(tuple(args.states))
    runtime.events.emit("queue_purged", states=args.states, items=count, bytes=size)
    return {"purged": count, "bytes": size, "states": args.states}


def config_set(runtime: Runtime, args: ConfigSetArgs) -> dict[str, Any]:
    changes = dict(args.model_extra or {})
    if not changes:
        raise CommandError("invalid_args", "give at least one dotted key and value, e.g. "
                                           '{"telemetry.interval_s": 30}')
    if runtime.config_path is None:
        raise CommandError("failed", "this agent was started without a config file; nothing to change")
    old_config = runtime.config
    remote = old_config.remote
    try:
        # The allow-list first, on the key names alone: a refused key's value is never
        # validated, so nothing it names is ever imported or opened.
        tree = changes_to_tree(changes, old_config.mqtt.tls.enabled)
        # Written where the next start reads it, whatever the environment says about the
        # state folder (agent/config.py resolves both).
        path = overlay_location(runtime.config_path)
        overlay, _ = allowed_part(merge(read_overlay(path), tree), old_config.mqtt.tls.enabled)
        # File, overlay, environment: the config the next start would build, built now.
        new_config = validate_config(read_raw(runtime.config_path, overlay=overlay), "config.set")
        problems = out_of_bounds(changes, new_config) + broker_move_problems(old_config.mqtt, new_config.mqtt)
        if problems:
            raise OverlayError("; ".join(problems))
    except OverlayError as exc:
        raise CommandError("invalid_args", str(exc)) from None
    except ConfigError as exc:
        raise CommandError("invalid_args", "; ".join(exc.problems)) from None
    write_overlay(path, overlay)
    if runtime.reload(new_config, remote.rollback_timeout_s):
        runtime.events.emit("config_changed", keys=sorted(changes))
        return {"applied": mask_secrets(changes), "previous_overlay": str(path.with_name(PREVIOUS_NAME)),
                "connected": True}
    restore_previous(path)
    runtime.reload(old_config, remote.rollback_timeout_s)
    runtime.events.emit("config_rolled_back", keys=sorted(changes))
    raise CommandError("rolled_back", f"the new config did not bring the MQTT connection up within "
                                      f"{remote.rollback_timeout_s:.0f} s (remote.rollback_timeout_s); "
                                      "the previous config is back in force")


def restart(runtime: Runtime, args: NoArgs) -> dict[str, Any]:
    if runtime.config_path is None:
        raise CommandError("failed", "this agent was started without a config file")
    try:
        config = load_config(runtime.config_path)
    except ConfigError as exc:
        raise CommandError("failed", "the config file no longer validates, not restarting: "
                                     + "; ".join(exc.problems)) from None
    connected = runtime.reload(config, runtime.config.remote.rollback_timeout_s)
    return {"restarted": True, "connected": connected}


COMMANDS: dict[str, Spec] = {
    "ping": Spec("viewer", "quick", NoArgs, ping, "answers pong with the kiosk's time"),
    "status": Spec("viewer", "quick", NoArgs, status,
                   "versions, uptime, devices, queue, disk, connectivity, clock"),
    "config.get": Spec("viewer", "quick", NoArgs, config_get, "the config in force, secrets masked"),
    "devices.list": Spec("viewer", "quick", NoArgs, devices_list, "every device and its state"),
    "queue.stats": Spec("viewer", "quick", NoArgs, queue_stats, "pending captures, bytes, oldest age"),
    "devices.rescan": Spec("operator", "slow", NoArgs, devices_rescan,
                           "look for devices now and reopen those not online"),
    "devices.test": Spec("operator", "slow", DeviceArgs, devices_test, "open and health-check one device"),
    "capture": Spec("operator", "slow", CaptureArgs, capture,
                    "take one capture (queued and delivered like any other)"),
    "queue.retry": Spec("operator", "quick", NoArgs, queue_retry, "send rejected captures again"),
    "log.level": Spec("operator", "quick", LogLevelArgs, log_level, "change a log level until restart"),
    "diagnostics": Spec("operator", "quick", DiagnosticsArgs, diagnostics,
                        "recent logs, config, devices, queue, audit"),
    "queue.purge": Spec("admin", "quick", PurgeArgs, queue_purge, "delete captures for good (confirm)"),
    "config.set": Spec("admin", "slow", ConfigSetArgs, config_set,
                       "change settings; rolled back when the broker cannot be reached"),
    "restart": Spec("admin", "slow", NoArgs, restart, "reload the config file and restart the agent"),
    "update.apply": Spec("admin", "slow", UpdateApplyArgs, update_apply,
                         "fetch a release bundle (HTTPS, allow-listed host, pinned SHA-256) and hand it "
                         "to the updater"),
}


def parse_args(spec: Spec, raw: dict[str, Any]) -> BaseModel:
    try:
        return spec.args.model_validate(raw)
    except ValidationError as exc:
        problems = [f"{'.'.join(str(p) for p in e['loc']) or 'args'}: {e['msg']}" for e in exc.errors()]
        raise CommandError("invalid_args", "; ".join(problems)) from None
