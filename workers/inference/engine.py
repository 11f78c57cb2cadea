"""What every backend shares: prompt encoding, request -> rows, micro-batching, results.

A backend subclasses `BatchedEngine` and implements `run_batch(rows) -> outputs`, which
decodes any mix of rows (different prompts, lengths, sampling settings) in one call.
Prompt formatting uses the checkpoint's own tokenizer and chat template
(`workers.trainer.models.format_prompt`, as in training); templates never come from a request.
"""

from __future__ import annotations

from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import replace
from typing import Callable

from workers.inference.batcher import INTERACTIVE, Abandoned, BatcherClosed, MicroBatcher, Request
from workers.inference.streaming import Send, TextDeltas
from workers.inference.types import Completion, InferenceError, PromptResult, Row, RowOutput, Sampling
from workers.trainer.models import format_prompt

Prompt = str | list[dict]
POLL_SECONDS = 0.25  # how often a waiting caller checks whether its own caller has gone


class BatchedEngine:
    """Base class: `generate` is thread-safe; concurrent calls are batched together."""

    backend = "base"

    def __init__(self, tokenizer, *, max_context: int, window_s: float, max_rows: int, name: str):
        self.tokenizer = tokenizer
        self.max_context = max_context
        self.memory_bytes = 0
        self.batcher = MicroBatcher(self.run_batch, window_s=window_s, max_rows=max_rows, name=name)

    @property
    def stats(self):
        """Batching counters: calls, requests, rows, max_requests_per_call."""
        return self.batcher.stats

    def run_batch(self, rows: list[Row], yield_now: Callable[[], bool]) -> None:  # pragma: no cover - abstract
        """Advance every row (its state lives on the row) until all are done or yield_now()."""
        raise NotImplementedError

    def generate(self, prompts: list[Prompt], sampling: Sampling, *, raw: bool = False, timeout: float | None = None,
                 tenant: str = "", priority: int = INTERACTIVE, deadline: float | None = None,
                 cancelled: Callable[[], bool] | None = None,
                 on_step: Callable[[Request], None] | None = None, fit_context: bool = False,
                 on_text: Send | None = None) -> list[PromptResult]:
        """Completions for every prompt (`sampling.n` each).

        `raw` sends text prompts as they are (OpenAI /v1/completions); otherwise prompts are
        formatted like training prompts (a chat template when the tokenizer has one).
        `tenant` and `priority` place the request in the fair scheduler; `deadline` (wall
        clock) or `cancelled()` turning true stop its rows within a decode step or two
        (raises Abandoned). Raises BatcherClosed when the engine was unloaded meanwhile.
        `on_text(deltas)` streams: called from the decode loop with each row's new text
        (workers.inference.streaming).
        """
        if on_text is not None:
            on_step = TextDeltas(lambda ids: self.tokenizer.decode(ids, skip_special_tokens=True), on_text)
        if fit_context:  # OpenAI's chat default: up to the end of the context (within the cap)
            encoded = [self.encode(prompt, raw, 1) for prompt in prompts]
            sampling = replace(sampling, max_tokens=min(sampling.max_tokens, self.max_context - max(map(len, encoded))))
        else:
            encoded = [self.encode(prompt, raw, sampling.max_tokens) for prompt in prompts]
        self.check_logit_bias(sampling)
        request = self.submit(encoded, sampling, tenant=tenant, priority=priority, deadline=deadline, on_step=on_step)
        outputs = wait_for(request, timeout, cancelled)
        results = []
        for index, ids in enumerate(encoded):
            mine = outputs[index * sampling.n : (index + 1) * sampling.n]
            completions = [Completion(o.text, len(o.token_ids), o.finish_reason, self.named(o.logprobs)) for o in mine]
            result = PromptResult(prompt_tokens=len(ids), completions=completions)
            if sampling.echo and mine:
                result.prompt_text = self.tokenizer.decode(ids)
                first = {"text": self.tokenizer.decode([ids[0]]), "logprob": None}  # nothing before it
                result.prompt_logprobs = [first] + self.named(mine[0].prompt_logprobs[1:])
            results.append(result)
        return results

    def named(self, logprobs: list | None) -> list | None:
        """Logprob entries with each token's text (and its alternatives' texts)."""
        if logprobs is None:
            return None
        decode = lambda token: self.tokenizer.decode([token])  # noqa: E731
        return [{"text": decode(e["token"]), "logprob": e["logprob"],
                 **({"top": [[decode(t), lp] for t, lp in e["top"]]} if "top" in e else {})} for e in logprobs]

    def check_logit_bias(self, sampling: Sampling) -> None:
        vocab = len(self.tokenizer)
        for key in sampling.logit_bias or {}:
            if not str(key).isdigit() or int(key) >= vocab:
                raise InferenceError("invalid", f"logit_bias: token id {key} is outside this model's vocabulary of {vocab}")

    def submit(self, encoded: list[list[int]], sampling: Sampling, **placement) -> Request:
        """Queue the rows of already encoded prompts (n rows each) and return the request."""
        rows = [
            Row(ids, sampling, None if sampling.seed is None else sampling.seed + index * sampling.n + sample)
            for index, ids in enumerate(encoded)
            for sample in range(sampling.n)
        ]
        return self.batcher.submit(rows, **placement)

    def encode(self, prompt: Prompt, raw: bool, max_tokens: int) -> list[int]:
        """Token ids of one prompt; InferenceError("invalid") if it cannot fit the context."""
        if raw and isinstance(prompt, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            ids = list(prompt)  # token ids, as OpenAI completions accept them
            if any(not 0 <= t < len(self.tokenizer) for t in ids):
                raise InferenceError("invalid", f"prompt: token ids must lie in this model's vocabulary of {len(self.tokenizer)}")
        elif raw and not isinstance(prompt, str):
            raise InferenceError("invalid", "raw prompts must be text or token ids")
        else:
            text = prompt if raw else format_prompt(self.tokenizer, prompt)
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]  # as in training
        if not ids:
            raise InferenceError("invalid", "a prompt is empty; send at least one character")
        if len(ids) + max_tokens > self.max_context:
            raise InferenceError(
                "invalid",
                f"a prompt of {len(ids)} tokens plus max_tokens {max_tokens} exceeds this model's "
                f"context of {self.max_context} tokens; shorten the prompt or lower max_tokens",
            )
        return ids

    def close(self) -> None:
        """Finish queued work, then stop the batching thread and drop the model."""
        self.batcher.close()


def wait_for(request: Request, timeout: float | None, cancelled: Callable[[], bool] | None) -> list[RowOutput]:
    """The request's outputs; polls `cancelled` meanwhile and stops the request when it
    turns true or `timeout` passes (then raises Abandoned)."""
    waited = 0.0
    while True:
        try:
            return request.future.result(POLL_SECONDS)
        except FutureTimeout:
            waited += POLL_SECONDS
            if (cancelled is not None and cancelled()) or (timeout is not None and waited >= timeout):
                request.cancel.set()
                try:
                    return request.future.result(timeout=30)
                except FutureTimeout:
                    raise Abandoned("the request did not stop in time") from None


__all__ = ["Abandoned", "BatchedEngine", "BatcherClosed", "Prompt", "wait_for"]
