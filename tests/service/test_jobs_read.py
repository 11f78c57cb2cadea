"""The read side on both databases: cursor pages, ETA, tenant scoping."""

from __future__ import annotations

import pytest

from service import jobs, lifecycle, metrics
from service.auth import create_key
from service.errors import NotFound
from tests.service.test_lifecycle import db, new_job, tenant  # noqa: F401 - fixtures

pytestmark = pytest.mark.timeout(60)


def test_pages_follow_the_cursor_newest_first(db, tenant):
    ids = [new_job(db, tenant)[0].id for _ in range(5)]
    seen, cursor = [], None
    while True:
        page = jobs.list_jobs(db, tenant, cursor, limit=2)
        seen += [job["id"] for job in page["jobs"]]
        if (cursor := page["next_cursor"]) is None:
            break
    assert seen == ids[::-1]
    other = create_key(db, "bob")[1].tenant_id
    assert jobs.list_jobs(db, other)["jobs"] == []
    with pytest.raises(NotFound):
        jobs.get_job(db, other, ids[0])


def test_progress_and_eta(db, tenant):
    job, _ = new_job(db, tenant)
    held = lifecycle.claim(db, job.id, "w", lease_seconds=30)
    metrics.record_step(db, held, {"step": 1, "mu": 1.0})
    assert jobs.get_job(db, tenant, job.id)["eta_seconds"] is None  # one step: no rate yet
    metrics.record_step(db, held, {"step": 2, "mu": 0.9, "reward_mean": 0.25})
    view = jobs.get_job(db, tenant, job.id)
    assert view["progress"] == {"step": 2, "total_steps": 10, "fraction": 0.2}
    assert view["latest"] == {"mu": 0.9, "reward_mean": 0.25}
    assert view["eta_seconds"] is not None and view["eta_seconds"] >= 0
