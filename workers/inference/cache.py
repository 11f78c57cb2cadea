"""The engine cache: loaded engines by checkpoint, least recently used first out, within a
memory bound (`AMFT_INFERENCE_CACHE_BYTES`).

Before a load, least recently used engines are unloaded until the new engine's estimated
size fits; an engine larger than the whole bound is still loaded (alone). Two threads
asking for the same missing key load it once. An unloaded engine finishes the requests
already queued on it; a later `generate` on it raises BatcherClosed and the caller asks
the cache again (`EngineCache.generate` does that).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable, Hashable

from workers.inference.batcher import BatcherClosed
from workers.inference.engine import BatchedEngine

Loader = Callable[[Hashable], BatchedEngine]
Estimator = Callable[[Hashable], int]


class EngineCache:
    """Thread-safe LRU of engines. `loader(key)` builds one; `estimate(key)` sizes it first."""

    def __init__(self, loader: Loader, estimate: Estimator, max_bytes: int, on_evict: Callable[[BatchedEngine], None] | None = None):
        self.loader, self.estimate, self.max_bytes = loader, estimate, max_bytes
        self.on_evict = on_evict or (lambda engine: engine.close())
        self._engines: OrderedDict[Hashable, BatchedEngine] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[Hashable, threading.Lock] = {}
        self.loads = 0
        self.evictions = 0
        self.factory = None  # the EngineFactory behind `loader`, when there is one (loader.engine_cache)

    def get(self, key: Hashable) -> BatchedEngine:
        """The engine for `key`, loading it (and evicting others) if needed."""
        with self._lock:
            engine = self._hit(key)
            if engine is not None:
                return engine
            key_lock = self._loading.setdefault(key, threading.Lock())
        with key_lock:  # one loader per key; others wait here and then find it cached
            with self._lock:
                engine = self._hit(key)
                if engine is not None:
                    return engine
                self._make_room(self.estimate(key))
            engine = self.loader(key)
            with self._lock:
                self._engines[key] = engine
                self.loads += 1
                self._make_room(0)
                self._loading.pop(key, None)
            return engine

    def generate(self, key: Hashable, *args, **kwargs):
        """`get(key).generate(...)`, retried once if the engine was unloaded meanwhile."""
        try:
            return self.get(key).generate(*args, **kwargs)
        except BatcherClosed:
            return self.get(key).generate(*args, **kwargs)

    @property
    def used_bytes(self) -> int:
        return sum(engine.memory_bytes for engine in self._engines.values())

    def keys(self) -> list[Hashable]:
        """Cached keys, least recently used first."""
        with self._lock:
            return list(self._engines)

    def clear(self) -> None:
        """Unload everything (worker shutdown)."""
        with self._lock:
            while self._engines:
                self._evict_oldest()

    def _hit(self, key: Hashable) -> BatchedEngine | None:
        engine = self._engines.get(key)
        if engine is not None:
            self._engines.move_to_end(key)
        return engine

    def _make_room(self, incoming: int) -> None:
        # Keep the most recent engine even if it alone exceeds the bound.
        while len(self._engines) > (0 if incoming else 1) and self.used_bytes + incoming > self.max_bytes:
            self._evict_oldest()

    def _evict_oldest(self) -> None:
        _, engine = self._engines.popitem(last=False)
        self.evictions += 1
        self.on_evict(engine)
