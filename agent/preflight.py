"""What ``kiosk-agent run`` needs besides a valid config file, checked without starting it.

``check-config`` (and so the unit's ``ExecStartPre``) runs these, so that a config the agent
would refuse at start is refused before it: the key files, the TLS files, the broker
password, the state folder, the local API's token and address. Problems the agent runs
despite (a scanner not plugged in yet, a socket folder systemd creates at start) are
warnings. Each check reads the file the way the agent does, so the answer is the agent's.
"""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

from agent.config import AgentConfig, ConfigError, MqttConfig
from agent.lock import holder
from agent.remote.control import load_operators, operator_key_exposure
from agent.security.keys import KeyFileError, load_encryption_public, load_receipt_keys, load_signing_key


def problems_and_warnings(config: AgentConfig, operator_warnings: bool = True) -> tuple[list[str], list[str]]:
    """(problems the agent refuses to start with, problems it runs despite). ``run`` passes
    ``operator_warnings=False``: remote control reports unusable operator keys itself."""
    special = _special_files(config)
    if special:  # the loads below would block on a FIFO, or read a device until memory ran out
        return special, []
    problems = operator_key_exposure(config.remote, config.security.service_user)
    problems += _key_problems(config)
    problems += mqtt_problems(config.mqtt)
    problems += _state_problems(config)
    api_problems, warnings = _local_api(config)
    problems += api_problems
    if config.remote.enabled and operator_warnings:  # the agent runs without those operators
        warnings += load_operators(config.remote)[1]
    warnings += _device_warnings(config)
    plaintext = config.mqtt.plaintext_warning()
    if plaintext:
        warnings.append(plaintext)
    return problems, warnings


def _special_files(config: AgentConfig) -> list[str]:
    """The files read at start (keys, broker password, TLS) that exist but are no regular file."""
    sec, mqtt = config.security, config.mqtt
    operators = config.remote.operators.items()
    files = [("security.kiosk_key", sec.kiosk_key), ("security.central_public_key", sec.central_public_key),
             *(("security.receipt_keys", p) for p in sec.receipt_keys),
             ("mqtt.password_file", mqtt.password_file),
             *((f"mqtt.tls.{n}", getattr(mqtt.tls, n)) for n in ("ca_file", "cert_file", "key_file")),
             *((f"remote.operators.{n}.public_key", op.public_key) for n, op in operators)]
    found = []
    for setting, path in files:
        try:
            mode = os.stat(path).st_mode if path is not None else None  # never blocks, unlike open
        except OSError:
            continue  # missing or unreadable: the load below says so in its own words
        if mode is not None and not stat.S_ISREG(mode):
            found.append(f"{setting}: {path} is not a regular file (a FIFO, a device or a folder); "
                         "point it at the file itself")
    return found


def _key_problems(config: AgentConfig) -> list[str]:
    sec = config.security
    found = []
    checks = [lambda: load_signing_key(sec.kiosk_key), lambda: load_encryption_public(sec.central_public_key)]
    if config.mqtt.ack_mode == "receipt":  # as Agent._receipt_keys: only then are they loaded
        checks.append(lambda: load_receipt_keys(sec.receipt_keys))
    for check in checks:
        try:
            check()
        except KeyFileError as exc:
            found.append(str(exc))  # names its setting already
    return found


def mqtt_problems(mqtt: MqttConfig) -> list[str]:
    """The broker password file and the TLS files, loaded as the MQTT link loads them."""
    from agent.transport.mqtt_link import tls_context

    found = []
    for check in (mqtt.resolved_password, lambda: tls_context(mqtt.tls) if mqtt.tls.enabled else None):
        try:
            check()
        except ConfigError as exc:
            found += [f"{exc.source}: {p}" for p in exc.problems]
    return found


def _state_problems(config: AgentConfig) -> list[str]:
    """The state folder and the queue's folder must be writable, or creatable, by this user."""
    found = []
    for folder, what in ((config.state_dir, "kiosk.state_dir"), (config.queue.path.parent, "queue.path")):
        existing = folder
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            verb = "write to" if existing == folder else f"create {folder} in"
            found.append(f"{what}: this user (uid {os.getuid()}) cannot {verb} {existing}")
        else:
            _held(folder, found, what)  # a lock file `run` would refuse (a symlink, a FIFO)
    return sorted(set(found))


def _held(folder: Path, found: list[str] | None = None, what: str = "kiosk.state_dir") -> int | None:
    """The lock's holder; a lock file the agent would refuse (a symlink, a FIFO) goes in ``found``."""
    try:
        return holder(folder)
    except OSError as exc:
        if found is not None:
            found.append(f"{what}: {exc.strerror or exc}")
        return None


def _local_api(config: AgentConfig) -> tuple[list[str], list[str]]:
    api = config.local_api
    if not api.enabled:
        return [], []
    from agent.registration.access import TokenFileError, read_token

    problems: list[str] = []
    reg = config.registration
    wanted = [("finger_device", reg.finger_device)] + ([("face_device", reg.face_device)] if reg.face else [])
    warnings = [f"registration.{setting}: no [devices.{name}] is configured; registration sessions "
                "cannot capture until it is" for setting, name in wanted if name not in config.devices]
    if api.token_file is not None:
        try:
            read_token(api.token_file)
        except TokenFileError as exc:
            problems.append(str(exc))
    if api.unix_socket is not None:
        folder = api.unix_socket.parent
        if not folder.is_dir():
            # Under systemd the unit's RuntimeDirectory= creates it just before the start.
            warnings.append(f"local_api.unix_socket: {folder} does not exist (yet): the agent serves "
                            "no local API unless it exists when the agent starts (the unit's "
                            "RuntimeDirectory= creates /run/kiosk-agent)")
        elif not os.access(folder, os.W_OK | os.X_OK):
            problems.append(f"local_api.unix_socket: this user (uid {os.getuid()}) cannot create "
                            f"{api.unix_socket}: {folder} is not writable")
    elif _held(config.state_dir) is None:  # a running agent holds the port itself
        busy = _port_busy(api.host, api.port)
        if busy:
            warnings.append(f"local_api: cannot listen on {api.host}:{api.port} ({busy}); the agent "
                            "would run without its local API")
    return problems, warnings


def _port_busy(host: str, port: int) -> str:
    if port == 0:
        return ""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the HTTP server does
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return ""


def _device_warnings(config: AgentConfig) -> list[str]:
    """Device paths that are not there now: a scanner may be plugged in later (hot-plug)."""
    found = []
    for name, device in config.devices.items():
        if not device.enabled:
            continue
        port = getattr(device, "port", None)
        if isinstance(port, str) and port.startswith("/dev/") and not Path(port).exists():
            found.append(f"devices.{name}.port: {port} does not exist (not plugged in?); the agent "
                         "starts and opens it when it appears")
    return found
