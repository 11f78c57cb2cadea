"""The engine cache (LRU within a memory bound) and loading checkpoints by id only."""

import json
import shutil
import threading

import pytest

from workers.inference.cache import EngineCache
from workers.inference.loader import EngineFactory, checkpoint_folder, model_key
from workers.inference.transformers_engine import TransformersEngine
from workers.inference.types import InferenceError, Sampling
from workers.trainer.models import build_char_tokenizer, build_tiny_model

JOB = "0123456789abcdef0123456789abcdef"


def tiny_engine(_key):
    return TransformersEngine(build_tiny_model(), build_char_tokenizer())


@pytest.mark.timeout(60)
def test_lru_evicts_least_recently_used_within_the_bound():
    size = tiny_engine(None).memory_bytes
    cache = EngineCache(tiny_engine, lambda key: size, max_bytes=int(size * 2.5))
    a, b = cache.get("a"), cache.get("b")
    assert cache.get("a") is a  # a hit, and now a is the most recent
    cache.get("c")  # needs room: b (least recently used) goes
    assert cache.keys() == ["a", "c"] and cache.evictions == 1 and cache.loads == 3
    with pytest.raises(Exception):
        b.generate(["x"], Sampling(max_tokens=2))  # an unloaded engine refuses new work
    assert cache.generate("b", ["x"], Sampling(max_tokens=2, temperature=0))[0].completions  # reloaded
    cache.clear()


@pytest.mark.timeout(60)
def test_concurrent_misses_load_once():
    loads = []
    lock = threading.Lock()

    def slow_loader(key):
        with lock:
            loads.append(key)
        return tiny_engine(key)

    cache = EngineCache(slow_loader, lambda key: 0, max_bytes=10**12)
    threads = [threading.Thread(target=cache.get, args=("same",)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert loads == ["same"]
    cache.clear()


@pytest.mark.parametrize("model", [
    {"kind": "checkpoint", "job_id": "../../etc", "step": 1},
    {"kind": "checkpoint", "job_id": JOB.upper(), "step": 1},
    {"kind": "checkpoint", "job_id": JOB, "step": -1},
    {"kind": "checkpoint", "job_id": JOB, "step": "5"},
    {"kind": "base", "source": "local:../secret"},
    {"kind": "base", "source": "hub:org/model"},
    {"kind": "path", "path": "/tmp/model"},
])
def test_model_keys_are_validated_strictly(model):
    with pytest.raises(InferenceError) as caught:
        model_key(model)
    assert caught.value.code == "invalid"


def test_only_verified_checkpoints_in_the_artifact_store_load(settings, run_dir):
    with pytest.raises(InferenceError) as missing:
        checkpoint_folder(settings, JOB, 10)
    assert missing.value.code == "not_found"
    folder = settings.resolved_artifacts_dir / "jobs" / JOB / "checkpoints" / "step-000010"
    shutil.copytree(run_dir / "checkpoints" / "step-000010", folder)
    assert checkpoint_folder(settings, JOB, 10) == folder.resolve()
    config = folder / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "auto_map": {"x": "y"}}))
    with pytest.raises(InferenceError) as tampered:  # checksum mismatch: never loaded
        checkpoint_folder(settings, JOB, 10)
    assert "checksum" in tampered.value.message


@pytest.mark.timeout(60)
def test_factory_loads_a_checkpoint_and_a_base_model(settings, run_dir):
    folder = settings.resolved_artifacts_dir / "jobs" / JOB / "checkpoints" / "step-000005"
    shutil.copytree(run_dir / "checkpoints" / "step-000005", folder)
    factory = EngineFactory(settings)
    assert factory.backend == "transformers" and factory.device == "cpu"
    key = model_key({"kind": "checkpoint", "job_id": JOB, "step": 5})
    assert factory.estimate(key) > 0
    engine = factory.load(key)
    assert engine.generate(["hi"], Sampling(max_tokens=3, temperature=0))[0].completions[0].tokens <= 3
    base = factory.load(model_key({"kind": "base", "source": "builtin:tiny"}))
    assert base.memory_bytes > 0
    engine.close()
    base.close()
