"""OpenAI-compatible endpoints over the same engine: /v1/models, /v1/completions,
/v1/chat/completions (plain, or Server-Sent Events with `stream: true`). The tenant's API
key is the bearer token, so the official `openai` client works with
`OpenAI(base_url="http://host:port/v1", api_key=<key>)`.
"""

from __future__ import annotations

import itertools
import json
from typing import Iterator

from functools import partial

from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from pydantic import ValidationError

from api.deps import principal
from api.disconnect import disconnect_probe
from service import openai_compat, openai_stream, tokenizer
from service.auth import Principal
from service.openai_compat import ChatRequest, CompletionRequest
from service.tokenizer import DetokenizeRequest, TokenizeRequest

router = APIRouter(prefix="/v1", tags=["openai"])
# With `stream: true` the 200 is Server-Sent Events; documented so the schema matches (issue 6, case 22).
SSE_EVENT = {"type": "object", "properties": {"data": {"type": "string"}}}
STREAMED = {200: {"content": {"application/json": {}, "text/event-stream": {"schema": SSE_EVENT}}}}


@router.get("/models")
def models(request: Request, who: Principal = Depends(principal)) -> dict:
    """Your jobs (latest checkpoint), each checkpoint (`<job_id>:<step>`) and the base models."""
    return openai_compat.models(request.app.state.db, who.tenant_id)


# lm-evaluation-harness's remote tokenizer, per model (service.tokenizer); declared before
# /models/{model_id:path}, which would take these paths as model ids.
@router.get("/models/{model_id}/tokenizer_info")
def tokenizer_info(model_id: str, request: Request, who: Principal = Depends(principal)) -> dict:
    """The model's special tokens, chat template and context (vLLM's /tokenizer_info shape)."""
    return _tokenizer(request, who, model_id, "tokenizer_info")


@router.post("/models/{model_id}/tokenize")
def tokenize(model_id: str, body: TokenizeRequest, request: Request, who: Principal = Depends(principal)) -> dict:
    """Token ids of a text with the model's own tokenizer: {"tokens", "count"}."""
    return _tokenizer(request, who, model_id, "tokenize", **body.model_dump())


@router.post("/models/{model_id}/detokenize")
def detokenize(model_id: str, body: DetokenizeRequest, request: Request, who: Principal = Depends(principal)) -> dict:
    """The text of token ids: {"prompt"}."""
    return _tokenizer(request, who, model_id, "detokenize", **body.model_dump())


@router.post("/models/{model_id}/v1/completions", responses=STREAMED)
def model_completions(model_id: str, body: dict, request: Request, who: Principal = Depends(principal)):
    """/v1/completions for this model (the harness's `base_url`); a `model` in the body is replaced."""
    try:
        parsed = CompletionRequest.model_validate({**body, "model": model_id})
    except ValidationError as error:
        raise RequestValidationError(error.errors()) from None
    return completions(parsed, request, who)


def _tokenizer(request: Request, who: Principal, model_id: str, op: str, **fields) -> dict:
    state = request.app.state
    return tokenizer.tokenizer_op(state.db, who.tenant_id, model_id, op, state.inference.generate, **fields)


@router.get("/models/{model_id:path}")
def model(model_id: str, request: Request, who: Principal = Depends(principal)) -> dict:
    """One model of /v1/models (404 for any other id)."""
    return openai_compat.model(request.app.state.db, who.tenant_id, model_id)


@router.post("/completions", responses=STREAMED)
def completions(body: CompletionRequest, request: Request, who: Principal = Depends(principal)):
    state = request.app.state
    if body.stream:
        stream = partial(state.inference.stream, disconnected=disconnect_probe(request))
        return _sse(openai_stream.completion_stream(state.db, who.tenant_id, body, stream))
    run = partial(state.inference.generate, disconnected=disconnect_probe(request))
    return openai_compat.completions(state.db, who.tenant_id, body, run)


@router.post("/chat/completions", responses=STREAMED)
def chat_completions(body: ChatRequest, request: Request, who: Principal = Depends(principal)):
    state = request.app.state
    if body.stream:
        stream = partial(state.inference.stream, disconnected=disconnect_probe(request))
        return _sse(openai_stream.chat_stream(state.db, who.tenant_id, body, stream))
    run = partial(state.inference.generate, disconnected=disconnect_probe(request))
    return openai_compat.chat(state.db, who.tenant_id, body, run)


def _sse(chunks: Iterator[dict]) -> StreamingResponse:
    """Server-Sent Events of the chunks. The first chunk is taken here, in the route, so
    that an error the worker answers becomes its status (not a broken 200 stream)."""
    first = next(chunks)

    def lines() -> Iterator[str]:
        try:
            for chunk in itertools.chain([first], chunks):
                yield f"data: {json.dumps(chunk)}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            chunks.close()  # a client gone mid-stream: the worker is told to stop

    return StreamingResponse(lines(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
