"""What ``kiosk-agent check-config --receiver`` checks of a PostgreSQL store before a receiver
starts on it: the driver is installed, the server answers, the credentials work, the database
exists, and its schema is this receiver's version or one it can migrate.

Each problem names ``receiver.store`` and says what to do. Nothing printed holds the
password: the DSN is never quoted, only its host, port, database and user, and any error
text from the driver is scrubbed of the password before it is shown.
"""

from __future__ import annotations

from typing import Any

SETTING = "receiver.store"
#: A check-config run waits this long for the server at most.
CONNECT_TIMEOUT_S = 5


def store_problems(store: str) -> tuple[list[str], list[str]]:
    """(problems the receiver would not start with, warnings) for ``receiver.store``."""
    if not store.startswith(("postgresql://", "postgres://")):
        return [], []
    try:
        import psycopg
        from psycopg.conninfo import conninfo_to_dict
    except ImportError:
        return [f"{SETTING}: a PostgreSQL store needs psycopg, which is not installed here: "
                "pip install 'kiosk-agent[central]' into the receiver's environment"], []
    try:
        params = conninfo_to_dict(store)
    except psycopg.ProgrammingError:
        return [f"{SETTING} is not a valid libpq URI (postgresql://user@host:port/database); "
                "fix its syntax"], []
    secret = str(params.get("password") or "")
    where = _where(params)
    try:
        conn = psycopg.connect(store, connect_timeout=CONNECT_TIMEOUT_S, autocommit=True,
                               application_name="kiosk-agent check-config")
    except psycopg.Error as exc:
        return [f"{SETTING}: cannot connect to PostgreSQL {where}: {_scrub(exc, secret)}; check that "
                "the server runs and accepts connections there, that the database exists, and that the "
                "user's password is in the service user's ~/.pgpass or PGPASSWORD (not in the config)"], []
    try:
        return _schema(conn, where)
    except psycopg.Error as exc:
        return [f"{SETTING}: PostgreSQL {where} answered, but reading its schema failed: "
                f"{_scrub(exc, secret)}; give the receiver's role CONNECT on the database and "
                "USAGE on its schema"], []
    finally:
        conn.close()


def _schema(conn: Any, where: str) -> tuple[list[str], list[str]]:
    from receiver.storage.migrate import SchemaTooNew, current_version, migrations

    shipped = len(migrations())
    current = current_version(conn)
    if current > shipped:
        return [f"{SETTING}: {SchemaTooNew(current, shipped)}"], []
    if current == shipped:
        return [], []
    row = conn.execute("SELECT has_schema_privilege(current_user, current_schema(), 'CREATE')").fetchone()
    if not row or not row[0]:
        return [f"{SETTING}: the database {where} has schema version {current} and this receiver would "
                f"migrate it to {shipped}, but its role may not CREATE in the schema: grant it, or run the "
                "first start (or the migration) as the database's owner"], []
    return [], [f"{SETTING}: the database {where} has schema version {current}; this receiver migrates it "
                f"to {shipped} when it starts (every receiver on it must then be of this version)"]


def _where(params: dict[str, Any]) -> str:
    host = params.get("host") or "the local socket"
    return (f"at {host} port {params.get('port') or 5432}, database {params.get('dbname') or '(default)'}, "
            f"user {params.get('user') or '(default)'}")


def _scrub(exc: BaseException, secret: str) -> str:
    text = " ".join(str(exc).split())  # libpq's messages run over several lines
    return text.replace(secret, "***") if secret else text
