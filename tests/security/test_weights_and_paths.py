"""Issue 6, cases 13-15: pickle payloads, remote code, path traversal.

Every way a user can hand the service weights or files is tried with a hostile payload:
an upload (POST /files), a model folder named by `local:NAME`, a hub id (`hub:`, from
the local hub cache: this machine is offline), and a job's checkpoint folder (resumed by
the trainer, served by the inference loader). A pickle payload would create a marker
file; an audit hook also records any unpickling (`pickle.find_class`) in this process.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest

from service.settings import Settings
from tests.conftest import ROOT, TINY_SPEC

pytestmark = pytest.mark.timeout(180)

_AUDIT: list[tuple] = []
_WATCH = {"on": False}


def _audit(event: str, args: tuple) -> None:
    if _WATCH["on"] and event in ("pickle.find_class", "open"):
        _AUDIT.append((event, args))


sys.addaudithook(_audit)  # cannot be removed; it records only while _WATCH["on"]


class Payload:
    """Unpickling this creates `marker` (what an attacker's code would do)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def pickle_bytes(marker: Path) -> bytes:
    return pickle.dumps(Payload(marker))


@pytest.fixture
def watched():
    _AUDIT.clear()
    _WATCH["on"] = True
    yield _AUDIT
    _WATCH["on"] = False


def _is_read(args: tuple) -> bool:
    """An `open` audit event that reads (the test's own setup writes are not reads)."""
    mode, flags = args[1], args[2]
    if isinstance(mode, str):
        return not any(c in mode for c in "wax+")
    return isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR) == 0


def unpickled(events: list[tuple]) -> list[tuple]:
    return [args for event, args in events if event == "pickle.find_class"]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    """A valid safetensors model folder of builtin:tiny."""
    from workers.trainer.models import build_char_tokenizer, build_tiny_model, save_model_folder

    folder = tmp_path_factory.mktemp("tiny") / "model"
    save_model_folder(build_tiny_model(), build_char_tokenizer(), folder, None)
    return folder


def settings_for(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", models_dir=tmp_path / "models")


def _model_folder(tmp_path: Path, tiny_folder: Path, name: str, keep_weights: bool = True) -> Path:
    folder = tmp_path / "models" / name
    shutil.copytree(tiny_folder, folder)
    if not keep_weights:
        (folder / "model.safetensors").unlink()
    return folder


# ------------------------------------------------------------------------------- 13


def test_13_pickle_is_refused_everywhere(tenants, tmp_path, tiny_folder, watched, record):
    from workers.inference.loader import EngineFactory
    from workers.trainer.checkpoint import CheckpointError, verify_checkpoint
    from workers.trainer.models import ModelSourceError, load_model_folder, load_policy

    marker = tmp_path / "PWNED"
    evil = pickle_bytes(marker)
    settings = settings_for(tmp_path)
    seen = []

    # 1. Upload: a .pt / .bin / .pkl body to POST /files.
    with tenants.alice() as alice:
        for name in ("weights.pt", "pytorch_model.bin", "data.pkl", "train.jsonl"):
            response = alice.post(f"/files?filename={name}", content=evil)
            assert response.status_code == 422, response.text
        assert alice.get("/files").json()["files"] == []
    seen.append("POST /files with pickle bodies (.pt/.bin/.pkl/.jsonl): 422, nothing stored")

    # 2. local: model folders: only pickle weights; safetensors plus pickle side files.
    only_pickle = _model_folder(tmp_path, tiny_folder, "only-pickle", keep_weights=False)
    (only_pickle / "pytorch_model.bin").write_bytes(evil)
    with pytest.raises(ModelSourceError, match="only pickle weights"):
        load_policy("local:only-pickle", settings)
    mixed = _model_folder(tmp_path, tiny_folder, "mixed")
    for name in ("pytorch_model.bin", "training_args.bin", "optimizer.pt", "rng_state.pth", "scheduler.pt"):
        (mixed / name).write_bytes(evil)
    load_policy("local:mixed", settings)  # loads the safetensors weights, never the pickles
    seen.append("local: folder of only .bin: refused; safetensors + 5 pickle side files: loaded without unpickling")

    # 3. A LoRA folder whose adapter is a pickle (peft would fall back to torch.load).
    lora = _model_folder(tmp_path, tiny_folder, "lora", keep_weights=False)
    (lora / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    (lora / "adapter_model.bin").write_bytes(evil)
    (lora / "model.safetensors").write_bytes((tiny_folder / "model.safetensors").read_bytes())
    with pytest.raises(ModelSourceError, match="adapter_model.safetensors"):
        load_model_folder(lora, settings=settings)
    seen.append("LoRA folder with adapter_model.bin: refused")

    # 4. A job's checkpoint folder holding pickle files: resumed by the trainer, served by inference.
    checkpoint = _real_checkpoint(settings)
    for name in ("pytorch_model.bin", "optimizer.pt", "rng_state.pth", "scheduler.pt", "training_args.bin"):
        (checkpoint / name).write_bytes(evil)
    _resume(checkpoint)
    factory = EngineFactory(settings, backend="transformers")
    job_id, step = checkpoint.parts[-3], int(checkpoint.name.removeprefix("step-"))
    factory._load_model(("checkpoint", job_id, step))
    # ...and with its safetensors weights swapped for a pickle: refused by checksum and by check_model_folder.
    (checkpoint / "model.safetensors").unlink()
    with pytest.raises(CheckpointError):
        verify_checkpoint(checkpoint)
    with pytest.raises(Exception, match="missing or corrupted|not in the artifact store|unusable"):
        factory._load_model(("checkpoint", job_id, step))
    seen.append("checkpoint folder + 5 pickle files: trainer resume and inference load use safetensors only; "
                "weights replaced by a pickle: refused (checksum)")

    # 5. The broker: a pickle-serialized task message is refused (JSON only).
    from kombu.exceptions import ContentDisallowed
    from kombu.serialization import loads

    from workers.celery_app import make_celery

    conf = make_celery(settings).conf
    assert conf.accept_content == ["json"] and conf.task_serializer == "json"
    with pytest.raises(ContentDisallowed):
        loads(evil, "application/x-python-serialize", "binary", accept={"application/json"})
    seen.append("pickle task message: ContentDisallowed (accept_content json)")

    assert not marker.exists(), "a pickle payload ran"
    assert unpickled(watched) == [], f"something was unpickled: {unpickled(watched)[:5]}"
    record("13", "pickle payloads (__reduce__ -> touch marker) via upload, local: folders, LoRA folder, "
           "a job's checkpoint folder (resume + inference), a broker message",
           "all refused or ignored; the marker never appears", "; ".join(seen) + "; marker absent, no "
           "pickle.find_class audit event")


def _real_checkpoint(settings: Settings) -> Path:
    """A real 1-step checkpoint of builtin:tiny in the artifact store, as a worker writes it."""
    from service.specs import JobSpec
    from workers.trainer.loop import train

    job_dir = settings.resolved_artifacts_dir / "jobs" / ("a" * 32)
    spec = JobSpec.model_validate({**TINY_SPEC, "training": {**TINY_SPEC["training"], "total_steps": 1,
                                                             "warmup_steps": 1}})
    result = train(spec, job_dir)
    return result.last_checkpoint


def _resume(checkpoint: Path) -> None:
    from service.specs import JobSpec
    from workers.trainer.loop import restore, setup

    spec = JobSpec.model_validate({**TINY_SPEC, "training": {**TINY_SPEC["training"], "total_steps": 2,
                                                             "warmup_steps": 1}})
    run = setup(spec)
    assert restore(run, checkpoint) == 1


# ------------------------------------------------------------------------------- 14

MALICIOUS_CODE = "open({marker!r}, 'w').write('ran')\nfrom transformers import LlamaForCausalLM as EvilModel\n"


def test_14_remote_code_is_never_run(tmp_path, tiny_folder, watched, record):
    from workers.trainer.models import ModelSourceError, load_policy

    marker = tmp_path / "PWNED"
    settings = settings_for(tmp_path)
    cases = {}
    code = _model_folder(tmp_path, tiny_folder, "custom-code")
    config = json.loads((code / "config.json").read_text())
    (code / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModelForCausalLM": "modeling_evil.EvilModel"}}))
    (code / "modeling_evil.py").write_text(MALICIOUS_CODE.format(marker=str(marker)))
    cases["custom-code"] = "contain code"
    nested = _model_folder(tmp_path, tiny_folder, "nested-code")
    (nested / "sub").mkdir()
    (nested / "sub" / "helper.py").write_text(MALICIOUS_CODE.format(marker=str(marker)))
    cases["nested-code"] = "contain code"
    remote_map = _model_folder(tmp_path, tiny_folder, "remote-auto-map")  # auto_map into another hub repo, no .py
    (remote_map / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModelForCausalLM": "evil/repo--m.M"}}))
    cases["remote-auto-map"] = "auto_map"
    tokenizer_map = _model_folder(tmp_path, tiny_folder, "tokenizer-auto-map")
    tok = json.loads((tokenizer_map / "tokenizer_config.json").read_text())
    (tokenizer_map / "tokenizer_config.json").write_text(json.dumps({**tok, "auto_map": {"AutoTokenizer": ["t.T", None]}}))
    cases["tokenizer-auto-map"] = "auto_map"
    for name, message in cases.items():
        with pytest.raises(ModelSourceError, match=message):
            load_policy(f"local:{name}", settings)
    hub = _hub_with_custom_code(tmp_path, tiny_folder, marker)
    assert not marker.exists(), "custom code ran"
    record("14", "model folders with auto_map + modeling .py, nested .py, auto_map to another repo, tokenizer "
           "auto_map (local:); a hub-cache repo with auto_map + code (hub:, offline)",
           "refused, or loaded without running its code",
           f"all 4 local: folders refused by check_model_folder; hub: {hub}; marker absent")


def _hub_with_custom_code(tmp_path: Path, tiny_folder: Path, marker: Path) -> str:
    """hub:evil/repo from a local hub cache whose config has auto_map and code (offline).
    Run in a subprocess: huggingface_hub reads its cache location at import."""
    snapshot = tmp_path / "hf" / "hub" / "models--evil--repo" / "snapshots" / ("0" * 40)
    shutil.copytree(tiny_folder, snapshot)
    config = json.loads((snapshot / "config.json").read_text())
    (snapshot / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModelForCausalLM": "modeling_evil.EvilModel"}}))
    (snapshot / "modeling_evil.py").write_text(MALICIOUS_CODE.format(marker=str(marker)))
    refs = tmp_path / "hf" / "hub" / "models--evil--repo" / "refs"
    refs.mkdir(parents=True)
    (refs / "main").write_text("0" * 40)
    script = ("from service.settings import get_settings\nfrom workers.trainer.models import load_policy\n"
              "try:\n    load_policy('hub:evil/repo', get_settings())\n    print('RESULT loaded')\n"
              "except Exception as e:\n    print('RESULT refused:', type(e).__name__, str(e)[:200])\n")
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "AMFT_HOME": str(tmp_path / "h2"),
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=150)
    line = next((l for l in done.stdout.splitlines() if l.startswith("RESULT")), done.stderr[-500:])
    assert line.startswith("RESULT"), line
    return line.removeprefix("RESULT ")


# ------------------------------------------------------------------------------- 15

TRAVERSALS = ["../../etc/passwd", "/etc/passwd", "..%2F..%2Fetc%2Fpasswd", "%2e%2e/%2e%2e/etc", "..\\..\\x",
              "....//....//etc", "a/../../b", "\u2025/etc", "..", "~root/.ssh/id_rsa"]


def test_15_path_traversal_answers_4xx_and_reads_nothing_outside(tenants, tmp_path, tiny_folder, watched, record):
    from workers.inference.loader import checkpoint_folder
    from workers.inference.types import InferenceError
    from workers.trainer.data import DatasetError, load_records
    from service.specs import DataSourceSpec
    from workers.trainer.models import ModelSourceError, check_model_folder, load_policy

    secret = tmp_path / "outside" / "secret.jsonl"
    secret.parent.mkdir()
    secret.write_text('{"prompt": "secret", "completion": "s", "answer": "1"}\n')
    tried = 0
    with tenants.alice() as alice:
        job_id = alice.post("/jobs", json=TINY_SPEC).json()["id"]
        for bad in TRAVERSALS + [str(secret), f"file://{secret}"]:
            bodies = [
                ("/jobs", {**TINY_SPEC, "model": f"local:{bad}"}),
                ("/jobs", {**TINY_SPEC, "model": f"hub:{bad}"}),
                ("/jobs", {**TINY_SPEC, "model": bad}),
                ("/jobs", {**TINY_SPEC, "datasets": {"sft": {"source": f"file:{bad}"}}}),
                ("/jobs", {**TINY_SPEC, "datasets": {"rl": {"source": f"hf:{bad}"}}}),
                ("/jobs", {**TINY_SPEC, "datasets": {"sft": {"source": bad}}}),
                ("/jobs", {**TINY_SPEC, "datasets": {"sft": {"split": bad}}}),
                ("/jobs", {**TINY_SPEC, "datasets": {"eval": [{"name": bad}]}}),
                ("/generate", {"model": bad, "prompts": ["x"]}),
                ("/generate", {"model": f"{job_id}:{bad}", "prompts": ["x"]}),
                ("/generate", {"model": f"base:{bad}", "prompts": ["x"]}),
                ("/v1/completions", {"model": bad, "prompt": "x"}),
                (f"/jobs/{job_id}/evaluations", {"dataset": {"source": f"file:{bad}"}}),
                (f"/jobs/{job_id}/evaluations", {"dataset": {"source": bad}}),
            ]
            for path, body in bodies:
                response = alice.post(path, json=body)
                assert 400 <= response.status_code < 500, (path, body, response.status_code, response.text)
                tried += 1
            upload = alice.post("/files", params={"filename": bad}, content=b'{"prompt":"a","completion":"b"}\n')
            assert upload.status_code == 422, (bad, upload.text)
            encoded = quote(bad, safe="").replace(".", "%2E")  # as one path segment (clients collapse raw ../)
            for route in ("", "/metrics", "/events", "/checkpoints", "/evaluations"):
                response = alice.get(f"/jobs/{encoded}{route}")
                assert 400 <= response.status_code < 500, (bad, route, response.status_code)
            tried += 6
        for raw in ("/jobs/..%2F..%2Fetc%2Fpasswd", "/jobs/%2e%2e/%2e%2e/etc/passwd", "/files/../../etc/passwd"):
            assert 400 <= alice.get(raw).status_code < 500
            tried += 1
    files = list((tenants.api.settings.resolved_artifacts_dir / "files").rglob("*.jsonl"))
    assert files == [], "a rejected upload left a file"

    # Symlinks, in the folders the worker reads (the API never takes a path).
    settings = settings_for(tmp_path)
    models = settings.resolved_models_dir
    models.mkdir(parents=True, exist_ok=True)
    outside_model = tmp_path / "outside" / "model"
    shutil.copytree(tiny_folder, outside_model)
    (models / "linked").symlink_to(outside_model)
    with pytest.raises(ModelSourceError, match="outside the models folder"):
        load_policy("local:linked", settings)
    inner = _model_folder(tmp_path, tiny_folder, "inner-link")
    (inner / "tokenizer.json").unlink()
    (inner / "tokenizer.json").symlink_to(secret)
    with pytest.raises(ModelSourceError, match="link to outside"):
        check_model_folder(inner)
    store = settings.resolved_artifacts_dir / "files"
    store.mkdir(parents=True, exist_ok=True)
    (store / ("b" * 32 + ".jsonl")).symlink_to(secret)
    with pytest.raises(DatasetError):
        load_records(DataSourceSpec(source="file:" + "b" * 32), settings)
    job_dir = settings.resolved_artifacts_dir / "jobs" / ("c" * 32) / "checkpoints"
    job_dir.mkdir(parents=True)
    (job_dir / "step-000005").symlink_to(outside_model)
    with pytest.raises(InferenceError):
        checkpoint_folder(settings, "c" * 32, 5)
    opened_outside = [args for event, args in watched
                      if event == "open" and str(secret.parent) in str(args[0]) and _is_read(args)]
    assert opened_outside == [], f"read outside the store: {opened_outside[:3]}"
    record("15", f"{tried} requests with ../, absolute, %-encoded, backslash, unicode and ~ paths in every field "
           "naming a model, dataset, split, file, checkpoint or job id; symlinks in the models folder, a model "
           "folder, the upload store and a checkpoint folder",
           "4xx for each, nothing read outside the store",
           "every request 4xx (422 from the spec/request regexes, 404 for ids in URLs); no upload stored; the 4 "
           "symlinks refused by the worker-side loaders (the API never takes a path, and cannot see the worker's "
           "folders: a symlinked local: model makes the job fail with 'outside the models folder'); no open() "
           "of a path outside the store (audit hook)")
