"""The updater on a real release tree in a temporary root, driving real agent processes
through the systemctl stand-in: a good upgrade, refusals that change nothing, a release that
fails its health gate and is rolled back, pruning, and SIGKILL at every step."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from agent.transport.durable_queue import SCHEMA_VERSION
from agent.update.bundle import extract, load_release_keys, verify
from agent.update.layout import Tree
from agent.update.service import Service
from agent.update.updater import KILL_POINTS, Updater
from tests.agent.update.kiosks import Bundles, EventWatcher, Kiosk
from tests.support.soak import SOAK


def snapshot(root: Path) -> dict[str, str]:
    """The tree's links and files (not the venvs' contents), to prove a refusal wrote nothing."""
    seen = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if "venv" in rel.parts or rel.name == "lock":
            continue
        seen[str(rel)] = os.readlink(path) if path.is_symlink() else (
            path.read_bytes().hex()[:64] if path.is_file() else "dir")
    return seen


def tampered(bundle: Path, dest: Path) -> Path:
    """The same bundle, signature intact, with one byte of a wheel flipped."""
    with tarfile.open(bundle) as src, tarfile.open(dest, "w") as out:
        for info in src:
            data = src.extractfile(info).read()  # type: ignore[union-attr]
            if info.name.startswith("wheels/"):
                data = data[:100] + bytes([data[100] ^ 1]) + data[101:]
            out.addfile(info, __import__("io").BytesIO(data))
    return dest


def via_updater(kiosk: Kiosk, bundle: Path) -> subprocess.CompletedProcess[str]:
    """The agent's user hands the bundle over; the updater unit (started by its .path unit on
    a real kiosk, here by the test) applies it; the first command prints the updater's result."""
    asking = subprocess.Popen([sys.executable, "-m", "cli", "update", "apply", "--via-updater", str(bundle),
                               "--config", str(kiosk.config), "--root", str(kiosk.root)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=kiosk.env)
    pending = kiosk.config.parent / "updates" / "pending.json"
    deadline = time.monotonic() + 60
    while not pending.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    done = kiosk.update("apply", "--pending")
    out, err = asking.communicate(timeout=120)
    assert asking.returncode == done.returncode, (err, done.stderr)
    return subprocess.CompletedProcess(asking.args, asking.returncode, out, err)


def own_pip(kiosk: Kiosk, version: str) -> bool:
    """Whether the release's venv holds a pip of its own (not the system's)."""
    return any((kiosk.root / "releases" / version / "venv").glob("lib/python*/site-packages/pip"))


def test_a_release_gets_its_own_pip_where_the_system_has_none(bundles: Bundles, tmp_path: Path) -> None:
    """Without the system's site-packages (a full bundle, or a system without python3-pip) a new
    venv sees no pip: the updater bootstraps one (ensurepip), then installs the lock with it."""
    tree = Tree(tmp_path / "root")
    tree.prepare()
    updater = Updater(tree, tmp_path / "agent.toml", [], Service(), health_timeout_s=1,
                      max_bundle_bytes=10**9)
    verified = verify(bundles["v1"], load_release_keys([Path(f"{bundles.key}.pub")]), 10**9)
    staging = tmp_path / "staging"
    extract(verified, staging)
    updater._install("1.0.0", staging, system_dependencies=False)
    assert any((tree.release("1.0.0") / "venv").glob("lib/python*/site-packages/pip"))
    done = subprocess.run([str(tree.python("1.0.0")), "-c", "import agent; print(agent.__version__)"],
                          capture_output=True, text=True, cwd=tmp_path, check=True)
    assert done.stdout.strip() == "1.0.0"


def test_upgrade_refusals_rollback_and_pruning(kiosk: Kiosk, bundles: Bundles, tmp_path: Path) -> None:
    done = via_updater(kiosk, bundles["v1"])
    assert done.returncode == 0 and "1.0.0 installed and healthy" in done.stdout, done.stderr
    assert kiosk.unit_state()[0] == "active" and kiosk.running_version() == "1.0.0"
    assert not own_pip(kiosk, "1.0.0")  # the system's pip installed it, none bootstrapped
    done = kiosk.update("apply", str(bundles["v3"]))  # 1.3.0 upgrades 1.1.0 or newer only
    assert done.returncode == 1 and "upgrades from 1.1.0 or newer" in done.stderr, done.stderr

    done = kiosk.update("apply", str(bundles["v2"]))
    assert done.returncode == 0, done.stderr
    status = kiosk.status()
    assert (status["current"], status["previous"]) == ("1.1.0", "1.0.0")
    active, text = kiosk.unit_state()
    assert active == "active" and text.startswith("connected;") and "finger online" in text
    assert kiosk.running_version() == "1.1.0"
    assert os.readlink(kiosk.root / "current") == "releases/1.1.0"

    # Refused before anything is written: the tree is byte for byte what it was.
    before = snapshot(kiosk.root)
    history = len(status["history"])
    for bundle, why in ((bundles["stranger"], "not one of this kiosk's release keys"),
                        (tampered(bundles["v3"], tmp_path / "tampered.bundle"), "tampered"),
                        (bundles["v1"], "downgrades are refused")):
        done = kiosk.update("apply", str(bundle))
        assert done.returncode == 1 and why in done.stderr, done.stderr
        after = snapshot(kiosk.root)
        after.pop("update/state.json"), before.pop("update/state.json", None)  # the refusal is recorded
        assert after == before
    assert len(kiosk.status()["history"]) == history + 3
    refused = via_updater(kiosk, bundles["stranger"])
    assert refused.returncode == 1 and "release keys" in refused.stderr
    # The spool is the agent user's: a link planted there is not followed by the root updater.
    spool = kiosk.config.parent / "updates"
    (spool / "pending.bundle").symlink_to(bundles["v3"])
    (spool / "pending.json").write_text("{}")
    done = kiosk.update("apply", "--pending")
    assert done.returncode == 1 and "cannot be opened" in done.stderr
    assert not (spool / "pending.json").exists()  # refused requests do not restart the updater forever
    assert kiosk.running_version() == "1.1.0"

    # A release that installs and passes its config check but never becomes ready, handed over
    # as the agent (or its update.apply command) does: the operators get one event saying why.
    events = EventWatcher(kiosk)
    try:
        done = via_updater(kiosk, bundles["bad"])
        assert done.returncode == 1 and "health gate" in done.stderr and "rolled back to 1.1.0" in done.stderr

        def rolled_back(e: dict) -> bool:
            return e.get("event") == "update_result" and e.get("outcome") == "rolled_back"
        told = events.wait(rolled_back)
        assert told["version"] == "1.2.0" and "health gate" in told["reason"], told
        telemetry = events.wait(lambda e: (e.get("update") or {}).get("outcome") == "rolled_back",
                                "telemetry")
        assert telemetry["version"] == "1.1.0"
        time.sleep(1.5)  # three more telemetry turns: no second event
        assert sum(map(rolled_back, events.seen("events"))) == 1
    finally:
        events.close()
    status = kiosk.status()
    assert status["current"] == "1.1.0" and status["previous"] == "1.0.0"
    assert "1.2.0" in status["failed"] and "1.2.0" not in status["installed"]
    assert not (kiosk.root / "releases" / "1.2.0").exists()
    assert kiosk.unit_state()[0] == "active" and kiosk.running_version() == "1.1.0"
    done = kiosk.update("apply", str(bundles["bad"]))
    assert done.returncode == 1 and "not retried" in done.stderr

    # A queue migration the running release could not read back after a rollback.
    queue = kiosk.config.parent / "queue.db"
    queue_before = queue.read_bytes()
    done = kiosk.update("apply", str(bundles["schema"]))
    schemas = f"from schema {SCHEMA_VERSION} to {SCHEMA_VERSION + 1}"
    assert done.returncode == 1 and schemas in done.stderr, done.stderr
    assert kiosk.status()["current"] == "1.1.0" and not (kiosk.root / "releases" / "1.2.5").exists()
    assert queue.read_bytes() == queue_before

    # A third good release: only it and the one before it stay installed.
    done = kiosk.update("apply", str(bundles["v3"]))
    assert done.returncode == 0, done.stderr
    status = kiosk.status()
    assert (status["current"], status["previous"]) == ("1.3.0", "1.1.0")
    assert status["installed"] == ["1.1.0", "1.3.0"]
    text = kiosk.update("status").stdout
    assert "current 1.3.0, previous 1.1.0" in text and "failed 1.2.0" in text


#: Every step under KIOSK_AGENT_SOAK=1; by default one before the install, one after it, one
#: with the new agent running and judged, and one in the middle of a rollback (each costs an
#: install or two).
STEPS = KILL_POINTS if SOAK else ("installing", "checking", "gated",
                                                                      "rollback")


def test_power_cut_at_every_step_leaves_a_working_release(kiosk: Kiosk, bundles: Bundles) -> None:
    assert kiosk.update("apply", str(bundles["v1"])).returncode == 0
    for step in STEPS:
        bundle = bundles["bad"] if step == "rollback" else bundles["v2"]
        done = kiosk.update("apply", str(bundle), kill_at=step)
        assert done.returncode == -9, (step, done.stderr)
        # What the boot-time recovery unit does, then what the agent's unit runs.
        done = kiosk.update("recover", "--json")
        assert done.returncode == 0, (step, done.stderr)
        status = kiosk.status()
        assert status["in_progress"] is None, step
        expected = "1.1.0" if step == "commit" else "1.0.0"
        assert status["current"] == expected, (step, status)
        assert kiosk.running_version() == expected, step
        assert sorted(status["installed"]) == sorted({"1.0.0", expected}), (step, status)
        assert not (kiosk.root / "update" / "staging" / "1.1.0").exists(), step
        if step == "commit":  # back to 1.0.0 for the next step's test
            break
    assert kiosk.unit_state()[0] == "active"
