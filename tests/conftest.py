"""Shared fixtures: a fresh database per test (PostgreSQL from a migrated template, or a
SQLite file), a Redis broker namespace per session, the API on a loopback port, API keys,
and real Celery worker subprocesses. Nothing is mocked.

Needs PostgreSQL (AMFT_TEST_PG, default postgresql+psycopg://postgres@127.0.0.1:5432/test)
and Redis (AMFT_TEST_REDIS, default redis://127.0.0.1:6379/0).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
import uvicorn
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from service.auth import create_key
from service.db import get_database, migrate
from service.settings import Settings

PG_ADMIN_URL = os.environ.get("AMFT_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("AMFT_TEST_REDIS", "redis://127.0.0.1:6379/0")
ROOT = Path(__file__).resolve().parents[1]
RUN_ID = uuid.uuid4().hex[:8]  # names this session's databases and broker keys


def _pg_admin(sql: str) -> None:
    engine = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text(sql))
    finally:
        engine.dispose()


def _pg_url(name: str) -> str:
    return make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def pg_template() -> str:
    """A database migrated once per session; each test copies it (CREATE DATABASE ... TEMPLATE)."""
    name = f"amft_tpl_{RUN_ID}"
    _pg_admin(f"CREATE DATABASE {name}")
    url = _pg_url(name)
    migrate(url)
    get_database(url).engine.dispose()
    yield name
    _pg_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def pg_url(pg_template: str) -> str:
    """A fresh, migrated PostgreSQL database for this test, dropped afterwards."""
    name = f"amft_t_{RUN_ID}_{uuid.uuid4().hex[:8]}"
    _pg_admin(f"CREATE DATABASE {name} TEMPLATE {pg_template}")
    url = _pg_url(name)
    yield url
    get_database(url).engine.dispose()
    _pg_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sqlite-template") / "amft.db"
    url = f"sqlite:///{path}"
    migrate(url)
    get_database(url).engine.dispose()
    return path


@pytest.fixture
def sqlite_url(sqlite_template: Path, tmp_path: Path) -> str:
    """A fresh, migrated SQLite database file for this test."""
    path = tmp_path / "home" / "amft.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture(scope="session")
def redis_prefix() -> str:
    """This session's Redis key namespace (the Redis may be shared); deleted at the end."""
    prefix = f"amft-test-{RUN_ID}:"
    yield prefix
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=prefix + "*"))
    if keys:
        client.delete(*keys)


# Short lease and heartbeat so the fault tests run in seconds.
FAST = {"lease_seconds": 4.0, "heartbeat_seconds": 0.5, "reaper_seconds": 0.5, "requeue_unclaimed_seconds": 30.0}


def settings_env(settings: Settings) -> dict[str, str]:
    """The AMFT_* environment that reproduces `settings` in a subprocess."""
    env = {}
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if value is not None:
            env[f"AMFT_{name.upper()}"] = str(value)
    return env


@pytest.fixture
def pg_settings(pg_url: str, redis_prefix: str, tmp_path: Path) -> Settings:
    """Production-shaped settings: PostgreSQL + Redis, artifacts in tmp_path."""
    return Settings(home=tmp_path / "home", database_url=pg_url, broker_url=REDIS_URL,
                    broker_prefix=f"{redis_prefix}{uuid.uuid4().hex[:6]}:", **FAST)


@pytest.fixture
def embedded_settings(sqlite_url: str, tmp_path: Path) -> Settings:
    """The embedded default: SQLite job store and SQLite broker under tmp_path/home."""
    return Settings(home=tmp_path / "home", **FAST)


class ApiServer:
    """The app served by uvicorn on a free loopback port, in a thread of the test process."""

    def __init__(self, settings: Settings):
        from api.app import create_app

        self.settings = settings
        self.app = create_app(settings)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ApiServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "API server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *_exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def client(self, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def key(self, tenant: str) -> str:
        return create_key(get_database(self.settings.resolved_database_url), tenant)[0]


@pytest.fixture
def pg_api(pg_settings: Settings) -> ApiServer:
    with ApiServer(pg_settings) as server:
        yield server


@pytest.fixture
def embedded_api(embedded_settings: Settings) -> ApiServer:
    with ApiServer(embedded_settings) as server:
        yield server


class Workers:
    """Starts real `celery worker -Q train -c 1` subprocesses; stops them all at teardown."""

    def __init__(self, settings: Settings, log_dir: Path):
        self.settings, self.log_dir, self.procs = settings, log_dir, []

    def start(
        self, settings: Settings | None = None, app: str = "workers.celery_app", extra_env: dict | None = None
    ) -> subprocess.Popen:
        """A real `-Q train -c 1` worker process of `app`, in its own process group."""
        env = {**os.environ, **settings_env(settings or self.settings), **(extra_env or {}), "PYTHONUNBUFFERED": "1"}
        name = f"w{len(self.procs)}-{uuid.uuid4().hex[:6]}@%h"
        log = (self.log_dir / f"worker{len(self.procs)}.log").open("w")
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", app, "worker", "-Q", "train", "-c", "1",
             "-n", name, "--loglevel", "INFO", "--without-gossip", "--without-mingle", "--without-heartbeat"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def kill(self, proc: subprocess.Popen) -> None:
        """kill -9 the worker and its pool child (the whole process group)."""
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # warm shutdown, as docker stop or amft serve does
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)

    def logs(self) -> str:
        return "\n".join(path.read_text()[-4000:] for path in sorted(self.log_dir.glob("worker*.log")))


@pytest.fixture
def pg_workers(pg_settings: Settings, tmp_path: Path) -> Workers:
    workers = Workers(pg_settings, tmp_path)
    yield workers
    workers.stop_all()


@pytest.fixture
def embedded_workers(embedded_settings: Settings, tmp_path: Path) -> Workers:
    workers = Workers(embedded_settings, tmp_path)
    yield workers
    workers.stop_all()


TINY_SPEC = {
    "method": "amft",
    "model": "builtin:tiny",
    "training": {"total_steps": 10, "warmup_steps": 2, "save_every": 5, "sft_batch_size": 4,
                 "rl_prompts_per_step": 2, "num_generations": 4, "max_completion_tokens": 24},
    "controller": {"meta_interval": 5},
}


def wait_for(predicate, timeout: float, interval: float = 0.2, what: str = "condition"):
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@pytest.fixture
def record(request):
    """`record(case, done, expected, happened)`: one line of bench/results/reliability.md.
    Written only when AMFT_RELIABILITY_LOG names a file (the report is made from it)."""
    path = os.environ.get("AMFT_RELIABILITY_LOG")

    def write(case: str, done: str, expected: str, happened: str) -> None:
        if path:
            with open(path, "a") as out:
                out.write(json.dumps({"case": case, "test": request.node.nodeid, "done": done,
                                      "expected": expected, "happened": happened}) + "\n")

    return write
