"""Rollout engines: sample completions from the current policy.

The loop only sees `RolloutEngine.generate`; a vLLM engine can implement the same method
(and refresh its weights in `sync`) without the loop changing.
"""

from __future__ import annotations

from typing import Protocol

import torch
from transformers import DynamicCache

from workers.trainer.batching import base_config, distinct_rows


class RolloutEngine(Protocol):
    def generate(
        self,
        prompts: list[list[int]],
        num_samples: int,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        greedy: bool = False,
    ) -> list[list[int]]:
        """Completion ids, num_samples per prompt, grouped by prompt, each ending at EOS if reached."""
        ...

    def sync(self, model: torch.nn.Module) -> None:
        """Make the engine sample from the model's current weights."""
        ...


class TransformersEngine:
    """Batched sampling with a KV cache on the training model itself.

    A plain decode loop rather than `model.generate`: with no logits processors, stopping
    criteria or per-step input preparation it decodes about a quarter faster on CPU, where
    a small model's decode step is dominated by per-call overhead. It samples exactly the
    tempered, nucleus-filtered policy and stops once every row has emitted EOS.
    """

    def __init__(self, model: torch.nn.Module, pad_id: int, eos_id: int, max_batch: int = 256):
        self.model = model
        self.pad_id, self.eos_id = pad_id, eos_id
        self.max_batch = max_batch

    def sync(self, model: torch.nn.Module) -> None:
        self.model = model  # same object, same weights: nothing to copy

    @torch.no_grad()
    def generate(
        self,
        prompts: list[list[int]],
        num_samples: int,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        greedy: bool = False,
    ) -> list[list[int]]:
        rows = [p for p in prompts for _ in range(num_samples)]
        completions: list[list[int]] = []
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(rows), self.max_batch):
                chunk = rows[start : start + self.max_batch]
                completions.extend(self._decode(chunk, max_new_tokens, temperature, top_p, greedy))
        finally:
            self.model.train(was_training)
        return completions

    def _decode(self, rows, max_new_tokens, temperature, top_p, greedy) -> list[list[int]]:
        device = next(self.model.parameters()).device
        input_ids, mask, positions = left_padded(rows, self.pad_id, device)
        cache = DynamicCache(config=base_config(self.model))
        # Prefill each distinct prompt once (a group's G samples share it), then copy its cache out.
        prompts, row_prompt, first_row = distinct_rows(input_ids)
        logits = self._forward(prompts, mask[first_row], positions[first_row], cache)[row_prompt]
        cache.batch_select_indices(row_prompt)

        def advance(token: torch.Tensor, _: int) -> torch.Tensor:
            nonlocal mask, positions
            mask = torch.cat([mask, torch.ones_like(token).unsqueeze(1)], dim=1)
            positions = positions[:, -1:] + 1
            return self._forward(token.unsqueeze(1), mask, positions, cache)

        return self._sample(logits, advance, max_new_tokens, temperature, top_p, greedy)

    def _sample(self, logits, advance, max_new_tokens, temperature, top_p, greedy) -> list[list[int]]:
        """Choose tokens until every row has emitted EOS; advance(token [B], t) gives the next logits [B, V]."""
        finished = torch.zeros(logits.shape[0], dtype=torch.bool, device=logits.device)
        generated = []
        for t in range(max_new_tokens):
            token = next_token(logits, temperature, top_p, greedy)
            token = torch.where(finished, torch.full_like(token, self.pad_id), token)
            generated.append(token)
            finished |= token == self.eos_id
            if bool(finished.all()) or t == max_new_tokens - 1:
                break
            logits = advance(token, t)
        return until_eos(generated, self.eos_id)

    def _forward(self, input_ids, mask, positions, cache) -> torch.Tensor:
        out = self.model(
            input_ids=input_ids, attention_mask=mask, position_ids=positions,
            cache=cache, use_cache=True, logits_to_keep=1,
        )
        return out.logits[:, -1, :].float()


def next_token(logits: torch.Tensor, temperature: float, top_p: float, greedy: bool) -> torch.Tensor:
    """One token per row from logits [B, V]: argmax, or a sample of softmax(logits / T) within top_p."""
    if greedy:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
        outside = sorted_probs.cumsum(dim=-1) - sorted_probs >= top_p
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.multinomial(probs, 1).squeeze(1)


def left_padded(rows: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Prompts as one left-padded batch: input_ids, attention mask and position ids, each [B, P]."""
    width = max(len(r) for r in rows)
    input_ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in rows], device=device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    return input_ids, mask, positions


def until_eos(generated: list[torch.Tensor], eos_id: int) -> list[list[int]]:
    """Per row, the generated ids (one [B] tensor per step) up to and including the first EOS."""
    completions = []
    for ids in torch.stack(generated, dim=1).tolist():
        completions.append(ids[: ids.index(eos_id) + 1] if eos_id in ids else ids)
    return completions
