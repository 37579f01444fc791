"""A rollback across the queue's schema change (1 -> 2): the new release takes the queue back
to schema 1 before the old one starts, and the guard lets such a release in.

Small releases, not bundles: each is a copy of ``agent`` (the old one with the schema-1 queue
of tests/agent/transport/data/durable_queue_v1.py and no queue_migrate) and a ``python`` that
runs this venv's. The full updater with real bundles is in test_updater.py.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

from agent.lock import StateLock
from agent.transport.durable_queue import DurableQueue
from agent.update.layout import Tree
from agent.update.service import Health
from agent.update.updater import UpdateFailed, Updater
from tests.support.processes import write_config

ROOT = Path(__file__).resolve().parents[3]
V1 = ROOT / "tests" / "agent" / "transport" / "data" / "durable_queue_v1.py"
V1_FIXTURE = V1.with_name("queue-v1.db")


class StandInService:
    def __init__(self) -> None:
        self.active, self.calls = "active", []  # type: ignore[var-annotated]

    def health(self) -> Health:
        return Health(self.active, "")

    def _run(self, *args: str, timeout: float = 60.0) -> None:
        self.calls.append(args[0])
        if args[0] == "stop":
            self.active = "inactive"

    def restart(self, timeout: float) -> None:
        self.calls.append("restart")
        self.active = "active"


def release(tree: Tree, version: str, *, schema_1: bool) -> None:
    folder = tree.release(version)
    shutil.copytree(ROOT / "agent", folder / "agent", ignore=shutil.ignore_patterns("__pycache__"))
    if schema_1:
        shutil.copyfile(V1, folder / "agent" / "transport" / "durable_queue.py")
        (folder / "agent" / "transport" / "queue_migrate.py").unlink()
    python = tree.python(version)
    python.parent.mkdir(parents=True)
    python.write_text(f"#!/bin/sh\nexec {sys.executable} \"$@\"\n")
    python.chmod(0o755)
    (folder / "manifest.json").write_text("{}")  # complete


def v1_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("durable_queue_v1_upd", V1)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def setup(tmp_path: Path):  # type: ignore[no-untyped-def]
    tree = Tree(tmp_path / "opt")
    tree.prepare()
    release(tree, "1.0.0", schema_1=True)
    release(tree, "2.0.0", schema_1=False)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    config = write_config(state, 1883)
    queue = state / "queue.db"
    shutil.copyfile(V1_FIXTURE, queue)
    q = DurableQueue(queue, max_bytes=1 << 30, min_free_bytes=0)  # the new release ran: schema 2
    try:
        q.put("after-update", "capture", lambda seq: b"SEALED-after-%d" % seq)
    finally:
        q.close()
    tree.set_link("previous", "1.0.0")
    tree.set_link("current", "2.0.0")
    service = StandInService()
    return tree, Updater(tree, config, [], service, 5, 1 << 20), service, queue  # type: ignore[arg-type]


def test_a_rollback_leaves_a_queue_the_old_release_opens(setup) -> None:  # type: ignore[no-untyped-def]
    tree, updater, service, queue = setup
    updater._check_queue_schema("1.0.0", "2.0.0", declared=False)  # it can go back: let in
    updater._rollback("2.0.0", "1.0.0", None, "health gate failed", mark_failed=True)
    assert tree.link("current") == "1.0.0" and tree.read_journal() is None
    assert service.calls == ["stop", "restart"], "stopped for the rewrite, started on 1.0.0"
    assert tree.state()["history"][-1]["detail"] == "health gate failed"
    q = v1_module().DurableQueue(queue, max_bytes=1 << 30, min_free_bytes=0)
    try:
        assert q.get("after-update").payload == b"SEALED-after-13"
        assert q.get("v1-05").kind == "registration"
        assert q.put("back-on-1", "capture", lambda seq: b"x") == 14
    finally:
        q.close()


def test_a_failed_rewrite_is_recorded_and_the_queue_left_as_it_was(setup) -> None:  # type: ignore[no-untyped-def]
    tree, updater, service, queue = setup
    image = queue.read_bytes()
    with StateLock(queue.parent):  # an agent the stop did not stop
        updater._rollback("2.0.0", "1.0.0", None, "health gate failed", mark_failed=True)
    assert queue.read_bytes() == image
    detail = tree.state()["history"][-1]["detail"]
    assert "the queue stays in schema 2" in detail and "is using" in detail and "health gate failed" in detail
    assert tree.link("current") == "1.0.0"


def test_the_guard_refuses_a_release_that_cannot_go_back(setup) -> None:  # type: ignore[no-untyped-def]
    tree, updater, _, _ = setup
    (tree.release("2.0.0") / "agent" / "transport" / "queue_migrate.py").unlink()
    with pytest.raises(UpdateFailed, match="cannot take the queue back to schema 1"):
        updater._check_queue_schema("1.0.0", "2.0.0", declared=False)
    updater._check_queue_schema("1.0.0", "2.0.0", declared=True)  # the manifest's word still counts


def test_recovery_after_a_crash_just_after_the_rewrite(setup) -> None:  # type: ignore[no-untyped-def]
    """Power cut once the queue was rewritten but before the journal said so: the boot's
    recovery finds the queue at schema 1 already and rolls back without a complaint."""
    tree, updater, service, queue = setup
    from agent.transport.queue_migrate import downgrade

    downgrade(queue, 1)
    tree.write_journal(step="rollback", version="2.0.0", came_from="1.0.0", previous=None,
                       reason="health gate failed", mark_failed=True, queue_done=False)
    service.active = "inactive"  # at boot, before the agent's unit
    assert updater.recover() == "rolled back from 2.0.0 to 1.0.0"
    assert tree.state()["history"][-1]["detail"] == "health gate failed"
    assert service.calls == ["stop"], "not started by the recovery: its unit comes after"
    q = v1_module().DurableQueue(queue, max_bytes=1 << 30, min_free_bytes=0)
    q.close()
