"""Webhooks (issue 17): per-tenant endpoints and the durable outbox they are delivered from.

- `register`/`list_endpoints`/`delete`: the tenant's endpoints. The URL must resolve only
  to public addresses (every address the name resolves to is checked) unless the operator
  allowlist `AMFT_WEBHOOK_ALLOWED_HOSTS` names the host, its address or a network holding
  it; the same check runs again at each delivery (DNS may change).
- `enqueue`: called by the lifecycle inside the transaction that changes the job, so an
  event exists if and only if its state change committed (a transactional outbox). One
  outbox row per matching endpoint; its id is the Standard Webhooks `webhook-id`, the same
  on every retry, so receivers can de-duplicate.
Delivery itself is service.webhook_delivery.
"""

from __future__ import annotations

import base64
import ipaddress
import secrets
import socket
import uuid
from datetime import datetime
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import JSON, ForeignKey, Index, Integer, String, Text, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from service.db import Database
from service.errors import InvalidInput, NotFound
from service.models import Base, Job, UTCDateTime, utcnow

EVENT_TYPES = ("job.succeeded", "job.failed", "job.cancelled", "checkpoint.created")
# lifecycle event kind -> webhook event type
KIND_TO_TYPE = {"succeeded": "job.succeeded", "failed": "job.failed", "cancelled": "job.cancelled",
                "checkpoint": "checkpoint.created"}
MAX_ENDPOINTS = 20


class WebhookEndpoint(Base):
    __tablename__ = "webhook_endpoints"
    __table_args__ = (Index("ix_webhook_endpoints_tenant", "tenant_id"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    url: Mapped[str] = mapped_column(Text)
    secret: Mapped[str] = mapped_column(String(64))  # whsec_<base64>, the Standard Webhooks form
    events: Mapped[list] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class OutboxMessage(Base):
    __tablename__ = "webhook_outbox"
    __table_args__ = (Index("ix_webhook_outbox_due", "delivered_at", "next_attempt_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # msg_<hex>: the webhook-id
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"))
    event_type: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict] = mapped_column(JSON)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime)  # a deliverer's lease
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    given_up_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class EndpointRequest(BaseModel):
    """POST /webhooks body."""

    model_config = ConfigDict(extra="forbid")
    url: str = Field(..., max_length=2000, description="http(s) URL that receives the events (POST, JSON).")
    events: list[str] = Field(
        default_factory=lambda: list(EVENT_TYPES), min_length=1,
        description="Event types: " + ", ".join(EVENT_TYPES) + " (default all).",
    )


def register(db: Database, tenant_id: str, request: EndpointRequest, allowed_hosts: str) -> dict:
    """Store an endpoint; the answer shows its signing secret (only this once).
    `allowed_hosts`: the operator allowlist (AMFT_WEBHOOK_ALLOWED_HOSTS)."""
    unknown = sorted(set(request.events) - set(EVENT_TYPES))
    if unknown:
        raise InvalidInput(f"events: unknown {unknown}; choose from {list(EVENT_TYPES)}")
    check_destination(request.url, allowed_hosts)
    endpoint = WebhookEndpoint(id=uuid.uuid4().hex, tenant_id=tenant_id, url=request.url,
                               secret="whsec_" + base64.b64encode(secrets.token_bytes(24)).decode(),
                               events=sorted(set(request.events)))
    with db.transaction() as session:
        count = len(session.scalars(select(WebhookEndpoint.id).where(WebhookEndpoint.tenant_id == tenant_id)).all())
        if count >= MAX_ENDPOINTS:
            raise InvalidInput(f"at most {MAX_ENDPOINTS} webhook endpoints per tenant; delete one first")
        session.add(endpoint)
    return _view(endpoint) | {"secret": endpoint.secret}


def list_endpoints(db: Database, tenant_id: str) -> list[dict]:
    """This tenant's endpoints (without secrets)."""
    with db.read() as session:
        rows = session.scalars(select(WebhookEndpoint).where(WebhookEndpoint.tenant_id == tenant_id)
                               .order_by(WebhookEndpoint.created_at)).all()
        return [_view(row) for row in rows]


def delete(db: Database, tenant_id: str, endpoint_id: str) -> None:
    """Remove an endpoint and its undelivered events; 404 for anyone else's."""
    with db.transaction() as session:
        row = session.scalar(select(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id,
                                                           WebhookEndpoint.tenant_id == tenant_id))
        if row is None:
            raise NotFound(f"no webhook endpoint {endpoint_id}")
        session.query(OutboxMessage).filter(OutboxMessage.endpoint_id == endpoint_id).delete()
        session.delete(row)


def enqueue(session: Session, job_id: str, kind: str, data: dict | None) -> None:
    """Inside the lifecycle's transaction: one outbox row per endpoint wanting this event."""
    event_type = KIND_TO_TYPE.get(kind)
    if event_type is None:
        return
    tenant_id = session.scalar(select(Job.tenant_id).where(Job.id == job_id))
    endpoints = session.scalars(select(WebhookEndpoint).where(WebhookEndpoint.tenant_id == tenant_id)).all()
    now = utcnow()
    for endpoint in endpoints:
        if event_type not in endpoint.events:
            continue
        payload = {"type": event_type, "timestamp": now.isoformat().replace("+00:00", "Z"),
                   "data": {"job_id": job_id, **(data or {})}}
        session.add(OutboxMessage(id=f"msg_{uuid.uuid4().hex}", endpoint_id=endpoint.id, event_type=event_type,
                                  payload=payload, next_attempt_at=now))


def check_destination(url: str, allowed_hosts: str) -> None:
    """Refuse URLs that are not http(s) or reach private, loopback, link-local or other
    non-public addresses, unless the operator allowlist names them (SSRF)."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:  # a malformed IPv6 literal or port
        raise InvalidInput("url: not a valid URL (check the host and port)") from None
    if parts.scheme not in ("http", "https") or not host:
        raise InvalidInput("url: must be an http:// or https:// URL with a host")
    allowed = [entry.strip() for entry in allowed_hosts.split(",") if entry.strip()]
    if host in allowed:
        return
    try:
        infos = socket.getaddrinfo(host, port or (443 if parts.scheme == "https" else 80), type=socket.SOCK_STREAM)
    except (OSError, ValueError):  # gaierror, an IDNA error, an embedded NUL
        raise InvalidInput(f"url: the host {host!r} does not resolve") from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%")[0])
        if not address.is_global and not _allowlisted(address, allowed):
            raise InvalidInput(
                f"url: {host} resolves to {address}, a private or reserved address; webhooks go to public "
                "addresses only (an operator can allow a host with AMFT_WEBHOOK_ALLOWED_HOSTS)"
            )


def _allowlisted(address: ipaddress.IPv4Address | ipaddress.IPv6Address, allowed: list[str]) -> bool:
    for entry in allowed:
        try:
            if address in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue  # a host name entry, matched by name above
    return False


def _view(endpoint: WebhookEndpoint) -> dict:
    return {"id": endpoint.id, "url": endpoint.url, "events": endpoint.events, "created_at": endpoint.created_at}
