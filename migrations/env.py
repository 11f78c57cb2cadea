"""Alembic environment: the URL comes from the Alembic config when a caller set one
(service.db.migrate), else from AMFT_DATABASE_URL / the embedded default."""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context

import service.evaluations  # noqa: F401 - registers its table on Base.metadata
import service.worker_presence  # noqa: F401 - registers its table on Base.metadata
import service.webhooks  # noqa: F401 - issue 17: webhook endpoints and outbox
from service.db import get_database
from service.models import Base
from service.settings import get_settings

config = context.config
if config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)

url = config.get_main_option("sqlalchemy.url") or get_settings().resolved_database_url
database = get_database(url)

with database.engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=database.dialect == "sqlite",  # SQLite cannot ALTER most things
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
