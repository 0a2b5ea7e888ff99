"""Optional bearer tokens. A job belongs to the token that created it; others get 404, not 403."""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.errors import ApiError

_bearer = HTTPBearer(auto_error=False, description="Needed when the server sets ONNXPRUNE_API_TOKENS.")


def owner_of(token: str | None) -> str:
    """The owner id stored with jobs: a hash, so the database never holds a usable token."""
    return "" if token is None else hashlib.sha256(token.encode()).hexdigest()


def current_owner(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> str:
    tokens: frozenset[str] = request.app.state.settings.tokens
    if not tokens:
        return owner_of(None)
    given = credentials.credentials if credentials is not None else None
    if given is None or not any(hmac.compare_digest(given.encode(), t.encode()) for t in tokens):
        raise ApiError(401, "unauthorized", "missing or invalid bearer token",
                       headers={"WWW-Authenticate": "Bearer"})
    return owner_of(given)


Owner = Annotated[str, Depends(current_owner)]
