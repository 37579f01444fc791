"""The [console] config section: the operator console's listener, accounts and policy."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from agent.config_types import Section


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ConsoleTlsConfig(Section):
    #: PEM certificate chain and private key; required when the console listens beyond loopback.
    cert_file: Path | None = None
    key_file: Path | None = None


class ConsoleConfig(Section):
    """The operator console (docs/console.md)."""

    #: Off by default: a kiosk without a screen for officers opens no port.
    enabled: bool = False
    #: 127.0.0.1: the kiosk's own screen. Any other address (a supervisor's laptop on the
    #: office network) needs [console.tls]: passwords and session cookies must not cross a
    #: network in clear.
    host: str = "127.0.0.1"
    #: 0: any free port (tests); the port in use is logged.
    port: int = Field(8770, ge=0, le=65535)
    tls: ConsoleTlsConfig = Field(default_factory=ConsoleTlsConfig)
    #: Other names the console is reached by (its name on the office network, as in the
    #: certificate). Requests naming any other Host are refused: a name rebound to the kiosk
    #: by a web page (DNS rebinding) must not reach it.
    server_names: list[str] = []
    #: The accounts file (officers and supervisors; mode 0600). Default: console-users.json in
    #: the state folder (AgentConfig resolves it).
    users_file: Path | None = None
    #: Signed-in sessions end after this long without a page opened or a form sent (the
    #: dashboard's live figures do not count: an unattended screen signs itself out).
    idle_timeout_s: float = Field(900.0, ge=1, le=86400)
    #: Failed sign-ins in a row that lock an account, and for how long.
    max_failures: int = Field(5, ge=1, le=100)
    lockout_s: float = Field(300.0, ge=1, le=86400)
    #: The console's language until a user picks another: "en" English, "ur" Urdu.
    language: Literal["en", "ur"] = "en"
    #: "required": a completed registration is held on the kiosk, not sent, until a supervisor
    #: approves it on the console; one rejected is kept for the audit and never sent.
    approval: Literal["off", "required"] = "off"
    #: Blocking rules (agent/registration/gates.py): new registrations are refused while this
    #: many (or more) await approval (0: no limit) ...
    max_awaiting_approval: int = Field(20, ge=0)
    #: ... while something has waited this many days for the central side (0: no limit) ...
    max_days_unreached: float = Field(7.0, ge=0)
    #: ... and while the state folder's disk has less than this free (0: no limit).
    min_free_disk_mb: int = Field(500, ge=0)
    #: What one registration takes on disk (sealed captures and manifest), to say how many
    #: more the free disk holds.
    registration_size_mb: float = Field(2.5, gt=0)

    @model_validator(mode="after")
    def _approval_needs_the_console(self) -> ConsoleConfig:
        # Only the console approves: held registrations would wait for ever, and the approvals
        # rule would soon stop the kiosk.
        if self.approval == "required" and not self.enabled:
            raise ValueError(
                'approval = "required" needs enabled = true: registrations would be held on the '
                "kiosk with no console to approve them. Set console.enabled = true (and add a "
                "supervisor with `kiosk-agent users add NAME --role supervisor`), or set "
                'console.approval = "off"')
        return self

    @model_validator(mode="after")
    def _tls_beyond_loopback(self) -> ConsoleConfig:
        tls = self.tls
        if (tls.cert_file is None) != (tls.key_file is None):
            raise ValueError("set both tls.cert_file and tls.key_file, or neither")
        if self.enabled and not is_loopback(self.host) and tls.cert_file is None:
            raise ValueError(
                f"host {self.host} is not loopback: set [console.tls] cert_file and key_file, "
                "or passwords and session cookies cross the network in clear")
        return self
