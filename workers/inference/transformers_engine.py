"""The `transformers` backend (CPU or GPU): one KV-cached decode loop over a mixed batch.

`model.generate` takes one set of sampling settings per call, so batching requests with
different temperatures, seeds, stops and lengths through it would split them apart again.
This loop runs the model itself: a left-padded prefill, then one token per step for every
row, each row chosen with its own settings (workers.inference.sampling) and finished on
EOS, its own max_tokens or a stop string. Finished rows ride along until all are done.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from workers.inference.engine import BatchedEngine
from workers.inference.sampling import choose_tokens, cut_at_stop, row_generators
from workers.inference.types import Row, RowOutput


class TransformersEngine(BatchedEngine):
    """A loaded model + tokenizer behind a micro-batching queue."""

    backend = "transformers"

    def __init__(self, model, tokenizer, *, window_s: float = 0.005, max_rows: int = 64, name: str = "model"):
        self.model = model.eval()
        self.device = next(model.parameters()).device
        max_context = int(getattr(model.config, "max_position_embeddings", 2048) or 2048)
        super().__init__(tokenizer, max_context=max_context, window_s=window_s, max_rows=max_rows, name=name)
        self.pad_id = tokenizer.pad_token_id
        self.eos_ids = _eos_ids(model, tokenizer)
        tensors = list(model.parameters()) + list(model.buffers())
        self.memory_bytes = sum(t.numel() * t.element_size() for t in tensors)

    @torch.inference_mode()
    def run_batch(self, rows: list[Row]) -> list[RowOutput]:
        """Decode every row to its end; outputs in row order."""
        state = _DecodeState(rows, self.eos_ids, self.tokenizer)
        input_ids, attention_mask = self._left_pad([row.prompt_ids for row in rows])
        position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
        temperatures = torch.tensor([row.sampling.temperature for row in rows], device=self.device)
        top_ps = torch.tensor([row.sampling.top_p for row in rows], device=self.device)
        generators = row_generators(rows)
        cache = DynamicCache(config=self.model.config)  # filled in place by each forward
        for _ in range(state.longest):
            out = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            tokens = choose_tokens(out.logits[:, -1, :], temperatures, top_ps, generators)
            if state.add(tokens.tolist()):
                break
            input_ids = tokens.masked_fill(state.done_mask(self.device), self.pad_id).unsqueeze(1)
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones((len(rows), 1))], dim=1)
            position_ids = position_ids[:, -1:] + 1
        return state.outputs()

    def _left_pad(self, prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """input_ids and attention_mask [B, L], prompts aligned to the right."""
        width = max(len(p) for p in prompts)
        ids = [[self.pad_id] * (width - len(p)) + p for p in prompts]
        mask = [[0] * (width - len(p)) + [1] * len(p) for p in prompts]
        return (
            torch.tensor(ids, dtype=torch.long, device=self.device),
            torch.tensor(mask, dtype=torch.long, device=self.device),
        )


class _DecodeState:
    """Per-row bookkeeping: generated ids, which rows are done, and why."""

    def __init__(self, rows: list[Row], eos_ids: set[int], tokenizer):
        self.rows, self.eos_ids, self.tokenizer = rows, eos_ids, tokenizer
        self.generated: list[list[int]] = [[] for _ in rows]
        self.reasons: list[str | None] = [None] * len(rows)
        self.texts: list[str | None] = [None] * len(rows)
        self.longest = max(row.sampling.max_tokens for row in rows)

    def add(self, tokens: list[int]) -> bool:
        """Append this step's token to every unfinished row; True when all rows are done."""
        for index, token in enumerate(tokens):
            if self.reasons[index] is None:
                self._add_one(index, token)
        return all(reason is not None for reason in self.reasons)

    def _add_one(self, index: int, token: int) -> None:
        row, ids = self.rows[index], self.generated[index]
        if token in self.eos_ids:
            self.reasons[index] = "stop"
            return
        ids.append(token)
        if row.sampling.stop:
            cut = cut_at_stop(self.tokenizer.decode(ids, skip_special_tokens=True), row.sampling.stop)
            if cut is not None:
                self.reasons[index], self.texts[index] = "stop", cut
                return
        if len(ids) >= row.sampling.max_tokens:
            self.reasons[index] = "length"

    def done_mask(self, device) -> torch.Tensor:
        return torch.tensor([reason is not None for reason in self.reasons], device=device)

    def outputs(self) -> list[RowOutput]:
        results = []
        for ids, reason, text in zip(self.generated, self.reasons, self.texts):
            if text is None:
                text = self.tokenizer.decode(ids, skip_special_tokens=True)
            results.append(RowOutput(token_ids=ids, text=text, finish_reason=reason or "length"))
        return results


def _eos_ids(model, tokenizer) -> set[int]:
    """Every id that ends a completion: the tokenizer's EOS and the generation config's."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(configured)
    return ids
