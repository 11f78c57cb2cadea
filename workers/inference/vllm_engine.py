"""The `vllm` backend (GPU only), on vLLM's async engine (`AsyncLLMEngine`, which is
`AsyncLLM` in vLLM's V1 engine), `SamplingParams` and `LoRARequest`. vllm is imported
lazily, inside the functions that need it, so CPU machines never import it (it is only
installed in the inference image, see docker/requirements-inference.txt).

One async engine per base model. A full-weight checkpoint is its own base (its folder is
a `save_pretrained` folder vLLM loads directly); a LoRA checkpoint is served by the
engine of its base model with a `LoRARequest` naming the adapter folder, so many LoRA
checkpoints of one job share one engine. The micro-batcher in front hands over groups
of rows, one `SamplingParams` each; every row is one `generate` async iterator on the
engine's event loop (a thread of its own), which vLLM schedules together. Each output
the iterator yields updates the row and calls the request's `on_step`, so streaming
requests get their text as vLLM decodes it, the same interface as the transformers
backend. An abandoned row is aborted in vLLM at its next output.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
import zlib
from pathlib import Path

from workers.inference.engine import BatchedEngine
from workers.inference.types import Row, RowOutput

_LOOP: asyncio.AbstractEventLoop | None = None
_LOOP_LOCK = threading.Lock()


def vllm_available() -> bool:
    """True when vllm is importable and a CUDA device is present (the `auto` rule)."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return False
    import torch

    return torch.cuda.is_available()


def sampling_kwargs(row: Row) -> dict:
    """SamplingParams keyword arguments for one row (n=1: each sample is its own row)."""
    s = row.sampling
    return {
        "n": 1,
        "temperature": s.temperature,
        "top_p": s.top_p,
        "max_tokens": s.max_tokens,
        "seed": row.seed,
        "stop": list(s.stop) or None,
        "skip_special_tokens": True,
        "frequency_penalty": s.frequency_penalty,
        "presence_penalty": s.presence_penalty,
        "logit_bias": {int(k): float(v) for k, v in s.logit_bias.items()} if s.logit_bias else None,
        "logprobs": s.logprobs,
        "prompt_logprobs": (s.logprobs or 0) if s.echo else None,
    }


def prompt_input(row: Row) -> dict:
    """The prompt as vLLM's TokensPrompt (a TypedDict): our tokenisation, not vLLM's."""
    return {"prompt_token_ids": list(row.prompt_ids)}


def row_output(completion, top: int = 0) -> RowOutput:
    """A vLLM CompletionOutput as our RowOutput; anything but `length` counts as `stop`."""
    reason = "length" if completion.finish_reason == "length" else "stop"
    logprobs = logprob_entries(completion.token_ids, getattr(completion, "logprobs", None), top)
    return RowOutput(token_ids=list(completion.token_ids), text=completion.text, finish_reason=reason, logprobs=logprobs)


def logprob_entries(token_ids, steps, top: int = 0) -> list | None:
    """vLLM's per-step {token id: Logprob} dicts as our entries (the chosen token, then the
    `top` alternatives by rank). Steps without an entry (the first prompt token) stay None."""
    if steps is None:
        return None
    entries = []
    for token, step in zip(token_ids, steps):
        if step is None:
            entries.append(None)
            continue
        ranked = sorted(((t, p) for t, p in step.items() if p.rank is not None and 1 <= p.rank <= top), key=lambda item: item[1].rank)
        entries.append({"token": int(token), "logprob": float(step[token].logprob),
                        "top": [[int(t), float(p.logprob)] for t, p in ranked]})
    return entries


def lora_request_args(adapter_path: Path) -> tuple[str, int, str]:
    """(lora_name, lora_int_id, lora_path) for LoRARequest: a stable positive id per folder."""
    path = str(adapter_path)
    return path, zlib.crc32(path.encode()) % (2**31 - 1) + 1, path


def engine_options(model_path: Path, *, dtype: str, gpu_memory_utilization: float, enable_lora: bool,
                   max_lora_rank: int, max_model_len: int | None, seed: int = 0) -> dict:
    """`AsyncEngineArgs` keyword arguments for a safetensors folder; never runs remote code."""
    options = {
        "model": str(model_path),
        "tokenizer": str(model_path),
        "dtype": dtype,
        "trust_remote_code": False,
        "gpu_memory_utilization": gpu_memory_utilization,
        "load_format": "safetensors",
        "seed": seed,
    }
    if max_model_len:
        options["max_model_len"] = max_model_len
    if enable_lora:
        options.update(enable_lora=True, max_lora_rank=max_lora_rank, max_loras=4)
    return options


def build_llm(model_path: Path, **settings):
    """The async engine on a folder (settings as `engine_options`), on the shared event loop."""
    from vllm import AsyncEngineArgs, AsyncLLMEngine

    args = AsyncEngineArgs(**engine_options(model_path, **settings))

    async def build():
        return AsyncLLMEngine.from_engine_args(args)

    return asyncio.run_coroutine_threadsafe(build(), event_loop()).result()


def event_loop() -> asyncio.AbstractEventLoop:
    """The process's event loop for vLLM's async engines, running in a daemon thread."""
    global _LOOP
    with _LOOP_LOCK:
        if _LOOP is None:
            _LOOP = asyncio.new_event_loop()
            threading.Thread(target=_LOOP.run_forever, name="vllm-loop", daemon=True).start()
        return _LOOP


class VllmEngine(BatchedEngine):
    """One base async engine, optionally with a LoRA adapter applied to every request."""

    backend = "vllm"

    def __init__(self, llm, tokenizer, *, adapter_path: Path | None = None, memory_bytes: int = 0, window_s: float = 0.005, max_rows: int = 256, name: str = "vllm"):
        self.llm = llm
        self.adapter_path = adapter_path
        config = getattr(llm, "model_config", None)
        max_context = int(getattr(config, "max_model_len", 0) or 4096)
        super().__init__(tokenizer, max_context=max_context, window_s=window_s, max_rows=max_rows, name=name)
        self.memory_bytes = memory_bytes

    def run_batch(self, rows: list[Row], yield_now=None) -> None:
        """Every row as one `generate` iterator on the async engine, all at once (vLLM's
        scheduler batches them); returns when all rows are done."""
        lora = self._lora_request()
        live = [row for row in rows if not row.done]
        futures = [asyncio.run_coroutine_threadsafe(self._decode(row, lora), event_loop()) for row in live]
        for future in futures:
            future.result()

    async def _decode(self, row: Row, lora) -> None:
        """Follow one row's outputs: each updates the row and tells its request (streaming)."""
        from vllm import SamplingParams

        request_id = uuid.uuid4().hex
        params = SamplingParams(**sampling_kwargs(row))
        async for output in self.llm.generate(prompt_input(row), params, request_id, lora_request=lora):
            if row.request is not None and row.request.abandoned():
                await self.llm.abort(request_id)
                row.finish_reason = "cancelled"
                return
            completion = output.outputs[0]
            row.generated = list(completion.token_ids)
            if output.finished:
                result = row_output(completion, row.sampling.logprobs or 0)
                row.text, row.logprobs, row.finish_reason = result.text, result.logprobs, result.finish_reason
                if row.sampling.echo:
                    row.prompt_logprobs = logprob_entries(row.prompt_ids, output.prompt_logprobs, row.sampling.logprobs or 0)
            if row.request is not None and row.request.on_step is not None:
                row.request.on_step(row.request)

    def _lora_request(self):
        if self.adapter_path is None:
            return None
        from vllm.lora.request import LoRARequest

        return LoRARequest(*lora_request_args(self.adapter_path))
