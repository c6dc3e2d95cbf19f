"""Bearer tokens and roles. ``user``: solve, own tasks, recommendations, families; ``admin``:
everything (campaigns, studies, workers, every task). A token lookup is kept for
``token_cache_seconds`` (``Service.tokens``), so a revoked token stops working within that time."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from metalic.store import tokens as token_store

bearer = HTTPBearer(auto_error=False, description="a token from `metalic token create`")


@dataclass(frozen=True)
class Principal:
    name: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def owner_filter(self) -> str | None:
        """The owner whose tasks this principal may see (None: all of them)."""
        return None if self.is_admin else self.name


def lookup(store, token_digest: str) -> Principal | None:
    """The principal of a live token, by the token's SHA-256 (what the cache and a dashboard
    session hold)."""
    row = token_store.lookup_digest(store, token_digest)
    return None if row is None else Principal(row.name, row.role)


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, message, headers={"WWW-Authenticate": "Bearer"})


async def principal(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> Principal:
    """The caller. A cached token costs no database read and no thread hop."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise _unauthorized("a bearer token is required (Authorization: Bearer <token>)")
    service = request.app.state.service
    key = token_store.digest(credentials.credentials)
    found = await service.tokens.get(key, lambda: lookup(service.store, key))
    if found is None:
        raise _unauthorized("unknown or revoked token")
    return found


async def admin(who: Annotated[Principal, Depends(principal)]) -> Principal:
    if not who.is_admin:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this needs an admin token")
    return who


User = Annotated[Principal, Depends(principal)]
Admin = Annotated[Principal, Depends(admin)]
