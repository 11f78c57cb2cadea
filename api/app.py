"""The FastAPI application. Start it with `amft serve`, or in production with

    uvicorn --factory api.app:create_app --host 0.0.0.0 --port 8000 --workers 2

Each process also runs a reaper thread (see service.reaper).
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Callable

import anyio
from fastapi import FastAPI

from api.errors import BodyLimit, InternalErrors, install_error_handlers
from api.feeds import JobFeeds
from api.observability import PrometheusMiddleware
from api.observability import router as health_router
from api.routes.downloads import router as downloads_router
from api.routes.evaluations import router as evaluations_router
from api.routes.files import router as files_router
from api.routes.generate import router as generate_router
from api.routes.jobs import router as jobs_router
from api.routes.openai_compat import router as openai_router
from api.routes.openai_finetune import router as openai_finetune_router
from api.routes.webhooks import router as webhooks_router
from api.ui import mount_dashboard
from service.auth import PrincipalCache
from service.db import POOL_SIZE, get_database
from service.files import sweep_incoming
from service.reaper import Reaper
from service.webhook_delivery import Deliverer
from service.settings import Settings, get_settings


def create_app(
    settings: Settings | None = None,
    publish: Callable[[str], None] | None = None,
    broker_ping: Callable[[], None] | None = None,
) -> FastAPI:
    """Build the app for `settings` (default: from the environment). `publish`/`broker_ping`
    default to the Celery broker of those settings."""
    settings = settings or get_settings()
    if publish is None or broker_ping is None:
        from workers.celery_app import Broker  # celery only; no torch

        broker = Broker(settings)
        publish, broker_ping = publish or broker.publish_train, broker_ping or broker.ping
    db = get_database(settings.resolved_database_url)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        # Request threads (sync routes, DB reads) never outnumber the pooled connections.
        anyio.to_thread.current_default_thread_limiter().total_tokens = POOL_SIZE
        sweep_incoming(settings.resolved_artifacts_dir)  # partial uploads of a crashed process (issue 13)
        reaper = Reaper(db, publish, settings.reaper_seconds, settings.requeue_unclaimed_seconds).start()
        deliverer = Deliverer(db, settings).start()  # issue 17: webhooks from the outbox
        yield
        deliverer.stop()
        reaper.stop()

    app = FastAPI(title="AMFT training service", version="0.1.0", lifespan=lifespan)
    app.state.settings, app.state.db = settings, db
    app.state.publish, app.state.broker_ping = publish, broker_ping
    app.state.principals = PrincipalCache(settings.auth_cache_seconds)
    app.state.feeds = JobFeeds(db)
    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_request_bytes, exempt=("/files", "/v1/files"))
    app.add_middleware(PrometheusMiddleware)
    app.add_middleware(InternalErrors)  # outermost: every 500 in the JSON error shape (issue 13, item 5)
    for router in (jobs_router, files_router, health_router, webhooks_router, openai_finetune_router):
        app.include_router(router)
    _add_inference(app, settings)
    mount_dashboard(app)  # the web dashboard at /ui (issue 18)
    return app


def _add_inference(app: FastAPI, settings: Settings) -> None:
    """Generation, OpenAI-compatible and evaluation routes, served by the inference worker."""
    from workers.inference.client import InferenceClient  # celery + redis only; no torch

    from workers.lora_merge import MergeClient  # issue 17: merged LoRA downloads (no torch)

    app.state.inference = InferenceClient(settings)
    app.state.merges = MergeClient(settings, app.state.inference.app)
    for router in (generate_router, openai_router, evaluations_router, downloads_router):
        app.include_router(router)
