"""The ``kiosk-agent`` command line.

Exit codes: 0 success; 1 the operation failed (broker, devices, lost captures); 2 bad usage
or a bad config file (every problem is listed, one per line, with its dotted path).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent import __version__
from agent.config import (
    CONFIG_ENV,
    DEFAULT_CONFIG_PATH,
    AgentConfig,
    ConfigError,
    config_path,
    json_schema,
    load_config,
    load_receiver_config,
)
from agent.logs import setup_logging

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
log = logging.getLogger("kiosk-agent")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kiosk-agent",
        description="Edge agent for biometric registration kiosks: captures from fingerprint "
                    "scanners and cameras, queues them durably and delivers them over MQTT.",
        epilog=f"The config file defaults to {DEFAULT_CONFIG_PATH}; --config or {CONFIG_ENV} "
               "override it. Exit codes: 0 ok, 1 failed, 2 bad usage or config.",
    )
    parser.add_argument("--version", action="version", version=f"kiosk-agent {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def config_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", metavar="PATH", help=f"config file (default: ${CONFIG_ENV} "
                       f"or {DEFAULT_CONFIG_PATH})")

    p = sub.add_parser("run", help="run the agent in the foreground until SIGTERM or SIGINT")
    config_arg(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", help="run the whole capture path locally with simulated devices")
    p.add_argument("--count", type=_positive_int, default=20, metavar="N",
                   help="captures to take (default 20)")
    p.add_argument("--rate", type=_non_negative_float, default=0.0, metavar="R",
                   help="captures per second; 0 = as fast as the path allows (default)")
    p.add_argument("--broker", metavar="HOST:PORT",
                   help="use this broker instead of starting one (waits while it is down)")
    p.add_argument("--embedded-broker", action="store_true",
                   help="use the in-process broker even when mosquitto is installed")
    p.add_argument("--protocol", choices=["5", "3.1.1"],
                   help="MQTT version (default: 5, or 3.1.1 with the embedded broker)")
    p.add_argument("--timeout", type=_positive_float, default=300.0, metavar="SECONDS",
                   help="give up after this long (default 300)")
    p.add_argument("--dir", type=Path, metavar="PATH",
                   help="keep the queue and received captures here (default: a temporary folder)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("receiver", help="run the reference receiver (central side)")
    config_arg(p)
    p.set_defaults(func=cmd_receiver)

    p = sub.add_parser("check-config", help="validate a config file (exit 0 valid, 2 invalid)")
    p.add_argument("path", nargs="?", metavar="PATH",
                   help=f"config file (default: ${CONFIG_ENV} or {DEFAULT_CONFIG_PATH})")
    p.add_argument("--receiver", action="store_true",
                   help="check a reference receiver's config instead of a kiosk's")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("config-schema", help="print the config file's JSON Schema")
    p.set_defaults(func=cmd_config_schema)

    p = sub.add_parser("keys", help="create, show and enrol the keys that protect captures")
    ksub = p.add_subparsers(dest="keys_command", metavar="SUBCOMMAND", required=True)
    k = ksub.add_parser("init", help="create the kiosk's Ed25519 key pair (security.kiosk_key), or "
                                     "with --central the central service's X25519 pair")
    config_arg(k)
    k.add_argument("--central", action="store_true",
                   help="create the central service's key pair (receiver.central_private_key)")
    k.add_argument("--operator", type=Path, metavar="PATH",
                   help="create a support operator's Ed25519 key pair at PATH (list PATH.pub in "
                        "the kiosks' remote.operators); needs no config file")
    k.add_argument("--json", action="store_true", help="print the public key as JSON")
    k.set_defaults(func=cmd_keys_init)
    k = ksub.add_parser("show", help="print the public key and its fingerprint for enrolment")
    config_arg(k)
    k.add_argument("--central", action="store_true", help="the central service's key")
    k.add_argument("--json", action="store_true", help="print as JSON")
    k.set_defaults(func=cmd_keys_show)
    k = ksub.add_parser("enrol", help="central side: accept a kiosk's public key (receiver.kiosk_keys_dir)")
    config_arg(k)
    k.add_argument("--kiosk-id", required=True, help="the kiosk's id (kiosk.id in its config)")
    k.add_argument("public_key", type=Path, metavar="PUBLIC_KEY_FILE", help="the kiosk's .pub file")
    k.set_defaults(func=cmd_keys_enrol)

    from agent import quality_cli, remote_cli

    quality_cli.add_parser(sub)
    remote_cli.add_parser(sub)

    p = sub.add_parser("queue", help="inspect the local capture queue")
    qsub = p.add_subparsers(dest="queue_command", metavar="SUBCOMMAND", required=True)
    q = qsub.add_parser("stats", help="pending captures and bytes, oldest age, counts by state")
    config_arg(q)
    q.add_argument("--json", action="store_true", help="print as JSON")
    q.set_defaults(func=cmd_queue_stats)
    _add_device_commands(sub, config_arg)
    return parser


def _add_device_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                         config_arg: Callable[[argparse.ArgumentParser], None]) -> None:
    """``devices``, ``devices scan`` and ``capture``: need a config, but no keys or broker."""
    p = sub.add_parser("devices", help="list the configured devices and whether they answer "
                                       "(`devices scan`: find serial scanners)")
    config_arg(p)
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(func=cmd_devices)
    dsub = p.add_subparsers(dest="devices_command", metavar="SUBCOMMAND")
    s = dsub.add_parser("scan", help="probe serial ports (/dev/ttyUSB*, /dev/ttyACM*, /dev/ttyAMA*, "
                                     "/dev/serial0, configured ports) for fingerprint modules "
                                     "and list the USB scanners it recognises")
    # SUPPRESS: options given before `scan` (devices --json scan) must not be reset here.
    s.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS,
                   help="also probe the ports of the serial devices configured here")
    s.add_argument("--port", action="append", default=[], metavar="PORT",
                   help="also probe this port or pyserial URL (repeatable)")
    s.add_argument("--probe-timeout", type=_positive_float, default=0.3, metavar="S",
                   help="seconds to wait for an answer at each baud rate (default 0.3)")
    s.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print as JSON")
    s.set_defaults(func=cmd_devices_scan)

    p = sub.add_parser("capture", help="take one capture from a configured device and write it to a file")
    p.add_argument("device", metavar="DEVICE", help="the device's name ([devices.NAME] in the config)")
    config_arg(p)
    p.add_argument("--out", required=True, type=Path, metavar="FILE",
                   help="where to write the image (finger: 8-bit greyscale PNG with its resolution)")
    p.add_argument("--position", type=int, default=0, choices=range(11), metavar="N",
                   help="finger position 0..10 (ANSI/NIST; 0 unknown)")
    p.add_argument("--timeout", type=_positive_float, metavar="S",
                   help="seconds to wait for the person (default: the device's capture_timeout_s)")
    p.add_argument("--json", action="store_true", help="print the metadata as JSON")
    p.set_defaults(func=cmd_capture)


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


def _positive_float(value: str) -> float:
    number = float(value)
    if number <= 0:
        raise argparse.ArgumentTypeError("must be greater than 0")
    return number


def _non_negative_float(value: str) -> float:
    number = float(value)
    if number < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return number


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        _print_config_error(exc)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def _print_config_error(exc: ConfigError) -> None:
    print(f"error: invalid config {exc.source}:", file=sys.stderr)
    for problem in exc.problems:
        print(f"  {problem}", file=sys.stderr)


def _load(args: argparse.Namespace) -> AgentConfig:
    return load_config(config_path(args.config))


def cmd_run(args: argparse.Namespace) -> int:
    from agent.daemon import Agent

    config = _load(args)
    setup_logging(config.logging.level, config.logging.format)
    Agent(config, config_path(args.config)).run_until_signalled()
    return EXIT_OK


def cmd_receiver(args: argparse.Namespace) -> int:
    import signal
    import threading

    from agent.receiver import Receiver

    config = load_receiver_config(config_path(args.config))
    setup_logging(config.logging.level, config.logging.format)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    receiver = Receiver(config)
    receiver.start()
    try:
        while not stop.wait(1.0):
            if not receiver.link.alive:
                log.critical("receiver MQTT thread died")
                return EXIT_FAILED
    finally:
        receiver.stop()
        c = receiver.counters
        log.info("receiver stopped: %d stored, %d duplicates, %d rejected, %d unreadable",
                 c.stored, c.duplicates, c.rejected, c.unreadable)
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from agent.demo import DemoError, DemoOptions, run_demo

    setup_logging("WARNING", "text")
    opts = DemoOptions(count=args.count, rate=args.rate, broker=args.broker, protocol=args.protocol,
                       embedded=args.embedded_broker,
                       timeout_s=args.timeout, workdir=args.dir, json=args.json)
    try:
        return run_demo(opts)
    except DemoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def cmd_check_config(args: argparse.Namespace) -> int:
    path = config_path(args.path)
    try:
        config = load_receiver_config(path) if args.receiver else load_config(path)
    except ConfigError as exc:
        if args.json:
            print(json.dumps({"valid": False, "path": str(path), "problems": exc.problems}))
        else:
            _print_config_error(exc)
        return EXIT_USAGE
    warnings: list[str] = []
    if isinstance(config, AgentConfig):
        from agent.remote import load_operators

        summary = (f"kiosk {config.kiosk.id}, {len(config.devices)} devices: "
                   f"{', '.join(sorted(config.devices)) or 'none'}")
        if config.remote.enabled:
            warnings = load_operators(config.remote)[1]
    else:
        summary = f"receiver {config.receiver.name}, storing under {config.receiver.output_dir}"
    if args.json:
        print(json.dumps({"valid": True, "path": str(path), "summary": summary, "warnings": warnings}))
    else:
        print(f"{path}: valid ({summary})")
        for warning in warnings:  # the agent runs without them; they are worth fixing
            print(f"warning: {warning}", file=sys.stderr)
    return EXIT_OK


def cmd_config_schema(args: argparse.Namespace) -> int:
    print(json.dumps(json_schema(), indent=2))
    return EXIT_OK


def cmd_queue_stats(args: argparse.Namespace) -> int:
    from agent.durable_queue import DurableQueue

    config = _load(args)
    if not config.queue.path.exists():
        print(f"error: no queue at {config.queue.path} (the agent has not run with this config)",
              file=sys.stderr)
        return EXIT_FAILED
    queue = DurableQueue(config.queue.path, max_bytes=config.queue.max_bytes,
                         min_free_bytes=config.queue.min_free_bytes)
    try:
        stats = queue.stats()
    finally:
        queue.close()
    if args.json:
        print(json.dumps(dict(stats.as_dict(), path=str(config.queue.path))))
        return EXIT_OK
    age = "-" if stats.oldest_age_s is None else f"{stats.oldest_age_s:.0f} s"
    print(f"queue {config.queue.path}")
    print(f"  pending:     {stats.pending} captures, {stats.pending_bytes:,} bytes "
          f"(quota {stats.max_bytes:,})")
    print(f"  oldest:      {age}")
    print("  by state:    " + ", ".join(f"{k} {v}" for k, v in stats.by_state.items()))
    print(f"  disk free:   {stats.disk_free_bytes:,} bytes")
    return EXIT_OK


# --- keys ----------------------------------------------------------------------------------


def _key_paths(args: argparse.Namespace) -> tuple[Path, str]:
    """(private key path, what) from a kiosk config, or a receiver config with --central."""
    if getattr(args, "operator", None):
        return args.operator, "operator"
    if args.central:
        return load_receiver_config(config_path(args.config)).receiver.central_private_key, "central"
    return load_config(config_path(args.config)).security.kiosk_key, "kiosk"


def _print_public(path: Path, what: str, as_json: bool) -> None:
    from agent import keys

    pub_path = keys.public_path(path)
    kind = keys.X25519PublicKey if what == "central" else keys.Ed25519PublicKey
    public = keys.load_public(pub_path, str(pub_path), kind)
    pem = keys.public_pem(public).decode()
    if as_json:
        print(json.dumps({"key": what, "private_key_file": str(path), "public_key_file": str(pub_path),
                          "fingerprint": keys.fingerprint(public), "key_id": keys.key_id(public),
                          "public_key_pem": pem}))
    else:
        print(f"{what} public key {pub_path}\nfingerprint {keys.fingerprint(public)} (key id "
              f"{keys.key_id(public)})\n{pem}", end="")


def cmd_keys_init(args: argparse.Namespace) -> int:
    from agent import keys

    path, what = _key_paths(args)
    try:
        if what == "central":
            keys.create_encryption_key(path)
        else:
            keys.create_signing_key(path)
    except keys.KeyFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except PermissionError as exc:
        print(f"error: cannot write {path}: {exc.strerror}; run as the service user "
              "(sudo -u kiosk kiosk-agent keys init)", file=sys.stderr)
        return EXIT_FAILED
    keys.chown_to_service_user(path)
    if not args.json:
        print(f"created {what} private key {path} (mode 0600)")
    _print_public(path, what, args.json)
    return EXIT_OK


def cmd_keys_show(args: argparse.Namespace) -> int:
    from agent import keys

    path, what = _key_paths(args)
    try:
        _print_public(path, what, args.json)
    except keys.KeyFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def cmd_keys_enrol(args: argparse.Namespace) -> int:
    from agent import keys
    from agent.config import _topic_segment

    config = load_receiver_config(config_path(args.config))
    try:
        _topic_segment(args.kiosk_id)
        public = keys.enrol(args.kiosk_id, args.public_key, config.receiver.kiosk_keys_dir)
    except (ValueError, keys.KeyFileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, ValueError) else EXIT_FAILED
    print(f"enrolled kiosk {args.kiosk_id}: {keys.fingerprint(public)} -> "
          f"{config.receiver.kiosk_keys_dir / (args.kiosk_id + '.pub')}")
    return EXIT_OK


# --- devices and capture -------------------------------------------------------------------


def _device_row(name: str, config: Any) -> dict[str, Any]:
    """A configured device and its state after probing it (read-only: no LED, no capture)."""
    from drivers import PermanentDeviceError, TransientDeviceError, driver_class

    driver = driver_class(config.driver)(name, config)
    row: dict[str, Any] = {"name": name, "driver": config.driver, "modality": driver.modality.value,
                           "port": getattr(config, "port", ""), "state": "disabled", "model": "",
                           "serial": "", "firmware": "", "details": {}, "error": ""}
    if not config.enabled:
        return row
    try:
        info = driver.probe()
    except PermanentDeviceError as exc:
        row.update(state="failed", error=str(exc))
    except TransientDeviceError as exc:
        row.update(state="offline", error=str(exc))
    else:
        row.update(state="online", model=info.model, serial=info.serial, firmware=info.firmware,
                   details=dict(info.extra))
    finally:
        driver.close()
    return row


def cmd_devices(args: argparse.Namespace) -> int:
    config = _load(args)
    rows = [_device_row(name, device) for name, device in config.devices.items()]
    if args.json:
        print(json.dumps({"devices": rows}, default=str))
    elif not rows:
        print("no devices configured ([devices.NAME] tables)")
    for row in rows if not args.json else []:
        what = f"{row['model']} serial {row['serial']}" if row["state"] == "online" else row["error"]
        where = f" on {row['port']}" if row["port"] else ""
        print(f"{row['name']:<12} {row['driver']:<11} {row['state']:<8} {what}{where}")
    return EXIT_OK if all(r["state"] in ("online", "disabled") for r in rows) else EXIT_FAILED


def cmd_devices_scan(args: argparse.Namespace) -> int:
    from drivers.serial_port import SerialDriverConfig
    from drivers.serial_scan import candidate_ports, scan

    extra = list(args.port)
    path = config_path(getattr(args, "config", None))
    # A config is optional here: its serial ports are probed too when there is one.
    if getattr(args, "config", None) or path.exists():
        config = load_config(path)
        extra += [d.port for d in config.devices.values() if isinstance(d, SerialDriverConfig)]
    results = scan(candidate_ports(extra), probe_timeout_s=args.probe_timeout)
    from drivers.usb_scan import UsbUnavailable, scan_usb

    try:  # USB scanners by vendor and product id: descriptors only, nothing claimed
        usb_found, usb_error = scan_usb(), ""
    except UsbUnavailable as exc:
        usb_found, usb_error = [], str(exc)
    if getattr(args, "json", False):
        print(json.dumps({"ports": [r.as_dict() for r in results],
                          "usb": {"available": not usb_error, "error": usb_error,
                                  "scanners": [u.as_dict() for u in usb_found]}}, default=str))
        return EXIT_OK
    if not results:
        print("no serial ports found")
    for r in results:
        if r.info is not None:
            print(f"{r.port}: {r.driver} {r.info.model} serial {r.info.serial} "
                  f"at {r.info.extra.get('baud', '?')} baud")
        else:
            print(f"{r.port}: nothing usable answers ({r.error})")
    if usb_error:
        print(f"USB: not scanned: {usb_error}")
    elif not usb_found:
        print("USB: no recognised scanners")
    for u in usb_found:
        print(f"USB {u.usb_port} ({u.usb_id}): {u.driver} {u.model} serial {u.serial or '?'}"
              f"{' (' + u.error + ')' if u.error else ''}")
    return EXIT_OK


def cmd_capture(args: argparse.Namespace) -> int:
    import hashlib
    import time

    from drivers import CaptureRequest, CaptureRetry, DriverError

    config = _load(args)
    device = config.devices.get(args.device)
    if device is None:
        print(f"error: no device {args.device!r} in the config; configured: "
              f"{', '.join(sorted(config.devices)) or 'none'}", file=sys.stderr)
        return EXIT_USAGE
    from agent.daemon import build_driver

    driver = build_driver(args.device, device, config)
    attempts = config.capture.max_attempts
    started = time.monotonic()
    try:
        info = driver.open()
        for attempt in range(1, attempts + 1):
            try:
                image = driver.capture(CaptureRequest(position=args.position, timeout_s=args.timeout))
                break
            except CaptureRetry as retry:
                print(f"attempt {attempt}/{attempts}: {retry.reason} (tell the person: {retry.hint})",
                      file=sys.stderr)
                if attempt == attempts:
                    return EXIT_FAILED
    except DriverError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        driver.close()
    data = _image_file(image)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(args.out)
    meta = {"device": args.device, "driver": device.driver, "model": info.model, "serial": info.serial,
            "modality": image.modality.value, "position": image.position,
            "format": image.image_format,
            "width": image.width, "height": image.height, "ppi": image.ppi, "quality": image.quality,
            "quality_detail": image.quality_detail, "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(), "out": str(args.out), "attempts": attempt,
            "seconds": round(time.monotonic() - started, 3)}
    if args.json:
        print(json.dumps(meta, default=str))
    else:
        for key, value in meta.items():
            print(f"{key + ':':<15} {value}")
    return EXIT_OK


def _image_file(image: Any) -> bytes:
    """Finger PNGs as 8-bit greyscale with their resolution (pHYs); anything else as it came."""
    import cv2
    import numpy as np

    from drivers import Modality
    from drivers.png_phys import encode_grey_png

    if image.modality is not Modality.FINGER or image.image_format != "png":
        return image.image
    pixels = cv2.imdecode(np.frombuffer(image.image, np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None:
        raise SystemExit("error: the device returned a PNG that cannot be decoded")
    if pixels.ndim == 3:
        pixels = cv2.cvtColor(pixels, cv2.COLOR_BGR2GRAY if pixels.shape[2] == 3 else cv2.COLOR_BGRA2GRAY)
    if pixels.dtype != np.uint8:
        pixels = (pixels >> 8).astype(np.uint8)  # 16-bit PNG: keep the significant byte
    return encode_grey_png(pixels, image.ppi)
