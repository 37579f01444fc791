"""The state folder's lock file as someone else may have left it: a symlink, a FIFO.

Taking the lock truncates the file and writes the pid in it: through a symlink planted as
``.lock`` that truncated whatever it pointed at (the queue, the session store). Reading the
holder opened a FIFO planted there for reading and waited for a writer forever
(``check-config``, ``queue stats``). Both are refused now, the target untouched.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.lock import StateLock, holder


class Hung(Exception):  # not an OSError (TimeoutError is one), so it cannot pass as a refusal
    pass


@pytest.fixture
def alarm() -> Iterator[None]:
    """A hang fails the test instead of hanging the run."""

    def expired(*_: object) -> None:
        raise Hung("hung on the lock file")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(5)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def test_a_symlinked_lock_file_is_refused_and_its_target_kept(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    victim = tmp_path / "registrations.db"
    victim.write_bytes(b"data" * 1000)
    (state / ".lock").symlink_to(victim)
    with pytest.raises(OSError):
        StateLock(state).acquire()
    assert victim.read_bytes() == b"data" * 1000
    with pytest.raises(OSError):
        holder(state)


def test_a_fifo_as_lock_file_neither_hangs_nor_locks(tmp_path: Path, alarm: None) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.mkfifo(state / ".lock")
    with pytest.raises(OSError):
        holder(state)
    with pytest.raises(OSError):
        StateLock(state).acquire()


def test_a_regular_lock_file_still_works(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with StateLock(state):
        assert holder(state) == os.getpid()
    assert holder(state) is None
