# The API image: FastAPI + SQLAlchemy + the Celery client. No torch, no model code runs here.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    # /metrics aggregates all uvicorn worker processes from here.
    PROMETHEUS_MULTIPROC_DIR=/tmp/prometheus \
    AMFT_HOME=/data

WORKDIR /app
COPY requirements.txt .
# The API's subset of the project's pinned requirements (one list of pins, no drift).
RUN grep -E '^(fastapi|starlette|uvicorn|sse-starlette|python-multipart|pydantic|pydantic-settings|SQLAlchemy|alembic|psycopg\[binary\]|celery|kombu|redis|prometheus-client|httpx|PyYAML|uvloop|httptools)==' \
        requirements.txt > requirements-api.txt \
    && pip install -r requirements-api.txt \
    && useradd --create-home --uid 1000 amft \
    && mkdir -p /data/artifacts /tmp/prometheus && chown -R amft /data /tmp/prometheus

COPY alembic.ini ./
COPY migrations/ migrations/
COPY service/ service/
COPY api/ api/
COPY workers/ workers/
COPY cli/ cli/

USER amft
EXPOSE 8000
# The production server command (also what bench/api_metrics.py measures). Slow clients
# (issue 13, item 6): the guarded protocol drops a request whose headers take longer than
# AMFT_HTTP_HEADER_TIMEOUT_SECONDS; an idle kept-alive connection closes after AMFT_HTTP_KEEP_ALIVE_SECONDS.
CMD ["sh", "-c", "rm -rf /tmp/prometheus/* && exec uvicorn --factory api.app:create_app --host 0.0.0.0 --port 8000 --workers ${AMFT_API_WORKERS:-2} --no-access-log --timeout-graceful-shutdown 10 --timeout-keep-alive ${AMFT_HTTP_KEEP_ALIVE_SECONDS:-5} --http api.http_guard:GuardedHttpProtocol"]
