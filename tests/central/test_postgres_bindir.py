"""Which PostgreSQL server's programs the tests run themselves (initdb, pg_ctl: the
PostgreSQL restart scenario's private cluster) and scripts/start-postgres.sh makes its cluster
with: one script, scripts/postgres-bindir.sh, picks the newest installed server."""

from __future__ import annotations

from pathlib import Path

import pytest

from devtools import postgres


def installed(root: Path, versions: dict[str, list[str]]) -> None:
    for version, programs in versions.items():
        folder = root / version / "bin"
        folder.mkdir(parents=True)
        for program in programs:
            (folder / program).touch(mode=0o755)


def test_the_newest_server_with_initdb_is_picked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # 17 only as postgresql-client-17 makes it (psql, no server); 9.6 sorts after 15 as text.
    installed(tmp_path, {"9.6": ["initdb"], "15": ["initdb", "pg_ctl"], "16": ["initdb", "pg_ctl"],
                         "17": ["psql"]})
    monkeypatch.setenv("POSTGRES_LIB", str(tmp_path))
    assert postgres.server_bindir() == tmp_path / "16" / "bin"


def test_no_server_installed_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    installed(tmp_path, {"17": ["psql"]})
    monkeypatch.setenv("POSTGRES_LIB", str(tmp_path))
    with pytest.raises(postgres.PostgresUnavailable,
                       match=r"no PostgreSQL server is installed.*apt-get install postgresql"):
        postgres.server_bindir()


def test_start_postgres_makes_its_cluster_with_the_same_pick() -> None:
    script = Path(postgres.BINDIR_SCRIPT).with_name("start-postgres.sh").read_text()
    assert "postgres-bindir.sh" in script and "ls /usr/lib/postgresql" not in script
