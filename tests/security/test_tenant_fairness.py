"""Issue 13, item 8: per-tenant limits on training and fair dispatch between tenants.

The claims are made by `lifecycle.claim_next`, the function the Celery train task calls
whatever message woke it, on the real databases; what is asserted is the order of claims,
never how long anything took."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from service import lifecycle
from service.auth import create_key
from service.db import get_database
from service.models import Job, Tenant
from service.settings import Settings
from service.specs import JobSpec
from tests.conftest import TINY_SPEC, ApiServer
from workers.train_job import run_train_job

pytestmark = pytest.mark.timeout(120)
SPEC = JobSpec.model_validate(TINY_SPEC)


@pytest.fixture(params=["postgresql", "sqlite"])
def db(request):
    return get_database(request.getfixturevalue("pg_url" if request.param == "postgresql" else "sqlite_url"))


def tenant(db, name: str) -> str:
    return create_key(db, name)[1].tenant_id


def submit(db, tenant_id: str, n: int, published: list) -> list[str]:
    return [lifecycle.create_job(db, tenant_id, SPEC, None, published.append, 3)[0].id for _ in range(n)]


def serve_one(db, max_running: int = 0) -> str | None:
    """One worker turn: claim by fair dispatch and finish the job at once."""
    held = lifecycle.claim_next(db, "w", 30, max_running)
    if held is None:
        return None
    lifecycle.finish(db, held, cancelled=False)
    return held.job_id


def test_13_8_a_flood_does_not_starve_another_tenant(db, record):
    published: list[str] = []
    flood, other, third = tenant(db, "flood"), tenant(db, "other"), tenant(db, "third")
    flood_jobs = submit(db, flood, 40, published)
    [other_job] = submit(db, other, 1, published)

    # A single worker: the flood's oldest job first, then the other tenant's, not 39 more.
    order = [serve_one(db) for _ in range(3)]
    assert order == [flood_jobs[0], other_job, flood_jobs[1]], order

    # Two tenants both with a backlog alternate (round robin by tenant), and a third that
    # arrives later is served within one round.
    other_jobs = submit(db, other, 5, published)
    [third_job] = submit(db, third, 1, published)
    order = [serve_one(db) for _ in range(5)]
    owners = {job_id: owner for owner, jobs in (("flood", flood_jobs), ("other", other_jobs), ("third", [third_job]))
              for job_id in jobs}
    assert [owners[j] for j in order] == ["third", "other", "flood", "other", "flood"], order

    # Two workers at once: the second claim goes to another tenant while the first runs.
    first = lifecycle.claim_next(db, "w1", 30)
    second = lifecycle.claim_next(db, "w2", 30)
    assert owners[first.job_id] != owners[second.job_id]

    # Cancel the whole flood: its stale messages now wake workers for other tenants'
    # jobs (never for a cancelled one) and cost one query once nothing is left.
    with db.read() as session:
        queued = session.scalars(select(Job.id).where(Job.tenant_id == flood, Job.status == "queued")).all()
    for job_id in queued:
        lifecycle.cancel_job(db, flood, job_id)
    late = submit(db, third, 1, published)[0]
    settings = Settings(database_url=db.url)
    served = []
    for _stale in queued:  # what the worker receives: the cancelled jobs' messages, in order
        held = lifecycle.claim_next(db, "w3", 30)
        if held is None:
            break
        served.append(held.job_id)
        assert held.job_id not in queued
    assert served[0] == late  # C has no running job: first in line, ahead of B's backlog
    # The Celery task itself, woken by a cancelled job's message with nothing left to run,
    # returns at once without touching a row.
    assert run_train_job(queued[-1], settings) == "not_claimable"
    with db.read() as session:
        started = session.scalar(select(func.count()).select_from(Job).where(Job.id.in_(queued),
                                                                            Job.started_at.is_not(None)))
    assert started == 0
    record(f"13.8a ({db.dialect})", "tenant A queues 40 jobs, then B 1 job; later B 5 more and C 1; then A's "
           f"{len(queued)} remaining jobs are cancelled and C queues one more",
           "B's job is the 2nd claim; tenants with a backlog alternate; a cancelled job's message runs the next "
           "real job or nothing, never waits",
           f"claims A,B,A then {','.join(owners[j] for j in order)}; concurrent claims go to two tenants; after the "
           f"cancel C's new job was claim {served.index(late) + 1} of {len(served)} made on stale messages; the task "
           "on a stale message with nothing left: not_claimable, no cancelled job ever started")


def test_13_8_running_limit_holds_back_and_wakes(db, record):
    published: list[str] = []
    a, b = tenant(db, "a"), tenant(db, "b")
    a_jobs = submit(db, a, 3, published)
    [b_job] = submit(db, b, 1, published)
    first = lifecycle.claim_next(db, "w1", 30, max_running=1)
    second = lifecycle.claim_next(db, "w2", 30, max_running=1)
    assert (first.job_id, second.job_id) == (a_jobs[0], b_job)
    assert lifecycle.claim_next(db, "w3", 30, max_running=1) is None  # A is at its limit, B has none queued
    # A's job ends: its next job, whose message was spent, is published by the next reaper pass.
    lifecycle.finish(db, first, cancelled=False)
    reaped: list[str] = []
    lifecycle.reap(db, reaped.append, requeue_unclaimed_seconds=3600)
    assert reaped == [a_jobs[1]]
    assert lifecycle.claim_next(db, "w3", 30, max_running=1).job_id == a_jobs[1]
    record(f"13.8b ({db.dialect})", "per-tenant running limit 1, tenant A 3 jobs, B 1, three workers",
           "A runs one at a time, B is not held back by A; when A's job ends its next one is dispatched",
           "claims A1, B1, then nothing for A; after A1 ended the reaper published A2 and it was claimed")


def test_13_8_quotas_answer_429_naming_the_limit(pg_settings, record):
    settings = pg_settings.model_copy(update={"max_queued_jobs_per_tenant": 3, "max_spec_bytes": 16 * 1024})
    with ApiServer(settings) as api, api.client(api.key("alice")) as alice, api.client(api.key("bob")) as bob:
        ids = [alice.post("/jobs", json=TINY_SPEC).json()["id"] for _ in range(3)]
        refused = alice.post("/jobs", json=TINY_SPEC)
        assert refused.status_code == 429, refused.text
        assert "AMFT_MAX_QUEUED_JOBS_PER_TENANT=3" in refused.json()["detail"]
        assert bob.post("/jobs", json=TINY_SPEC).status_code == 201  # per tenant, not global
        # A new job under an Idempotency-Key counts too; a replay of an accepted one does not.
        assert alice.post("/jobs", json=TINY_SPEC, headers={"Idempotency-Key": "k"}).status_code == 429
        assert alice.post(f"/jobs/{ids[0]}/cancel").status_code == 200
        assert alice.post("/jobs", json=TINY_SPEC, headers={"Idempotency-Key": "k"}).status_code == 201
        assert alice.post("/jobs", json=TINY_SPEC, headers={"Idempotency-Key": "k"}).status_code == 201
        # A spec bigger than the cap (a long list of LoRA target modules) is refused by size.
        modules = [f"m{i:05d}" for i in range(3000)]
        big = {**TINY_SPEC, "training": {**TINY_SPEC["training"], "lora": {"target_modules": modules}}}
        too_big = bob.post("/jobs", json=big)
        assert too_big.status_code == 413 and "AMFT_MAX_SPEC_BYTES" in too_big.json()["detail"], too_big.text
        with get_database(settings.resolved_database_url).read() as session:
            counts = dict(session.execute(select(Tenant.name, func.count(Job.id)).join(Job, Job.tenant_id == Tenant.id)
                                          .group_by(Tenant.name)).all())
    assert counts == {"alice": 4, "bob": 1}
    record("13.8c", "per-tenant queued limit 3: Alice queues 4 jobs; Bob queues 1; Alice cancels one and retries; "
           "a 30 KB spec against a 16 KiB spec cap",
           "429 naming the limit and its setting; other tenants unaffected; 413 naming the spec cap",
           f"4th job 429 '{refused.json()['detail'][:90]}...'; Bob 201; after a cancel 201; spec 413; rows {counts}")


@pytest.mark.timeout(300)
def test_13_8_a_cancelled_flood_costs_the_next_job_nothing(pg_api, pg_workers, record):
    """End to end with a real Celery worker on Redis: 30 cancelled jobs' messages sit ahead
    of another tenant's job in the queue; that job starts on the first of them."""
    import redis

    from tests.conftest import REDIS_URL, wait_for

    with pg_api.client(pg_api.key("flood")) as flood, pg_api.client(pg_api.key("other")) as other:
        stale = [flood.post("/jobs", json=TINY_SPEC).json()["id"] for _ in range(30)]
        for job_id in stale:
            assert flood.post(f"/jobs/{job_id}/cancel").json()["status"] == "cancelled"
        spec = {**TINY_SPEC, "training": {**TINY_SPEC["training"], "total_steps": 1000, "save_every": 1000}}
        job_id = other.post("/jobs", json=spec).json()["id"]
        queue = redis.Redis.from_url(REDIS_URL)
        key = f"{pg_api.settings.broker_prefix}train"
        assert queue.llen(key) == 31  # the flood's messages first, the job's own last
        pg_workers.start()
        wait_for(lambda: other.get(f"/jobs/{job_id}").json()["status"] == "running", 120, what="the job to start")
        left = queue.llen(key)  # only ever decreases: what was still ahead of the job's own message
        assert left >= 25, left
        assert other.post(f"/jobs/{job_id}/cancel").status_code == 200
        assert {flood.get(f"/jobs/{j}").json()["status"] for j in stale} == {"cancelled"}
        assert all(flood.get(f"/jobs/{j}").json()["attempt"] == 0 for j in stale)
    record("13.8d", "tenant A queues 30 jobs and cancels them, tenant B queues one; then a real worker starts "
           "(Redis broker)", "B's job starts on the first stale message, not after the worker drains 30",
           f"B's job was running with {left} of 31 messages still queued; no cancelled job ever claimed")
