"""``kiosk-agent devices``, ``devices scan`` and ``capture``: a config, but no keys or broker."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from agent.cliutil import EXIT_FAILED, EXIT_OK, EXIT_USAGE, Subparsers, config_arg, load, positive_float
from agent.config import config_path, load_config


def add_parser(sub: Subparsers) -> None:
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
    s.add_argument("--probe-timeout", type=positive_float, default=0.3, metavar="S",
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
    p.add_argument("--timeout", type=positive_float, metavar="S",
                   help="seconds to wait for the person (default: the device's capture_timeout_s)")
    p.add_argument("--json", action="store_true", help="print the metadata as JSON")
    p.set_defaults(func=cmd_capture)


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
    config = load(args)
    rows = [_device_row(name, device) for name, device in config.devices.items()]
    gnss = None
    if config.position.source != "none":  # a van's GNSS receiver (agent/position/)
        from agent.position.service import probe

        gnss = probe(config.position)
    if args.json:
        print(json.dumps({"devices": rows, **({"position": gnss} if gnss else {})}, default=str))
    elif gnss is not None:
        fix = gnss["fix"]
        state = (f"fix {gnss['fix_type']} {fix['lat']:.5f},{fix['lon']:.5f} +/-{fix['accuracy_m'] or '?'} m, "
                 f"{fix['satellites']} satellites, age {fix['age_s']} s" if fix else
                 f"no fix ({gnss['current']['reason']})")
        print(f"{'position':<12} {gnss['source']:<11} {state}")
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

    from agent.capture.attempts import attempt_capture
    from drivers import CaptureRequest, CaptureRetry, DriverError

    config = load(args)
    device = config.devices.get(args.device)
    if device is None:
        print(f"error: no device {args.device!r} in the config; configured: "
              f"{', '.join(sorted(config.devices)) or 'none'}", file=sys.stderr)
        return EXIT_USAGE
    from agent.capture.build import build_driver

    driver = build_driver(args.device, device, config.quality.face)
    attempts = config.capture.max_attempts

    def retried(attempt: int, retry: CaptureRetry) -> None:
        print(f"attempt {attempt}/{attempts}: {retry.reason} (tell the person: {retry.hint})",
              file=sys.stderr)

    request = CaptureRequest(position=args.position, timeout_s=args.timeout)
    started = time.monotonic()
    try:
        info = driver.open()
        kept = attempt_capture(lambda: driver.capture(request), attempts, on_retry=retried)
    except CaptureRetry:
        return EXIT_FAILED  # each attempt's hint is on stderr already
    except DriverError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        driver.close()
    image = kept.image
    data = _image_file(image)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(args.out)
    meta = {"device": args.device, "driver": device.driver, "model": info.model, "serial": info.serial,
            "modality": image.modality.value, "position": image.position,
            "format": image.image_format,
            "width": image.width, "height": image.height, "ppi": image.ppi, "quality": image.quality,
            "quality_detail": image.quality_detail, "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(), "out": str(args.out), "attempts": kept.attempts,
            "seconds": round(time.monotonic() - started, 3)}
    if args.json:
        print(json.dumps(meta, default=str))
    else:
        for key, value in meta.items():
            if value is None or value == {}:
                if key != "quality":
                    continue  # nothing to say (quality_detail of a driver that gives none)
                value = (f"not assessed by the driver (`kiosk-agent quality {args.out} "
                         f"--modality {image.modality.value}` checks it)")
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
