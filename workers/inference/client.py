"""The API's side of the inference worker: send a task on the `inference` queue and wait
for its reply (workers.inference.replies), mapping worker errors to service errors.

No torch here: the API process imports this module.
"""

from __future__ import annotations

import itertools
import time
import uuid
from typing import Callable, Iterator

from service.errors import ClientClosed, GatewayTimeout, InvalidInput, NotFound, ServiceError, Unavailable
from service.settings import Settings
from workers.inference.replies import reply_channel

GENERATE_TASK = "amft.inference.generate"
EVALUATE_TASK = "amft.inference.evaluate"
INFERENCE_QUEUE = "inference"
ERRORS = {"not_found": NotFound, "invalid": InvalidInput, "unavailable": Unavailable}
CHECK_SECONDS = 0.5  # how often a waiting request checks that its client is still connected


class InferenceClient:
    """Sends generation requests and evaluations to the inference worker."""

    def __init__(self, settings: Settings, celery_app=None):
        if celery_app is None:
            from workers.celery_app import make_celery

            celery_app = make_celery(settings)
        self.app = celery_app
        self.replies = reply_channel(settings)
        self.timeout = settings.inference_timeout_seconds

    def generate(self, payload: dict, disconnected: Callable[[], bool] | None = None) -> dict:
        """Run one generation request on the worker and return its reply.

        The payload carries a deadline: the worker skips a task picked up after it and
        stops one still running at it. When `disconnected()` turns true (the HTTP client
        has gone) or the timeout passes, the worker is told to stop at once.
        """
        task_id = uuid.uuid4().hex
        payload = {**payload, "deadline": time.time() + self.timeout}
        self.app.send_task(GENERATE_TASK, args=[payload], queue=INFERENCE_QUEUE, task_id=task_id)
        reply = self._wait(task_id, disconnected)
        if reply is None:
            self.replies.cancel(task_id)
            raise GatewayTimeout(
                f"the inference worker did not answer within {self.timeout:g} s: check that a worker is "
                "consuming the `inference` queue (amft serve starts one; compose runs worker-inference), "
                "or retry with fewer prompts or a smaller max_tokens"
            )
        return self._checked(reply)

    def stream(self, payload: dict, disconnected: Callable[[], bool] | None = None) -> Iterator[dict]:
        """Run one generation request with token streaming: yields the worker's
        `{"deltas": [[choice index, text], ...]}` messages as they are decoded, then its
        reply (last). Errors raise as in `generate`, the first one before anything is
        yielded; closing the iterator early tells the worker to stop."""
        task_id = uuid.uuid4().hex
        payload = {**payload, "stream": True, "deadline": time.time() + self.timeout}
        self.app.send_task(GENERATE_TASK, args=[payload], queue=INFERENCE_QUEUE, task_id=task_id)
        finished = False
        try:
            for seq in itertools.count():
                message = self._wait(task_id, disconnected, seq)
                if message is None:
                    raise GatewayTimeout(f"the inference worker did not finish within {self.timeout:g} s")
                if "deltas" not in message:
                    finished = True
                    yield self._checked(message)
                    return
                yield message
        finally:
            if not finished:
                self.replies.cancel(task_id)

    @staticmethod
    def _checked(reply: dict) -> dict:
        if "error" in reply:
            error = reply["error"]
            raise ERRORS.get(error.get("code"), ServiceError)(error.get("message", "generation failed"))
        return reply

    def _wait(self, task_id: str, disconnected: Callable[[], bool] | None, seq: int = 0) -> dict | None:
        deadline = time.monotonic() + self.timeout
        while (remaining := deadline - time.monotonic()) > 0:
            reply = self.replies.wait(task_id, min(remaining, CHECK_SECONDS), seq)
            if reply is not None:
                return reply
            if disconnected is not None and disconnected():
                self.replies.cancel(task_id)
                raise ClientClosed("the client disconnected; the generation was stopped")
        return None

    def publish_evaluation(self, evaluation_id: str) -> None:
        """Queue an evaluation (its row is committed already)."""
        self.app.send_task(EVALUATE_TASK, args=[evaluation_id], queue=INFERENCE_QUEUE)
