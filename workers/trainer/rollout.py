"""Rollout engines: sample completions from the current policy.

The loop only sees `RolloutEngine.generate`; a vLLM engine can implement the same method
(and refresh its weights in `sync`) without the loop changing.
"""

from __future__ import annotations

from typing import Protocol

import torch


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
    """Batched `model.generate` with a KV cache on the training model itself."""

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
        for start in range(0, len(rows), self.max_batch):
            chunk = rows[start : start + self.max_batch]
            completions.extend(self._generate_chunk(chunk, max_new_tokens, temperature, top_p, greedy))
        return completions

    def _generate_chunk(self, rows, max_new_tokens, temperature, top_p, greedy) -> list[list[int]]:
        device = next(self.model.parameters()).device
        width = max(len(r) for r in rows)
        input_ids = torch.tensor([[self.pad_id] * (width - len(r)) + r for r in rows], device=device)
        attention_mask = torch.tensor(
            [[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device
        )
        # top_k=0 disables the library's default top-k of 50: rollouts sample the policy itself.
        sampling = (
            {"do_sample": False}
            if greedy
            else {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}
        )
        was_training = self.model.training
        self.model.eval()
        try:
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                max_new_tokens=max_new_tokens,
                pad_token_id=self.pad_id,
                eos_token_id=self.eos_id,
                use_cache=True,
                **sampling,
            )
        finally:
            self.model.train(was_training)
        return [_until_eos(row.tolist(), self.eos_id) for row in out[:, width:]]


def _until_eos(ids: list[int], eos_id: int) -> list[int]:
    """Generated ids up to and including the first EOS; the padding after it dropped."""
    if eos_id in ids:
        return ids[: ids.index(eos_id) + 1]
    return ids
