"""Where the console's audit rows go, and the rows `kiosk-agent users` adds to them.

The console writes to the agent's audit log (agent/remote/audit.py): ``remote.db`` when
remote management is on (the same file its commands are audited in), else
``console-audit.db`` in the state folder. Account changes made at the command line go to the
same file, so one log says who added, re-passworded or removed an officer, and who signed in.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

from agent.config import AgentConfig
from agent.remote.audit import RemoteStore
from agent.security.private_files import SQLITE_SIDE_FILES


def audit_file(config: AgentConfig) -> Path:
    if config.remote.enabled:
        return config.remote.state_dir / "remote.db"
    return config.state_dir / "console-audit.db"


def cli_operator() -> str:
    """``cli:<login>``: who runs the command. Under sudo, who ran sudo (only root's word is
    taken for it: anyone else could set SUDO_USER to name another person)."""
    import pwd

    sudo_user = os.environ.get("SUDO_USER")
    if os.geteuid() == 0 and sudo_user:
        return f"cli:{sudo_user}"
    try:
        return f"cli:{pwd.getpwuid(os.getuid()).pw_name}"
    except KeyError:  # a uid with no passwd entry (a container)
        return f"cli:uid-{os.getuid()}"


class CliAudit:
    """The audit log opened before an account change (a log that cannot be written refuses the
    change: nothing is done unaudited), written after it, with its outcome."""

    def __init__(self, config: AgentConfig) -> None:
        self.path = audit_file(config)
        self.service_user = config.security.service_user
        try:
            self.store = RemoteStore(self.path)
        except (OSError, sqlite3.Error) as exc:
            raise OSError(f"cannot open the audit log {self.path}: {exc}; nothing was changed "
                          "(run as the agent's user or with sudo)") from None
        self.operator = cli_operator()

    def record(self, action: str, result: str = "ok", message: str | None = None, **args: Any) -> None:
        self.store.audit(request_id=None, operator=self.operator, command=f"users.{action}", args=args,
                         result=result, code=None if result == "ok" else "refused", message=message)

    def close(self) -> None:
        self.store.close()
        if os.geteuid() != 0 or self.service_user is None:
            return
        # Created by root (sudo): the agent, running as its own user, must still open it.
        import pwd

        try:
            entry = pwd.getpwnam(self.service_user)
        except KeyError:
            return  # no service user on this machine (development)
        for path in (self.path, *(Path(f"{self.path}{s}") for s in SQLITE_SIDE_FILES)):
            if path.exists():
                os.chown(path, entry.pw_uid, entry.pw_gid)
