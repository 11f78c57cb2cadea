"""Webhook delivery (issue 17): a daemon thread in every API process that sends due outbox
rows, signed with the Standard Webhooks scheme (`standardwebhooks`: HMAC-SHA256 over
`id.timestamp.body`, headers webhook-id / webhook-timestamp / webhook-signature).

At least once: a row is leased (`claimed_until`) by one deliverer with a conditional
UPDATE, sent, then marked delivered. A non-2xx answer or a network error schedules a retry
with exponential backoff; a deliverer that dies mid-send (its process killed) leaves the
lease to expire and another pass sends the same row again, with the same webhook-id.
After `AMFT_WEBHOOK_MAX_ATTEMPTS` the row is given up (kept, with its last error).
"""

from __future__ import annotations

import json
import logging
import threading
from datetime import timedelta

import httpx
from sqlalchemy import select, update
from standardwebhooks import Webhook

from service.db import Database
from service.errors import InvalidInput
from service.models import utcnow
from service.settings import Settings
from service.webhooks import OutboxMessage, WebhookEndpoint, check_destination

log = logging.getLogger(__name__)
BATCH = 20


class Deliverer:
    """Start with `start()`, stop with `stop()`; `run_once()` is one pass (for tests too)."""

    def __init__(self, db: Database, settings: Settings):
        self.db, self.settings = db, settings
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="amft-webhooks", daemon=True)
        self._http = httpx.Client(timeout=settings.webhook_timeout_seconds, follow_redirects=False)

    def start(self) -> Deliverer:
        if self.settings.webhook_poll_seconds > 0:
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.settings.webhook_timeout_seconds + 5)
        self._http.close()

    def run_once(self) -> int:
        """Send every due row this deliverer can lease; returns how many were attempted."""
        sent = 0
        for message_id in self._due():
            if self._lease(message_id):
                self._deliver(message_id)
                sent += 1
        return sent

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:  # noqa: BLE001 - e.g. the database restarting; next tick
                log.warning("webhook delivery pass failed", exc_info=True)
            self._stop.wait(self.settings.webhook_poll_seconds)

    def _due(self) -> list[str]:
        now = utcnow()
        with self.db.read() as session:
            return list(session.scalars(
                select(OutboxMessage.id)
                .where(OutboxMessage.delivered_at.is_(None), OutboxMessage.given_up_at.is_(None),
                       OutboxMessage.next_attempt_at <= now,
                       OutboxMessage.claimed_until.is_(None) | (OutboxMessage.claimed_until < now))
                .order_by(OutboxMessage.created_at).limit(BATCH)
            ))

    def _lease(self, message_id: str) -> bool:
        now = utcnow()
        with self.db.transaction() as session:
            return session.execute(
                update(OutboxMessage)
                .where(OutboxMessage.id == message_id, OutboxMessage.delivered_at.is_(None),
                       OutboxMessage.claimed_until.is_(None) | (OutboxMessage.claimed_until < now))
                .values(claimed_until=now + timedelta(seconds=self.settings.webhook_claim_seconds))
            ).rowcount == 1

    def _deliver(self, message_id: str) -> None:
        with self.db.read() as session:
            message, endpoint = session.execute(
                select(OutboxMessage, WebhookEndpoint).join(WebhookEndpoint, OutboxMessage.endpoint_id == WebhookEndpoint.id)
                .where(OutboxMessage.id == message_id)
            ).one()
            url, secret, attempts, body = endpoint.url, endpoint.secret, message.attempts, json.dumps(message.payload)
        error = self._send(message_id, url, secret, body)
        self._record(message_id, attempts + 1, error)

    def _send(self, message_id: str, url: str, secret: str, body: str) -> str | None:
        """POST the signed body; None on a 2xx answer, else what went wrong."""
        try:
            check_destination(url, self.settings.webhook_allowed_hosts)  # again: where the name points may have changed
        except InvalidInput as refused:
            return refused.message
        now = utcnow()
        headers = {"content-type": "application/json", "webhook-id": message_id,
                   "webhook-timestamp": str(int(now.timestamp())),
                   "webhook-signature": Webhook(secret).sign(message_id, now, body)}
        try:
            response = self._http.post(url, content=body.encode(), headers=headers)
        except httpx.HTTPError as failure:
            return f"{type(failure).__name__}: {failure}"[:1000]
        return None if 200 <= response.status_code < 300 else f"HTTP {response.status_code}"

    def _record(self, message_id: str, attempts: int, error: str | None) -> None:
        now, s = utcnow(), self.settings
        values: dict = {"attempts": attempts, "claimed_until": None, "last_error": error}
        if error is None:
            values["delivered_at"] = now
        elif attempts >= s.webhook_max_attempts:
            values["given_up_at"] = now
        else:
            delay = min(s.webhook_backoff_seconds * 2 ** (attempts - 1), s.webhook_backoff_max_seconds)
            values["next_attempt_at"] = now + timedelta(seconds=delay)
        with self.db.transaction() as session:
            session.execute(update(OutboxMessage).where(OutboxMessage.id == message_id).values(**values))
