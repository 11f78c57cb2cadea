"""HTTP contract of the job routes, and bad inputs: each answers 4xx with a message that
says what to fix, and nothing is created."""

from __future__ import annotations

import copy
import json

import pytest

from tests.conftest import TINY_SPEC

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def client(pg_api):
    with pg_api.client(pg_api.key("alice")) as client:
        yield client


def job_count(client) -> int:
    return len(client.get("/jobs", params={"limit": 200}).json()["jobs"])


def test_create_get_list_cancel(client):
    created = client.post("/jobs", json=TINY_SPEC)
    assert created.status_code == 201
    job = created.json()
    assert job["status"] == "queued" and job["attempt"] == 0
    assert job["progress"] == {"step": 0, "total_steps": 10, "fraction": 0.0}
    assert job["spec"]["training"]["total_steps"] == 10
    fetched = client.get(f"/jobs/{job['id']}").json()
    assert fetched["id"] == job["id"] and set(fetched) >= {"eta_seconds", "latest", "error", "created_at"}
    assert client.get(f"/jobs/{job['id']}/metrics").json() == {
        "job_id": job["id"], "points": [], "next_after_step": 0, "has_more": False}
    assert client.get(f"/jobs/{job['id']}/checkpoints").json() == {"checkpoints": []}
    assert [e["kind"] for e in client.get(f"/jobs/{job['id']}/events").json()["events"]] == ["created"]
    cancelled = client.post(f"/jobs/{job['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    again = client.post(f"/jobs/{job['id']}/cancel")
    assert again.status_code == 409 and "already ended" in again.json()["detail"]


def test_cursor_pagination(client):
    ids = [client.post("/jobs", json=TINY_SPEC).json()["id"] for _ in range(5)]
    seen, cursor = [], None
    while True:
        page = client.get("/jobs", params={"limit": 2, **({"cursor": cursor} if cursor else {})}).json()
        seen += [job["id"] for job in page["jobs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]
    assert client.get("/jobs", params={"status": "queued"}).json()["jobs"][0]["id"] == ids[-1]
    bad = client.get("/jobs", params={"cursor": "not-a-cursor"})
    assert bad.status_code == 422 and "cursor" in bad.json()["detail"]


def test_idempotency_key(client):
    headers = {"Idempotency-Key": "3f1c-retry-1"}
    first = client.post("/jobs", json=TINY_SPEC, headers=headers)
    second = client.post("/jobs", json=TINY_SPEC, headers=headers)
    assert first.status_code == second.status_code == 201
    assert second.json()["id"] == first.json()["id"] and second.headers["Idempotent-Replayed"] == "true"
    changed = copy.deepcopy(TINY_SPEC)
    changed["training"]["total_steps"] = 11
    reused = client.post("/jobs", json=changed, headers=headers)
    assert reused.status_code == 422 and "different spec" in reused.json()["detail"]
    malformed = client.post("/jobs", json=TINY_SPEC, headers={"Idempotency-Key": "a" * 300})
    assert malformed.status_code == 422 and "Idempotency-Key" in malformed.json()["detail"]
    assert job_count(client) == 1


def with_training(**fields):
    spec = copy.deepcopy(TINY_SPEC)
    spec["training"].update(fields)
    return spec


@pytest.mark.parametrize(
    "body, expected",
    [
        (dict(TINY_SPEC, epochs=3), "epochs: unknown field"),
        (dict(TINY_SPEC, status="succeeded"), "status: unknown field"),
        (dict(TINY_SPEC, attempt=7), "attempt: unknown field"),
        (with_training(total_steps=-5), "training.total_steps: Input should be greater than or equal to 1"),
        (with_training(max_completion_tokens=10**9), "training.max_completion_tokens = 1000000000 exceeds"),
        (dict(TINY_SPEC, model="gpt-5"), "model: must be builtin:tiny"),
        ({**TINY_SPEC, "datasets": {"sft": {"source": "file:" + "a" * 32}}}, "datasets.sft.source: file:aaaa"),
    ],
)
def test_bad_specs_are_rejected_with_the_field_to_fix(client, body, expected):
    response = client.post("/jobs", json=body)
    assert response.status_code == 422, response.text
    assert expected in response.json()["detail"], response.json()
    assert job_count(client) == 0


def test_malformed_bodies(client):
    not_json = client.post("/jobs", content=b"{method: amft", headers={"Content-Type": "application/json"})
    assert not_json.status_code == 422 and "not valid JSON" in not_json.json()["detail"]
    deep = b"[" * 100_000 + b"]" * 100_000
    nested = client.post("/jobs", content=deep, headers={"Content-Type": "application/json"})
    assert nested.status_code == 422
    huge = json.dumps({**TINY_SPEC, "model": "x" * (10 * 1024 * 1024)}).encode()
    too_big = client.post("/jobs", content=huge, headers={"Content-Type": "application/json"})
    assert too_big.status_code == 413 and "limit" in too_big.json()["detail"]
    streamed = client.post("/jobs", content=iter([huge[i:i + 65536] for i in range(0, len(huge), 65536)]),
                           headers={"Content-Type": "application/json"})
    assert streamed.status_code == 413
    assert job_count(client) == 0


def test_metrics_query_validation(client):
    job_id = client.post("/jobs", json=TINY_SPEC).json()["id"]
    for params, expected in [({"names": "mu,x y"}, "names"), ({"limit": 0}, "limit"), ({"after_step": -2}, "after_step")]:
        response = client.get(f"/jobs/{job_id}/metrics", params=params)
        assert response.status_code == 422 and expected in response.json()["detail"]


def test_auth_required(pg_api):
    with pg_api.client() as anonymous:
        missing = anonymous.post("/jobs", json=TINY_SPEC)
        assert missing.status_code == 401 and "Authorization: Bearer" in missing.json()["detail"]
        assert missing.headers["WWW-Authenticate"] == "Bearer"
    with pg_api.client("amft_wrong") as wrong:
        assert wrong.get("/jobs").status_code == 401
    with pg_api.client(pg_api.key("alice")) as client:
        assert job_count(client) == 0
