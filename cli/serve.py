"""`amft serve`: the API plus Celery worker subprocesses, in one command.

With no configuration it runs the embedded default under AMFT_HOME (default ./.amft):
SQLite job store, SQLite broker, local artifacts. With AMFT_DATABASE_URL and
AMFT_BROKER_URL it uses PostgreSQL and Redis instead. Migrations are applied at start.

Ctrl-C (or SIGTERM) stops the API, then sends SIGTERM to each worker: a running job
checkpoints and goes back to the queue, to resume at the next start. While it runs, a
worker that exits is logged and restarted with backoff, and the workers die with it
(cli/supervisor.py). Slow clients are dropped (api/http_guard.py).
"""

from __future__ import annotations

import os

from cli.supervisor import Supervisor

# (name, celery worker arguments). One process per worker: a job owns its device.
WORKERS: list[tuple[str, list[str]]] = [
    ("train", ["-Q", "train", "-c", "1"]),
    # Inference (issue 4): one process, a threads pool, so concurrent requests meet in the
    # engine's micro-batcher and its engine cache stays warm (workers/inference/tasks.py).
    ("inference", ["-Q", "inference", "-P", "threads", "-c", os.environ.get("AMFT_INFERENCE_CONCURRENCY", "8")]),
]


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("serve", help="Run the API and workers (embedded default or real services).")
    parser.add_argument("--host", help="Listen address (default AMFT_API_HOST, 127.0.0.1).")
    parser.add_argument("--port", type=int, help="Port (default AMFT_API_PORT, 8000).")
    parser.add_argument("--no-workers", action="store_true", help="Run the API only.")
    parser.set_defaults(run=run)


def run(args) -> int:
    import uvicorn

    from api.app import create_app
    from api.http_guard import guarded_protocol
    from service.db import migrate
    from service.settings import get_settings

    settings = get_settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    migrate(settings.resolved_database_url)
    host, port = args.host or settings.api_host, args.port or settings.api_port
    supervisor = None if args.no_workers else Supervisor(WORKERS, settings.home / "logs", _say).start()
    print(f"amft serve: API on http://{host}:{port}  database {_redact(settings.resolved_database_url)}", flush=True)
    try:
        # Slow clients (issue 13, item 6): a header-read deadline and a keep-alive timeout.
        config = uvicorn.Config(create_app(settings), host=host, port=port, log_level="warning",
                                timeout_graceful_shutdown=5, timeout_keep_alive=settings.http_keep_alive_seconds,
                                http=guarded_protocol(settings.http_header_timeout_seconds))
        uvicorn.Server(config).run()  # shuts down gracefully on Ctrl-C / SIGTERM
    except KeyboardInterrupt:
        pass  # uvicorn re-raises the Ctrl-C it handled; the shutdown is already done
    finally:
        if supervisor is not None:
            supervisor.stop()
    print("amft serve: stopped", flush=True)
    return 0


def _say(line: str) -> None:
    print(f"amft serve: {line}", flush=True)


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
