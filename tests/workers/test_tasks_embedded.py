"""End to end on the embedded default: SQLite job store, kombu's SQLAlchemy transport on a
SQLite file as the broker, a real Celery worker subprocess, local artifacts."""

from __future__ import annotations

import signal

import pytest

from tests.conftest import TINY_SPEC, wait_for
from tests.workers.test_tasks import all_points, submit, wait_status

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]


def test_embedded_job_succeeds(embedded_api, embedded_workers):
    settings = embedded_api.settings
    assert settings.resolved_database_url.startswith("sqlite:///")
    assert settings.resolved_broker_url.startswith("sqla+sqlite:///")
    embedded_workers.start()
    with embedded_api.client(embedded_api.key("alice")) as client:
        job_id = submit(client)
        job = wait_status(client, job_id, ("succeeded", "failed"))
        assert job["status"] == "succeeded", (job, embedded_workers.logs())
        assert [p["step"] for p in all_points(client, job_id)] == list(range(1, 11))
        checkpoints = client.get(f"/jobs/{job_id}/checkpoints").json()["checkpoints"]
        assert checkpoints and checkpoints[-1]["step"] == 10
        assert (settings.resolved_artifacts_dir / checkpoints[-1]["path"]).is_dir()


def test_sigterm_checkpoints_and_requeues_then_resumes(embedded_api, embedded_workers):
    """A worker's warm shutdown (Ctrl-C of `amft serve`, `docker stop`) loses no work."""
    from tests.workers.test_tasks import FAULT_SPEC

    worker = embedded_workers.start()
    with embedded_api.client(embedded_api.key("alice")) as client:
        job_id = submit(client, FAULT_SPEC)
        wait_for(lambda: client.get(f"/jobs/{job_id}").json()["progress"]["step"] >= 2, 150, what="step 2")
        worker.send_signal(signal.SIGTERM)  # the main process only, as a terminal or docker would
        assert worker.wait(timeout=120) == 0, embedded_workers.logs()
        job = client.get(f"/jobs/{job_id}").json()
        assert job["status"] == "queued", (job, embedded_workers.logs())
        stopped_at = job["progress"]["step"]
        checkpoints = client.get(f"/jobs/{job_id}/checkpoints").json()["checkpoints"]
        assert checkpoints[-1]["step"] == stopped_at
        assert "released" in [e["kind"] for e in client.get(f"/jobs/{job_id}/events").json()["events"]]
        embedded_workers.start()
        job = wait_status(client, job_id, ("succeeded", "failed"))
        assert job["status"] == "succeeded" and job["attempt"] == 2, (job, embedded_workers.logs())
        assert [p["step"] for p in all_points(client, job_id)] == list(range(1, 13))
