"""The job lifecycle on PostgreSQL and SQLite: idempotent create, claim/fencing, lease,
reaper, cancel, and that a fenced attempt writes nothing."""

from __future__ import annotations

import json
import time

import pytest
from sqlalchemy import func, select, update

from service import lifecycle, metrics
from service.auth import create_key
from service.db import get_database
from service.errors import Conflict, Fenced, InvalidInput
from service.models import Checkpoint, Job, MetricPoint
from service.specs import JobSpec
from tests.conftest import TINY_SPEC

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=["postgresql", "sqlite"])
def db(request):
    return get_database(request.getfixturevalue("pg_url" if request.param == "postgresql" else "sqlite_url"))


@pytest.fixture
def tenant(db) -> str:
    return create_key(db, "alice")[1].tenant_id


class Published(list):
    """Records job ids the lifecycle asks to publish (stands in for the broker's queue)."""

    def __call__(self, job_id: str) -> None:
        self.append(job_id)


def new_job(db, tenant, published=None, key=None, spec=TINY_SPEC, max_attempts=3):
    return lifecycle.create_job(db, tenant, JobSpec.model_validate(spec), key, published if published is not None else Published(), max_attempts)


def count(db, model) -> int:
    with db.transaction() as session:
        return session.scalar(select(func.count()).select_from(model))


def expire_lease(db, job_id: str) -> None:
    with db.transaction() as session:
        session.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=Job.created_at))


def test_create_publishes_after_commit_and_idempotency(db, tenant):
    published = Published()
    job, created = new_job(db, tenant, published, key="k-1")
    assert created and job.status == "queued" and published == [job.id]
    again, created = new_job(db, tenant, published, key="k-1")
    assert (again.id, created) == (job.id, False) and published == [job.id]
    other = dict(TINY_SPEC, method="sft")
    with pytest.raises(InvalidInput, match="different spec"):
        new_job(db, tenant, published, key="k-1", spec=other)
    with pytest.raises(InvalidInput, match="visible ASCII"):
        new_job(db, tenant, published, key="has space")
    assert count(db, Job) == 1


def test_claim_bumps_attempt_once(db, tenant):
    job, _ = new_job(db, tenant)
    held = lifecycle.claim(db, job.id, "w1", lease_seconds=30)
    assert held.attempt == 1 and held.resume_path is None
    assert lifecycle.claim(db, job.id, "w2", lease_seconds=30) is None  # already running
    assert lifecycle.claim(db, "0" * 32, "w2", lease_seconds=30) is None  # unknown


def test_fenced_attempt_writes_nothing(db, tenant):
    published = Published()
    job, _ = new_job(db, tenant, published)
    old = lifecycle.claim(db, job.id, "w1", lease_seconds=30)
    metrics.record_step(db, old, {"step": 1, "mu": 1.0})
    expire_lease(db, job.id)
    assert lifecycle.reap(db, published, requeue_unclaimed_seconds=3600)["requeued"] == 1
    assert published == [job.id, job.id]
    new = lifecycle.claim(db, job.id, "w2", lease_seconds=30)
    assert new.attempt == 2
    for write in (
        lambda: metrics.record_step(db, old, {"step": 2, "mu": 0.5}),
        lambda: lifecycle.heartbeat(db, old),
        lambda: lifecycle.record_checkpoint(db, old, 2, "jobs/x/checkpoints/step-000002"),
        lambda: lifecycle.finish(db, old, cancelled=False),
        lambda: lifecycle.fail(db, old, "trainer_error", "boom"),
    ):
        with pytest.raises(Fenced):
            write()
    assert count(db, MetricPoint) == 0  # the new attempt restarted from scratch: step 1 dropped
    assert count(db, Checkpoint) == 0
    with db.transaction() as session:
        assert session.get(Job, job.id).status == "running"


def test_reaper_fails_after_max_attempts(db, tenant):
    published = Published()
    job, _ = new_job(db, tenant, published, max_attempts=2)
    for attempt in (1, 2):
        assert lifecycle.claim(db, job.id, "w", lease_seconds=30).attempt == attempt
        expire_lease(db, job.id)
        lifecycle.reap(db, published, requeue_unclaimed_seconds=3600)
    with db.transaction() as session:
        row = session.get(Job, job.id)
        assert (row.status, row.error_code) == ("failed", "lease_expired")
        assert "attempt 2 of 2" in row.error_message


def test_reaper_republishes_jobs_left_queued(db, tenant):
    published = Published()
    job, _ = new_job(db, tenant, published)
    time.sleep(0.05)
    assert lifecycle.reap(db, published, requeue_unclaimed_seconds=0.01)["republished"] == 1
    assert published == [job.id, job.id]
    assert lifecycle.reap(db, published, requeue_unclaimed_seconds=60)["republished"] == 0


def test_cancel(db, tenant):
    queued, _ = new_job(db, tenant)
    assert lifecycle.cancel_job(db, tenant, queued.id).status == "cancelled"
    with pytest.raises(Conflict, match="already ended"):
        lifecycle.cancel_job(db, tenant, queued.id)
    running, _ = new_job(db, tenant)
    held = lifecycle.claim(db, running.id, "w", lease_seconds=30)
    assert lifecycle.heartbeat(db, held) is False
    assert lifecycle.cancel_job(db, tenant, running.id).cancel_requested
    assert lifecycle.heartbeat(db, held) is True
    assert metrics.record_step(db, held, {"step": 1}) is True
    lifecycle.finish(db, held, cancelled=True)
    with db.transaction() as session:
        assert session.get(Job, running.id).status == "cancelled"


def test_resume_claim_points_at_latest_checkpoint_and_drops_later_points(db, tenant):
    job, _ = new_job(db, tenant)
    held = lifecycle.claim(db, job.id, "w1", lease_seconds=30)
    for step in range(1, 8):
        metrics.record_step(db, held, {"step": step, "mu": step / 10})
        if step % 5 == 0:
            lifecycle.record_checkpoint(db, held, step, f"jobs/{job.id}/checkpoints/step-{step:06d}")
    expire_lease(db, job.id)
    lifecycle.reap(db, Published(), requeue_unclaimed_seconds=3600)
    resumed = lifecycle.claim(db, job.id, "w2", lease_seconds=30)
    assert (resumed.resume_step, resumed.resume_path) == (5, f"jobs/{job.id}/checkpoints/step-000005")
    key, _ = create_key(db, "alice")  # the tenant's own key
    body = json.loads(metrics.points_json(db, key, job.id))
    assert [p["step"] for p in body["points"]] == [1, 2, 3, 4, 5]


def test_metrics_upsert_and_query(db, tenant):
    job, _ = new_job(db, tenant)
    held = lifecycle.claim(db, job.id, "w", lease_seconds=30)
    for step in range(1, 6):
        metrics.record_step(db, held, {"step": step, "mu": 0.5, "phase": "main", "kl": float("nan")})
    metrics.record_step(db, held, {"step": 3, "mu": 0.25, "phase": "main"})  # a recomputed step
    key, _ = create_key(db, "alice")  # the tenant's own key
    everything = json.loads(metrics.points_json(db, key, job.id))
    assert [p["step"] for p in everything["points"]] == [1, 2, 3, 4, 5]
    assert everything["points"][0]["kl"] is None  # NaN is stored as null
    page = json.loads(metrics.points_json(db, key, job.id, ["mu", "phase", "absent"], after_step=1, limit=2))
    assert page["points"] == [{"step": 2, "mu": 0.5, "phase": "main", "absent": None},
                              {"step": 3, "mu": 0.25, "phase": "main", "absent": None}]
    assert (page["next_after_step"], page["has_more"]) == (3, True)
    with pytest.raises(InvalidInput, match="names"):
        metrics.points_json(db, key, job.id, ["mu;drop"])


def test_released_and_declined_jobs_are_published_by_the_next_reaper_pass(db, tenant):
    published = Published()
    job, _ = new_job(db, tenant, published)
    held = lifecycle.claim(db, job.id, "w1", lease_seconds=30)
    lifecycle.release(db, held, "worker shutting down")
    assert published == [job.id]  # a shutting-down worker could take a message sent now
    assert lifecycle.reap(db, published, requeue_unclaimed_seconds=3600)["republished"] == 1
    assert published == [job.id, job.id]
    lifecycle.decline(db, job.id)
    assert lifecycle.reap(db, published, requeue_unclaimed_seconds=3600)["republished"] == 1
    assert lifecycle.claim(db, job.id, "w2", lease_seconds=30).attempt == 2


def test_failed_releases_count_towards_max_attempts_and_graceful_ones_do_not(db, tenant):
    job, _ = new_job(db, tenant, max_attempts=2)
    held = lifecycle.claim(db, job.id, "w1", lease_seconds=30)
    assert lifecycle.release(db, held, "worker shutting down") == "released"  # free
    held = lifecycle.claim(db, job.id, "w2", lease_seconds=30)
    assert lifecycle.release(db, held, "declined: too few devices", "unservable") == "released"  # 1 of 2
    held = lifecycle.claim(db, job.id, "w3", lease_seconds=30)
    assert held.attempt == 3
    assert lifecycle.release(db, held, "declined: too few devices", "unservable") == "failed"  # 2 of 2
    with db.transaction() as session:
        row = session.get(Job, job.id)
        assert (row.status, row.error_code) == ("failed", "unservable")
        assert row.error_message.startswith("declined: too few devices (attempt 3: 2 failed attempts of max_attempts=2)")
    assert lifecycle.claim(db, job.id, "w4", lease_seconds=30) is None


def test_a_counted_release_counts_for_the_reaper_too(db, tenant):
    published = Published()
    job, _ = new_job(db, tenant, published, max_attempts=2)
    held = lifecycle.claim(db, job.id, "w1", lease_seconds=30)
    lifecycle.release(db, held, "a rank died", "rank_died")
    lifecycle.claim(db, job.id, "w2", lease_seconds=30)
    expire_lease(db, job.id)
    assert lifecycle.reap(db, published, requeue_unclaimed_seconds=3600)["failed"] == 1
