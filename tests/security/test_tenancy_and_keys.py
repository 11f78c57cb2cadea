"""Issue 6, cases 18-20: API keys, tenant isolation on every route, mass assignment."""

from __future__ import annotations

import hashlib
import inspect

import pytest
from sqlalchemy import select

from service import auth
from service.auth import revoke_key
from service.db import get_database
from service.models import ApiKey, Job, Tenant
from tests.conftest import TINY_SPEC
from tests.security.conftest import RECORD, error_text, job_with_checkpoint

pytestmark = pytest.mark.timeout(120)


def test_18_keys_are_hashed_compared_in_constant_time_and_revocable(tenants, record):
    db = get_database(tenants.api.settings.resolved_database_url)
    with db.transaction() as session:
        rows = session.scalars(select(ApiKey)).all()
        tenant_rows = session.scalars(select(Tenant)).all()
    stored = {r.key_hash for r in rows}
    for key in (tenants.alice_key, tenants.bob_key):
        assert hashlib.sha256(key.encode()).hexdigest() in stored
        for row in [*rows, *tenant_rows]:  # the plain key is in no column of any row
            assert key not in " ".join(str(v) for v in vars(row).values())
        assert not any(r.prefix and len(r.prefix) >= len(key) for r in rows)
    # Constant time: the lookup is by SHA-256 (the timing depends on the hash, not on how
    # much of a guess matches), and the final comparison is hmac.compare_digest.
    source = inspect.getsource(auth.authenticate)
    assert "hmac.compare_digest" in source and "ApiKey.key_hash == digest" in source
    assert "==" not in source.replace("ApiKey.key_hash == digest", "").replace("Tenant.id == ApiKey.tenant_id", "")
    # The metrics poll checks its key inside its own statement, also by hash only.
    assert "ApiKey.key_hash == key_hash" in inspect.getsource(auth.active_key_tenant)
    # Revoked: fails on the very next request, on the general path and on the metrics poll.
    with tenants.alice() as alice:
        job_id = alice.post("/jobs", json=TINY_SPEC).json()["id"]
        assert alice.get("/jobs").status_code == 200
        assert alice.get(f"/jobs/{job_id}/metrics").status_code == 200
        revoke_key(db, tenants.alice_key[:12])
        for path in ("/jobs", f"/jobs/{job_id}/metrics"):
            response = alice.get(path)
            assert response.status_code == 401 and "revoked" in response.json()["detail"], path
    with tenants.api.client("amft_" + "x" * 43) as stranger, tenants.api.client() as anonymous:
        for path in ("/jobs", f"/jobs/{job_id}/metrics"):
            assert stranger.get(path).status_code == 401 and anonymous.get(path).status_code == 401
    record("18", "read the api_keys table; inspect authenticate; revoke a key between two requests",
           "only hashes stored; constant-time comparison; a revoked key fails on the next request",
           "only SHA-256 hex digests and a 12-char display prefix stored; lookup by hash + hmac.compare_digest "
           "(the metrics poll: by hash inside its one statement); the requests after revoke_key (GET /jobs and "
           "the metrics poll) answered 401 'revoked'")


def test_19_other_tenants_ids_answer_404_on_every_route(tenants, record):
    job_id, evaluation_id = job_with_checkpoint(tenants)
    with tenants.alice() as alice, tenants.bob() as bob:
        file_id = alice.post("/files", content=RECORD).json()["id"]
        routes = [
            ("GET", f"/jobs/{job_id}", {}),
            ("POST", f"/jobs/{job_id}/cancel", {}),
            ("GET", f"/jobs/{job_id}/metrics", {}),
            ("GET", f"/jobs/{job_id}/metrics?names=mu&after_step=0&limit=5", {}),
            ("GET", f"/jobs/{job_id}/events", {}),
            ("GET", f"/jobs/{job_id}/events", {"headers": {"Accept": "text/event-stream"}}),
            ("GET", f"/jobs/{job_id}/checkpoints", {}),
            ("GET", f"/jobs/{job_id}/evaluations", {}),
            ("GET", f"/jobs/{job_id}/evaluations/{evaluation_id}", {}),
            ("POST", f"/jobs/{job_id}/evaluations", {"json": {"step": 5}}),
            ("POST", "/generate", {"json": {"model": job_id, "prompts": ["2+2?"]}}),
            ("POST", "/generate", {"json": {"model": f"{job_id}:5", "prompts": ["2+2?"]}}),
            ("POST", "/v1/completions", {"json": {"model": job_id, "prompt": "2+2?"}}),
            ("POST", "/v1/chat/completions", {"json": {"model": f"{job_id}:5",
                                                       "messages": [{"role": "user", "content": "2+2?"}]}}),
            ("POST", "/v1/chat/completions", {"json": {"model": job_id, "stream": True,
                                                       "messages": [{"role": "user", "content": "2+2?"}]}}),
        ]
        for method, path, kwargs in routes:
            response = bob.request(method, path, **kwargs)
            assert response.status_code == 404, (method, path, response.status_code, response.text)
            assert job_id in error_text(response)
        # Alice still sees her own (the 404s are not a broken route).
        assert alice.get(f"/jobs/{job_id}/evaluations/{evaluation_id}").status_code == 200
        # Lists show nothing of Alice's; Alice's file cannot be used by Bob.
        assert bob.get("/jobs").json()["jobs"] == [] and bob.get("/files").json()["files"] == []
        assert not any(job_id in m["id"] for m in bob.get("/v1/models").json()["data"])
        assert any(job_id in m["id"] for m in alice.get("/v1/models").json()["data"])
        stolen = bob.post("/jobs", json={**TINY_SPEC, "datasets": {"sft": {"source": f"file:{file_id}"}}})
        assert stolen.status_code == 422 and "not one of your uploaded files" in stolen.json()["detail"]
        assert alice.get(f"/jobs/{job_id}").json()["status"] == "queued"  # untouched by Bob
    record("19", f"Bob calls {len(routes)} routes with Alice's job/checkpoint/evaluation ids; lists; Alice's file",
           "404 everywhere, nothing of Alice's listed",
           f"all {len(routes)} answered 404 (jobs, cancel, metrics, events, SSE, checkpoints, evaluations x3, "
           "/generate x2, /v1/completions, /v1/chat/completions plain and streamed); lists empty; file -> 422")


@pytest.mark.parametrize("field,value", [
    ("status", "succeeded"), ("attempt", 7), ("tenant_id", "someone-else"), ("tenant", "bob"),
    ("created_at", "2020-01-01T00:00:00Z"), ("started_at", "2020-01-01T00:00:00Z"),
    ("finished_at", "2020-01-01T00:00:00Z"), ("id", "0" * 32), ("max_attempts", 1000),
    ("cancel_requested", True), ("lease_expires_at", "2999-01-01T00:00:00Z"), ("worker", "me"),
    ("error_code", "x"), ("current_step", 10),
])
def test_20_mass_assignment_is_refused(tenants, field, value, record):
    with tenants.alice() as alice:
        response = alice.post("/jobs", json={**TINY_SPEC, field: value})
        assert response.status_code == 422 and f"{field}: unknown field" in response.json()["detail"]
        # Nested under the spec's sections too, and query parameters are ignored.
        nested = alice.post("/jobs", json={**TINY_SPEC, "training": {**TINY_SPEC["training"], field: value}})
        assert nested.status_code == 422
        assert alice.get("/jobs").json()["jobs"] == []
        created = alice.post(f"/jobs?{field}={value}", json=TINY_SPEC).json()
    assert (created["status"], created["attempt"], created["progress"]["step"]) == ("queued", 0, 0)
    db = get_database(tenants.api.settings.resolved_database_url)
    with db.transaction() as session:
        job = session.get(Job, created["id"])
        alice_tenant = session.scalar(select(Tenant.id).where(Tenant.name == "alice"))
        assert job.tenant_id == alice_tenant and job.max_attempts == tenants.api.settings.max_attempts
    if field == "status":
        record("20", "POST /jobs with status, attempt, tenant_id, tenant, id, timestamps, lease, max_attempts... "
               "(top level, nested, and as query parameters)",
               "none can be set", "each body field answered 422 'unknown field' and created nothing; "
               "query parameters are ignored: the job is queued, attempt 0, Alice's tenant")
