"""Token streaming: the text each row has added since the last decode step.

The engine calls a `TextDeltas` after every decode step (the batcher request's
`on_step`). It decodes each row's tokens so far and sends only what is safe to show:

- text that could still be the start of a stop string is held back (a stop may arrive
  split across tokens: "##" then "#"), so streamed text never contains any part of a stop
  the final text was cut at;
- a trailing incomplete UTF-8 character (decoded as U+FFFD) waits for its next byte;
- text already sent is never revised: if a longer decode no longer starts with it (rare
  tokenizer clean-ups), nothing more is sent for the row until the end, and the API
  sends the final text's remainder from the reply.

A finished row sends the rest of its final text (cut at its stop). Deltas are
`[row index, text]` pairs, the row index being the choice index (prompt x n + sample).
"""

from __future__ import annotations

import logging
from typing import Callable

log = logging.getLogger(__name__)
Send = Callable[[list[list]], None]


def held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters of `text` could begin a stop string (0 if none)."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest


class TextDeltas:
    """`on_step` callback: sends each row's new, safe text through `send(deltas)`."""

    def __init__(self, decode: Callable[[list[int]], str], send: Send):
        self.decode = decode
        self.send = send
        self.sent: dict[int, str] = {}

    def __call__(self, request) -> None:
        deltas = []
        for index, row in enumerate(request.rows):
            sent = self.sent.get(index, "")
            text = self.visible(row)
            if len(text) > len(sent) and text.startswith(sent):
                deltas.append([index, text[len(sent):]])
                self.sent[index] = text
        if deltas:
            try:
                self.send(deltas)
            except Exception:  # noqa: BLE001 - a lost delta must not fail the decode slice
                log.exception("could not send streamed text")

    def visible(self, row) -> str:
        """The row's text that may be shown now."""
        if row.done:
            return row.text if row.text is not None else self.decode(row.generated)
        text = self.decode(row.generated).rstrip("\ufffd")
        return text[: len(text) - held_back(text, row.sampling.stop)]
