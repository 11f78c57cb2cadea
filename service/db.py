"""Database engines and transactions, plus `migrate()` (Alembic is the only schema path).

SQLite (the embedded default) is shared by the API process and worker processes, so it
runs in WAL mode with a busy timeout, and every transaction starts with BEGIN IMMEDIATE:
a transaction that reads and then writes would otherwise fail with "database is locked"
when another process wrote in between, instead of waiting its turn.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Iterator

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS_DIR = Path(__file__).resolve().parents[1] / "migrations"
SQLITE_BUSY_MS = 30_000
# Connections each process keeps open. The API runs at most this many request threads
# (api/app.py), so a burst of requests waits for a pooled connection instead of opening
# and closing overflow ones: each new PostgreSQL connection forks a server process, and
# under 50 concurrent pollers that churn cost more than the queries.
POOL_SIZE = 20
_OPEN: list["Database"] = []  # every Database of this process, for the fork hook


class Database:
    """One engine and its sessions. `transaction()` commits on success, rolls back on error."""

    def __init__(self, url: str):
        self.url = url
        self.engine = _make_engine(url)
        self.dialect = self.engine.dialect.name
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        _OPEN.append(self)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session inside one transaction: commit at the end, rollback on exception."""
        with self._sessions.begin() as session:
            yield session

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A session for reads that need no transaction. On PostgreSQL it runs in autocommit:
        each query is one round trip with no BEGIN/COMMIT, which matters on the API's hot
        read paths. Use only for single-statement reads or reads that may see two states."""
        if self.dialect != "postgresql":
            with self.transaction() as session:
                yield session
            return
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            with Session(bind=conn, expire_on_commit=False) as session:
                yield session

    def ping(self) -> None:
        """Raise if the database cannot answer a trivial query."""
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))


@lru_cache(maxsize=None)
def get_database(url: str) -> Database:
    """The process-wide Database for a URL (engines are pools: one per process and URL)."""
    return Database(url)


def _make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_MS / 1000})
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
        return engine
    # No pre-ping (a round trip per checkout): after a database restart the first use of a
    # stale connection fails once and SQLAlchemy then drops the whole pool.
    # A process frozen inside a transaction (SIGSTOP, a paused VM) would hold its row locks
    # forever, blocking the reaper and every claim of that job (issue 13): the server ends
    # such a session after AMFT_DB_IDLE_IN_TRANSACTION_SECONDS; the writer's retry then meets Fenced.
    from service.settings import get_settings

    idle_ms = int(get_settings().db_idle_in_transaction_seconds * 1000)
    return create_engine(url, pool_size=POOL_SIZE, max_overflow=10, pool_recycle=3600,
                         connect_args={"options": f"-c idle_in_transaction_session_timeout={idle_ms}"})


def _sqlite_on_connect(dbapi_connection, _record) -> None:
    dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself (see above)
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")  # safe with WAL; a crash loses no committed data
    cursor.close()


def _forget_pools_after_fork() -> None:
    # A forked child (Celery prefork) must not share its parent's sockets or SQLite handles.
    for database in _OPEN:
        database.engine.dispose(close=False)


os.register_at_fork(after_in_child=_forget_pools_after_fork)


def migrate(url: str, revision: str = "head") -> None:
    """Bring the schema at `url` to `revision` with Alembic (the only way it is created)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    command.upgrade(config, revision)
