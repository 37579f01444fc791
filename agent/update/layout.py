"""The release tree under /opt/kiosk-agent, and the durable writes that keep it consistent.

    releases/<version>/venv        a virtual environment built in place (venvs cannot move)
    releases/<version>/manifest.json   written last: a release without it is incomplete
    current -> releases/<version>  what the unit runs; switched by renaming a new symlink over it
    previous -> releases/<version> what a rollback returns to
    update/journal.json            the step in progress, written durably before each step
    update/state.json              failed versions and the history, for `update status`
    update/staging/<version>/      the verified bundle's files while they are installed
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.update.bundle import VERSION, version_key

KEEP = 2  # the current release and the one before it
HISTORY = 50


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, data: bytes) -> None:
    """Replace ``path`` so that after a power cut it holds either the old or the new bytes."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


@dataclass(frozen=True)
class Tree:
    root: Path

    @property
    def releases(self) -> Path:
        return self.root / "releases"

    @property
    def work(self) -> Path:
        return self.root / "update"

    @property
    def journal(self) -> Path:
        return self.work / "journal.json"

    @property
    def state_file(self) -> Path:
        return self.work / "state.json"

    def release(self, version: str) -> Path:
        if VERSION.fullmatch(version) is None:  # it becomes a path: never anything else
            raise ValueError(f"not a release version: {version[:40]!r}")
        return self.releases / version

    def staging(self, version: str) -> Path:
        return self.work / "staging" / self.release(version).name

    def python(self, version: str) -> Path:
        return self.release(version) / "venv" / "bin" / "python"

    def complete(self, version: str) -> bool:
        return (self.release(version) / "manifest.json").is_file()

    def prepare(self) -> None:
        for folder in (self.root, self.releases, self.work):
            folder.mkdir(mode=0o755, parents=True, exist_ok=True)

    # --- links --------------------------------------------------------------------------

    def link(self, name: str) -> str | None:
        """The version ``current`` or ``previous`` points at, if it is a complete release."""
        try:
            target = os.readlink(self.root / name)
        except OSError:
            return None
        version = Path(target).name
        if VERSION.fullmatch(version) is None or not self.complete(version):
            return None
        return version

    def set_link(self, name: str, version: str | None) -> None:
        """Point ``name`` at a release atomically: a new symlink renamed over the old one
        (``ln -sfn`` unlinks first, leaving a moment with no link at all)."""
        link = self.root / name
        if version is None:
            link.unlink(missing_ok=True)
        else:
            tmp = self.root / f".{name}.tmp"
            tmp.unlink(missing_ok=True)
            os.symlink(f"releases/{self.release(version).name}", tmp)
            os.replace(tmp, link)
        fsync_dir(self.root)

    # --- journal and state --------------------------------------------------------------

    def read_journal(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.journal.read_bytes())
        except FileNotFoundError:
            return None
        except ValueError:  # torn by a crash mid-write is impossible (rename), but be safe
            return {"step": "staging"}

    def write_journal(self, **entry: Any) -> None:
        write_durably(self.journal, json.dumps(entry).encode())

    def clear_journal(self) -> None:
        self.journal.unlink(missing_ok=True)
        fsync_dir(self.work)

    def state(self) -> dict[str, Any]:
        try:
            raw = json.loads(self.state_file.read_bytes())
        except (FileNotFoundError, ValueError):
            raw = {}
        return {"failed": dict(raw.get("failed", {})), "history": list(raw.get("history", []))}

    def record(self, event: dict[str, Any], failed: tuple[str, str] | None = None) -> None:
        state = self.state()
        if failed is not None:
            state["failed"][failed[0]] = failed[1]
        state["history"] = (state["history"] + [event])[-HISTORY:]
        write_durably(self.state_file, json.dumps(state, indent=1).encode())

    # --- releases -----------------------------------------------------------------------

    def installed(self) -> list[str]:
        if not self.releases.is_dir():
            return []
        found = [p.name for p in self.releases.iterdir() if VERSION.fullmatch(p.name)]
        return sorted(found, key=version_key)

    def remove_release(self, version: str) -> None:
        path = self.release(version)
        if path.exists():
            # Drop the completion mark first: a crash halfway through leaves an incomplete
            # release, which the next run removes, never a broken "complete" one.
            (path / "manifest.json").unlink(missing_ok=True)
            fsync_dir(path)
            shutil.rmtree(path)

    def prune(self) -> list[str]:
        """Remove everything but current and previous (and incomplete leftovers)."""
        keep = {self.link("current"), self.link("previous")} - {None}
        removed = []
        for version in self.installed():
            if version not in keep:
                self.remove_release(version)
                removed.append(version)
        shutil.rmtree(self.work / "staging", ignore_errors=True)
        return removed

    def status(self) -> dict[str, Any]:
        state = self.state()
        return {"root": str(self.root), "current": self.link("current"), "previous": self.link("previous"),
                "installed": [v for v in self.installed() if self.complete(v)],
                "failed": state["failed"], "in_progress": self.read_journal(),
                "history": state["history"][-10:]}
