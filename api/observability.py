"""Health, readiness and Prometheus metrics.

With several server processes (uvicorn --workers N) set PROMETHEUS_MULTIPROC_DIR to an
empty folder so /metrics aggregates all of them (the API image does).
"""

from __future__ import annotations

import os
import time

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client import REGISTRY, multiprocess
from starlette.concurrency import run_in_threadpool

from service.worker_presence import queue_problems

router = APIRouter(tags=["health"])

REQUESTS = Counter("amft_http_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram(
    "amft_http_request_seconds", "HTTP request latency", ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
)


class PrometheusMiddleware:
    """Counts and times every HTTP request by route template (not raw path: bounded labels)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500

        async def record_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            REQUESTS.labels(scope["method"], route, str(status)).inc()
            LATENCY.labels(scope["method"], route).observe(time.perf_counter() - start)


@router.get("/healthz")
def healthz() -> dict:
    """The process is up (no dependencies checked)."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """Ready to serve: the database and the broker both answer, and each queue named by
    AMFT_READY_WORKER_QUEUES has a worker with a recent heartbeat (`worker:QUEUE` checks)."""
    state = request.app.state
    checks = {}
    for name, probe in (("database", state.db.ping), ("broker", state.broker_ping)):
        try:
            await run_in_threadpool(probe)
            checks[name] = "ok"
        except Exception as error:  # noqa: BLE001 - report any failure as not ready
            checks[name] = f"unavailable: {type(error).__name__}: {error}"[:300]
    if checks["database"] == "ok":
        checks.update(await run_in_threadpool(_worker_checks, state))
    ready = all(value == "ok" for value in checks.values())
    if ready:
        return JSONResponse({"status": "ready", "checks": checks})
    problems = [f"{name}: {value}" for name, value in checks.items() if value != "ok"]
    # The documented error shape (detail, problems), plus the checks a probe may read.
    return JSONResponse({"detail": "; ".join(problems), "problems": problems, "status": "not ready", "checks": checks},
                        status_code=503)


def _worker_checks(state) -> dict[str, str]:
    settings = state.settings
    queues = [queue.strip() for queue in settings.ready_worker_queues.split(",") if queue.strip()]
    problems = queue_problems(state.db, queues, settings.worker_stale_seconds) if queues else {}
    return {f"worker:{queue}": problem or "ok" for queue, problem in problems.items()}


@router.get("/metrics", include_in_schema=False)
def prometheus_metrics() -> Response:
    """Prometheus exposition of this service's request metrics."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
