"""POST /generate: completions from any checkpoint (or a built-in base model).

Thin: validate, one service call, return. The call runs on the inference worker (queue
`inference`) and waits up to AMFT_INFERENCE_TIMEOUT_SECONDS (504 after that); when the
client disconnects or the timeout passes, the worker is told to stop the work.
"""

from __future__ import annotations

from functools import partial

from fastapi import APIRouter, Depends, Request

from api.deps import principal
from api.disconnect import disconnect_probe
from service import inference
from service.auth import Principal
from service.inference import GenerateRequest

router = APIRouter(tags=["generate"])


@router.post("/generate")
def generate(body: GenerateRequest, request: Request, who: Principal = Depends(principal)) -> dict:
    """`model`: `<job_id>` (latest checkpoint), `<job_id>:<step>` or `base:builtin:tiny`.
    Prompts are texts or chat conversations; each gets `n` completions with token counts
    and finish reasons (`stop` or `length`)."""
    state = request.app.state
    run = partial(state.inference.generate, disconnected=disconnect_probe(request))
    return inference.generate(state.db, who.tenant_id, body, run)
