"""Token ids in, padded tensors out: the one layout every forward pass uses.

A batch row is [left-padded prompt | completion | right padding]. Left-padding the prompts
puts every completion at the same offset, so the logits that predict completion tokens are
one contiguous slice, and the LM head (a large share of a small model's compute) runs on
completion positions only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from workers.trainer.models import format_prompt


def encode_prompt(tokenizer, prompt, max_tokens: int) -> list[int]:
    """Prompt ids, formatted as generation sees them, keeping the last max_tokens."""
    ids = tokenizer(format_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]
    return ids[-max_tokens:]


def encode_completion(tokenizer, completion: str, max_tokens: int) -> list[int]:
    """Expert completion ids ending in EOS (so the model learns to stop), truncated."""
    ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    return (ids + [tokenizer.eos_token_id])[:max_tokens]


@dataclass
class PackedBatch:
    """input_ids/attention_mask/position_ids: [B, L]; targets/completion_mask: [B, C]."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    targets: torch.Tensor
    completion_mask: torch.Tensor

    @property
    def completion_len(self) -> int:
        return self.targets.shape[1]

    def to(self, device: torch.device | str) -> PackedBatch:
        return PackedBatch(*(t.to(device) for t in vars(self).values()))

    def micro_batches(self, rows: int) -> list[PackedBatch]:
        """Consecutive row slices of at most `rows` rows each."""
        size = self.input_ids.shape[0]
        return [PackedBatch(*(t[i : i + rows] for t in vars(self).values())) for i in range(0, size, rows)]


def pack(prompts: list[list[int]], completions: list[list[int]], pad_id: int) -> PackedBatch:
    """Pack (prompt, completion) id lists into one right-aligned-prompt batch."""
    prompt_len = max(len(p) for p in prompts)
    completion_len = max(max(len(c) for c in completions), 1)
    rows, masks = [], []
    for prompt, completion in zip(prompts, completions):
        left = prompt_len - len(prompt)
        right = completion_len - len(completion)
        rows.append([pad_id] * left + prompt + completion + [pad_id] * right)
        masks.append([0] * left + [1] * (len(prompt) + len(completion)) + [0] * right)
    input_ids = torch.tensor(rows, dtype=torch.long)
    attention_mask = torch.tensor(masks, dtype=torch.long)
    # Positions count real tokens only, as generation with left padding numbers them.
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    completion_mask = attention_mask[:, prompt_len:].float()
    return PackedBatch(
        input_ids, attention_mask, position_ids, input_ids[:, prompt_len:], completion_mask
    )


def completion_logits(model, batch: PackedBatch) -> torch.Tensor:
    """Logits predicting each completion token: [B, C, V]. The LM head skips the prompt."""
    out = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        logits_to_keep=batch.completion_len + 1,
        use_cache=False,
    )
    # Position i predicts token i + 1: drop the last position (it predicts past the end).
    return out.logits[:, :-1, :]
