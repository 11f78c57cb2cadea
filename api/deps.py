"""Request dependencies: the caller's identity."""

from __future__ import annotations

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from service.auth import Principal, authenticate
from service.errors import Unauthorized


def bearer_key(request: Request) -> str:
    """The key of `Authorization: Bearer <key>`; 401 if the header is missing or malformed."""
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise Unauthorized("missing API key: send `Authorization: Bearer <key>` (create one with `amft keys create`)")
    return key


def identify(state, key: str) -> Principal:
    """Blocking: the tenant behind `key` (cached for AMFT_AUTH_CACHE_SECONDS, default off)."""
    who = state.principals.get(key)
    if who is None:
        who = authenticate(state.db, key)
        state.principals.put(key, who)
    return who


async def principal(request: Request) -> Principal:
    """The tenant behind `Authorization: Bearer <key>`; 401 if missing, unknown or revoked.

    Async so that a cached key costs no thread hop; a miss looks the key up in a thread.
    """
    key = bearer_key(request)
    state = request.app.state
    return state.principals.get(key) or await run_in_threadpool(identify, state, key)
