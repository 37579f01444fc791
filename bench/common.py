"""What every benchmark shares: sizes, the workspace (keys, configs), the 100 KB images, the
capture path with a fixed-image device, statistics and the machine description."""

from __future__ import annotations

import importlib.metadata
import itertools
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.capture.record import new_record
from agent.capture.service import CaptureService
from agent.capture.workers import DeviceWorker
from agent.config import AgentConfig, validate_config
from agent.security.keys import load_encryption_public, load_signing_key, provision, public_pem
from agent.security.sealing import Sealer
from agent.transport.durable_queue import DurableQueue
from agent.transport.protocol import encode_capture
from devtools.broker import MosquittoBroker
from drivers import CapturedImage, CaptureRequest, DeviceInfo, Driver, DriverConfig, Health, Modality
from receiver.config import ReceiverServiceConfig

REPO = Path(__file__).resolve().parent.parent
#: "100 KB" images: 100,000 random bytes (incompressible, like a compressed fingerprint image).
IMAGE_BYTES = 100_000
#: Distinct random images cycled through; content does not change the cost of any step.
IMAGE_POOL = 64
KIOSK_ID = "bench-kiosk"
PROBE_KIOSK_ID = "bench-probe"
TOPIC_PREFIX = "kiosk"
#: The agent's idle devices in subprocess runs (as a kiosk has them); they take no captures.
SIM_DEVICES: dict[str, Any] = {
    "finger": {"driver": "sim-finger", "seed": 1},
    "camera": {"driver": "sim-camera", "seed": 1},
}


class BenchError(Exception):
    """A benchmark that could not measure what it should (timeout, lost capture, crash)."""


@dataclass(frozen=True)
class Sizes:
    mode: str
    #: Captures committed (commit benchmark) and then drained (drain benchmark).
    backlog: int
    #: Captures in the profiled (slower, untimed) drain and commit runs.
    profile: int
    e2e_count: int
    e2e_rate_per_s: float
    startup_repeats: int
    fleet_kiosks: int
    fleet_captures_per_kiosk: int
    #: Registrations (ten fingers and a face) through the local API (bench/registration.py).
    registration_sessions: int = 3
    #: Captures committed and drained in the constrained-CPU emulation (bench/constrained.py).
    constrained_captures: int = 200


QUICK = Sizes("quick", backlog=2_000, profile=400, e2e_count=200, e2e_rate_per_s=20.0,
              startup_repeats=3, fleet_kiosks=50, fleet_captures_per_kiosk=20,
              registration_sessions=3, constrained_captures=200)
FULL = Sizes("full", backlog=10_000, profile=2_000, e2e_count=1_000, e2e_rate_per_s=20.0,
             startup_repeats=7, fleet_kiosks=200, fleet_captures_per_kiosk=20,
             registration_sessions=10, constrained_captures=1_000)


# --- the workspace: one temporary folder with keys and configs ----------------------------


class Workspace:
    """A temporary folder holding the keys, queues, received captures and logs of one run."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="kiosk-bench-"))
        try:
            self.keys = provision(self.root / "keys", KIOSK_ID)
            self.signing_key = load_signing_key(self.keys.kiosk_key)
            self.central_public = load_encryption_public(self.keys.central_public)
            # Enrolled now: receivers read the enrolled keys when they start.
            self.probe = self.enrol_new_kiosk(PROBE_KIOSK_ID)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        shutil.rmtree(self.root)

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fresh_dir(self, name: str) -> Path:
        """A new, empty folder; an old one of that name (an earlier step) is removed first."""
        path = self.root / name
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        return path

    def sealer(self) -> Sealer:
        return Sealer(self.signing_key, self.central_public)

    def enrol_new_kiosk(self, kiosk_id: str) -> Sealer:
        """A kiosk key made in memory and enrolled with the receivers (fleet, probe)."""
        key = Ed25519PrivateKey.generate()
        (self.keys.kiosks_dir / f"{kiosk_id}.pub").write_bytes(public_pem(key.public_key()))
        return Sealer(key, self.central_public)

    def agent_settings(self, *, port: int, queue_path: Path, ack_mode: str = "receipt",
                       devices: dict[str, Any] | None = None, level: str = "WARNING") -> dict[str, Any]:
        """An agent config as raw data; throughput settings (window, timeouts) stay at defaults."""
        return {
            "kiosk": {"id": KIOSK_ID, "site": "bench"},
            # Short reconnect delays: the drain's clock starts when the broker comes up. A long
            # CONNECT timeout: the drain holds the first connection until the broker is ready.
            "mqtt": {"host": "127.0.0.1", "port": port, "reconnect_min_s": 0.1, "allow_plaintext": True,
                     "reconnect_max_s": 1.0, "connect_timeout_s": 120.0, "ack_mode": ack_mode},
            "queue": {"path": str(queue_path), "min_free_bytes": 0, "max_bytes": 8 * 1024**3},
            "capture": {"mode": "on-demand"},
            "logging": {"level": level, "format": "text"},
            "security": {"kiosk_key": str(self.keys.kiosk_key),
                         "central_public_key": str(self.keys.central_public),
                         "receipt_keys": [str(self.keys.receipt_public)]},
            "devices": devices or {},
        }

    def agent_config(self, **kwargs: Any) -> AgentConfig:
        return validate_config(self.agent_settings(**kwargs), "bench")

    def receiver_settings(self, *, port: int, output_dir: Path, name: str) -> dict[str, Any]:
        return {
            "mqtt": {"host": "127.0.0.1", "port": port, "allow_plaintext": True},
            "receiver": {"output_dir": str(output_dir), "name": name, "share_group": "receivers",
                         "central_private_key": str(self.keys.central_key),
                         "kiosk_keys_dir": str(self.keys.kiosks_dir)},
            "logging": {"level": "INFO", "format": "text"},
        }

    def receiver_config(self, **kwargs: Any) -> ReceiverServiceConfig:
        return ReceiverServiceConfig.model_validate(self.receiver_settings(**kwargs))

    def write_toml(self, path: Path, raw: dict[str, Any]) -> Path:
        path.write_text(to_toml(raw))
        return path


def to_toml(raw: dict[str, Any], prefix: str = "") -> str:
    """Enough of a TOML writer for these configs: tables of scalars and lists."""
    lines, tables = [], []
    for key, value in raw.items():
        if isinstance(value, dict):
            tables.append((f"{prefix}{key}", value))
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    out = "\n".join(lines) + "\n"
    for name, table in tables:
        out += f"\n[{name}]\n" + to_toml(table, f"{name}.")
    return out


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


# --- the broker -----------------------------------------------------------------------------


class BenchBroker(MosquittoBroker):
    """The project's private loopback mosquitto, with the settings a central broker needs.

    ``set_tcp_nodelay true``: with mosquitto's default (Nagle's algorithm on) a small packet
    that follows another to the same client waits for that client's delayed ACK, about
    40 ms: a raw paho round trip (100 KB out, 8 bytes back) measured 43 ms instead of 1 ms.
    That artefact would make the raw baseline, not the agent, the slow side.

    ``max_queued_messages 20000`` and ``max_queued_bytes 4000000000``, the bounded values
    docs/deployment.md gives a central broker (tests/central/test_documented_broker.py holds
    these lines to it). mosquitto's default, 1000 per client, is too few: when 200 kiosks send
    20 captures each at once, two subscribers' queues overflow and mosquitto drops messages it
    has already acknowledged to the publishers (measured: 1,806 of 4,000). No limit (``0``)
    let a soak's resends grow the broker to 20 GB (docs/deployment.md). 20,000 is above every
    burst here: the full fleet's 200 kiosks x a window of 16, central ingest's 10,000 captures.
    """

    config_lines = ("set_tcp_nodelay true", "max_queued_messages 20000", "max_queued_bytes 4000000000")

    def __init__(self, port: int | None = None) -> None:
        super().__init__(port)
        conf = getattr(self, "_conf", None)
        if not isinstance(conf, Path) or not conf.exists():
            raise BenchError("devtools.broker.MosquittoBroker no longer keeps its config file in _conf; "
                             "update BenchBroker in bench/common.py")
        with conf.open("a") as fh:
            fh.write("".join(line + "\n" for line in self.config_lines))

    def __enter__(self) -> BenchBroker:
        try:
            self.start()
        except BaseException:
            self.close()  # removes its temporary folder too
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- images and the capture path ----------------------------------------------------------


class ImagePool:
    def __init__(self, count: int = IMAGE_POOL, size: int = IMAGE_BYTES) -> None:
        self.images = [os.urandom(size) for _ in range(count)]
        self._next = itertools.cycle(self.images)

    def next(self) -> bytes:
        return next(self._next)


class FixedImageDriver(Driver):
    """A device that returns ready-made 100 KB images at once, so the benchmark measures the
    agent's path (record, envelope, sealing, commit) and not an image simulator."""

    name = "bench-fixed"
    modality = Modality.FINGER

    def __init__(self, pool: ImagePool) -> None:
        super().__init__("bench", DriverConfig(driver=self.name))
        self._pool = pool

    def probe(self) -> DeviceInfo:
        return DeviceInfo(driver=self.name, model="bench", serial="BENCH-1")

    def open(self) -> DeviceInfo:
        return self.probe()

    def capture(self, request: CaptureRequest) -> CapturedImage:
        return CapturedImage(modality=Modality.FINGER, position=request.position, image_format="png",
                             image=self._pool.next(), width=320, height=400, ppi=500)

    def health(self) -> Health:
        return Health(True)

    def close(self) -> None:
        return None


@contextmanager
def capture_service(config: AgentConfig, queue: DurableQueue, sealer: Sealer,
                    pool: ImagePool) -> Iterator[CaptureService]:
    """The agent's real capture path (device thread, record, envelope, seal, commit) with a
    fixed-image device named "bench"."""
    worker = DeviceWorker("bench", FixedImageDriver(pool))
    worker.start()
    try:
        if not worker.wait_first_open(10):
            raise BenchError("the bench device did not open")
        yield CaptureService(config.kiosk, config.capture, queue, {"bench": worker}, sealer)
    finally:
        worker.stop()


def open_queue(config: AgentConfig) -> DurableQueue:
    """A DurableQueue opened with the settings the daemon passes."""
    q = config.queue
    return DurableQueue(q.path, max_bytes=q.max_bytes, min_free_bytes=q.min_free_bytes,
                        erase_interval_s=q.erase_interval_s)


def seal_capture(sealer: Sealer, kiosk_id: str, seq: int, image: bytes) -> tuple[str, bytes]:
    """A sealed capture exactly as CaptureService builds it (for kiosks without a queue)."""
    captured = CapturedImage(modality=Modality.FINGER, position=1, image_format="png", image=image,
                             width=320, height=400, ppi=500)
    record = new_record(captured, kiosk_id=kiosk_id, site="bench", operator_id=None,
                        device_id="bench", driver=FixedImageDriver.name, device_serial="BENCH-1")
    inner = encode_capture(replace(record, seq=seq))
    return record.id, sealer.seal(item_id=record.id, kiosk_id=kiosk_id, seq=seq, kind="capture",
                                  inner=inner)


def queued_payloads(db_path: Path, limit: int | None = None) -> list[bytes]:
    """The sealed payloads of a (closed) queue database, in order."""
    db = sqlite3.connect(db_path)
    try:
        sql = "SELECT payload FROM blobs ORDER BY seq" + (f" LIMIT {int(limit)}" if limit else "")
        return [row[0] for row in db.execute(sql)]
    finally:
        db.close()


def copy_queue(src: Path, dst: Path) -> None:
    """Copy a closed queue database (and its WAL, if one was left) for a run that drains it."""
    for suffix in ("", "-wal"):
        if Path(f"{src}{suffix}").exists():
            shutil.copyfile(f"{src}{suffix}", f"{dst}{suffix}")


# --- statistics -----------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        raise BenchError("percentile of no values")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def ratio(numerator: float, denominator: float) -> float:
    if denominator <= 0:
        raise BenchError(f"ratio with a non-positive baseline ({denominator})")
    return round(numerator / denominator, 3)


# --- the machine ------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "ram_gb": round(_meminfo_kb("MemTotal") / 1024**2, 1),
        "kernel": platform.release(),
        "temp_fs": _filesystem_of(Path(tempfile.gettempdir())),
    }


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _meminfo_kb(field: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise BenchError(f"/proc/meminfo has no {field}")


def _filesystem_of(path: Path) -> str:
    """The type of the file system holding ``path`` (fsync cost depends on it)."""
    best, fstype = "", "unknown"
    for line in Path("/proc/mounts").read_text().splitlines():
        _, mount, kind = line.split()[:3]
        if str(path).startswith(mount) and len(mount) > len(best):
            best, fstype = mount, kind
    return f"{fstype} on {best}"


def versions() -> dict[str, str]:
    from cryptography.hazmat.backends.openssl import backend

    return {
        "python": platform.python_version(),
        "kiosk_agent": importlib.metadata.version("kiosk-agent"),
        "paho_mqtt": importlib.metadata.version("paho-mqtt"),
        "cryptography": importlib.metadata.version("cryptography"),
        "openssl": backend.openssl_version_text(),
        "sqlite": sqlite3.sqlite_version,
        "mosquitto": _mosquitto_version(),
        **git_state(),
    }


def _mosquitto_version() -> str:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    # `mosquitto -h` prints its version first and exits 3; that exit code is expected.
    out = subprocess.run([binary, "-h"], capture_output=True, text=True, timeout=10).stdout
    first = out.splitlines()[0] if out else ""
    return first.removeprefix("mosquitto version ").strip() or "unknown"


def git_state(repo: Path = REPO) -> dict[str, Any]:
    """The commit the run measured (``git rev-parse HEAD``) and whether the tree differed from
    it, new files included: a figure from a dirty tree belongs to no commit, and the report
    says so. Read-only."""
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=10)
        except (FileNotFoundError, subprocess.TimeoutExpired):
            return None
        return out.stdout if out.returncode == 0 else None

    head = (git("rev-parse", "HEAD") or "").strip()
    if not head:
        return {"git_commit": "unknown (no git)", "git_dirty": None, "git_changed_files": [],
                "git_changed_count": 0}
    status = git("status", "--porcelain", "--untracked-files=normal") or ""
    changed = sorted(line[3:] for line in status.splitlines() if line.strip())
    return {"git_commit": head, "git_dirty": bool(changed), "git_changed_files": changed[:50],
            "git_changed_count": len(changed)}


def python_cmd(*args: str) -> list[str]:
    """A command running this interpreter (the venv's) from the repository root."""
    return [sys.executable, *args]


def drop_page_cache() -> bool:
    """Write dirty pages out and drop the clean page cache, so the next process faults its
    libraries in itself. Root only; False when not allowed."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def remove_cgroup(path: Path) -> None:
    """Remove a cgroup the benchmark made, waiting up to 5 s for its last processes to leave
    (a cgroup with members cannot be removed)."""
    for _ in range(50):
        try:
            path.rmdir()
            return
        except OSError:
            time.sleep(0.1)
