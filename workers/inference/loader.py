"""From a model key to a loaded engine, reading only the artifact store.

Keys (built by `model_key` from a task payload, never from a path a user gave):
- `("checkpoint", job_id, step)`: `<artifacts>/jobs/<job_id>/checkpoints/step-NNNNNN/`,
  the job id 32 hex characters, its checksums verified before loading;
- `("base", source)`: a built-in model (`builtin:tiny`, `builtin:smollm2-135m`) only.

Weights are safetensors only and remote code never runs (workers.trainer.models checks
every folder). LoRA checkpoints are merged into their base for the transformers backend.
"""

from __future__ import annotations

import re
import threading
from typing import Hashable

from service.settings import Settings
from workers.inference.cache import EngineCache
from workers.inference.engine import BatchedEngine
from workers.inference.folders import checkpoint_folder, lora_base_source  # noqa: F401 - re-exported
from workers.inference.types import InferenceError
from workers.trainer.models import ModelSourceError, load_model_folder, load_policy

JOB_ID = re.compile(r"^[0-9a-f]{32}$")
BASE_SOURCES = ("builtin:tiny", "builtin:smollm2-135m")
MAX_STEP = 10**9


def model_key(model: dict) -> tuple:
    """Validate a payload's model reference strictly and return its cache key."""
    kind = model.get("kind")
    if kind == "checkpoint":
        job_id, step = model.get("job_id"), model.get("step")
        if not isinstance(job_id, str) or not JOB_ID.match(job_id):
            raise InferenceError("invalid", "job ids are 32 lowercase hex characters")
        if not isinstance(step, int) or isinstance(step, bool) or not 0 <= step <= MAX_STEP:
            raise InferenceError("invalid", "a checkpoint step is a non-negative integer")
        return ("checkpoint", job_id, step)
    if kind == "base":
        source = model.get("source")
        if source not in BASE_SOURCES:
            raise InferenceError("invalid", f"base models are {', '.join(BASE_SOURCES)}")
        return ("base", source)
    raise InferenceError("invalid", "model must be a checkpoint or a built-in base model")


def choose_backend(settings: Settings) -> str:
    """`transformers` or `vllm`, resolving `auto`."""
    if settings.inference_backend != "auto":
        return settings.inference_backend
    from workers.inference.vllm_engine import vllm_available

    return "vllm" if vllm_available() else "transformers"


class EngineFactory:
    """Builds engines for cache keys with one backend and one device."""

    def __init__(self, settings: Settings, backend: str | None = None):
        self.settings = settings
        self.backend = backend or choose_backend(settings)
        self.device = self._device()
        self._vllm = None

    def estimate(self, key: Hashable) -> int:
        """Bytes the engine will take, before loading it (safetensors sizes)."""
        if self.backend == "vllm":
            return self.vllm_pool().estimate(key)
        if key[0] == "base":
            return 0 if key[1] == "builtin:tiny" else 600 * 1024**2
        folder = checkpoint_folder(self.settings, key[1], key[2])
        return sum(f.stat().st_size for f in folder.glob("*.safetensors") if f.name != "optimizer.safetensors")

    def load(self, key: Hashable) -> BatchedEngine:
        """Load the engine for a key; InferenceError for anything the user can fix."""
        if self.backend == "vllm":
            return self.vllm_pool().load(key)
        from workers.inference.transformers_engine import TransformersEngine

        model, tokenizer = self._load_model(key)
        return TransformersEngine(
            model, tokenizer, window_s=self.settings.inference_batch_window_ms / 1000,
            max_rows=self.settings.inference_max_batch_rows, name=":".join(map(str, key[1:])),
        )

    def _load_model(self, key: Hashable):
        import torch

        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        try:
            if key[0] == "base":
                return load_policy(key[1], self.settings, dtype=dtype, device=self.device)
            folder = checkpoint_folder(self.settings, key[1], key[2])
            model, tokenizer = load_model_folder(folder, settings=self.settings, dtype=dtype, device=self.device)
        except ModelSourceError as error:
            raise InferenceError("not_found", str(error)) from None
        if hasattr(model, "merge_and_unload"):  # a LoRA checkpoint: fold the adapter in
            model = model.merge_and_unload()
        return model, tokenizer

    def _device(self) -> str:
        if self.backend == "vllm":
            return "cuda"
        if self.settings.inference_device != "auto":
            return self.settings.inference_device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def vllm_pool(self):
        if self._vllm is None:
            from workers.inference.vllm_pool import VllmPool

            self._vllm = VllmPool(self.settings)
        return self._vllm

    def unload(self, engine: BatchedEngine) -> None:
        """Cache eviction: stop the engine and free its memory."""
        engine.close()
        if self.backend == "vllm":
            self.vllm_pool().release(engine)


_CACHE: EngineCache | None = None
_CACHE_LOCK = threading.Lock()


def engine_cache(settings: Settings) -> EngineCache:
    """The worker process's engine cache (kept warm across tasks)."""
    global _CACHE
    with _CACHE_LOCK:
        if _CACHE is None:
            factory = EngineFactory(settings)
            _CACHE = EngineCache(factory.load, factory.estimate, settings.inference_cache_bytes, on_evict=factory.unload)
            _CACHE.factory = factory
        return _CACHE


def reset_engine_cache() -> None:
    """Unload every engine and forget the cache (tests, worker shutdown)."""
    global _CACHE
    with _CACHE_LOCK:
        if _CACHE is not None:
            _CACHE.clear()
        _CACHE = None
