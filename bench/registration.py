"""A registration through the local API: ten fingers and a face, as the registration app
drives it, against the bare capture path of the same simulated devices.

The agent side: ``python -m agent run`` with the simulated finger scanner and camera (no
simulated person: ``capture_delay_s`` 0, so no waiting is counted), its local API on a
loopback port, connected to a broker with a reference receiver. Sessions go ``POST
/v1/sessions``, one ``POST …/capture`` per item (each call returns once the item has been
captured, judged, sealed and committed to the durable queue), then ``…/complete``. Each
item is timed from request to answer, in this process.

The raw side: the same simulated drivers in this process, ``open`` then ``capture`` for the
same positions: the least any capture of these items costs (the image made by the device).
Overhead per item = agent item time - bare capture time of that kind (medians).

Memory: VmHWM (peak RSS) of the agent process from /proc after the sessions, with the idle
peak read before the first one (``rss_peak_registration_mb``, target <= 100 MB). RSS counts
the pages of the shared libraries (NumPy, OpenCV) the process touched, which are
file-backed, shared with every other process using them and dropped by the kernel under
pressure; the process's private memory (RssAnon, sampled every 20 ms while the sessions run,
the kernel keeps no peak of it) is reported beside it.
"""

from __future__ import annotations

import json
import secrets
import statistics
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.common import SIM_DEVICES, BenchBroker, BenchError, Sizes, Workspace, drop_page_cache, ms, ratio
from bench.procs import AgentProcess, ReceiverProcess, status_kb
from devtools.broker import free_port

# The simulated drivers (NumPy, OpenCV) are imported where they are used: bench/memory_limit.py
# imports this module and must not map those libraries into the benchmark's own process, or
# their pages would be charged to it rather than to the agent it limits.

FINGERS = list(range(1, 11))


class LocalApi:
    """The registration app's side: bearer token, JSON in and out."""

    def __init__(self, port: int, token: str) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.token = token

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": f"Bearer {self.token}"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as err:
            raise BenchError(f"{method} {path}: {err.code} {err.read()[:300]!r}") from None

    def wait_up(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self.call("GET", "/v1/status")
                return
            except (OSError, BenchError):
                if time.monotonic() > deadline:
                    raise BenchError("the agent's local API did not answer") from None
                time.sleep(0.1)


def session(api: LocalApi, n: int) -> dict[str, list[float]]:
    """One registration; seconds per item, by kind (finger, face)."""
    created = api.call("POST", "/v1/sessions", {"applicant_ref": f"BENCH-{n}", "operator_id": "bench"})
    times: dict[str, list[float]] = {"finger": [], "face": []}
    outcomes = []
    while True:
        started = time.monotonic()
        answer = api.call("POST", f"/v1/sessions/{created['id']}/capture")
        elapsed = time.monotonic() - started
        times["face" if answer["item"].startswith("face") else "finger"].append(elapsed)
        outcomes.append(answer)
        if answer.get("next") is None:
            break
    done = api.call("POST", f"/v1/sessions/{created['id']}/complete")
    if done.get("state") != "completed":
        raise BenchError(f"session {created['id']} ended {done.get('state')!r}")
    if len(times["finger"]) != len(FINGERS) or not times["face"]:
        raise BenchError(f"expected ten fingers and a face, got {[o['item'] for o in outcomes]}")
    return times


class AnonPeak:
    """The highest RssAnon (private memory) of a process, sampled every 20 ms."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak_kb = pid, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="anon-peak", daemon=True)

    def _sample(self) -> None:
        while True:
            self.peak_kb = max(self.peak_kb, status_kb(self.pid, "RssAnon"))
            if self._stop.wait(0.02):
                return

    def __enter__(self) -> AnonPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def bare_captures(repeats: int) -> dict[str, list[float]]:
    """The simulated devices alone, in this process: image made, nothing judged or kept."""
    from drivers.base import CaptureRequest
    from drivers.sim_camera import SimCameraConfig, SimCameraDriver
    from drivers.sim_finger import SimFingerConfig, SimFingerDriver

    finger = SimFingerDriver("finger", SimFingerConfig(**{k: v for k, v in SIM_DEVICES["finger"].items()
                                                          if k != "driver"}))
    camera = SimCameraDriver("camera", SimCameraConfig(**{k: v for k, v in SIM_DEVICES["camera"].items()
                                                          if k != "driver"}))
    finger.open()
    camera.open()
    times: dict[str, list[float]] = {"finger": [], "face": []}
    try:
        for _ in range(repeats):
            for position in FINGERS:
                started = time.monotonic()
                finger.capture(CaptureRequest(position=position))
                times["finger"].append(time.monotonic() - started)
            started = time.monotonic()
            camera.capture(CaptureRequest(position=0))
            times["face"].append(time.monotonic() - started)
    finally:
        finger.close()
        camera.close()
    return times


@contextmanager
def registering_agent(ws: Workspace, work: Path, preexec: Callable[[], None] | None = None,
                      extra: dict[str, Any] | None = None) -> Iterator[tuple[AgentProcess, LocalApi]]:
    """A broker, a reference receiver and ``python -m agent run`` with the simulated devices and
    its local API, ready for sessions; ``preexec`` runs in the agent's child before it executes,
    ``extra`` holds config sections set on top of the benchmark's."""
    token_file = work / "api-token"
    token_file.write_text(secrets.token_urlsafe(32) + "\n")
    token_file.chmod(0o600)
    api_port = free_port()
    with BenchBroker() as broker, ReceiverProcess(ws, broker.port, work / "received", "registration") as rx:
        rx.start()
        settings = ws.agent_settings(port=broker.port, queue_path=work / "queue.db", devices=SIM_DEVICES)
        settings["local_api"] = {"enabled": True, "port": api_port, "token_file": str(token_file)}
        settings.update(extra or {})
        config = ws.write_toml(work / "agent.toml", settings)
        with AgentProcess(config, work, "registration-agent", preexec=preexec) as agent:
            agent.start()
            agent.wait_ready()
            api = LocalApi(api_port, token_file.read_text().strip())
            api.wait_up()
            yield agent, api
        rx.stop()


def run(ws: Workspace, sizes: Sizes) -> dict[str, Any]:
    work = ws.fresh_dir("registration")
    sessions = sizes.registration_sessions
    # VmHWM's file part depends on what is cached when the agent starts (the kernel maps a
    # faulted page's cached neighbours too): 135 MB after a drop, 173 MB with the libraries
    # wholly cached just after an install. Dropped first, so runs compare.
    dropped = drop_page_cache()
    with registering_agent(ws, work) as (agent, api):
        idle_peak = status_kb(agent.pid, "VmHWM") / 1024
        per_kind: dict[str, list[float]] = {"finger": [], "face": []}
        session_s = []
        with AnonPeak(agent.pid) as anon:
            for n in range(sessions):
                started = time.monotonic()
                for kind, values in session(api, n).items():
                    per_kind[kind] += values
                session_s.append(time.monotonic() - started)
        peak = status_kb(agent.pid, "VmHWM") / 1024
        file_mb = status_kb(agent.pid, "RssFile") / 1024
        problems = agent.problems()
        agent.stop()
    if problems:
        raise BenchError("the agent logged errors during the registrations: " + "; ".join(problems[:3]))
    bare = bare_captures(max(2, sessions))
    figures: dict[str, Any] = {}
    for kind in ("finger", "face"):
        item, raw = statistics.median(per_kind[kind]), statistics.median(bare[kind])
        figures[kind] = {"item_ms": ms(item), "bare_capture_ms": ms(raw), "overhead_ms": ms(item - raw),
                         "ratio_bare_vs_item": ratio(raw, item), "items": len(per_kind[kind]),
                         "item_p90_ms": ms(sorted(per_kind[kind])[int(0.9 * (len(per_kind[kind]) - 1))])}
    return {
        "rss_peak_registration_mb": round(peak, 1),
        "registration": {
            "sessions": sessions, "plan": "ten-flat and a face", "devices": sorted(SIM_DEVICES),
            "session_median_s": round(statistics.median(session_s), 3),
            "rss_idle_peak_mb": round(idle_peak, 1), "page_cache_dropped": dropped,
            "rss_anon_peak_mb": round(anon.peak_kb / 1024, 1),
            "rss_file_after_mb": round(file_mb, 1), **figures,
        },
    }


def attribute() -> list[dict[str, Any]]:
    """Where a registration's memory goes, in this process: the agent's imports, then one
    session's work stage by stage (the simulated devices, the finger checks, the face checks
    and token). VmHWM and VmRSS from /proc, tracemalloc's peak for Python's own share (NumPy
    reports its arrays to it). Not part of `make bench`: ``python -m bench.registration --attribute``."""
    import tracemalloc

    import cv2
    import numpy as np

    from drivers.base import CaptureRequest
    from drivers.sim_camera import SimCameraConfig, SimCameraDriver
    from drivers.sim_finger import SimFingerConfig, SimFingerDriver

    def mb(field: str) -> float:
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return round(int(line.split()[1]) / 1024, 1)
        return 0.0

    stages: list[dict[str, Any]] = []

    def stage(name: str) -> None:
        stages.append({"stage": name, "hwm_mb": mb("VmHWM"), "rss_mb": mb("VmRSS"),
                       "python_peak_mb": round(tracemalloc.get_traced_memory()[1] / 2**20, 1)})

    stage("this module imported (NumPy, OpenCV, the capture path)")
    import agent.daemon  # noqa: F401 (what `python -m agent run` imports)
    from agent.quality.config import QualityConfig
    from agent.quality.face import FaceAssessor, encode_jpeg, token_geometry, token_image
    from agent.quality.finger import load_assessor
    stage("agent imported")
    tracemalloc.start()
    finger = SimFingerDriver("finger", SimFingerConfig(seed=1))
    camera = SimCameraDriver("camera", SimCameraConfig(seed=1))
    finger.open()
    camera.open()
    prints = [finger.capture(CaptureRequest(position=p)) for p in FINGERS]
    stage("ten simulated prints")
    assessor = load_assessor(QualityConfig().finger)
    for image in prints:
        assessor.assess(cv2.imdecode(np.frombuffer(image.image, np.uint8), cv2.IMREAD_GRAYSCALE), image.ppi)
    stage("ten finger checks")
    frame = cv2.imdecode(np.frombuffer(camera.capture(CaptureRequest(position=0)).image, np.uint8),
                         cv2.IMREAD_COLOR)
    assessment = FaceAssessor(QualityConfig().face).assess(frame)
    if assessment.face is not None:
        encode_jpeg(token_image(frame, token_geometry(assessment.face)), 95)
    stage("face checks and token")
    return stages


if __name__ == "__main__":  # one step alone: python -m bench.registration [--full | --attribute]
    import sys

    from bench.common import FULL, QUICK

    if "--attribute" in sys.argv:
        print(json.dumps(attribute(), indent=2))
        sys.exit(0)
    with Workspace() as workspace:
        print(json.dumps(run(workspace, FULL if "--full" in sys.argv else QUICK), indent=2))
