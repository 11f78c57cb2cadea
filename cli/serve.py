"""`amft serve`: the API plus Celery worker subprocesses, in one command.

With no configuration it runs the embedded default under AMFT_HOME (default ./.amft):
SQLite job store, SQLite broker, local artifacts. With AMFT_DATABASE_URL and
AMFT_BROKER_URL it uses PostgreSQL and Redis instead. Migrations are applied at start.

Ctrl-C (or SIGTERM) stops the API, then sends SIGTERM to each worker: a running job
checkpoints and goes back to the queue, to resume at the next start.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# (name, celery worker arguments). One process per worker: a job owns its device.
WORKERS: list[tuple[str, list[str]]] = [
    ("train", ["-Q", "train", "-c", "1"]),
    # Inference (issue 4): one process, a threads pool, so concurrent requests meet in the
    # engine's micro-batcher and its engine cache stays warm (workers/inference/tasks.py).
    ("inference", ["-Q", "inference", "-P", "threads", "-c", os.environ.get("AMFT_INFERENCE_CONCURRENCY", "8")]),
]
STOP_SECONDS = 60  # how long a worker may take to checkpoint before it is killed


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
    workers = [] if args.no_workers else start_workers(settings.home / "logs")
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
        stop_workers(workers)
    print("amft serve: stopped", flush=True)
    return 0


def start_workers(log_dir: Path) -> list[subprocess.Popen]:
    """Start one Celery worker process per WORKERS entry, logging to log_dir/worker-NAME.log."""
    log_dir.mkdir(parents=True, exist_ok=True)
    procs = []
    for name, extra in WORKERS:
        log = (log_dir / f"worker-{name}.log").open("a")
        command = [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", *extra,
                   "-n", f"{name}-{os.getpid()}@%h", "--loglevel", "INFO",
                   "--without-gossip", "--without-mingle", "--without-heartbeat"]
        # Own session: a terminal's Ctrl-C reaches only us; we stop the workers in order.
        procs.append(subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        print(f"amft serve: {name} worker pid {procs[-1].pid}, log {log_dir / f'worker-{name}.log'}", flush=True)
    return procs


def stop_workers(procs: list[subprocess.Popen]) -> None:
    """SIGTERM each worker (warm shutdown: running jobs checkpoint and re-queue), then wait."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # its job's lease expires; the reaper re-queues it
            proc.wait()


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
