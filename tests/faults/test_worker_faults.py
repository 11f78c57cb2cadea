"""Faults of the training worker (issue 6, cases 1-4): SIGKILL, SIGTERM, a poison job, a
zombie. Real Celery worker subprocesses on a private PostgreSQL and Redis; faults are
injected at a known step by tests.faults.inject and then done for real from outside
(SIGKILL, SIGTERM, SIGSTOP/SIGCONT of the whole worker process group)."""

from __future__ import annotations

import signal
import time

import pytest

from tests.conftest import wait_for
from tests.faults.checker import read_journal
from tests.faults.conftest import SPEC20, wait_exit

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_1_sigkill_at_step_7_resumes_from_step_5(fenv, record):
    first = fenv.workers.start(fault="pause:7@1")
    job_id = fenv.submit()
    fenv.wait_paused(job_id, 1, 7)
    fenv.workers.kill(first)  # kill -9 the worker's main process and its pool child
    fenv.workers.start()
    fenv.wait_status(job_id, ("succeeded", "failed"))
    outcome = fenv.check(job_id, "succeeded")
    assert outcome.attempts == 2
    assert outcome.resumed_from == {1: 0, 2: 5}
    assert outcome.recomputed == {2: 2}
    record("1", "SIGKILL the worker process group at step 7 of 20 (checkpoint every 5), start another worker",
           "succeeded on attempt 2, resumed from step 5", outcome.summary())


def test_2_sigterm_hands_the_job_back_without_counting_a_failure(env_factory, record):
    # max_attempts 2: the graceful stop must not use one up, or the crash below would fail the job.
    fenv = env_factory(max_attempts=2)
    fenv.start_api()
    first = fenv.workers.start(fault="pause:7@1")
    job_id = fenv.submit()
    fenv.wait_paused(job_id, 1, 7)
    fenv.workers.signal_group(first, signal.SIGTERM)  # what `docker stop` / Ctrl-C does
    time.sleep(0.5)
    fenv.go()
    assert wait_exit(first, 60) == 0, fenv.workers.logs()
    job = fenv.wait_status(job_id, ("queued", "failed", "succeeded"), timeout=30)
    assert job["status"] == "queued" and job["error"] is None
    # The second worker crashes once (attempt 2, step 9): that is the job's first real failure.
    (fenv.fault_dir / "go").unlink()
    second = fenv.workers.start(fault="pause:9@2")
    fenv.wait_paused(job_id, 2, 9)
    fenv.workers.kill(second)
    fenv.workers.start()
    fenv.wait_status(job_id, ("succeeded", "failed"))
    outcome = fenv.check(job_id, "succeeded")
    kinds = [e["kind"] for e in outcome.events]
    assert "released" in kinds and kinds.count("requeued") == 1
    assert outcome.attempts == 3
    # The SIGTERM checkpointed at step 7: the second attempt recomputed nothing.
    assert outcome.resumed_from[2] == 7 and outcome.recomputed[2] == 0
    record("2", "SIGTERM the worker at step 7 (max_attempts 2), a new worker; then SIGKILL that one at step 9",
           "checkpoint + job back to the queue, finished by another worker; the graceful stop is not a failure",
           outcome.summary())


def test_3_poison_job_fails_after_max_attempts(fenv, record):
    fenv.workers.start(fault="die:3")  # the pool process dies at step 3 on every attempt
    job_id = fenv.submit()
    job = fenv.wait_status(job_id, ("succeeded", "failed"), timeout=200)
    assert job["error"]["code"] == "lease_expired"
    assert "attempt 3 of 3" in job["error"]["message"] and "giving up" in job["error"]["message"]
    outcome = fenv.check(job_id, "failed", last_step=3)
    assert outcome.attempts == 3
    time.sleep(3)  # never retried again
    assert fenv.job(job_id)["attempt"] == 3 and fenv.job(job_id)["status"] == "failed"
    record("3", "the worker's pool process SIGKILLs itself at step 3 on every attempt",
           "failed after max_attempts (3) with an error that says so; never retried forever",
           f"{outcome.summary()}; error {job['error']}")


def test_4_zombie_worker_is_fenced(fenv, record):
    zombie = fenv.workers.start(fault="pause:7@1")
    job_id = fenv.submit()
    fenv.wait_paused(job_id, 1, 7)
    fenv.workers.signal_group(zombie, signal.SIGSTOP)  # longer than the lease (6 s)
    fenv.go()
    fenv.workers.start()
    fenv.wait_status(job_id, ("succeeded", "failed"))
    fenv.workers.signal_group(zombie, signal.SIGCONT)
    # The zombie's next write (its heartbeat or its step-8 metrics, whichever runs first) is
    # refused; its task ends quietly and the job stays succeeded. Wait for exactly that: a
    # refused write journalled by attempt 1, then the zombie's own log line.
    log = fenv.workers.log_dir / "worker0.log"
    wait_for(lambda: any(e["attempt"] == 1 and e["result"] == "fenced" for e in read_journal(fenv.fault_dir, job_id)),
             120, what="the zombie's first write to be refused")
    wait_for(lambda: "was fenced; stopping without writing" in log.read_text(), 120, what="the zombie to stop")
    outcome = fenv.check(job_id, "succeeded")
    assert outcome.attempts == 2 and outcome.resumed_from[2] == 5
    assert outcome.fenced_refused >= 1
    record("4", "SIGSTOP the worker group at step 7 for longer than the lease; a second worker; then SIGCONT",
           "the second worker takes over with attempt 2; the first is fenced, writes nothing and stops",
           outcome.summary())


@pytest.mark.timeout(60)
def test_2_graceful_hand_backs_do_not_use_up_attempts(fault_db_url):
    """Case 2 at the lifecycle level (no worker): claim/release twice, then lose the third
    attempt with max_attempts 2: only one attempt was lost, so the job is re-queued."""
    from datetime import timedelta

    from sqlalchemy import update

    from service import lifecycle
    from service.auth import create_key
    from service.db import get_database
    from service.models import Job, utcnow
    from service.specs import JobSpec

    db = get_database(fault_db_url)
    tenant = create_key(db, "alice")[1].tenant_id
    published: list[str] = []
    job, _ = lifecycle.create_job(db, tenant, JobSpec.model_validate(SPEC20), None, published.append, max_attempts=2)
    for _ in range(2):
        held = lifecycle.claim(db, job.id, "w", 60)
        lifecycle.release(db, held, "shutting down")
    held = lifecycle.claim(db, job.id, "w", 60)
    assert held.attempt == 3
    with db.transaction() as session:
        session.execute(update(Job).where(Job.id == job.id).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    assert lifecycle.reap(db, published.append, 3600)["requeued"] == 1
    held = lifecycle.claim(db, job.id, "w", 60)  # attempt 4 is the second lost one: now it fails
    with db.transaction() as session:
        session.execute(update(Job).where(Job.id == job.id).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    assert lifecycle.reap(db, published.append, 3600)["failed"] == 1
    with db.transaction() as session:
        row = session.get(Job, job.id)
    assert row.status == "failed" and "2 lost attempts of max_attempts=2" in row.error_message
    assert "2 graceful hand-backs not counted" in row.error_message
