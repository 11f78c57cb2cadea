"""The OpenAI-compatible view of the same engine: /v1/models, /v1/completions and
/v1/chat/completions request models and response shapes (plain and streamed chunks).

`model` takes the same references as /generate. Completions send the prompt text as it
is (raw); chat applies the checkpoint's own chat template (or the training prompt format
when it has none) to the messages. Streaming sends the finished completion as a series
of chunks: the worker answers a request once, so chunks arrive together at the end.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Iterator

from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.db import Database
from service.inference import ChatMessage, Run, check_work, list_models, run_generation
from service.settings import get_settings

PIECE = re.compile(r"\s*\S+|\s+")  # a word with its leading space: one stream chunk each


class OpenAIRequest(BaseModel):
    """Fields both endpoints share. Unknown OpenAI options are ignored, as OpenAI does
    for ones it does not know; the ones that would change results are refused below."""

    model_config = ConfigDict(extra="ignore")
    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1)
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    stop: str | list[str] | None = None
    stream: bool = False
    logprobs: bool | int | None = None
    echo: bool = False

    @model_validator(mode="after")
    def _supported(self):
        limits = get_settings()
        if self.logprobs or self.echo:
            raise ValueError("logprobs and echo are not supported by this server; remove them")
        if self.max_tokens is not None and self.max_tokens > limits.generate_max_tokens:
            raise ValueError(f"max_tokens = {self.max_tokens} exceeds this deployment's limit of {limits.generate_max_tokens}")
        if self.n > limits.generate_max_n:
            raise ValueError(f"n = {self.n} exceeds this deployment's limit of {limits.generate_max_n}")
        stops = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        if len(stops) > 4 or any(not s or len(s) > 64 for s in stops):
            raise ValueError("stop: at most 4 non-empty strings of up to 64 characters")
        return self

    def sampling(self, default_max_tokens: int) -> dict:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return {"max_tokens": self.max_tokens or default_max_tokens, "temperature": self.temperature,
                "top_p": self.top_p, "n": self.n, "seed": self.seed, "stop": stops}


class CompletionRequest(OpenAIRequest):
    prompt: str | list[str] = Field(description="Text sent as it is (no template).")

    @model_validator(mode="after")
    def _few_prompts(self):
        limit = get_settings().generate_max_prompts
        if isinstance(self.prompt, list) and not 1 <= len(self.prompt) <= limit:
            raise ValueError(f"prompt: send 1 to {limit} prompts")
        check_work(len(self.prompt) if isinstance(self.prompt, list) else 1, self.n, self.max_tokens or 16)
        return self


class ChatRequest(OpenAIRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _bounded(self):
        check_work(1, self.n, self.max_completion_tokens or self.max_tokens or get_settings().generate_max_tokens)
        return self


def models(db: Database, tenant_id: str) -> dict:
    data = [{"id": m["id"], "object": "model", "created": m["created"], "owned_by": "amft"} for m in list_models(db, tenant_id)]
    return {"object": "list", "data": data}


def completions(db: Database, tenant_id: str, request: CompletionRequest, run: Run) -> dict:
    prompts = [request.prompt] if isinstance(request.prompt, str) else request.prompt
    reply = run_generation(db, tenant_id, request.model, prompts, request.sampling(16), run, raw=True)
    completions_in_order = [c for result in reply["results"] for c in result["completions"]]
    choices = [
        {"index": i, "text": c["text"], "finish_reason": c["finish_reason"], "logprobs": None}
        for i, c in enumerate(completions_in_order)
    ]
    return _envelope("cmpl", "text_completion", reply, choices)


def chat(db: Database, tenant_id: str, request: ChatRequest, run: Run) -> dict:
    conversation = [m.model_dump() for m in request.messages]
    max_tokens = request.max_completion_tokens or request.max_tokens
    sampling = request.model_copy(update={"max_tokens": max_tokens}).sampling(get_settings().generate_max_tokens)
    reply = run_generation(db, tenant_id, request.model, [conversation], sampling, run)
    choices = [
        {"index": i, "message": {"role": "assistant", "content": c["text"]}, "finish_reason": c["finish_reason"], "logprobs": None}
        for i, c in enumerate(reply["results"][0]["completions"])
    ]
    return _envelope("chatcmpl", "chat.completion", reply, choices)


def chat_chunks(response: dict) -> Iterator[dict]:
    """A chat.completion as `chat.completion.chunk` objects: role, content pieces, finish."""
    base = {"id": response["id"], "object": "chat.completion.chunk", "created": response["created"], "model": response["model"]}
    for choice in response["choices"]:
        index = choice["index"]
        yield {**base, "choices": [{"index": index, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
        for piece in PIECE.findall(choice["message"]["content"]):
            yield {**base, "choices": [{"index": index, "delta": {"content": piece}, "finish_reason": None}]}
        yield {**base, "choices": [{"index": index, "delta": {}, "finish_reason": choice["finish_reason"]}]}
    yield {**base, "choices": [], "usage": response["usage"]}


def completion_chunks(response: dict) -> Iterator[dict]:
    """A text_completion as streamed chunks (same object type, text pieces)."""
    base = {"id": response["id"], "object": "text_completion", "created": response["created"], "model": response["model"]}
    for choice in response["choices"]:
        for piece in PIECE.findall(choice["text"]):
            yield {**base, "choices": [{"index": choice["index"], "text": piece, "finish_reason": None, "logprobs": None}]}
        yield {**base, "choices": [{"index": choice["index"], "text": "", "finish_reason": choice["finish_reason"], "logprobs": None}]}


def _envelope(prefix: str, kind: str, reply: dict, choices: list[dict]) -> dict:
    prompt_tokens = sum(r["prompt_tokens"] for r in reply["results"])
    completion_tokens = sum(c["tokens"] for r in reply["results"] for c in r["completions"])
    return {
        "id": f"{prefix}-{uuid.uuid4().hex}", "object": kind, "created": int(time.time()), "model": reply["model"],
        "choices": choices,
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens},
    }
