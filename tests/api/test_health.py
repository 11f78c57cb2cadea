"""Liveness, readiness (database and broker) and Prometheus metrics."""

from __future__ import annotations

import pytest

from tests.conftest import ApiServer

pytestmark = pytest.mark.timeout(60)


def test_health_ready_and_metrics(pg_settings):
    # Database and broker only: the worker checks are tests/cli/test_serve.py's.
    settings = pg_settings.model_copy(update={"ready_worker_queues": ""})
    with ApiServer(settings) as server, server.client() as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["checks"] == {"database": "ok", "broker": "ok"}
        client.get("/jobs/abc")  # a 401, counted under its route template
        exposition = client.get("/metrics").text
        assert 'amft_http_requests_total{method="GET",route="/jobs/{job_id}",status="401"}' in exposition


def test_not_ready_without_broker(pg_settings):
    settings = pg_settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})
    with ApiServer(settings) as server, server.client() as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["database"] == "ok" and ready.json()["checks"]["broker"].startswith("unavailable")
