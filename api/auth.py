"""Bearer tokens and roles. ``user``: solve, own tasks, recommendations, families; ``admin``:
everything (campaigns, studies, workers, every task). A token lookup is cached for
``token_cache_seconds``, so a revoked token stops working within that time."""

from __future__ import annotations

import time
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


class TokenCache:
    def __init__(self, seconds: float):
        self.seconds = seconds
        self._hits: dict[str, tuple[float, Principal | None]] = {}

    def get(self, store, token: str) -> Principal | None:
        now = time.monotonic()
        digest = token_store.digest(token)
        hit = self._hits.get(digest)
        if hit is not None and now - hit[0] < self.seconds:
            return hit[1]
        row = token_store.lookup(store, token)
        principal = None if row is None else Principal(row.name, row.role)
        if len(self._hits) > 10_000:
            self._hits.clear()
        self._hits[digest] = (now, principal)
        return principal


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, message, headers={"WWW-Authenticate": "Bearer"})


def principal(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> Principal:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise _unauthorized("a bearer token is required (Authorization: Bearer <token>)")
    service = request.app.state.service
    found = service.tokens.get(service.store, credentials.credentials)
    if found is None:
        raise _unauthorized("unknown or revoked token")
    return found


def admin(who: Annotated[Principal, Depends(principal)]) -> Principal:
    if not who.is_admin:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this needs an admin token")
    return who


User = Annotated[Principal, Depends(principal)]
Admin = Annotated[Principal, Depends(admin)]
