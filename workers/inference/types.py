"""Plain data passed between the engine cache, the backends and the Celery tasks.

Everything here is JSON-friendly (`to_dict` / `from_dict`), because requests and results
travel through the broker between the API and the inference worker.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

FinishReason = Literal["stop", "length"]


class InferenceError(Exception):
    """A generation request the worker cannot serve. `code` maps to an HTTP status:
    `not_found` (404: checkpoint missing), `invalid` (422: bad request), `unavailable`
    (503: backend cannot run here), `internal` (500)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    def to_dict(self) -> dict:
        return {"error": {"code": self.code, "message": self.message}}


@dataclass(frozen=True)
class Sampling:
    """How to sample. temperature 0 is greedy; `seed` makes sampling reproducible."""

    max_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    seed: int | None = None
    stop: tuple[str, ...] = ()
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logit_bias: dict | None = None  # token id (as text, JSON keys) -> bias added to its logit
    logprobs: int | None = None  # None: none; k >= 0: each token's logprob plus k alternatives
    echo: bool = False  # also score the prompt's tokens (OpenAI completions' echo)

    @classmethod
    def from_dict(cls, data: dict) -> Sampling:
        return cls(**{**data, "stop": tuple(data.get("stop") or ())})

    def to_dict(self) -> dict:
        return {**asdict(self), "stop": list(self.stop)}


@dataclass
class Completion:
    """One sampled continuation of one prompt."""

    text: str
    tokens: int
    finish_reason: FinishReason
    logprobs: list | None = None


@dataclass
class PromptResult:
    """All `n` completions of one prompt, with the prompt's token count."""

    prompt_tokens: int
    completions: list[Completion] = field(default_factory=list)
    prompt_text: str | None = None  # with echo: the prompt as text
    prompt_logprobs: list | None = None  # with echo: one entry per prompt token (the first None)

    def to_dict(self) -> dict:
        completions = [{k: v for k, v in asdict(c).items() if k != "logprobs" or v is not None} for c in self.completions]
        echo = {} if self.prompt_logprobs is None else {"prompt_text": self.prompt_text, "prompt_logprobs": self.prompt_logprobs}
        return {"prompt_tokens": self.prompt_tokens, "completions": completions, **echo}


@dataclass(eq=False)
class Row:
    """One sequence to decode: a prompt's token ids and its sampling settings, plus its
    decoding state, which lives on the row so that decoding can pause and resume.

    A request with n > 1 becomes n rows. `seed` is the row's own seed (request seed + the
    row's index), so a seeded request samples the same text however it is batched or
    sliced (its generator is kept here between slices).
    """

    prompt_ids: list[int]
    sampling: Sampling
    seed: int | None
    generated: list[int] = field(default_factory=list)
    finish_reason: str | None = None  # "stop" | "length" | "cancelled" once finished
    text: str | None = None  # final text, set when a stop string cut it
    generator: Any = None  # the engine's per-row RNG, created on first use
    request: Any = None  # the batcher's request this row belongs to
    logprobs: list | None = None  # per generated token, when the sampling asks for them
    prompt_logprobs: list | None = None  # per prompt token (the first is None), with echo

    @property
    def done(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RowOutput:
    """What decoding produced for one row (text already cut at a stop string)."""

    token_ids: list[int]
    text: str
    finish_reason: FinishReason
    logprobs: list | None = None
    prompt_logprobs: list | None = None
