"""Webhook endpoints (issue 17): register, list and delete, per tenant."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response

from api.deps import principal
from service import webhooks
from service.auth import Principal
from service.webhooks import EndpointRequest

router = APIRouter(tags=["webhooks"])


@router.post("/webhooks", status_code=201)
def create_webhook(body: EndpointRequest, request: Request, who: Principal = Depends(principal)) -> dict:
    """Register a URL for job.succeeded, job.failed, job.cancelled and checkpoint.created events.
    The answer holds the signing secret (Standard Webhooks, `whsec_...`), shown only once."""
    state = request.app.state
    return webhooks.register(state.db, who.tenant_id, body, state.settings.webhook_allowed_hosts)


@router.get("/webhooks")
def list_webhooks(request: Request, who: Principal = Depends(principal)) -> dict:
    """Your webhook endpoints (secrets are not shown again)."""
    return {"webhooks": webhooks.list_endpoints(request.app.state.db, who.tenant_id)}


@router.delete("/webhooks/{endpoint_id}", status_code=204)
def delete_webhook(endpoint_id: str, request: Request, who: Principal = Depends(principal)) -> Response:
    """Stop sending to this endpoint; its undelivered events are dropped."""
    webhooks.delete(request.app.state.db, who.tenant_id, endpoint_id)
    return Response(status_code=204)
