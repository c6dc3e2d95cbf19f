"""Dashboard logins: an admin token, typed once into a form, becomes a signed session cookie
(HttpOnly, SameSite=Strict, ``Secure`` behind TLS with ``cookie_secure``); the REST API keeps
bearer tokens. The cookie holds the token's SHA-256 (never the token), so revoking the token ends
the session within ``token_cache_seconds``. Every form carries a per-session CSRF token.
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

from fastapi import Request

from api.auth import Principal, lookup
from metalic.settings import Settings
from metalic.store import tokens as token_store

COOKIE = "metalic_session"


def secret_key(settings: Settings) -> str:
    """``settings.secret_key``, or a random key kept in ``home/secret-key`` (created on first use,
    readable by this user only), so that every API process of one home signs alike."""
    if settings.secret_key:
        return settings.secret_key
    path = Path(settings.home) / "secret-key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, secrets.token_urlsafe(48).encode())
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    return path.read_text().strip()


class LoginRequired(Exception):
    """No valid admin session: pages redirect to the login form, data endpoints answer 401."""


def csrf_token(request: Request) -> str:
    """This session's CSRF token (made on first use)."""
    token = request.session.get("csrf")
    if token is None:
        token = request.session["csrf"] = secrets.token_urlsafe(24)
    return token


def csrf_ok(request: Request, sent: str | None) -> bool:
    expected = request.session.get("csrf")
    return bool(expected and sent) and hmac.compare_digest(expected, sent)


async def current_admin(request: Request) -> Principal:
    """The logged-in admin, or LoginRequired (no cookie, a revoked token, or not an admin)."""
    digest = request.session.get("token")
    if not isinstance(digest, str):
        raise LoginRequired
    service = request.app.state.service
    found = await service.tokens.get(digest, lambda: lookup(service.store, digest))
    if found is None or not found.is_admin:
        request.session.clear()
        raise LoginRequired
    return found


def log_in(request: Request, token: str) -> Principal | None:
    """Check a typed token; an admin's starts a session (a fresh CSRF token with it)."""
    row = token_store.lookup(request.app.state.service.store, token.strip())
    if row is None:
        return None
    who = Principal(row.name, row.role)
    if who.is_admin:
        request.session.clear()
        request.session.update(token=row.digest, csrf=secrets.token_urlsafe(24))
    return who
