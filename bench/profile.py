"""Where the time goes: cProfile of the agent's threads (and the receiver's) while they commit
and drain a small backlog, in this process.

cProfile on its own sees only the thread that enables it; a ``threading.setprofile`` hook
starts one profiler in every thread created while the ThreadProfiler is active. These runs
are slower than the timed ones (profiling overhead, and agent and receiver share one
interpreter here) and are used for proportions only, never for a headline figure.
"""

from __future__ import annotations

import cProfile
import pstats
import shutil
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from agent.daemon import Agent
from bench.common import (
    REPO,
    TOPIC_PREFIX,
    BenchBroker,
    BenchError,
    ImagePool,
    Sizes,
    Workspace,
    capture_service,
    copy_queue,
    open_queue,
)
from bench.procs import RawPeer, wait_receivers
from receiver.service import Receiver

#: Functions listed per thread.
TOP = 8


class ThreadProfiler:
    """A cProfile.Profile for every thread started between __enter__ and __exit__."""

    def __init__(self) -> None:
        self._profiles: list[tuple[str, cProfile.Profile]] = []
        self._lock = threading.Lock()

    def _hook(self, frame: FrameType, event: str, arg: object) -> None:
        # Runs once, as the new thread's first profile event; enable() replaces this hook.
        profile = cProfile.Profile()
        with self._lock:
            self._profiles.append((threading.current_thread().name, profile))
        profile.enable()

    def __enter__(self) -> ThreadProfiler:
        threading.setprofile(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        threading.setprofile(None)

    def stats(self, thread_prefix: str) -> pstats.Stats:
        """Merged statistics of the (finished) threads whose name starts with the prefix."""
        with self._lock:
            chosen = [p for name, p in self._profiles if name.startswith(thread_prefix)]
        if not chosen:
            raise BenchError(f"no profiled thread named {thread_prefix}*")
        stats = pstats.Stats(chosen[0])
        for profile in chosen[1:]:
            stats.add(profile)
        return stats


# --- summaries ------------------------------------------------------------------------------

#: (substring of "file:function" of a pstats key, category); the first match wins.
_CATEGORIES = [
    ("select.select", "idle: waiting in select()"),
    ("_thread.lock", "idle: waiting for work (locks, futures)"),
    ("posix.fsync", "fsync (receiver's files)"),
    ("sqlite3", "SQLite (statements, commits and their WAL fsyncs)"),
    ("cryptography", "crypto (cryptography/OpenSSL)"),
    ("_hashlib", "SHA-256 (hashlib)"),
    ("_socket", "socket send/recv"),
    ("posix.", "file system calls (open, rename, link, stat)"),
    ("_io.", "file writes"),
    ("/paho/", "paho-mqtt (Python code)"),
    (f"{REPO}/agent/", "agent (Python code)"),
    (f"{REPO}/drivers/", "agent (Python code)"),
]


def label(key: tuple[str, int, str]) -> str:
    """A readable name for a pstats key: builtins as Type.method, Python functions as file:function."""
    filename, line, name = key
    if filename == "~":
        if name.startswith("<method '") and "' of '" in name:
            method, owner = name[len("<method '"):].split("' of '", 1)
            return f"{owner.split(chr(39))[0].rsplit('.', 1)[-1]}.{method}"
        return name.removeprefix("<built-in method ").rstrip(">")
    path = Path(filename)
    # site-packages first: the venv may live inside the repository.
    for base in (*[p for p in path.parents if p.name == "site-packages"], REPO):
        if path.is_relative_to(base):
            return f"{path.relative_to(base)}:{name}"
    return f"{path.name}:{name}"


def category(key: tuple[str, int, str]) -> str:
    raw = f"{key[0]}:{key[2]}"
    for needle, title in _CATEGORIES:
        if needle in raw:
            return title
    return "other Python (stdlib: json, dataclasses, threading, ...)"


def summarize(stats: pstats.Stats) -> dict[str, Any]:
    """Own time (tottime) per category and the top functions, as shares of the thread's time."""
    total = sum(entry[2] for entry in stats.stats.values())  # type: ignore[attr-defined]
    by_category: dict[str, float] = {}
    functions = []
    for key, (_, calls, own, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        by_category[category(key)] = by_category.get(category(key), 0.0) + own
        functions.append((own, calls, label(key)))
    functions.sort(reverse=True)
    return {
        "seconds": round(total, 2),
        "agent_functions": _agent_functions(stats, total),
        "categories": {k: round(v / total, 3) for k, v in
                       sorted(by_category.items(), key=lambda kv: -kv[1]) if v / total >= 0.01},
        "top": [{"function": name, "calls": calls, "share": round(own / total, 3),
                 "us_per_call": round(own / calls * 1e6, 1)} for own, calls, name in functions[:TOP]],
    }


def _agent_functions(stats: pstats.Stats, total: float) -> list[dict[str, Any]]:
    """The agent's own functions by inclusive time (cumtime), leaving out the thread's outer
    loops (above 85 %): which step of the agent the builtins' time belongs to."""
    found = []
    for key, (_, calls, _, inclusive, _) in stats.stats.items():  # type: ignore[attr-defined]
        name = label(key)
        share = inclusive / total
        if name.startswith("agent/") and 0.02 <= share <= 0.85:
            found.append({"function": name.removeprefix("agent/"), "calls": calls, "share": round(share, 3)})
    return sorted(found, key=lambda f: -f["share"])[:TOP]


# --- the profiled runs ------------------------------------------------------------------------


def profile_commit(ws: Workspace, count: int, db_path: Path) -> dict[str, Any]:
    config = ws.agent_config(port=1883, queue_path=db_path)
    queue = open_queue(config)
    pool = ImagePool()
    try:
        with ThreadProfiler() as profiler, capture_service(config, queue, ws.sealer(), pool) as service:
            for i in range(count):
                service.capture("bench", position=1 + i % 10).result(timeout=60)
    finally:
        queue.close()
    return {"device thread (capture, record, seal, commit)": summarize(profiler.stats("device-bench"))}


def _drain_in_process(agent: Agent, count: int) -> float:
    started = time.monotonic()
    agent.start()
    assert agent.queue is not None
    deadline = started + 60 + count / 10
    while agent.queue.totals()[0]:
        if time.monotonic() > deadline:
            raise BenchError(f"profiled drain: {agent.queue.totals()[0]} captures left")
        time.sleep(0.02)
    return count / (time.monotonic() - started)


def profile_drain(ws: Workspace, port: int, backlog: Path, count: int, ack_mode: str) -> dict[str, Any]:
    work = ws.fresh_dir(f"profile-{ack_mode}")
    copy_queue(backlog, work / "queue.db")
    config = ws.agent_config(port=port, queue_path=work / "queue.db", ack_mode=ack_mode)
    with ThreadProfiler() as profiler:
        receiver = None
        if ack_mode == "receipt":
            receiver = Receiver(ws.receiver_config(port=port, output_dir=work / "received", name="rp"))
            receiver.start()
        agent = Agent(config)
        try:
            if receiver is not None:
                wait_receivers(ws, port, {"rp"})
            rate = _drain_in_process(agent, count)
        finally:
            agent.stop()
            if receiver is not None:
                receiver.stop()
    result = {"profiled_per_s": round(rate, 1),
              "agent MQTT thread": summarize(profiler.stats("mqtt-agent"))}
    if receiver is not None:
        result["receiver MQTT thread"] = summarize(profiler.stats("mqtt-receiver-rp"))
    shutil.rmtree(work)
    return result


def run(ws: Workspace, sizes: Sizes) -> dict[str, Any]:
    backlog = ws.fresh_dir("profile-backlog") / "queue.db"
    result: dict[str, Any] = {"count": sizes.profile, "commit": profile_commit(ws, sizes.profile, backlog)}
    with BenchBroker() as broker:
        # puback mode to a raw subscriber: the kiosk side's own costs, without a receiver.
        with RawPeer(ws, broker.port, f"$share/raw/{TOPIC_PREFIX}/+/captures", "profile-consumer") as peer:
            peer.start()
            peer.wait_ready()
            result["drain_puback"] = profile_drain(ws, broker.port, backlog, sizes.profile, "puback")
            peer.stop()
        result["drain_receipt"] = profile_drain(ws, broker.port, backlog, sizes.profile, "receipt")
    return {"profile": result}
