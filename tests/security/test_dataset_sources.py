"""Issue 13, security item 1: an `hf:` source reaches `datasets.load_dataset` only as a hub
id `org/name`. Packaged builder names (asked of the library), paths, globs, URLs, hub
prefixes and data_files are refused at spec validation (422 naming the field) and again
by the worker where it loads data, whatever a stored spec says."""

from __future__ import annotations

import datasets
import pytest
from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES

from service.settings import Settings
from service.specs import DataSourceSpec
from tests.conftest import TINY_SPEC
from workers.trainer import data
from workers.trainer.data import DatasetError, load_records

pytestmark = pytest.mark.timeout(120)

# Not builder names: every other shape that would make load_dataset read local files or
# leave the hub (relative and absolute paths, globs, scripts, hub URL prefixes, newlines).
NOT_HUB_IDS = ["./data", "../etc", "/etc/passwd", "data/*.jsonl", "**", "~/x", "a/b/c", "org/name.py",
               "buckets/org", "datasets/org", "org/..", "org/name\n", "org /name", "org/na me", "json/..",
               "csv/data.csv"]
FIELDS = [("datasets.sft.source", {"sft": {}}), ("datasets.rl.source", {"rl": {}}),
          ("datasets.validation.source", {"validation": {}}), ("datasets.eval.0.source", {"eval": [{}]})]


def _spec_with(field_body: dict, source: str) -> dict:
    part = {k: ([{"source": source}] if isinstance(v, list) else {"source": source}) for k, v in field_body.items()}
    return {**TINY_SPEC, "datasets": part}


def test_13_1_hf_sources_are_hub_ids_only(tenants, record, monkeypatch, tmp_path):
    builders = sorted(_PACKAGED_DATASETS_MODULES)
    assert {"text", "json", "csv", "parquet", "arrow", "imagefolder"} <= set(builders)
    bad = builders + [name.upper() for name in builders[:3]] + NOT_HUB_IDS
    refused = 0
    with tenants.alice() as alice:
        job_id = alice.post("/jobs", json=TINY_SPEC).json()["id"]
        for source in bad:
            for field, body in FIELDS:
                response = alice.post("/jobs", json=_spec_with(body, f"hf:{source}"))
                assert response.status_code == 422, (source, field, response.text)
                assert any(p.startswith(field + ":") for p in response.json()["problems"]), (field, response.json())
                refused += 1
            response = alice.post(f"/jobs/{job_id}/evaluations", json={"dataset": {"source": f"hf:{source}"}})
            assert response.status_code == 422 and "dataset.source" in response.json()["detail"], (source, response.text)
            refused += 1
        # data_files / data_dir / path have no field to arrive through.
        for extra in ("data_files", "data_dir", "path", "name_or_path"):
            response = alice.post("/jobs", json={**TINY_SPEC, "datasets": {"sft": {"source": "hf:org/name", extra: "*.json"}}})
            assert response.status_code == 422 and f"datasets.sft.{extra}" in response.json()["detail"], response.text
            refused += 1
        assert len(alice.get("/jobs").json()["jobs"]) == 1, "a refused spec created a job"
        # A plain hub id is still accepted (queued; nothing here runs it).
        ok = alice.post("/jobs", json=_spec_with({"rl": {}}, "hf:openai/gsm8k"))
        assert ok.status_code == 201, ok.text

    # The worker's own check, for specs stored before this fix (built without validation).
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: calls.append((a, k)))  # a tripwire for the hub call
    (tmp_path / "my" / "data").mkdir(parents=True)
    (tmp_path / "workers" / "trainer").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    worker_refused = 0
    # Folders of the worker's working directory have the shape of a hub id: only the worker can tell.
    for source in builders + NOT_HUB_IDS + ["my/data", "my/data/", "workers/trainer"]:
        spec = DataSourceSpec.model_construct(source=f"hf:{source}", split="train", limit=None, name=None)
        with pytest.raises(DatasetError):
            load_records(spec, Settings())
        worker_refused += 1
    assert calls == [], f"load_dataset was called with {calls}"

    # Offline mode is honoured even when switched on after `datasets` was imported.
    monkeypatch.undo()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    try:
        with pytest.raises(DatasetError, match="offline mode"):
            data._load_hf("nobody-here/no-such-dataset", "train")
    finally:
        import huggingface_hub.constants

        huggingface_hub.constants.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = False
        datasets.config.HF_DATASETS_OFFLINE = False
    record("13.1", f"hf: sources naming each of the {len(builders)} packaged builders of datasets "
                   f"{datasets.__version__} (asked of the library), {len(NOT_HUB_IDS)} paths/globs/scripts/hub "
                   f"prefixes/trailing newline, and data_files/data_dir fields, in every dataset field of a job "
                   f"spec and an evaluation; the same sources handed straight to the worker's loader",
           "422 naming the field at validation; the worker refuses them before load_dataset; offline honoured",
           f"{refused} requests answered 422 naming the field, no job created; hf:openai/gsm8k still accepted; "
           f"worker loader refused all {worker_refused} without calling load_dataset (local folders my/data and workers/trainer "
           f"included); with HF_HUB_OFFLINE set after import: 'offline mode' error at once")
