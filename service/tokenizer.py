"""A model's own tokenizer over HTTP, so evaluation harnesses need no model hub.

lm-evaluation-harness's `local-completions` model (0.4.x, `tokenizer_backend` "auto" or
"remote") looks for vLLM's tokenizer endpoints next to its `base_url`: it strips
`/v1/completions` and calls `GET <rest>/tokenizer_info`, `POST <rest>/tokenize` and
`POST <rest>/detokenize`. A service with many models puts the model in that prefix:
with `base_url=<api>/v1/models/<model id>/v1/completions` the harness finds
`/v1/models/<model id>/tokenizer_info` etc., and completions posted there go to that
model. The worker answers from the engine's tokenizer (the checkpoint's own).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from service.db import Database
from service.inference import Run, resolve_model


class TokenizeRequest(BaseModel):
    """vLLM's /tokenize body (text prompts only)."""

    model_config = ConfigDict(extra="ignore")  # vLLM's other fields (model, return_token_strs) change nothing here
    prompt: str = Field(max_length=1_000_000, description="Text to tokenize.")
    add_special_tokens: bool = Field(False, description="Add the tokenizer's special tokens (BOS) as it would.")


class DetokenizeRequest(BaseModel):
    """vLLM's /detokenize body."""

    model_config = ConfigDict(extra="ignore")
    tokens: list[int] = Field(max_length=1_000_000, description="Token ids to turn back into text.")


def tokenizer_op(db: Database, tenant_id: str, model_ref: str, op: str, run: Run, **fields) -> dict:
    """Run one tokenizer operation (`tokenizer_info`, `tokenize`, `detokenize`) on the
    worker for a model the tenant may use."""
    model = resolve_model(db, tenant_id, model_ref)
    return run({"model": model, "op": op, **fields})
