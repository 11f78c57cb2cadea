"""HTTP plumbing of the client: the bearer key, retries on 429/503 with backoff (honouring
Retry-After), and errors raised as ApiError carrying the server's `detail` and `problems`."""

from __future__ import annotations

import json
import random
import time
from typing import Iterator

import httpx

RETRY_STATUSES = (429, 503)


class ApiError(Exception):
    """A non-2xx answer: `status`, the server's `detail` (what to fix) and `problems` (one per problem)."""

    def __init__(self, status: int, detail: str, problems: list[str] | None = None):
        super().__init__(f"HTTP {status}: {detail}")
        self.status, self.detail, self.problems = status, detail, problems or [detail]


def error_of(response: httpx.Response) -> ApiError:
    """The ApiError for a failed response (the API's body is {"detail", "problems"})."""
    try:
        body = response.json()
    except ValueError:
        body = {}
    detail = body.get("detail") if isinstance(body, dict) else None
    if not isinstance(detail, str):
        detail = response.text[:500] or response.reason_phrase
    problems = body.get("problems") if isinstance(body, dict) else None
    return ApiError(response.status_code, detail, problems if isinstance(problems, list) else None)


class Transport:
    """One httpx.Client with the key; `request` retries 429/503 and transport errors."""

    def __init__(self, url: str, key: str, timeout: float = 60.0, retries: int = 5, backoff: float = 0.5,
                 max_wait: float = 30.0):
        self.http = httpx.Client(base_url=url.rstrip("/"), headers={"Authorization": f"Bearer {key}"}, timeout=timeout)
        self.retries, self.backoff, self.max_wait = retries, backoff, max_wait

    def request(self, method: str, path: str, **kwargs) -> httpx.Response:
        """Send; on 429/503 (or a connection error) wait and retry up to `retries` times.
        A file `content` is rewound before each attempt: the previous one has read it."""
        body = kwargs.get("content")
        start = body.tell() if callable(getattr(body, "seekable", None)) and body.seekable() else None
        for attempt in range(self.retries + 1):
            if start is not None:
                body.seek(start)
            try:
                response = self.http.request(method, path, **kwargs)
            except httpx.TransportError:
                if attempt == self.retries:
                    raise
                time.sleep(self._delay(attempt, None))
                continue
            if response.status_code not in RETRY_STATUSES or attempt == self.retries:
                break
            time.sleep(self._delay(attempt, response.headers.get("retry-after")))
        if response.is_error:
            raise error_of(response)
        return response

    def json(self, method: str, path: str, **kwargs):
        return self.request(method, path, **kwargs).json()

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after:
            try:
                return min(float(retry_after), self.max_wait)
            except ValueError:
                pass  # an HTTP date: fall back to backoff
        return min(self.backoff * 2**attempt * (1 + random.random() / 2), self.max_wait)

    def sse(self, path: str, last_event_id: str | None = None) -> Iterator[dict]:
        """Server-Sent Events of `path` as {"event", "id", "data"} dicts (data parsed as JSON).
        Reconnects after a dropped connection with Last-Event-ID, so nothing is missed or repeated."""
        cursor, failures = last_event_id, 0
        while True:
            headers = {"Accept": "text/event-stream", **({"Last-Event-ID": cursor} if cursor else {})}
            try:
                with self.http.stream("GET", path, headers=headers, timeout=httpx.Timeout(30.0, read=60.0)) as response:
                    if response.is_error:
                        response.read()
                        raise error_of(response)
                    for message in _messages(response.iter_lines()):
                        failures = 0
                        cursor = message["id"] or cursor
                        yield message
                        if message["event"] == "end":
                            return
                # Closed before `end` (a proxy, an `error` message): reconnect, but with backoff,
                # so a server that keeps closing at once is not hammered in a tight loop.
                dropped: Exception = httpx.RemoteProtocolError(f"the event stream of {path} closed before its end")
            except httpx.TransportError as error:
                dropped = error
            failures += 1
            if failures > self.retries:
                raise dropped
            time.sleep(self._delay(failures - 1, None))

    def close(self) -> None:
        self.http.close()


def _messages(lines: Iterator[str]) -> Iterator[dict]:
    event, data, message_id = "message", [], None
    for line in lines:
        if not line:
            if data:
                yield {"event": event, "id": message_id, "data": json.loads("\n".join(data))}
            event, data = "message", []
        elif line.startswith(":"):
            continue  # a ping
        else:
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                event = value
            elif field == "data":
                data.append(value)
            elif field == "id":
                message_id = value
