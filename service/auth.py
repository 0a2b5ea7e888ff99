"""Who is calling, and which jobs they may see.

With ``ONNXPRUNE_API_TOKENS`` set, every job route needs one of those bearer tokens, and a job belongs
to the token that created it: others get 404, not 403.

Without tokens (open mode), job ids are capabilities: 144 random bits, shown only to whoever created
the job, so GET/DELETE by id work for anyone holding the id (as do plain links to results). Listing is
the one route that could reveal ids, so it is scoped: a client that sends a key of its own
(``Authorization: Bearer <random key of 20+ characters>``) lists only the jobs it created with that
key, and a client without a key cannot list at all. Such keys are chosen by the client, so in open
mode the quotas count a client's address instead (``quota_key``): a new key does not buy a new quota,
and clients without a key do not share one.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param

from onnxprune.service.errors import ApiError

MIN_CLIENT_KEY = 20

_bearer = HTTPBearer(
    auto_error=False,
    description="A server token when the server sets ONNXPRUNE_API_TOKENS; else an optional client key "
    f"of {MIN_CLIENT_KEY}+ characters that scopes job listing.",
)


def owner_of(token: str | None) -> str:
    """The owner id stored with jobs: a hash, so the database never holds a usable token."""
    return "" if token is None else hashlib.sha256(token.encode()).hexdigest()


async def current_owner(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> str:
    return _owner(request, credentials.credentials if credentials is not None else None)


def caller(request: Request) -> str:
    """``current_owner`` for a route that reads the header itself (``service.direct_route``): the
    bearer credentials as ``HTTPBearer(auto_error=False)`` reads them, with the same checks."""
    scheme, credentials = get_authorization_scheme_param(request.headers.get("Authorization"))
    return _owner(request, credentials if scheme.lower() == "bearer" and credentials else None)


def _owner(request: Request, given: str | None) -> str:
    tokens: frozenset[str] = request.app.state.settings.tokens
    if not tokens:
        if given is not None and len(given) < MIN_CLIENT_KEY:
            raise ApiError(
                401,
                "unauthorized",
                f"a client key must have at least {MIN_CLIENT_KEY} characters",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return owner_of(given)
    if given is None or not any(hmac.compare_digest(given.encode(), t.encode()) for t in tokens):
        raise ApiError(401, "unauthorized", "missing or invalid bearer token", headers={"WWW-Authenticate": "Bearer"})
    return owner_of(given)


def quota_key(request: Request, owner: str) -> str:
    """Whom the quotas count a new job against: the token's owner, or in open mode the client address
    (from ``ONNXPRUNE_CLIENT_ADDRESS_HEADER`` when a proxy in front sets it, else the peer address)."""
    settings = request.app.state.settings
    if settings.tokens:
        return owner
    address = ""
    if settings.client_address_header:
        address = request.headers.get(settings.client_address_header, "").split(",")[0].strip()
    if not address and request.client is not None:
        address = request.client.host
    return f"address:{address or 'unknown'}"


def may_access(request: Request, job_owner: str, caller: str) -> bool:
    """Whether ``caller`` may read or delete a job it names by id (see the module docstring)."""
    return not request.app.state.settings.tokens or hmac.compare_digest(job_owner, caller)


async def listing_owner(request: Request, owner: Annotated[str, Depends(current_owner)]) -> str:
    if not request.app.state.settings.tokens and owner == owner_of(None):
        raise ApiError(
            403,
            "listing_disabled",
            f"listing jobs needs a key: send Authorization: Bearer <a random key of {MIN_CLIENT_KEY}+ "
            "characters>; each key lists only the jobs created with it",
        )
    return owner


Owner = Annotated[str, Depends(current_owner)]
ListingOwner = Annotated[str, Depends(listing_owner)]
