"""Per-row token choice: each row of a batch keeps its own temperature, top_p and seed.

Shapes: logits [B, V] in, token ids [B] out. Rows with temperature 0 take the argmax.
"""

from __future__ import annotations

import torch

from workers.inference.types import Row


def row_generators(rows: list[Row]) -> list[torch.Generator | None]:
    """A seeded CPU generator per seeded sampling row; None for greedy or unseeded rows."""
    generators: list[torch.Generator | None] = []
    for row in rows:
        if row.sampling.temperature == 0 or row.seed is None:
            generators.append(None)
        else:
            generator = torch.Generator()
            generator.manual_seed(row.seed)
            generators.append(generator)
    return generators


def choose_tokens(
    logits: torch.Tensor, temperatures: torch.Tensor, top_ps: torch.Tensor, generators: list[torch.Generator | None]
) -> torch.Tensor:
    """Next token per row. logits [B, V]; temperatures, top_ps [B]."""
    logits = logits.float()
    greedy = temperatures == 0
    chosen = logits.argmax(dim=-1)  # [B]
    if bool(greedy.all()):
        return chosen
    scaled = logits / torch.where(greedy, torch.ones_like(temperatures), temperatures).unsqueeze(1)
    probs = nucleus(torch.softmax(scaled, dim=-1), top_ps).cpu()  # [B, V]
    for index in (~greedy).nonzero().flatten().tolist():
        sample = torch.multinomial(probs[index], 1, generator=generators[index])
        chosen[index] = sample.to(chosen.device)[0]
    return chosen


def nucleus(probs: torch.Tensor, top_ps: torch.Tensor) -> torch.Tensor:
    """Zero the tail of each row beyond its top_p mass (the top token always stays)."""
    if bool((top_ps >= 1.0).all()):
        return probs
    sorted_probs, order = probs.sort(dim=-1, descending=True)  # [B, V]
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass of strictly better tokens
    drop_sorted = mass_before >= top_ps.unsqueeze(1)  # [B, V]
    drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
    kept = probs.masked_fill(drop, 0.0)
    return kept / kept.sum(dim=-1, keepdim=True)


def cut_at_stop(text: str, stops: tuple[str, ...]) -> str | None:
    """`text` up to the earliest stop string, or None when none occurs."""
    positions = [text.find(stop) for stop in stops if stop]
    positions = [p for p in positions if p >= 0]
    return text[: min(positions)] if positions else None
