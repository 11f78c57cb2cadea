"""API keys: shown once, stored as SHA-256, revocable."""

from __future__ import annotations

import hashlib

import pytest
from sqlalchemy import select

from service.auth import authenticate, create_key, revoke_key
from service.db import get_database
from service.errors import Unauthorized
from service.models import ApiKey

pytestmark = pytest.mark.timeout(30)


def test_keys_are_hashed_and_revocable(pg_url):
    db = get_database(pg_url)
    key, row = create_key(db, "alice")
    with db.transaction() as session:
        stored = session.scalars(select(ApiKey.key_hash)).all()
    assert stored == [hashlib.sha256(key.encode()).hexdigest()] and key not in stored
    assert authenticate(db, key).tenant_name == "alice"
    second, _ = create_key(db, "alice")
    assert authenticate(db, second).tenant_id == row.tenant_id
    with pytest.raises(Unauthorized, match="unknown"):
        authenticate(db, key + "x")
    revoke_key(db, row.prefix)
    with pytest.raises(Unauthorized, match="revoked"):
        authenticate(db, key)
    assert authenticate(db, second).tenant_name == "alice"
