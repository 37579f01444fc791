"""Which settings ``config.set`` may change: an allow-list, and nothing else.

An admin key travels to support desks and laptops; whoever holds it must not be able to
turn a kiosk against the people it registers. So a remote change may only tune how the
kiosk does its job (thresholds, rates, windows, budgets, intervals, the log level), never
where its data goes or comes from: paths, hosts, credentials, TLS, keys, devices, importable
names and the local API are set on the kiosk itself. A setting not named below cannot be
changed remotely, so a setting added later is safe until someone decides otherwise here.

One exception, ``mqtt.host`` and ``mqtt.port``: a kiosk may be moved to another broker
while TLS is on and the CA, the client certificate and the credentials stay as they are,
so the new broker has to prove itself with a certificate from the same CA.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter, ValidationError

from agent.transport.config import MqttConfig

REMOTELY_SETTABLE: frozenset[str] = frozenset({
    # Connection tuning with the broker the kiosk already trusts. Not ack_mode ("puback"
    # would let a broker make the kiosk delete captures the central side never got),
    # client_id (another kiosk's id knocks that kiosk off the broker) or topic_prefix (moves
    # the captures and the commands elsewhere).
    "mqtt.protocol", "mqtt.keepalive_s", "mqtt.inflight_window", "mqtt.receive_maximum",
    "mqtt.reconnect_min_s", "mqtt.reconnect_max_s", "mqtt.stable_after_s", "mqtt.connect_timeout_s",
    "mqtt.receipt_timeout_s",
    # Budgets of the queue: at worst new captures are refused until support raises them
    # again. Not queue.path (a file to overwrite) or erase_interval_s (how soon acknowledged
    # captures leave the disk is a security property).
    "queue.max_bytes", "queue.min_free_bytes", "queue.reserve_bytes",
    # Cellular budgets and upload windows: they delay captures (which wait, sealed, in the
    # queue) and never hold back commands, so support can always undo them.
    "uplink.chunk_bytes", "uplink.inflight_bytes", "uplink.chunk_window", "uplink.max_bytes_per_s",
    "uplink.daily_budget_bytes", "uplink.windows",
    # Attempts and the pace of continuous capture. Not capture.mode: "continuous" would make
    # every camera and scanner capture by itself.
    "capture.max_attempts", "capture.rate_per_s", "capture.max_captures", "capture.finger_positions",
    # Quality thresholds: they decide pass or retry, and a kept capture is flagged when none
    # passes. Not quality.finger.assessor (an importable name: code to run) or
    # quality.face.yunet_model (a file to load).
    "quality.finger.min_score", "quality.finger.min_contrast", "quality.finger.min_std",
    "quality.finger.min_foreground_px", "quality.finger.foreground_min_std",
    "quality.finger.min_orientation_certainty", "quality.finger.ridge_period_min_px",
    "quality.finger.ridge_period_max_px", "quality.finger.min_ridge_frequency_in_band",
    "quality.finger.min_clarity",
    "quality.face.min_face_px", "quality.face.min_eye_distance_px", "quality.face.centre_min",
    "quality.face.centre_max", "quality.face.eye_line_min", "quality.face.eye_line_max",
    "quality.face.max_roll_deg", "quality.face.luminance_min", "quality.face.luminance_max",
    "quality.face.dark_level", "quality.face.bright_level", "quality.face.max_dark_share",
    "quality.face.max_bright_share", "quality.face.min_sharpness", "quality.face.max_background_gradient",
    # A registration's thresholds and attempts. Not its plan, whether the face is taken, or
    # which device takes fingers and face (a camera reading a file or a stream elsewhere
    # would register someone else's biometrics).
    "registration.finger_min_quality", "registration.face_min_quality", "registration.max_attempts",
    # How fingerprints are encoded (lossless PNG or the FBI's WSQ). Not the ANSI/NIST agency
    # and transaction fields: they say whose records these are.
    "formats.finger_format",
    # What the kiosk tells support, and how often.
    "logging.level", "logging.format", "telemetry.interval_s",
})

#: Allowed only while TLS is on and stays exactly as it is (see the module's docstring).
BROKER_KEYS: frozenset[str] = frozenset({"mqtt.host", "mqtt.port"})

@dataclass(frozen=True)
class Bounds:
    """What a remote change may set a number to, where the field's own range is wider."""

    low: float | None = None
    high: float | None = None
    #: 0 is accepted besides the range ("off").
    zero_ok: bool = False
    why: str = ""

    def problem(self, key: str, value: float) -> str | None:
        if self.zero_ok and value == 0:
            return None
        if self.low is not None and value < self.low:
            off = " (or 0: off)" if self.zero_ok else ""
            return f"{key}: at least {self.low:g}{off} when changed remotely, {self.why}"
        if self.high is not None and value > self.high:
            return f"{key}: at most {self.high:g} when changed remotely, {self.why}"
        return None


_BACK_TO_SUPPORT = "so the kiosk keeps coming back to support"
_NO_FLOOD = "so the kiosk's link and battery are not spent on it"
_DISK = "so the kiosk keeps room for its sessions, logs and the system"
#: Limits on remote changes where the field itself allows more: a kiosk that waits a day
#: between reconnects is cut off from the support that could undo the change, long after
#: the rollback has stopped watching; telemetry every millisecond and receipts timed out at
#: once spend the uplink outside every capture budget (telemetry and commands are never
#: held back by them); a reserve file the size of the disk, or no free space kept, fills it.
REMOTE_LIMITS: dict[str, Bounds] = {
    "mqtt.reconnect_min_s": Bounds(high=600.0, why=_BACK_TO_SUPPORT),
    "mqtt.reconnect_max_s": Bounds(high=3600.0, why=_BACK_TO_SUPPORT),
    "mqtt.connect_timeout_s": Bounds(high=300.0, why=_BACK_TO_SUPPORT),
    "mqtt.receipt_timeout_s": Bounds(low=5.0, why=_NO_FLOOD),
    "telemetry.interval_s": Bounds(low=10.0, zero_ok=True, why=_NO_FLOOD),
    "queue.reserve_bytes": Bounds(high=1024**3, why=_DISK),
    "queue.min_free_bytes": Bounds(low=64 * 1024**2, why=_DISK),
}

_BOOL = TypeAdapter(bool)


def refusals(keys: Iterable[str], tls_enabled: bool) -> list[str]:
    """A problem line for every dotted key that may not be changed remotely, sorted.

    Only the key names are looked at: nothing is validated or imported for a key refused.
    """
    problems = []
    for key in sorted(keys):
        if key in REMOTELY_SETTABLE:
            continue
        if key in BROKER_KEYS:
            if not tls_enabled:
                problems.append(f"{key}: can be changed remotely only while TLS is on (mqtt.tls."
                                "enabled), so a new broker proves itself with the same CA")
            continue
        problems.append(f"{key}: cannot be changed remotely; only thresholds, rates, windows, "
                        "budgets, intervals and the log level can (docs/remote-management.md)")
    return problems


def out_of_bounds(keys: Iterable[str], config: Any) -> list[str]:
    """A problem line for every changed key whose validated value in ``config`` (an
    AgentConfig) is outside its remote bounds: judged after validation, so "1e9" as text is
    caught as well as 1e9."""
    problems = []
    for key in sorted(set(keys) & REMOTE_LIMITS.keys()):
        value: Any = config
        for part in key.split("."):
            value = getattr(value, part)
        problem = REMOTE_LIMITS[key].problem(key, value)
        if problem:
            problems.append(problem)
    return problems


def broker_move_problems(old: MqttConfig, new: MqttConfig) -> list[str]:
    """Why moving from ``old``'s broker to ``new``'s is refused, if it is."""
    if (old.host, old.port) == (new.host, new.port):
        return []
    if not (old.tls.enabled and new.tls.enabled):
        return ["mqtt.host/mqtt.port: can be changed remotely only while TLS is on"]
    same = (old.tls == new.tls and old.username == new.username and old.password == new.password
            and old.password_file == new.password_file)
    if not same:
        return ["mqtt.host/mqtt.port: a new broker needs the TLS settings and credentials in force "
                "now; change those on the kiosk itself"]
    return []


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"mqtt": {"port": 1}} -> {"mqtt.port": 1}; every setting is a leaf (none is a table)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def tls_enabled(raw: dict[str, Any]) -> bool:
    """mqtt.tls.enabled of a raw (unvalidated) tree, read the way pydantic reads it."""
    mqtt = raw.get("mqtt")
    tls = mqtt.get("tls") if isinstance(mqtt, dict) else None
    value = tls.get("enabled", False) if isinstance(tls, dict) else False
    try:
        return _BOOL.validate_python(value)
    except ValidationError:
        return False  # the config will not validate; nothing in the overlay is honoured anyway
