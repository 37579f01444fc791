"""Who besides root could read a private key file: judged from its owner and mode.

An operator's private key signs commands for every kiosk that lists the operator; a kiosk
whose service user can read one hands the whole fleet to whoever takes over the agent
process. What counts is what the service user could do, not what this process (often
root, when checking a config) can open, so the answer comes from the file's owner, group
and mode bits and from the service user's uid and groups, never from trying to open it.
(POSIX ACLs are not looked at; the installer does not use them.)
"""

from __future__ import annotations

import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Account:
    """A user the key must stay hidden from: its uid and every group it is in."""

    name: str
    uid: int
    gids: frozenset[int]


def service_accounts(service_user: str) -> list[Account]:
    """The configured service user (when this machine has it) and, when not root, this
    process's own user: the one that would hold the key if the agent were taken over."""
    accounts = []
    try:
        entry = pwd.getpwnam(service_user)
    except KeyError:
        pass  # no such user here (a development machine): judged by mode and this process
    else:
        accounts.append(Account(service_user, entry.pw_uid,
                                frozenset(os.getgrouplist(service_user, entry.pw_gid))))
    uid = os.geteuid()
    if uid != 0 and all(a.uid != uid for a in accounts):
        accounts.append(Account(f"uid {uid} (this process)", uid,
                                frozenset(os.getgroups()) | {os.getegid()}))
    return accounts


def exposure(path: Path, accounts: list[Account]) -> str | None:
    """Why ``path`` is readable by one of ``accounts`` or by everyone; None when it is not
    (or does not exist)."""
    try:
        st = os.stat(path)
    except OSError:
        return None  # no such file, or hidden even from this process behind its folder
    mode = stat.S_IMODE(st.st_mode)
    if mode & stat.S_IROTH:
        return f"readable by every user (mode {mode:04o})"
    for account in accounts:
        # The owner can always chmod the file back to readable, whatever its mode says now.
        if st.st_uid == account.uid:
            return f"owned by {account.name}"
        if mode & stat.S_IRGRP and st.st_gid in account.gids:
            return f"readable by group {st.st_gid}, which {account.name} is in (mode {mode:04o})"
    return None


def private_key_of(public_key: Path) -> Path | None:
    """The private key beside a public one, by the name `kiosk-agent keys init` gives it."""
    return public_key.with_name(public_key.name.removesuffix(".pub")) if public_key.name.endswith(".pub") \
        else None
