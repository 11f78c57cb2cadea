"""Tenants and API keys. A key is shown once; only its SHA-256 is stored."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
import uuid
from dataclasses import dataclass

from sqlalchemy import select, update

from service.db import Database
from service.errors import NotFound, Unauthorized
from service.models import ApiKey, Tenant, utcnow

KEY_PREFIX = "amft_"


@dataclass(frozen=True)
class Principal:
    """Who is calling: every query the API makes is scoped by `tenant_id`."""

    tenant_id: str
    tenant_name: str
    key_id: str


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(db: Database, tenant_name: str) -> tuple[str, ApiKey]:
    """Create a key for `tenant_name` (creating the tenant if new); returns (key, row).

    The plain key is returned only here; it cannot be recovered later.
    """
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    with db.transaction() as session:
        tenant = session.scalar(select(Tenant).where(Tenant.name == tenant_name))
        if tenant is None:
            tenant = Tenant(id=uuid.uuid4().hex, name=tenant_name)
            session.add(tenant)
            session.flush()
        row = ApiKey(id=uuid.uuid4().hex, tenant_id=tenant.id, key_hash=hash_key(key), prefix=key[:12])
        session.add(row)
    return key, row


def authenticate(db: Database, key: str) -> Principal:
    """The principal for a presented key; raises Unauthorized for unknown or revoked keys."""
    digest = hash_key(key)
    with db.read() as session:
        row = session.execute(
            select(ApiKey.id, ApiKey.key_hash, ApiKey.revoked_at, Tenant.id, Tenant.name)
            .join(Tenant, Tenant.id == ApiKey.tenant_id)
            .where(ApiKey.key_hash == digest)
        ).first()
    # The lookup is by hash (an attacker learns nothing from its timing); the final check is
    # constant-time anyway so no comparison on secret material ever short-circuits.
    if row is None or not hmac.compare_digest(row[1], digest):
        raise Unauthorized("unknown API key: send `Authorization: Bearer <key>` with a key from `amft keys create`")
    if row[2] is not None:
        raise Unauthorized("this API key was revoked: create a new one with `amft keys create`")
    return Principal(tenant_id=row[3], tenant_name=row[4], key_id=row[0])


def active_key_tenant(key_hash):
    """SQL scalar: the tenant id of the active (unrevoked) key with `key_hash`, else NULL.

    For hot read paths that check the key inside their own statement; the lookup is by
    hash, like `authenticate`'s, so its timing says nothing about the secret key.
    """
    return (
        select(ApiKey.tenant_id).where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None)).scalar_subquery()
    )


def revoke_key(db: Database, key_id_or_prefix: str) -> None:
    """Revoke a key by its id or its displayed prefix; raises NotFound if none matches."""
    with db.transaction() as session:
        result = session.execute(
            update(ApiKey)
            .where((ApiKey.id == key_id_or_prefix) | (ApiKey.prefix == key_id_or_prefix))
            .where(ApiKey.revoked_at.is_(None))
            .values(revoked_at=utcnow())
        )
        if result.rowcount == 0:
            raise NotFound(f"no active key with id or prefix {key_id_or_prefix!r}")


def list_keys(db: Database) -> list[tuple[str, str, str, bool]]:
    """(key id, prefix, tenant name, revoked) for every key, oldest first."""
    with db.transaction() as session:
        rows = session.execute(
            select(ApiKey.id, ApiKey.prefix, Tenant.name, ApiKey.revoked_at)
            .join(Tenant, Tenant.id == ApiKey.tenant_id)
            .order_by(ApiKey.created_at)
        ).all()
    return [(r[0], r[1], r[2], r[3] is not None) for r in rows]


class PrincipalCache:
    """Recently verified keys, for `ttl` seconds, so hot read paths skip the key lookup.

    A revoked key therefore keeps working for at most `ttl` seconds in each API process
    (AMFT_AUTH_CACHE_SECONDS; 0 disables the cache). Entries are keyed by the key's hash.
    """

    def __init__(self, ttl: float, max_entries: int = 10_000):
        self.ttl, self.max_entries = ttl, max_entries
        self._entries: dict[str, tuple[float, Principal]] = {}

    def get(self, key: str) -> Principal | None:
        if self.ttl <= 0:
            return None
        entry = self._entries.get(hash_key(key))
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def put(self, key: str, who: Principal) -> None:
        if self.ttl <= 0:
            return
        if len(self._entries) >= self.max_entries:
            self._entries.clear()  # crude but bounded; the next requests refill it
        self._entries[hash_key(key)] = (time.monotonic() + self.ttl, who)
