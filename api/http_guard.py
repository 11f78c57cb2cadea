"""uvicorn HTTP protocols with a header-read deadline (issue 13, item 6: slow clients).

uvicorn 0.54 has `--timeout-keep-alive` (an idle connection between requests is closed),
but no timeout on reading a request: its keep-alive timer is cancelled by the first byte
that arrives, and no timer runs at all on a fresh connection. A client that sends its
request line and headers a byte at a time, or connects and sends nothing, holds a
connection (a file descriptor and a protocol object) forever; a few thousand of them
exhaust the server. `--h11-max-incomplete-event-size` bounds the bytes buffered, not the
time, and `--limit-concurrency` would let such clients lock everyone else out.

So these protocols add one timer per connection: from the moment a connection opens, or
the first byte of its next request arrives, the whole request line and headers must
arrive within `AMFT_HTTP_HEADER_TIMEOUT_SECONDS`; otherwise the server answers 408 (when
part of a request came) and closes the connection. Request bodies and responses are not
timed here (uploads stream at the client's pace; SSE streams are long by design).

Production: `uvicorn --http api.http_guard:GuardedHttpProtocol ...` (docker/api.Dockerfile);
`amft serve` passes `guarded_protocol(settings.http_header_timeout_seconds)`.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.h11_impl import H11Protocol

from service.settings import get_settings

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools not installed: uvicorn's auto choice is h11
    HttpToolsProtocol = None


class HeaderDeadline:
    """Mixin for a uvicorn HTTP protocol class: closes a connection whose request line and
    headers do not arrive within `header_timeout` seconds (None: AMFT_* settings)."""

    header_timeout: float | None = None

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.header_timeout is None:
            self.header_timeout = get_settings().http_header_timeout_seconds
        self._header_timer: asyncio.TimerHandle | None = None
        self._awaited_cycle = None  # the request cycle current when the timer was armed
        self._partial_request = False

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm_header_timer()  # a connection that sends nothing is dropped too

    def data_received(self, data: bytes) -> None:
        if self._header_timer is None and (self.cycle is None or self.cycle.response_complete):
            self._arm_header_timer()  # the first bytes of the next request on a kept-alive connection
        self._partial_request = True
        super().data_received(data)
        if self._header_timer is not None and self.cycle is not self._awaited_cycle:
            self._cancel_header_timer()  # the parser made a new request cycle: headers complete

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        self._awaited_cycle, self._partial_request = self.cycle, False
        self._header_timer = self.loop.call_later(self.header_timeout, self._header_timeout_expired)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout_expired(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self.transport.get_protocol() is not self:
            return  # closed already, or upgraded (a WebSocket's protocol owns the connection now)
        if self._partial_request:  # nothing of a response has been sent on this request yet
            body = f"request line and headers not received within {self.header_timeout:g} s\n".encode()
            self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
                                 b"connection: close\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        self.transport.close()


class GuardedH11Protocol(HeaderDeadline, H11Protocol):
    """uvicorn's h11 protocol with the header-read deadline."""


if HttpToolsProtocol is not None:

    class GuardedHttpToolsProtocol(HeaderDeadline, HttpToolsProtocol):
        """uvicorn's httptools protocol with the header-read deadline."""

    GuardedHttpProtocol: type = GuardedHttpToolsProtocol  # uvicorn's `--http auto` choice
else:
    GuardedHttpProtocol = GuardedH11Protocol


def guarded_protocol(header_timeout: float, base: type = GuardedHttpProtocol) -> type:
    """A guarded protocol class (uvicorn.Config(http=...)) with this header timeout."""
    return type(base.__name__, (base,), {"header_timeout": header_timeout})
