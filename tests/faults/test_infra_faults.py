"""Faults of the servers around the job (issue 6, cases 5-7): Redis down mid-job, Redis
losing its data with jobs queued, PostgreSQL restarting mid-job. The private servers of
tests/faults/servers.py are stopped and restarted for real."""

from __future__ import annotations

import time

import pytest

from tests.conftest import wait_for
from tests.faults.conftest import SPEC20

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_5_redis_down_for_5_seconds_mid_job(env_factory, own_redis, record):
    # A job accepted while the broker is down is republished by the reaper once it is back.
    fenv = env_factory(requeue_unclaimed_seconds=3.0, ready_worker_queues="train")  # no inference worker here
    fenv.start_api()
    fenv.workers.start(fault="pause:6@1")
    running = fenv.submit()
    fenv.wait_paused(running, 1, 6)
    own_redis.stop()
    down_at = time.monotonic()
    fenv.go()
    with fenv.client() as client:
        started = time.monotonic()
        during = client.post("/jobs", json=SPEC20)
        post_seconds = time.monotonic() - started
        ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["checks"]["broker"].startswith("unavailable")
    assert during.status_code in (201, 503), during.text
    if during.status_code == 503:
        assert "Retry-After" in during.headers
    progress_during = fenv.job(running)["progress"]["step"]
    time.sleep(max(0.0, 5.0 - (time.monotonic() - down_at)))
    progress_after = fenv.job(running)["progress"]["step"]
    own_redis.start()  # same port and folder: the AOF brings its data back
    outcome = fenv.check(running, "succeeded") if fenv.wait_status(running, ("succeeded", "failed")) else None
    assert outcome.attempts == 1, "the running job continued through the outage"
    answer = f"POST during the outage: {during.status_code} in {post_seconds:.1f} s"
    if during.status_code == 201:
        accepted = during.json()["id"]
        fenv.wait_status(accepted, ("succeeded", "failed"))
        late = fenv.check(accepted, "succeeded")
        answer += f", dispatched after the outage and {late.status}"
    with fenv.client() as client:
        assert client.get("/readyz").status_code == 200
    record("5", "stop Redis (SIGTERM) for 5 s while a job trains (from step 6); POST /jobs and /readyz during it",
           "the running job continues; the POST is refused with 503 + Retry-After, or accepted and dispatched later",
           f"job trained on during the outage (step {progress_during} -> {progress_after}) and {outcome.summary()}; "
           f"{answer}; /readyz 503 during, 200 after")


def test_6_redis_flushall_with_three_jobs_queued(env_factory, own_redis, record):
    fenv = env_factory(requeue_unclaimed_seconds=3.0)
    fenv.start_api()
    fenv.workers.start(fault="pause:1@1")  # the only worker is busy with a first job
    busy = fenv.submit()
    fenv.wait_paused(busy, 1, 1)
    queued = [fenv.submit() for _ in range(3)]
    redis = own_redis.client()
    # At least the 3: under load the reaper may already have republished a queued job whose
    # message it had not seen claimed within requeue_unclaimed_seconds (a harmless duplicate).
    assert redis.llen("train") >= 3
    redis.flushall()  # Redis lost everything: the 3 messages and kombu's queue bindings
    assert redis.dbsize() == 0
    fenv.go()
    outcomes = []
    for job_id in [busy, *queued]:
        fenv.wait_status(job_id, ("succeeded", "failed"), timeout=200)
        outcomes.append(fenv.check(job_id, "succeeded"))
    record("6", "FLUSHALL on Redis while a worker is busy and 3 jobs are queued",
           "the reaper republishes them and all 3 succeed",
           "; ".join(f"job {i + 1}: {o.summary()}" for i, o in enumerate(outcomes[1:])))


def test_7_postgres_restart_mid_job(env_factory, own_pg, record):
    # Lease longer than the outage, as in production (60 s): the worker keeps its job.
    fenv = env_factory(lease_seconds=30.0, heartbeat_seconds=1.0)
    fenv.start_api()
    fenv.workers.start(fault="pause:6@1")
    job_id = fenv.submit()
    fenv.wait_paused(job_id, 1, 6)
    own_pg.stop("fast")  # every connection is closed, as in a restart
    down_at = time.monotonic()
    fenv.go()
    codes, retry_after = [], set()
    with fenv.client() as client:
        while time.monotonic() - down_at < 10:
            response = client.get(f"/jobs/{job_id}")
            codes.append(response.status_code)
            retry_after.add(response.headers.get("Retry-After"))
            time.sleep(0.5)
    assert set(codes) == {503} and None not in retry_after, codes
    own_pg.start()
    with fenv.client() as client:
        wait_for(lambda: client.get(f"/jobs/{job_id}").status_code == 200, 30, what="the API to recover")
    fenv.wait_status(job_id, ("succeeded", "failed"))
    outcome = fenv.check(job_id, "succeeded")
    assert outcome.attempts == 1, "the worker retried its writes instead of losing the job"
    retries = fenv.workers.logs().count("database unavailable; retrying the write")
    record("7", "pg_ctl stop -m fast for 10 s while a job trains (from step 6), then start",
           "API answers 503 during the outage and recovers; the worker retries its writes; no step lost",
           f"{len(codes)} GETs during the outage, all 503 with Retry-After; {outcome.summary()}; "
           f"worker logged {retries} write retries")
