"""Checkpoint retention (issue 17) on PostgreSQL and SQLite: keep_last_n, keep-best by an
eval metric, and never the newest or one another job continues from."""

from __future__ import annotations

import pytest

from service import lifecycle, metrics, retention
from service.auth import create_key
from service.db import get_database
from service.jobs import list_checkpoints, list_events
from service.specs import JobSpec
from tests.conftest import TINY_SPEC

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=["postgresql", "sqlite"])
def db(request):
    return get_database(request.getfixturevalue("pg_url" if request.param == "postgresql" else "sqlite_url"))


def running_job(db, tenant: str, spec: dict) -> lifecycle.Claim:
    job, _ = lifecycle.create_job(db, tenant, JobSpec.model_validate(spec), None, lambda _id: None, 3)
    return lifecycle.claim(db, job.id, "w1", 30)


def checkpoint(db, held, step: int, accuracy: float | None = None) -> list[str]:
    point = {"step": step, "mu": 0.5} | ({"eval_accuracy_id": accuracy} if accuracy is not None else {})
    metrics.record_step(db, held, point)
    lifecycle.record_checkpoint(db, held, step, f"jobs/{held.job_id}/checkpoints/step-{step:06d}")
    return retention.prune(db, held)


def steps(db, tenant, held) -> list[int]:
    return [c["step"] for c in list_checkpoints(db, tenant, held.job_id)]


def test_keep_last_n_and_best_by_metric(db):
    tenant = create_key(db, "alice")[1].tenant_id
    spec = {**TINY_SPEC, "retention": {"keep_last_n": 2, "keep_best": {"metric": "eval_accuracy_id"}}}
    held = running_job(db, tenant, spec)
    accuracies = {2: 0.1, 4: 0.9, 6: 0.3, 8: 0.2, 10: 0.4}
    deleted = []
    for step, accuracy in accuracies.items():
        deleted += checkpoint(db, held, step, accuracy)
    assert steps(db, tenant, held) == [4, 8, 10]  # best (0.9 at step 4) + the newest two
    assert deleted == [f"jobs/{held.job_id}/checkpoints/step-{s:06d}" for s in (2, 6)]
    kinds = [e["kind"] for e in list_events(db, tenant, held.job_id)]
    assert kinds.count("checkpoints_deleted") == 2


def test_no_retention_keeps_everything_and_the_newest_always_stays(db):
    tenant = create_key(db, "alice")[1].tenant_id
    keep_all = running_job(db, tenant, TINY_SPEC)
    for step in (1, 2, 3):
        assert checkpoint(db, keep_all, step) == []
    assert steps(db, tenant, keep_all) == [1, 2, 3]
    minimal = running_job(db, tenant, {**TINY_SPEC, "retention": {"keep_last_n": 1}})
    for step in (1, 2, 3):
        checkpoint(db, minimal, step)
        assert steps(db, tenant, minimal) == [step]  # the one a resume needs


def test_a_checkpoint_another_queued_job_continues_from_is_kept(db):
    tenant = create_key(db, "alice")[1].tenant_id
    parent = running_job(db, tenant, {**TINY_SPEC, "retention": {"keep_last_n": 1}})
    checkpoint(db, parent, 2)
    lifecycle.create_job(db, tenant, JobSpec.model_validate({**TINY_SPEC, "model": f"job:{parent.job_id}:2"}),
                         None, lambda _id: None, 3)
    checkpoint(db, parent, 4)
    checkpoint(db, parent, 6)
    assert steps(db, tenant, parent) == [2, 6]
