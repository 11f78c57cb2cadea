"""Domain errors. The API maps each to one HTTP status; the CLI prints the message.

Every message says what to fix, because it is shown to the user as it is.
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base class: `message` is the user-facing text, `problems` one line per problem."""

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.message = message
        self.problems = problems or [message]


class NotFound(ServiceError):
    """No such resource for this tenant (another tenant's ids look exactly like this)."""


class Conflict(ServiceError):
    """The request is valid but the resource's state forbids it (e.g. cancel a finished job)."""


class InvalidInput(ServiceError):
    """The request itself is wrong (bad spec reference, reused Idempotency-Key...)."""


class TooLarge(ServiceError):
    """The request body is larger than this deployment accepts."""


class TooManyRequests(ServiceError):
    """A per-tenant quota (queued jobs, stored upload bytes) is used up; the message names
    the limit and its setting (issue 13, item 8)."""


class Unauthorized(ServiceError):
    """Missing, unknown or revoked API key."""


class Fenced(Exception):
    """This worker's attempt is no longer the job's current one: it must stop writing."""


class Unavailable(ServiceError):
    """A backend the request needs cannot serve it right now (e.g. no inference engine)."""


class GatewayTimeout(ServiceError):
    """A backend (the inference worker) did not answer in time."""


class ClientClosed(ServiceError):
    """The caller disconnected before the answer was ready; its work was stopped."""
