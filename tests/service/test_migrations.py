"""Alembic is the only way the schema is made: the migrations must produce exactly the
models' schema on both databases, and downgrade cleanly."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

import service.evaluations  # noqa: F401 - every module with tables, as migrations/env.py imports them
import service.worker_presence  # noqa: F401 - the same
import service.webhooks  # noqa: F401
from service.db import get_database, migrate
from service.models import Base

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("which", ["pg_url", "sqlite_url"])
def test_migrations_match_models_and_downgrade(which, request):
    url = request.getfixturevalue(which)
    engine = get_database(url).engine
    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diffs == []
    migrate_down_and_up(url)
    assert {"jobs", "metric_points", "checkpoints", "files", "api_keys", "tenants", "job_events"} <= set(
        inspect(engine).get_table_names()
    )


def migrate_down_and_up(url: str) -> None:
    from alembic import command
    from alembic.config import Config

    from service.db import MIGRATIONS_DIR

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url)
    command.downgrade(config, "base")
    assert "jobs" not in inspect(get_database(url).engine).get_table_names()
    migrate(url)
