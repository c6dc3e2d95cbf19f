"""Alembic environment: the metalic store's models are the target metadata.

Run through ``metalic db upgrade`` (which passes its connection), or ``alembic`` from the
repository root (``alembic.ini``), which reads ``METALIC_DATABASE_URL`` like the service.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from metalic.store.models import Base

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    from metalic.settings import get_settings

    return get_settings().resolved_database_url()


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        with create_engine(_url()).connect() as conn:
            _run(conn)
    else:
        _run(connection)


def _run(connection) -> None:
    # batch mode lets later migrations alter SQLite tables (copy-and-move)
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
