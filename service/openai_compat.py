"""The OpenAI-compatible view of the same engine: /v1/models, /v1/completions and
/v1/chat/completions request models and response shapes (plain and streamed chunks).

`model` takes the same references as /generate. Completions send the prompt text as it
is (raw); chat applies the checkpoint's own chat template (or the training prompt format
when it has none) to the messages. Streaming (`stream: true`) is service.openai_stream.
"""

from __future__ import annotations

import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.db import Database
from service.errors import InvalidInput, NotFound
from service.inference import Run, check_work, list_models, run_generation
from service.settings import get_settings

REFUSED = {
    "tools": "tool calling is not supported by this server",
    "tool_choice": "tool calling is not supported by this server",
    "functions": "function calling is not supported by this server",
    "function_call": "function calling is not supported by this server",
    "parallel_tool_calls": "tool calling is not supported by this server",
    "suffix": "insertion (suffix) is not supported by this server",
    "audio": "audio output is not supported by this server",
    "modalities": "only text output is supported",
    "prediction": "predicted outputs are not supported by this server",
    "web_search_options": "web search is not supported by this server",
    "reasoning_effort": "this server's models have no reasoning settings",
}
INFORMATIONAL = {"user", "metadata", "store", "service_tier"}  # change nothing about the output


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # finite floats only (issue 13, item 2)
    include_usage: bool = False


class OpenAIRequest(BaseModel):
    """Fields both endpoints share. Every option is either honoured or refused with a 400
    that names it (issue 19, item 5): none is accepted and ignored, except the purely
    informational `user`, `metadata`, `store` and `service_tier`."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)  # finite floats only (issue 13, item 2)
    model: str
    max_tokens: int | None = Field(None, ge=0)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1)
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None

    @model_validator(mode="after")
    def _supported(self):
        limits = get_settings()
        for name in self.model_extra or {}:
            if name in REFUSED:
                raise ValueError(f"{name}: {REFUSED[name]}; remove it")
            if name not in INFORMATIONAL:
                raise ValueError(f"{name}: not supported by this server; remove it")
        if self.max_tokens is not None and self.max_tokens > limits.generate_max_tokens:
            raise ValueError(f"max_tokens: {self.max_tokens} exceeds this deployment's limit of {limits.generate_max_tokens}")
        if self.n > limits.generate_max_n:
            raise ValueError(f"n: {self.n} exceeds this deployment's limit of {limits.generate_max_n}")
        stops = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        if len(stops) > 4 or any(not s or len(s) > 64 for s in stops):
            raise ValueError("stop: at most 4 non-empty strings of up to 64 characters")
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options: only allowed with stream: true")
        for key, bias in (self.logit_bias or {}).items():
            if not key.isdigit() or not -100 <= bias <= 100:
                raise ValueError("logit_bias: keys are token ids, values between -100 and 100")
        if len(self.logit_bias or {}) > 300:
            raise ValueError("logit_bias: at most 300 tokens")
        return self

    def sampling(self, max_tokens: int, logprobs: int | None) -> dict:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return {"max_tokens": max_tokens, "temperature": self.temperature, "top_p": self.top_p, "n": self.n,
                "seed": self.seed, "stop": stops, "frequency_penalty": self.frequency_penalty,
                "presence_penalty": self.presence_penalty, "logit_bias": self.logit_bias or None, "logprobs": logprobs}

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(OpenAIRequest):
    prompt: str | list[str] | list[int] | list[list[int]] = Field(
        description="Text sent as it is (no template), or token ids; one prompt or a list.")
    logprobs: int | None = Field(None, ge=0, le=5, description="Log-probabilities of each token and this many alternatives.")
    echo: bool = False
    best_of: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _few_prompts(self):
        limit = get_settings().generate_max_prompts
        if isinstance(self.prompt, list) and not 1 <= len(self.prompt) <= limit and not self.token_prompt:
            raise ValueError(f"prompt: send 1 to {limit} prompts")
        if any(isinstance(p, list) and not p for p in self.prompt_list):
            raise ValueError("prompt: a token-id prompt is empty")
        if self.best_of is not None and self.best_of != self.n:
            raise ValueError("best_of: choosing the best of several samples is not supported; remove it or set it equal to n")
        if self.max_tokens == 0 and not self.echo:
            raise ValueError("max_tokens: 0 is only meaningful with echo: true")
        check_work(len(self.prompt_list), self.n, max(self.max_tokens or 16, 1))
        return self

    @property
    def token_prompt(self) -> bool:
        """One prompt given as token ids."""
        return isinstance(self.prompt, list) and bool(self.prompt) and all(isinstance(t, int) for t in self.prompt)

    @property
    def prompt_list(self) -> list:
        return [self.prompt] if isinstance(self.prompt, str) or self.token_prompt else list(self.prompt)


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # finite floats only (issue 13, item 2)
    type: Literal["text"]
    text: str = Field(max_length=100_000)


class OpenAIMessage(BaseModel):
    """A chat message as OpenAI clients send it: content as text or a list of text parts,
    roles system, developer (treated as system), user and assistant, an optional name."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # finite floats only (issue 13, item 2)
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] = Field(description="Text, or a list of text parts (joined).")
    name: str | None = Field(None, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")

    def plain(self) -> dict:
        """The message as the checkpoint's template takes it. A name is written before the
        content (`name: text`), since most chat templates have no field for it."""
        text = self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)
        role = "system" if self.role == "developer" else self.role
        return {"role": role, "content": f"{self.name}: {text}" if self.name else text}


class ChatRequest(OpenAIRequest):
    messages: list[OpenAIMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: dict | None = None

    @model_validator(mode="after")
    def _bounded(self):
        limits = get_settings()
        if self.max_completion_tokens is not None and self.max_completion_tokens > limits.generate_max_tokens:
            raise ValueError(f"max_completion_tokens: {self.max_completion_tokens} exceeds this deployment's limit of {limits.generate_max_tokens}")
        if self.max_tokens == 0:
            raise ValueError("max_tokens: must be at least 1 for chat")
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs: only allowed with logprobs: true")
        if self.response_format not in (None, {"type": "text"}):
            raise ValueError("response_format: only {\"type\": \"text\"} is supported (no JSON mode or schemas); remove it")
        check_work(1, self.n, self.max_completion_tokens or self.max_tokens or limits.generate_max_tokens)
        return self


def models(db: Database, tenant_id: str) -> dict:
    data = [{"id": m["id"], "object": "model", "created": m["created"], "owned_by": "amft"} for m in list_models(db, tenant_id)]
    return {"object": "list", "data": data}


def model(db: Database, tenant_id: str, model_id: str) -> dict:
    """GET /v1/models/{id}: one of the ids /v1/models lists."""
    for entry in models(db, tenant_id)["data"]:
        if entry["id"] == model_id:
            return entry
    raise NotFound(f"model: no model {model_id[:80]!r}; GET /v1/models lists yours")


def completion_sampling(request: CompletionRequest) -> dict:
    """The worker's sampling for a completion request (max_tokens defaults to 16, as OpenAI)."""
    if request.stream and request.logprobs is not None:
        raise InvalidInput("logprobs: not supported with stream: true; remove one of them")
    if request.stream and request.echo:
        raise InvalidInput("echo: not supported with stream: true; remove one of them")
    sampling = request.sampling(16 if request.max_tokens is None else request.max_tokens, request.logprobs)
    return {**sampling, "echo": request.echo}


def completions(db: Database, tenant_id: str, request: CompletionRequest, run: Run) -> dict:
    sampling = completion_sampling(request)
    reply = run_generation(db, tenant_id, request.model, request.prompt_list, sampling, run, raw=True)
    in_order = [(result, c) for result in reply["results"] for c in result["completions"]]
    choices = [
        {"index": i, "text": (result.get("prompt_text") or "") + c["text"] if request.echo else c["text"],
         "finish_reason": c["finish_reason"],
         "logprobs": None if request.logprobs is None else _completion_logprobs(c, result.get("prompt_logprobs"))}
        for i, (result, c) in enumerate(in_order)
    ]
    return _envelope("cmpl", "text_completion", reply, choices)


def chat(db: Database, tenant_id: str, request: ChatRequest, run: Run) -> dict:
    """Without max_tokens, as OpenAI: generate until the end of the model's context, here
    also bounded by the deployment cap (AMFT_GENERATE_MAX_TOKENS); the worker fits it."""
    conversation, sampling, fit_context = chat_sampling(request)
    reply = run_generation(db, tenant_id, request.model, [conversation], sampling, run, fit_context=fit_context)
    choices = [
        {"index": i, "message": {"role": "assistant", "content": c["text"]}, "finish_reason": c["finish_reason"],
         "logprobs": _chat_logprobs(c) if request.logprobs else None}
        for i, c in enumerate(reply["results"][0]["completions"])
    ]
    return _envelope("chatcmpl", "chat.completion", reply, choices)


def chat_sampling(request: ChatRequest) -> tuple[list[dict], dict, bool]:
    """(conversation, the worker's sampling, fit_context) for a chat request."""
    if request.stream and request.logprobs:
        raise InvalidInput("logprobs: not supported with stream: true; remove one of them")
    conversation = [m.plain() for m in request.messages]
    max_tokens = request.max_completion_tokens or request.max_tokens
    top = (request.top_logprobs or 0) if request.logprobs else None
    sampling = request.sampling(max_tokens or get_settings().generate_max_tokens, top)
    return conversation, sampling, max_tokens is None


def _completion_logprobs(completion: dict, prompt: list | None = None) -> dict:
    """The legacy completions shape: tokens, token_logprobs, top_logprobs, text_offset. With
    echo the prompt's tokens come first; the very first token has no log-probability."""
    tokens, values, tops, offsets, at = [], [], [], [], 0
    for entry in prompt or []:
        text = entry["text"]
        tokens.append(text)
        values.append(entry.get("logprob"))
        tops.append({t: lp for t, lp in entry["top"]} if "top" in entry else None)
        offsets.append(at)
        at += len(text)
    for entry in completion.get("logprobs") or []:
        tokens.append(entry["text"])
        values.append(entry["logprob"])
        tops.append({t: lp for t, lp in entry.get("top", [])})
        offsets.append(at)
        at += len(entry["text"])
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}


def _chat_logprobs(completion: dict) -> dict:
    def item(text: str, logprob: float) -> dict:
        return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

    content = [{**item(e["text"], e["logprob"]), "top_logprobs": [item(t, lp) for t, lp in e.get("top", [])]}
               for e in completion.get("logprobs") or []]
    return {"content": content}


def _envelope(prefix: str, kind: str, reply: dict, choices: list[dict]) -> dict:
    return {
        "id": f"{prefix}-{uuid.uuid4().hex}", "object": kind, "created": int(time.time()), "model": reply["model"],
        "choices": choices, "usage": usage(reply),
    }


def usage(reply: dict) -> dict:
    """OpenAI's usage object for a worker reply."""
    prompt_tokens = sum(r["prompt_tokens"] for r in reply["results"])
    completion_tokens = sum(c["tokens"] for r in reply["results"] for c in r["completions"])
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}
