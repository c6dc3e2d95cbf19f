"""Dashboard sessions, kept server-side: the signed cookie holds a session id, and logging out ends
the session here, so a copy of the cookie stops working too (a signed cookie alone stays valid
until it expires)."""

from __future__ import annotations

import secrets
from datetime import timedelta

from sqlalchemy import select, update

from metalic.store.models import SessionRow, utc_now


def start(store, token_digest: str) -> str:
    """A new session of the token whose SHA-256 is ``token_digest``; returns its id."""
    session_id = secrets.token_urlsafe(32)
    with store.write() as s:
        s.add(SessionRow(id=session_id, token_digest=token_digest))
    return session_id


def token_of(store, session_id: str, max_hours: float) -> str | None:
    """The token digest of a live session (not ended, started within ``max_hours``), else None."""
    with store.read() as s:
        now = s.execute(select(utc_now())).scalar_one()
        return s.scalar(
            select(SessionRow.token_digest).where(
                SessionRow.id == session_id,
                SessionRow.ended_at.is_(None),
                SessionRow.created_at >= now - timedelta(hours=max_hours),
            )
        )


def end(store, session_id: str) -> None:
    with store.write() as s:
        s.execute(update(SessionRow).where(SessionRow.id == session_id).values(ended_at=utc_now()))
