"""The `vllm` backend (GPU only), on vLLM's public offline API: `LLM`, `SamplingParams`,
`LoRARequest`. vllm is imported lazily, inside the functions that need it, so CPU
machines never import it (it is only installed in the inference image, see
docker/requirements-inference.txt).

One `LLM` per base model. A full-weight checkpoint is its own base (its folder is a
`save_pretrained` folder vLLM loads directly); a LoRA checkpoint is served by the `LLM`
of its base model with a `LoRARequest` naming the adapter folder, so many LoRA
checkpoints of one job share one engine. The micro-batcher in front hands vLLM whole
groups of requests, one `SamplingParams` per row, which vLLM schedules together.
"""

from __future__ import annotations

import threading
import zlib
from pathlib import Path

from workers.inference.engine import BatchedEngine
from workers.inference.types import Row, RowOutput

# vLLM's LLM is not thread-safe: every engine sharing one LLM serialises on its lock.
_LLM_LOCKS: dict[int, threading.Lock] = {}


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
    }


def prompt_input(row: Row) -> dict:
    """The prompt as vLLM's TokensPrompt (a TypedDict): our tokenisation, not vLLM's."""
    return {"prompt_token_ids": list(row.prompt_ids)}


def row_output(completion) -> RowOutput:
    """A vLLM CompletionOutput as our RowOutput; anything but `length` counts as `stop`."""
    reason = "length" if completion.finish_reason == "length" else "stop"
    return RowOutput(token_ids=list(completion.token_ids), text=completion.text, finish_reason=reason)


def lora_request_args(adapter_path: Path) -> tuple[str, int, str]:
    """(lora_name, lora_int_id, lora_path) for LoRARequest: a stable positive id per folder."""
    path = str(adapter_path)
    return path, zlib.crc32(path.encode()) % (2**31 - 1) + 1, path


def build_llm(model_path: Path, *, dtype: str, gpu_memory_utilization: float, enable_lora: bool, max_lora_rank: int, max_model_len: int | None, seed: int = 0):
    """An `LLM` on a safetensors folder; never runs remote code."""
    from vllm import LLM

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
    return LLM(**options)


class VllmEngine(BatchedEngine):
    """One base `LLM`, optionally with a LoRA adapter applied to every request."""

    backend = "vllm"

    def __init__(self, llm, tokenizer, *, adapter_path: Path | None = None, memory_bytes: int = 0, window_s: float = 0.005, max_rows: int = 256, name: str = "vllm"):
        self.llm = llm
        self.adapter_path = adapter_path
        config = getattr(getattr(llm, "llm_engine", None), "model_config", None)
        max_context = int(getattr(config, "max_model_len", 0) or 4096)
        super().__init__(tokenizer, max_context=max_context, window_s=window_s, max_rows=max_rows, name=name)
        self.memory_bytes = memory_bytes
        self._lock = _LLM_LOCKS.setdefault(id(llm), threading.Lock())

    def run_batch(self, rows: list[Row], yield_now=None) -> None:
        """One offline `generate` call for the rows, each decoded to its end (vLLM's own
        scheduler batches them; abandoned rows are dropped before the call only)."""
        from vllm import SamplingParams

        live = [row for row in rows if not (row.request is not None and row.request.abandoned())]
        for row in rows:
            if row not in live:
                row.finish_reason = "cancelled"
        if not live:
            return
        prompts = [prompt_input(row) for row in live]
        params = [SamplingParams(**sampling_kwargs(row)) for row in live]
        lora = self._lora_request()
        with self._lock:
            results = self.llm.generate(prompts, sampling_params=params, lora_request=lora, use_tqdm=False)
        for row, result in zip(live, results):
            output = row_output(result.outputs[0])
            row.generated, row.text, row.finish_reason = output.token_ids, output.text, output.finish_reason

    def _lora_request(self):
        if self.adapter_path is None:
            return None
        from vllm.lora.request import LoRARequest

        return LoRARequest(*lora_request_args(self.adapter_path))
