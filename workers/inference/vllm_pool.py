"""vLLM engines for cache keys: one `LLM` per base folder, shared by LoRA checkpoints.

An `LLM` here is vLLM's async engine (workers.inference.vllm_engine.build_llm).
A full-weight checkpoint folder is loaded as its own `LLM`. A LoRA checkpoint reuses (or
creates) the `LLM` of its base model, with LoRA enabled, and becomes a `VllmEngine` that
attaches a `LoRARequest` to every request. An `LLM` is released once no cached engine
uses it. Only runs where vllm and CUDA exist (never imported on CPU machines).
"""

from __future__ import annotations

import gc
import threading
from pathlib import Path
from typing import Hashable

from service.settings import Settings
from workers.inference.folders import checkpoint_folder, lora_base_source
from workers.inference.types import InferenceError
from workers.trainer.models import build_char_tokenizer, build_tiny_model, save_model_folder, smollm2_folder


class VllmPool:
    """Owns the `LLM` objects; the engine cache owns the engines built on them."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._llms: dict[str, object] = {}
        self._users: dict[str, int] = {}
        self._lock = threading.Lock()

    def estimate(self, key: Hashable) -> int:
        """A new LLM claims its share of GPU memory; a shared base costs nothing more."""
        base, _adapter = self._folders(key)
        if str(base) in self._llms:
            return 0
        import torch

        total = torch.cuda.get_device_properties(0).total_memory
        return int(total * self.settings.vllm_gpu_memory_utilization)

    def load(self, key: Hashable):
        from transformers import AutoTokenizer

        from workers.inference.vllm_engine import VllmEngine

        base, adapter = self._folders(key)
        fresh = str(base) not in self._llms
        llm = self._llm(base, enable_lora=adapter is not None)
        tokenizer = AutoTokenizer.from_pretrained(adapter or base, trust_remote_code=False, local_files_only=True)
        memory = self.estimate(key) if fresh else 0
        engine = VllmEngine(
            llm, tokenizer, adapter_path=adapter, memory_bytes=memory,
            window_s=self.settings.inference_batch_window_ms / 1000, max_rows=4 * self.settings.inference_max_batch_rows,
            name=":".join(map(str, key[1:])),
        )
        engine.base_folder = str(base)
        return engine

    def release(self, engine) -> None:
        """Drop the engine's LLM when no other engine uses it, and free GPU memory."""
        with self._lock:
            name = engine.base_folder
            self._users[name] -= 1
            if self._users[name] > 0:
                return
            del self._users[name]
            self._llms.pop(name, None)
        llm, engine.llm = engine.llm, None
        if hasattr(llm, "shutdown"):
            llm.shutdown()  # the async engine's core process
        gc.collect()
        import torch

        torch.cuda.empty_cache()

    def _llm(self, base: Path, enable_lora: bool):
        from workers.inference.vllm_engine import build_llm

        with self._lock:
            name = str(base)
            if name not in self._llms:
                self._llms[name] = build_llm(
                    base, dtype="auto", gpu_memory_utilization=self.settings.vllm_gpu_memory_utilization,
                    enable_lora=enable_lora, max_lora_rank=self.settings.vllm_max_lora_rank, max_model_len=None,
                )
            self._users[name] = self._users.get(name, 0) + 1
            return self._llms[name]

    def _folders(self, key: Hashable) -> tuple[Path, Path | None]:
        """(base model folder, adapter folder or None) for a cache key."""
        if key[0] == "base":
            return self._source_folder(key[1]), None
        folder = checkpoint_folder(self.settings, key[1], key[2])
        source = lora_base_source(folder)
        if source is None:
            return folder, None
        return self._source_folder(source), folder

    def _source_folder(self, source: str) -> Path:
        """A safetensors folder vLLM can load for a model source."""
        if source == "builtin:smollm2-135m":
            return smollm2_folder(self.settings)
        if source == "builtin:tiny":
            folder = self.settings.resolved_cache_dir / "tiny"
            if not (folder / "config.json").is_file():
                save_model_folder(build_tiny_model(), build_char_tokenizer(), folder, base_source=None)
            return folder
        if source.startswith("local:"):
            from workers.trainer.models import _local_folder

            return _local_folder(self.settings, source.removeprefix("local:"))
        raise InferenceError("unavailable", f"the vllm backend cannot load LoRA checkpoints on {source}")
