"""Per-row token choice: each row of a batch keeps its own temperature, top_p and seed.

Shapes: logits [B, V] in, token ids [B] out. Rows with temperature 0 take the argmax.
"""

from __future__ import annotations

import torch

from workers.inference.types import Row


def row_generators(rows: list[Row]) -> list[torch.Generator | None]:
    """A seeded CPU generator per seeded sampling row (kept on the row, so a row paused
    between slices continues the same random stream); None for greedy or unseeded rows."""
    for row in rows:
        if row.generator is None and row.sampling.temperature != 0 and row.seed is not None:
            row.generator = torch.Generator()
            row.generator.manual_seed(row.seed)
    return [row.generator for row in rows]


def adjust_logits(logits: torch.Tensor, rows: list[Row]) -> torch.Tensor:
    """OpenAI's logit_bias, frequency_penalty and presence_penalty, per row. logits [B, V]
    (float) in, adjusted [B, V] out; penalties count the row's generated tokens so far."""
    adjusted = None
    for index, row in enumerate(rows):
        s = row.sampling
        if not (s.logit_bias or s.frequency_penalty or s.presence_penalty):
            continue
        if adjusted is None:
            adjusted = logits.clone()
        if s.logit_bias:
            ids = torch.tensor([int(k) for k in s.logit_bias], device=logits.device)
            ids = ids.clamp(max=logits.shape[-1] - 1)
            adjusted[index].index_add_(0, ids, torch.tensor(list(s.logit_bias.values()), device=logits.device))
        if (s.frequency_penalty or s.presence_penalty) and row.generated:
            counts = torch.bincount(torch.tensor(row.generated), minlength=logits.shape[-1])[: logits.shape[-1]]
            counts = counts.to(logits.device, logits.dtype)
            adjusted[index] -= s.frequency_penalty * counts + s.presence_penalty * (counts > 0).to(logits.dtype)
    return logits if adjusted is None else adjusted


def token_logprobs(log_probs: torch.Tensor, token: int, top: int) -> dict:
    """One token's log-probability and the `top` most likely alternatives. log_probs [V]."""
    entry = {"token": token, "logprob": float(log_probs[token])}
    if top:
        values, ids = log_probs.topk(top)
        entry["top"] = [[int(i), float(v)] for v, i in zip(values.tolist(), ids.tolist())]
    return entry


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
