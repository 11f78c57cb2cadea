"""GET /jobs/{id}/checkpoints/{step}/download (issue 17): a tar of the Hugging Face folder
from a real tiny training run, loaded back with transformers offline; HTTP Range; LoRA
adapter and merged (built by a real inference worker) downloads."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest
import torch

from service.auth import authenticate
from service.db import get_database
from tests.api.inference_env import InferenceWorker
from tests.conftest import ApiServer
from tests.inference_helpers import TINY_TRAINING, job_with_checkpoints, trained_run

pytestmark = pytest.mark.slow
PROMPT = "Tom has 3 apples. He buys 4 more. How many apples does Tom have now?"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return trained_run(str(tmp_path_factory.mktemp("trained")))


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory) -> Path:
    from service.specs import JobSpec
    from workers.trainer.loop import train

    spec = JobSpec.model_validate({"method": "sft", "model": "builtin:tiny", "training": {
        **TINY_TRAINING, "total_steps": 4, "save_every": 4, "learning_rate": 5e-2,
        "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}}})
    out = tmp_path_factory.mktemp("lora") / "run"
    train(spec, out)
    return out


def tenant(settings, key: str) -> str:
    return authenticate(get_database(settings.resolved_database_url), key).tenant_id


def extract(body: bytes, into: Path) -> Path:
    with tarfile.open(fileobj=io.BytesIO(body)) as archive:
        names = archive.getnames()
        archive.extractall(into, filter="data")
    (folder,) = {name.split("/")[0] for name in names}
    return into / folder


def greedy_text(model, tokenizer, prompt: str, max_tokens: int) -> str:
    from workers.trainer.models import format_prompt

    ids = tokenizer(format_prompt(tokenizer, prompt), add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=max_tokens,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


@pytest.mark.timeout(300)
def test_download_loads_offline_and_generates_like_the_api(pg_settings, run_dir, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with ApiServer(pg_settings) as api, InferenceWorker(pg_settings, tmp_path) as worker:
        alice, bob = api.key("alice"), api.key("bob")
        job = job_with_checkpoints(pg_settings, tenant(pg_settings, alice), run_dir)
        url = f"/jobs/{job}/checkpoints/10/download"
        with api.client(alice) as client:
            whole = client.get(url)
            assert whole.status_code == 200, whole.text
            assert whole.headers["content-type"] == "application/x-tar"
            assert int(whole.headers["content-length"]) == len(whole.content)
            folder = extract(whole.content, tmp_path / "download")
            names = {p.name for p in folder.iterdir()}
            assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
            assert not names & {"optimizer.safetensors", "trainer_state.json", "rng.safetensors"}
            reply = client.post("/generate", json={"model": f"{job}:10", "prompts": [PROMPT],
                                                   "max_tokens": 16, "temperature": 0}, timeout=120)
            assert reply.status_code == 200, reply.text + worker.logs()
            served = reply.json()["results"][0]["completions"][0]["text"]
            assert client.get(f"/jobs/{job}/checkpoints/7/download").status_code == 404
        with api.client(bob) as other:
            assert other.get(url).status_code == 404
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    assert greedy_text(model.eval(), tokenizer, PROMPT, 16) == served


@pytest.mark.timeout(300)  # includes the module's tiny training run when this test runs alone
def test_range_requests_return_the_right_bytes(pg_settings, run_dir):
    with ApiServer(pg_settings) as api:
        key = api.key("alice")
        job = job_with_checkpoints(pg_settings, tenant(pg_settings, key), run_dir, steps=(10,))
        url = f"/jobs/{job}/checkpoints/10/download"
        with api.client(key) as client:
            whole = client.get(url)
            body, etag, size = whole.content, whole.headers["etag"], len(whole.content)
            assert whole.headers["accept-ranges"] == "bytes"
            assert client.get(url).content == body  # the layout is deterministic

            def get_range(spec: str, **headers):
                return client.get(url, headers={"Range": spec, **headers})

            part = get_range("bytes=1000-5999")
            assert part.status_code == 206 and part.content == body[1000:6000]
            assert part.headers["content-range"] == f"bytes 1000-5999/{size}"
            tail = get_range("bytes=-700")
            assert tail.status_code == 206 and tail.content == body[-700:]
            # A broken download resumes: first half + "bytes=N-" is the whole archive.
            resumed = get_range(f"bytes={size // 2}-", **{"If-Range": etag})
            assert resumed.status_code == 206 and body[: size // 2] + resumed.content == body
            stale = get_range("bytes=10-20", **{"If-Range": '"not-the-etag"'})
            assert stale.status_code == 200 and stale.content == body
            beyond = get_range(f"bytes={size}-")
            assert beyond.status_code == 416 and beyond.headers["content-range"] == f"bytes */{size}"
            assert client.get(url, params={"format": "adapter"}).status_code == 422  # not a LoRA job


@pytest.mark.timeout(300)
def test_lora_adapter_and_merged_downloads_agree(pg_settings, lora_run, tmp_path, monkeypatch):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from workers.trainer.models import build_tiny_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with ApiServer(pg_settings) as api, InferenceWorker(pg_settings, tmp_path, concurrency=2) as worker:
        key = api.key("alice")
        job = job_with_checkpoints(pg_settings, tenant(pg_settings, key), lora_run, steps=(4,))
        url = f"/jobs/{job}/checkpoints/4/download"
        with api.client(key) as client:
            adapter = client.get(url)
            assert adapter.status_code == 200, adapter.text
            merged = client.get(url, params={"format": "merged"}, timeout=120)
            assert merged.status_code == 200, merged.text + worker.logs()
            assert client.get(url, params={"format": "full"}).status_code == 422
    adapter_dir = extract(adapter.content, tmp_path / "adapter")
    merged_dir = extract(merged.content, tmp_path / "merged")
    assert (adapter_dir / "adapter_model.safetensors").is_file() and not (adapter_dir / "model.safetensors").exists()
    assert (merged_dir / "model.safetensors").is_file() and not (merged_dir / "adapter_config.json").exists()
    on_base = PeftModel.from_pretrained(build_tiny_model(), adapter_dir).eval()
    plain = AutoModelForCausalLM.from_pretrained(merged_dir, local_files_only=True, use_safetensors=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(merged_dir, local_files_only=True)
    ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        base_logits = build_tiny_model().eval()(ids).logits
        expected, got = on_base(ids).logits, plain(ids).logits
    assert not torch.allclose(expected, base_logits, atol=1e-4)  # the adapter did change the model
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert greedy_text(plain, tokenizer, PROMPT, 16) == greedy_text(on_base, tokenizer, PROMPT, 16)
    assert os.environ["HF_HUB_OFFLINE"] == "1"
