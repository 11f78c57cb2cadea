"""Whether the HTTP client of a running sync route is still connected.

Sync routes run in anyio worker threads; `Request.is_disconnected` is async, so the probe
runs it on the event loop. Generation waits use it to stop work nobody will read.
"""

from __future__ import annotations

from typing import Callable

import anyio.from_thread
from fastapi import Request


def disconnect_probe(request: Request) -> Callable[[], bool]:
    """A callable for worker threads: True once the client has closed the connection."""

    def disconnected() -> bool:
        try:
            return bool(anyio.from_thread.run(request.is_disconnected))
        except RuntimeError:  # not inside an anyio worker thread: cannot tell
            return False

    return disconnected
