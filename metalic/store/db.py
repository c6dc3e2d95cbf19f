"""Opening the store: engines, short transactions, and the schema version check.

SQLite (the embedded default) runs in WAL mode with a busy timeout, and every write transaction
starts with ``BEGIN IMMEDIATE``: a deferred transaction that reads and then writes can fail at
once with "database is locked" when another writer got in between (the busy timeout does not
apply to that upgrade), an immediate one waits its turn. PostgreSQL goes through psycopg 3.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, inspect, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from metalic.store.models import utc_now
from metalic.store.records import utc

BUSY_TIMEOUT_MS = 30_000


class Store:
    """A database and its sessions. ``write()`` and ``read()`` are short transactions."""

    def __init__(self, url: str, echo: bool = False):
        self.url = url
        parsed = make_url(url)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        if self.is_sqlite:
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            # As many pooled connections as a server has request threads: an overflow connection
            # is closed when returned, and opening one (with its PRAGMAs) costs more than a query.
            self.engine: Engine = create_engine(
                url, echo=echo, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000}, pool_size=48, max_overflow=16
            )
            _sqlite_setup(self.engine)
        else:
            self.engine = create_engine(url, echo=echo, pool_pre_ping=True, pool_size=40, max_overflow=10)
        self._write_engine = self.engine.execution_options(metalic_write=True)
        self._write_lock = threading.Lock() if self.is_sqlite else contextlib.nullcontext()
        self._writer = sessionmaker(self._write_engine, expire_on_commit=False)
        self._reader = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A write transaction: committed on exit, rolled back on an exception.

        On SQLite the writers of this process also queue on a lock: SQLite admits one writer at a
        time anyway, and its busy handler waits by sleeping with back-off (a measured p90 of 0.9 s
        at 32 concurrent submissions), where a lock hands over at once."""
        with self._write_lock, self._writer() as session, session.begin():
            yield session

    @contextmanager
    def read(self) -> Iterator[Session]:
        with self._reader() as session, session.begin():
            yield session

    def ping(self) -> None:
        """One round trip to the database (raises when it cannot be reached)."""
        with self.read() as s:
            s.execute(text("SELECT 1"))

    def now(self) -> datetime:
        """The database clock (aware UTC)."""
        with self.read() as s:
            return utc(s.execute(select(utc_now())).scalar_one())

    def dispose(self) -> None:
        self.engine.dispose()

    # ---- schema (migrations live in ``migrations/``, which runs them on a Store) -------------------
    def is_empty(self) -> bool:
        with self.engine.connect() as conn:
            return not inspect(conn).get_table_names()

    @property
    def safe_url(self) -> str:
        """The URL without its password."""
        return make_url(self.url).render_as_string(hide_password=True)


def _sqlite_setup(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # transactions are begun below, explicitly
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:
        immediate = conn.get_execution_options().get("metalic_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


_stores: dict[str, Store] = {}


def open_store(url: str | None = None) -> Store:
    """The process's Store for ``url`` (default: the settings' database), created once."""
    from metalic.settings import get_settings

    url = url or get_settings().resolved_database_url()
    if url not in _stores:
        _stores[url] = Store(url)
    return _stores[url]
