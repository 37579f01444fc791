"""``kiosk-agent check-config --receiver`` on a PostgreSQL store: the server reachable, the
database there, the schema this receiver's version (or one it migrates); each failure exits 2
naming receiver.store and what to do, and never prints the password."""

from __future__ import annotations

import secrets
from pathlib import Path

import psycopg
import pytest

from cli.main import main
from devtools.broker import free_port
from receiver.storage.migrate import migrations
from receiver.storage.postgres import PostgresStore
from tests.central.configs import config_file

PASSWORD = "hunter2-" + secrets.token_hex(4)


def with_password(dsn: str) -> str:
    """The DSN with a password in it (the test server trusts loopback, so it is not checked)."""
    return dsn.replace("postgresql://postgres@", f"postgresql://postgres:{PASSWORD}@", 1)


def check(tmp_path: Path, store: str, capsys: pytest.CaptureFixture[str], *flags: str) -> tuple[int, str]:
    status = main(["check-config", "--receiver", *flags, str(config_file(tmp_path, store))])
    out = capsys.readouterr()
    return status, out.out + out.err


def test_a_current_schema_passes_and_an_empty_database_is_migratable(
        tmp_path: Path, pg_dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, text = check(tmp_path, with_password(pg_dsn), capsys)
    assert status == 0, text
    assert f"migrates it to {len(migrations())}" in text and "receiver.store" in text
    PostgresStore(pg_dsn, tmp_path / "migrated", "r1").close()
    status, text = check(tmp_path, with_password(pg_dsn), capsys)
    assert status == 0 and "migrates" not in text, text
    assert PASSWORD not in text


def test_a_wrong_port_exits_2_naming_the_setting_without_the_password(
        tmp_path: Path, pg_dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    dsn = with_password(pg_dsn).replace(":5432/", f":{port}/").replace(":54329/", f":{port}/")
    status, text = check(tmp_path, dsn, capsys)
    assert status == 2, text
    assert "receiver.store: cannot connect to PostgreSQL at 127.0.0.1 port " + str(port) in text
    assert "~/.pgpass" in text and PASSWORD not in text


def test_a_database_that_does_not_exist_exits_2(tmp_path: Path, pg_dsn: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    missing = "kiosk_test_missing_" + secrets.token_hex(4)
    dsn = with_password(pg_dsn).rsplit("/", 1)[0] + "/" + missing
    status, text = check(tmp_path, dsn, capsys)
    assert status == 2, text
    assert f"database {missing}" in text and "receiver.store" in text and "does not exist" in text
    assert PASSWORD not in text


def test_a_schema_newer_than_the_code_exits_2_and_the_receiver_refuses_it(
        tmp_path: Path, pg_dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    PostgresStore(pg_dsn, tmp_path / "migrated", "r1").close()
    newer = len(migrations()) + 1
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO schema_version (version, name) VALUES (%s, 'from_the_future.sql')",
                     (newer,))
    status, text = check(tmp_path, with_password(pg_dsn), capsys)
    assert status == 2, text
    assert f"receiver.store: the database schema is at version {newer}, newer than" in text
    assert "upgrade this receiver" in text and PASSWORD not in text
    from agent.config_types import ConfigError

    with pytest.raises(ConfigError, match="newer than this receiver"):
        PostgresStore(pg_dsn, tmp_path / "again", "r2")


def test_no_files_leaves_the_database_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dsn = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{free_port()}/nowhere"
    status, text = check(tmp_path, dsn, capsys, "--no-files")
    assert status == 0 and "nor the database" in text and PASSWORD not in text, text


def test_a_malformed_store_uri_is_refused_without_echoing_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, text = check(tmp_path, f"postgresql://postgres:{PASSWORD}@127.0.0.1:notaport/x", capsys)
    assert status == 2 and "receiver.store" in text and PASSWORD not in text, text
