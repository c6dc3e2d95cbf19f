"""Dashboard logins: an admin token, typed once into a form, starts a server-side session
(``store.sessions``) whose id travels in a signed cookie (HttpOnly, SameSite=Strict, ``Secure``
behind TLS with ``cookie_secure``); the REST API keeps bearer tokens. Logging out ends the session
in the store, so a copied cookie stops working within ``token_cache_seconds``; revoking the token
ends every session of it as fast. Every form carries a per-session CSRF token. The signing key is
at least 32 characters: a shorter ``METALIC_SECRET_KEY`` is refused, and an empty or short
``home/secret-key`` file is replaced by a random key.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
import secrets
from pathlib import Path

from fastapi import Request

from api.auth import Principal, lookup
from api.files import write_private
from metalic.settings import Settings
from metalic.store import sessions as session_store
from metalic.store import tokens as token_store

log = logging.getLogger(__name__)

COOKIE = "metalic_session"


MIN_KEY = 32


class SecretKeyError(ValueError):
    """The configured signing key is too short to be a secret."""


def secret_key(settings: Settings) -> str:
    """``settings.secret_key``, or a random key kept in ``home/secret-key`` (created on first use,
    readable by this user only), so that every API process of one home signs alike."""
    if settings.secret_key:
        if len(settings.secret_key) < MIN_KEY:
            raise SecretKeyError(f"METALIC_SECRET_KEY: at least {MIN_KEY} characters (it signs dashboard sessions)")
        return settings.secret_key
    path = Path(settings.home) / "secret-key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):  # another process of this home made it first
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(48))
    if len(path.read_text().strip()) < MIN_KEY:
        log.warning("%s is empty or shorter than %d characters: replaced with a random key", path, MIN_KEY)
        write_private(path, secrets.token_urlsafe(48))
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
    """The logged-in admin, or LoginRequired (no cookie, an ended session, a revoked token, or not
    an admin)."""
    session_id = request.session.get("sid")
    if not isinstance(session_id, str):
        raise LoginRequired
    service = request.app.state.service
    hours = service.settings.session_hours
    digest = await service.sessions.get(session_id, lambda: session_store.token_of(service.store, session_id, hours))
    found = None if digest is None else await service.tokens.get(digest, lambda: lookup(service.store, digest))
    if found is None or not found.is_admin:
        request.session.clear()
        raise LoginRequired
    return found


def log_in(request: Request, token: str) -> Principal | None:
    """Check a typed token; an admin's starts a session (a fresh CSRF token with it)."""
    store = request.app.state.service.store
    row = token_store.lookup(store, token.strip())
    if row is None:
        return None
    who = Principal(row.name, row.role)
    if who.is_admin:
        request.session.clear()
        request.session.update(sid=session_store.start(store, row.digest), csrf=secrets.token_urlsafe(24))
    return who


def log_out(request: Request) -> None:
    """End the session in the store (every copy of its cookie with it) and clear the cookie."""
    service = request.app.state.service
    session_id = request.session.get("sid")
    if isinstance(session_id, str):
        session_store.end(service.store, session_id)
        service.sessions.forget(session_id)
    request.session.clear()
