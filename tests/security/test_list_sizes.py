"""Issue 13, item 11: list responses carry summaries, never whole specs or results, so a
page's size does not grow with what each item holds; specs are capped at POST."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import update

from service.db import get_database
from service.evaluations import Evaluation
from tests.conftest import TINY_SPEC
from tests.security.conftest import job_with_checkpoint

pytestmark = pytest.mark.timeout(120)
SUMMARY_KEYS = {"id", "status", "method", "model", "attempt", "cancel_requested", "progress", "eta_seconds", "latest",
                "error", "created_at", "started_at", "finished_at"}


@pytest.fixture(params=["postgresql", "sqlite"])
def api(request):
    return request.getfixturevalue("pg_api" if request.param == "postgresql" else "embedded_api")


def big_spec(modules: int) -> dict:
    names = [f"layers.{i:05d}.self_attn.q_proj" for i in range(modules)]
    return {**TINY_SPEC, "training": {**TINY_SPEC["training"], "lora": {"target_modules": names}}}


def test_13_11_job_lists_carry_summaries(api, record):
    spec = big_spec(1800)  # about 60 KB of JSON, just under the default 64 KiB cap
    spec_bytes = len(json.dumps(spec))
    with api.client(api.key("alice")) as alice:
        ids = [alice.post("/jobs", json=spec).json()["id"] for _ in range(20)]
        page = alice.get("/jobs", params={"limit": 200})
        items = page.json()["jobs"]
        assert [item["id"] for item in items] == ids[::-1]
        assert all(set(item) == SUMMARY_KEYS for item in items), set(items[0])
        assert {(item["method"], item["model"]) for item in items} == {("amft", "builtin:tiny")}
        assert len(page.content) < 1000 * len(items), len(page.content)  # independent of the spec's size
        one = alice.get(f"/jobs/{ids[0]}").json()
        assert len(one["spec"]["training"]["lora"]["target_modules"]) == 1800
        too_big = alice.post("/jobs", json=big_spec(2500))  # about 83 KB: under the 1 MiB body cap
        assert too_big.status_code == 413 and "AMFT_MAX_SPEC_BYTES" in too_big.json()["detail"], too_big.text
    record(f"13.11 ({get_database(api.settings.resolved_database_url).dialect})",
           f"20 jobs with {spec_bytes // 1024} KB specs, GET /jobs; then a {len(json.dumps(big_spec(2500))) // 1024} "
           "KB spec", "list items are summaries (no spec), the spec on GET /jobs/{id}; the large spec 413 naming "
           "the setting", f"page of 20: {len(page.content)} bytes ({len(page.content) // 20} per item), items "
           f"{sorted(SUMMARY_KEYS)}; GET /jobs/{{id}} has the spec; {too_big.status_code} "
           f"'{too_big.json()['detail'][:80]}...'")


def test_13_11_evaluation_lists_carry_no_items(tenants, record):
    job_id, evaluation_id = job_with_checkpoint(tenants)
    items = [{"prompt": "p" * 400, "answer": "1", "output": "o" * 400, "extracted": "1", "correct": True}] * 2000
    db = get_database(tenants.api.settings.resolved_database_url)
    with db.transaction() as session:
        session.execute(update(Evaluation).where(Evaluation.id == evaluation_id).values(items=items, total=2000))
    with tenants.alice() as alice:
        listed = alice.get(f"/jobs/{job_id}/evaluations")
        one = alice.get(f"/jobs/{job_id}/evaluations/{evaluation_id}")
    assert [e["id"] for e in listed.json()["evaluations"]] == [evaluation_id]
    assert "items" not in listed.json()["evaluations"][0] and len(listed.content) < 2000, len(listed.content)
    assert len(one.json()["items"]) == 2000
    record("13.11b", "an evaluation with 2000 items (1.7 MB), GET /jobs/{id}/evaluations",
           "the list carries no items (and does not read them); one evaluation has them",
           f"list {len(listed.content)} bytes; GET one: {len(one.content) // 1024} KB with 2000 items")
