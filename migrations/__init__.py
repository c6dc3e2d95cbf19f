"""Alembic migrations of the metalic store, and the functions that run them.

The store (``metalic.store``) knows nothing of its migrations; the service's side calls these:
``metalic db upgrade`` and ``metalic serve`` upgrade, the API checks the revision at start and in
``/readyz``, and the embedded default's first start creates the schema (``ensure``).
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent


class SchemaError(RuntimeError):
    """The database is not at the schema this code expects."""


def alembic_config(connection=None):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head() -> str:
    """The newest revision."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current(store) -> str | None:
    """The database's revision (None: an empty database)."""
    from alembic.runtime.migration import MigrationContext

    with store.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(store, revision: str = "head") -> None:
    """Apply the migrations up to ``revision``."""
    from alembic import command

    _run(store, command.upgrade, revision)


def downgrade(store, revision: str) -> None:
    from alembic import command

    _run(store, command.downgrade, revision)


def _run(store, step, revision: str) -> None:
    """One migration command in one transaction. On SQLite, altering a table copies it and drops
    the old one, which its foreign keys would refuse while other tables' rows point at it: they
    are switched off around the transaction (SQLite ignores that switch inside one) and the
    references are checked at its end."""
    with store.engine.connect() as conn:
        sqlite = conn.dialect.name == "sqlite"
        raw = conn.connection.driver_connection
        if sqlite:
            raw.execute("PRAGMA foreign_keys=OFF")
        try:
            with conn.begin():
                step(alembic_config(conn), revision)
                if sqlite and conn.exec_driver_sql("PRAGMA foreign_key_check").first() is not None:
                    raise SchemaError("the migration left rows whose foreign keys point nowhere")
        finally:
            if sqlite:
                raw.execute("PRAGMA foreign_keys=ON")


def check(store) -> None:
    """SchemaError unless the database is at the newest migration."""
    newest, now = head(), current(store)
    if now != newest:
        where = "an empty database" if now is None else f"revision {now}"
        raise SchemaError(
            f"the database ({store.safe_url}) is at {where}; this metalic needs {newest}: run `metalic db upgrade`"
        )


def ensure(store) -> None:
    """Create the schema in an empty database (the embedded default's first start); refuse a
    database at another revision (upgrading one is an explicit ``metalic db upgrade``)."""
    if current(store) is None and store.is_empty():
        upgrade(store)
    check(store)
