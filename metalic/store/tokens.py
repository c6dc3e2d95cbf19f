"""API bearer tokens: created once (the plain token is returned, only its SHA-256 is stored),
looked up by digest, revoked by name or id. Roles: ``user`` and ``admin``."""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Callable

from sqlalchemy import func, or_, select, update

from metalic.store.models import TokenRow, utc_now
from metalic.store.records import TokenRecord, record

ROLES = ("user", "admin")
PREFIX = "mtl_"
NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,100}$")


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create(store, name: str, role: str, before_commit: Callable[[str], None] | None = None) -> tuple[str, TokenRecord]:
    """A new token for principal ``name``; returns (the token, its row). ``before_commit(token)``
    runs inside the transaction: if it raises, no token is stored (it keeps the token somewhere
    first, so that a token is never stored that nobody was given)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    if not NAME.match(name):
        raise ValueError(f"name must be 1-100 letters, digits or _.@-, got {name!r}")
    token = PREFIX + secrets.token_urlsafe(32)
    with store.write() as s:
        row = TokenRow(name=name, role=role, digest=digest(token))
        s.add(row)
        s.flush()
        if before_commit is not None:
            before_commit(token)
        return token, record(TokenRecord, row)


def lookup(store, token: str) -> TokenRecord | None:
    """The live (not revoked) token row for ``token``."""
    return lookup_digest(store, digest(token))


def lookup_digest(store, token_digest: str) -> TokenRecord | None:
    """The live token whose SHA-256 is ``token_digest`` (a dashboard session keeps only that)."""
    with store.read() as s:
        row = s.scalar(select(TokenRow).where(TokenRow.digest == token_digest, TokenRow.revoked_at.is_(None)))
        return None if row is None else record(TokenRecord, row)


def revoke(store, name_or_id: str) -> int:
    """Revoke every live token of a name, or the token with that id; returns how many."""
    cond = [TokenRow.name == name_or_id]
    if name_or_id.isdigit():
        cond.append(TokenRow.id == int(name_or_id))
    with store.write() as s:
        return s.execute(
            update(TokenRow).where(or_(*cond), TokenRow.revoked_at.is_(None)).values(revoked_at=utc_now())
        ).rowcount


def count(store) -> int:
    with store.read() as s:
        return int(s.scalar(select(func.count()).select_from(TokenRow)))


def list_tokens(store) -> list[TokenRecord]:
    """Every token ever created (names, roles, ids; never the tokens themselves)."""
    with store.read() as s:
        return [record(TokenRecord, t) for t in s.scalars(select(TokenRow).order_by(TokenRow.id)).all()]
