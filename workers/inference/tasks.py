"""Inference Celery tasks (queue `inference`), thin: each calls one runner function.

The generate task takes the request payload (a generation is not a stored resource; the
API validated it); the evaluate task takes an evaluation id. Start a worker with

    celery -A workers.celery_app worker -Q inference -P threads -c 8

A threads pool lets concurrent requests meet in the engine's micro-batcher (one process,
one warm engine cache); torch releases the GIL inside its kernels.
"""

from __future__ import annotations

import itertools

from service.settings import get_settings
from workers.celery_app import app
from workers.inference.client import EVALUATE_TASK, GENERATE_TASK
from workers.inference.replies import reply_channel


@app.task(name=GENERATE_TASK, bind=True, acks_late=False)
def generate(self, payload: dict) -> None:
    """Serve one /generate payload and post the reply for the waiting API request
    (preceded by text deltas when the payload streams)."""
    from workers.inference.runner import generate_reply  # torch: worker processes only

    channel = reply_channel(get_settings())
    task_id, sent = self.request.id, itertools.count()  # message numbers: deltas first, the reply last

    def send(message: dict) -> None:
        channel.put(task_id, message, next(sent))

    reply = generate_reply(payload, cancelled=lambda: channel.cancelled(task_id), send=send)
    if reply is not None:
        send(reply)


@app.task(name=EVALUATE_TASK)
def evaluate(evaluation_id: str) -> str:
    """Run evaluation `evaluation_id` (its row holds the checkpoint, dataset, sampling)."""
    from workers.inference.runner import run_evaluation

    return run_evaluation(evaluation_id)
