"""The privileged updater: install a verified bundle beside the running release, switch to it,
keep it only if it passes the health gate, and roll back otherwise.

Each step is written to the journal durably before it starts, so that after a power cut or a
SIGKILL ``recover()`` knows what was half done: before the switch it throws the new release
away; after it, unless the commit was reached, it switches back to the release that was
running. Either way the kiosk comes back on a release that worked. The queue and the config
live outside the tree (/var/lib, /etc) and are never touched here, but for one thing: a
rollback across a queue schema change has the new release take the queue back first.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.errors import PermanentError
from agent.update.bundle import LOCK, BundleError, Verified, check_upgrade, extract, verify
from agent.update.layout import Tree, write_durably
from agent.update.service import Service

log = logging.getLogger("kiosk-agent.update")

#: Fault injection for the power-cut tests: the updater SIGKILLs itself at this step.
KILL_ENV = "KIOSK_AGENT_UPDATE_KILL_AT"
KILL_POINTS = ("staging", "installing", "checking", "switching", "switched", "health", "gated", "rollback",
               "commit")
PRE_SWITCH = ("staging", "installing", "checking")


class UpdateFailed(PermanentError):
    """The update did not happen (or was rolled back); the kiosk runs what it ran before."""

    def __init__(self, message: str, version: str | None = None, rolled_back: bool = False) -> None:
        super().__init__(message)
        #: For the outcome the agent announces (agent/update/outcome.py).
        self.version = version
        self.rolled_back = rolled_back


def _kill_point(step: str) -> None:
    if os.environ.get(KILL_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)


def _tail(done: subprocess.CompletedProcess[str]) -> str:
    return " ".join((done.stderr or done.stdout or "").strip().splitlines()[-3:])[:400]


class Updater:
    def __init__(self, tree: Tree, config_path: Path, trusted: list[Ed25519PublicKey], service: Service,
                 health_timeout_s: float, max_bundle_bytes: int, python: str = sys.executable) -> None:
        self.tree, self.config_path, self.trusted = tree, config_path, trusted
        self.service, self.health_timeout_s = service, health_timeout_s
        self.max_bundle_bytes, self.python = max_bundle_bytes, python
        self._lock_fd: int | None = None

    # --- locking: one updater at a time ---------------------------------------------------

    def __enter__(self) -> Updater:
        self.tree.prepare()
        fd = os.open(self.tree.work / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UpdateFailed("another update is in progress") from None
        self._lock_fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # --- apply ----------------------------------------------------------------------------

    def check(self, bundle: Path) -> Verified:
        """Everything that can refuse the bundle, before anything is written."""
        verified = verify(bundle, self.trusted, self.max_bundle_bytes)
        check_upgrade(verified.manifest, self.tree.link("current"), self.tree.state()["failed"])
        return verified

    def apply(self, bundle: Path) -> str:
        """Install, switch and health-check; returns the version now running."""
        self.recover()
        try:
            verified = self.check(bundle)
        except BundleError as exc:
            self.tree.record(self._event("refused", None, str(exc)))
            raise
        manifest = verified.manifest
        version, current = manifest.version, self.tree.link("current")
        previous = self.tree.link("previous")
        self._step("staging", version, current, previous)
        staging = self.tree.staging(version)
        shutil.rmtree(staging, ignore_errors=True)
        staging.parent.mkdir(exist_ok=True)
        if version == previous:  # reinstalling the release before: it is built afresh
            self.tree.set_link("previous", None)
        self.tree.remove_release(version)
        try:
            extract(verified, staging)
            self._step("installing", version, current, previous)
            self._install(version, staging, manifest.system_dependencies)
            self._step("checking", version, current, previous)
            self._check_config(version)
            if current is not None:
                self._check_queue_schema(current, version, manifest.reversible_migration)
        except (BundleError, UpdateFailed) as exc:
            self._discard(version)
            self.tree.record(self._event("failed", version, str(exc)))
            self.tree.clear_journal()
            raise UpdateFailed(f"{version} not installed: {exc}", version) from None
        write_durably(self.tree.release(version) / "manifest.json", manifest.to_bytes())
        needed = self._healthy_devices()
        self._step("switching", version, current, previous)
        if current is not None:
            self.tree.set_link("previous", current)
        self.tree.set_link("current", version)
        _kill_point("switched")
        self._step("health", version, current, previous)
        reason = self.service.restart(self.health_timeout_s) or \
            self.service.wait_healthy(needed, self.health_timeout_s)
        _kill_point("gated")  # the new agent is running, the gate judged, nothing recorded yet
        if reason is not None and current is not None:
            self._rollback(version, current, previous, reason, mark_failed=True)
            raise UpdateFailed(f"{version} failed its health gate and was rolled back to {current}: {reason}",
                               version, rolled_back=True)
        self._commit(version, current, reason)
        return version

    def _step(self, step: str, version: str, came_from: str | None, previous: str | None,
              **more: Any) -> None:
        self.tree.write_journal(step=step, version=version, came_from=came_from, previous=previous, **more)
        log.info("update to %s: %s", version, step)
        _kill_point(step)

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop(KILL_ENV, None)  # the injected crash is the updater's, not pip's or the agent's
        return env

    def _install(self, version: str, staging: Path, system_dependencies: bool) -> None:
        venv = self.tree.release(version) / "venv"
        venv.parent.mkdir(mode=0o755)
        # Built in place: a virtual environment's paths are absolute, it cannot be moved.
        # Without pip first: a release whose dependencies come from the system also takes pip
        # from there when the system has it (Debian's python3-pip). Bootstrapping a private
        # copy (ensurepip) byte-compiles a thousand files: 7 s on the development machine,
        # far more on an SD card, for every update. Otherwise ensurepip, as venv would.
        create = [self.python, "-m", "venv", "--without-pip",
                  *(["--system-site-packages"] if system_dependencies else []), str(venv)]
        done = subprocess.run(create, capture_output=True, text=True, env=self._env())
        if done.returncode != 0:
            raise UpdateFailed(f"cannot create the virtual environment: {_tail(done)}")
        python = str(venv / "bin" / "python")
        has_pip = system_dependencies and subprocess.run(
            [python, "-m", "pip", "--version"], capture_output=True, env=self._env()).returncode == 0
        if not has_pip:
            done = subprocess.run([python, "-m", "ensurepip", "--default-pip"], capture_output=True,
                                  text=True, env=self._env())
            if done.returncode != 0:
                raise UpdateFailed(f"cannot install pip in the virtual environment: {_tail(done)}")
        # --no-deps: the lock is the complete set the builder resolved (agent/update/build.py),
        # every wheel in the bundle and nothing else, including mediapipe, which is bundled
        # without its declared dependencies (requirements-nodeps.txt) that pip would otherwise
        # look for. A set that does not work is still caught: by the new release's own
        # check-config (the next step) and the health gate after the switch.
        pip = [python, "-m", "pip", "install", "--quiet", "--no-index",
               "--disable-pip-version-check", "--no-cache-dir", "--find-links", str(staging / "wheels"),
               "--require-hashes", "--no-deps", "-r", str(staging / LOCK)]
        done = subprocess.run(pip, capture_output=True, text=True, env=self._env())
        if done.returncode != 0:
            raise UpdateFailed(f"pip install failed: {_tail(done)}")

    def _check_config(self, version: str) -> None:
        """The new release's own config check, against this kiosk's config and files."""
        check = [str(self.tree.python(version)), "-m", "cli", "check-config", str(self.config_path)]
        done = subprocess.run(check, capture_output=True, text=True, env=self._env(),
                              cwd=self.tree.release(version))  # not a folder with its own cli/
        if done.returncode != 0:
            raise UpdateFailed(f"its config check refuses this kiosk's config: {_tail(done)}")

    def _ask(self, version: str, code: str, what: str) -> str:
        """Asked of the release itself (the queue is never opened here: the agent holds it)."""
        done = subprocess.run([str(self.tree.python(version)), "-c", code], capture_output=True, text=True,
                              env=self._env(), cwd=self.tree.release(version))
        if done.returncode != 0:
            raise UpdateFailed(f"cannot read {what} of {version}: {_tail(done)}")
        return done.stdout.strip()

    def _queue_schema(self, version: str) -> str:
        return self._ask(version, "from agent.transport.durable_queue import SCHEMA_VERSION; "
                         "print(SCHEMA_VERSION)", "the queue schema")

    def _check_queue_schema(self, current: str, version: str, declared: bool) -> None:
        # The running release refuses a queue in another schema: after a rollback it can take
        # over only once the new release has rewritten the queue in its schema (_downgrade_queue).
        old, new = self._queue_schema(current), self._queue_schema(version)
        if old == new or declared:
            return
        can = self._ask(version, "try:\n from agent.transport.queue_migrate import DOWNGRADES_TO\n"
                        "except ImportError:\n DOWNGRADES_TO = ()\nprint(*DOWNGRADES_TO)",
                        "the queue downgrades")
        if old not in can.split():
            raise UpdateFailed(f"it moves the queue from schema {old} to {new}, which {current} cannot read "
                               f"back after a rollback, and it cannot take the queue back to schema {old}")

    def _downgrade_queue(self, version: str, came_from: str) -> str | None:
        """Before a rollback: the new release rewrites the queue in the old one's schema, the
        agent stopped (it holds the queue). Why not, if it could not; the queue is then as it was."""
        try:
            old, new = self._queue_schema(came_from), self._queue_schema(version)
            if old == new:
                return None
            self.service._run("stop", timeout=self.health_timeout_s)
            migrate = [str(self.tree.python(version)), "-m", "agent.transport.queue_migrate", "--to", old,
                       "--config", str(self.config_path)]
            done = subprocess.run(migrate, capture_output=True, text=True, env=self._env(),
                                  cwd=self.tree.release(version))
        except (UpdateFailed, OSError, subprocess.TimeoutExpired) as exc:
            return f"the queue was not taken back to the schema of {came_from}: {exc}"
        if done.returncode != 0 and f"already at queue schema {old}" not in done.stderr:  # crashed after
            return f"the queue stays in schema {new}, which {came_from} cannot read: {_tail(done)}"
        log.warning("queue taken back from schema %s to %s for %s: %s", new, old, came_from,
                    (done.stdout or done.stderr).strip())
        return None

    def _healthy_devices(self) -> set[str]:
        health = self.service.health()
        return health.healthy_devices() if health.active == "active" else set()

    def _discard(self, version: str) -> None:
        if version not in (self.tree.link("current"), self.tree.link("previous")):
            self.tree.remove_release(version)
        shutil.rmtree(self.tree.staging(version), ignore_errors=True)

    def _rollback(self, version: str, came_from: str, previous: str | None, reason: str,
                  mark_failed: bool, queue_done: bool = False) -> None:
        self._step("rollback", version, came_from, previous, reason=reason, mark_failed=mark_failed,
                   queue_done=queue_done)
        running = self._running()
        if not queue_done:  # tried once: after a crash here the journal says so
            problem = self._downgrade_queue(version, came_from)
            reason = f"{problem}; {reason}" if problem else reason
            self.tree.write_journal(step="rollback", version=version, came_from=came_from, previous=previous,
                                    reason=reason, mark_failed=mark_failed, queue_done=True)
        self.tree.set_link("current", came_from)
        self.tree.set_link("previous", previous if previous != version else None)
        log.error("update to %s rolled back to %s: %s", version, came_from, reason)
        self._restart_if_running(running)
        self.tree.record(self._event("rolled back", version, reason, came_from),
                         (version, reason) if mark_failed else None)
        self._discard(version)
        self.tree.clear_journal()

    def _commit(self, version: str, came_from: str | None, warning: str | None) -> None:
        self._step("commit", version, came_from, None)
        self.tree.record(self._event("installed", version, warning or "healthy", came_from))
        removed = self.tree.prune()
        if removed:
            log.info("pruned releases %s", ", ".join(removed))
        self.tree.clear_journal()

    def _running(self) -> bool:
        return self.service.health().active in ("active", "activating", "failed", "reloading")

    def _restart_if_running(self, running: bool) -> None:
        # At boot the recovery runs before the agent's unit starts: nothing to restart then,
        # and waiting on a unit ordered after us would deadlock. (Asked before the queue's
        # downgrade, which stops the agent.)
        if running:
            reason = self.service.restart(self.health_timeout_s)
            if reason:
                log.error("restarting the agent after the rollback: %s", reason)

    @staticmethod
    def _event(what: str, version: str | None, detail: str, came_from: str | None = None) -> dict[str, Any]:
        return {"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "event": what, "version": version,
                "from": came_from, "detail": detail[:500]}

    # --- recovery -------------------------------------------------------------------------

    def recover(self) -> str | None:
        """Finish or undo what a crash interrupted; returns what was done, if anything."""
        journal = self.tree.read_journal()
        done = None
        if journal is not None:
            step, version = journal.get("step"), str(journal.get("version", ""))
            came_from, previous = journal.get("came_from"), journal.get("previous")
            if step in PRE_SWITCH or came_from is None:
                if step not in PRE_SWITCH and came_from is None:
                    self.tree.clear_journal()  # a first install: nothing to go back to
                    return f"kept {version}: interrupted while installing with no release before it"
                self._discard(version)
                self.tree.record(self._event("interrupted", version, f"interrupted while {step}; discarded"))
                self.tree.clear_journal()
                done = f"discarded the half-installed {version}"
            elif step == "commit":
                self._commit(version, came_from, None)
                done = f"committed {version}"
            else:
                reason = journal.get("reason") or f"interrupted during the {step} step (power cut or crash)"
                self._rollback(version, came_from, previous, reason, bool(journal.get("mark_failed")),
                               bool(journal.get("queue_done")))
                done = f"rolled back from {version} to {came_from}"
        if self.tree.link("current") is None and self.tree.link("previous") is not None:
            self.tree.set_link("current", self.tree.link("previous"))
            done = "current was broken; switched to the previous release"
        for version in self.tree.installed():
            if not self.tree.complete(version) and version not in (self.tree.link("current"),):
                self.tree.remove_release(version)
        if done:
            log.warning("update recovery: %s", done)
        return done


def status_json(tree: Tree) -> str:
    return json.dumps(tree.status(), indent=1)
