"""`stream: true` on /v1/completions and /v1/chat/completions: chunks as tokens are decoded.

The worker sends text deltas from its decode loop (workers.inference.streaming; text that
could begin a stop string is held back), then its reply. Each delta becomes one chunk;
the reply closes every choice with its finish reason (after any remainder of its final
text the deltas did not carry) and, with `stream_options.include_usage`, a usage chunk.

The generators read the worker's first message before yielding anything, so a request
the worker refuses fails with its status before the 200 of the event stream starts.
"""

from __future__ import annotations

import time
import uuid
from typing import Callable, Iterator

from service.db import Database
from service.inference import Stream, stream_generation
from service.openai_compat import ChatRequest, CompletionRequest, chat_sampling, completion_sampling, usage

Chunk = Callable[[int, str | None, str | None], dict]  # (choice index, text, finish reason) -> chunk


def completion_stream(db: Database, tenant_id: str, request: CompletionRequest, stream: Stream) -> Iterator[dict]:
    """`text_completion` chunks, one per decoded piece of text."""
    sampling = completion_sampling(request)
    name, messages = stream_generation(db, tenant_id, request.model, request.prompt_list, sampling, stream, raw=True)
    base = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()), "model": name}

    def chunk(index: int, text: str | None, finish: str | None) -> dict:
        return {**base, "choices": [{"index": index, "text": text or "", "finish_reason": finish, "logprobs": None}]}

    return _chunks(messages, base, chunk, [], request.include_usage)


def chat_stream(db: Database, tenant_id: str, request: ChatRequest, stream: Stream) -> Iterator[dict]:
    """`chat.completion.chunk`s: the assistant role per choice, content pieces, finish."""
    conversation, sampling, fit_context = chat_sampling(request)
    name, messages = stream_generation(db, tenant_id, request.model, [conversation], sampling, stream, fit_context=fit_context)
    base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk", "created": int(time.time()), "model": name}

    def chunk(index: int, text: str | None, finish: str | None) -> dict:
        delta = {} if text is None else {"content": text}
        return {**base, "choices": [{"index": index, "delta": delta, "finish_reason": finish}]}

    roles = [{**base, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
             for i in range(request.n)]
    return _chunks(messages, base, chunk, roles, request.include_usage)


def _chunks(messages: Iterator[dict], base: dict, chunk: Chunk, opening: list[dict], include_usage: bool) -> Iterator[dict]:
    try:
        yield from _from_messages(messages, base, chunk, opening, include_usage)
    finally:
        messages.close()  # closed early (client gone): the worker is told to stop


def _from_messages(messages: Iterator[dict], base: dict, chunk: Chunk, opening: list[dict], include_usage: bool) -> Iterator[dict]:
    first = next(messages)  # the worker's refusal raises here, before any chunk
    yield from opening
    sent: dict[int, str] = {}
    message = first
    while "deltas" in message:
        for index, text in message["deltas"]:
            sent[index] = sent.get(index, "") + text
            yield chunk(index, text, None)
        message = next(messages)
    completions = [c for result in message["results"] for c in result["completions"]]
    for index, completion in enumerate(completions):
        already = sent.get(index, "")
        if len(completion["text"]) > len(already) and completion["text"].startswith(already):
            yield chunk(index, completion["text"][len(already):], None)
        yield chunk(index, None, completion["finish_reason"])
    if include_usage:
        yield {**base, "choices": [], "usage": usage(message)}
