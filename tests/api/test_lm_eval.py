"""lm-evaluation-harness (pinned, 0.4.13) against a live server and inference worker, with
its `local-completions` model's default arguments except `base_url` and the key the
server's tokenizer endpoints need (`auth_token`; completions read OPENAI_API_KEY), and no
network. The harness finds the model's tokenizer on the server (remote tokenizer
backend, auto-detected), so it needs no hub. Its loglikelihoods equal lm-eval's own `hf`
model on the same weights."""

import json

import pytest

from tests.api.inference_env import InferenceWorker
from tests.conftest import ApiServer
from workers.trainer.models import build_char_tokenizer, build_tiny_model, save_model_folder

pytestmark = pytest.mark.slow
MODEL = "base:builtin:tiny"  # the same weights as the folder saved below (fixed seed)
QUESTIONS = [
    {"question": "2 + 2 =", "choices": [" 4", " 5", " 22"], "answer": 0},
    {"question": "The sky is", "choices": [" blue", " green", " loud"], "answer": 0},
    {"question": "10 - 3 =", "choices": [" 6", " 7", " 13"], "answer": 1},
]


def write_tasks(folder) -> None:
    data = folder / "items.jsonl"
    data.write_text("".join(json.dumps(item) + "\n" for item in QUESTIONS))
    common = {"dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}}, "test_split": "test"}
    tasks = {
        "amft_choice": {"output_type": "multiple_choice", "doc_to_text": "{{question}}", "doc_to_choice": "{{choices}}",
                        "doc_to_target": "{{answer}}", "metric_list": [{"metric": "acc"}]},
        "amft_until": {"output_type": "generate_until", "doc_to_text": "Question: {{question}}\nAnswer:",
                       "doc_to_target": "{{choices[answer]}}", "generation_kwargs": {"until": ["\n"], "max_gen_toks": 8},
                       "metric_list": [{"metric": "exact_match"}]},
    }
    for name, spec in tasks.items():  # JSON is YAML
        (folder / f"{name}.yaml").write_text(json.dumps({"task": name, **common, **spec}))


def evaluate(model: str, model_args: dict, tasks: list[str], folder) -> dict:
    import lm_eval
    from lm_eval.tasks import TaskManager

    return lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=tasks, log_samples=True,
                                   task_manager=TaskManager(include_path=str(folder)))


def logliks(results: dict, task: str) -> list[list[float]]:
    samples = sorted(results["samples"][task], key=lambda s: s["doc_id"])
    return [[resp[0][0] for resp in sample["resps"]] for sample in samples]


@pytest.mark.timeout(600)
def test_lm_eval_local_completions_matches_hf(pg_settings, tmp_path, monkeypatch):
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(name, "1")
    write_tasks(tmp_path)
    folder = tmp_path / "tiny"
    save_model_folder(build_tiny_model(), build_char_tokenizer(), folder, base_source=None)
    reference = evaluate("hf", {"pretrained": str(folder), "dtype": "float32", "device": "cpu"}, ["amft_choice"], tmp_path)

    with ApiServer(pg_settings) as api, InferenceWorker(pg_settings, tmp_path) as worker:
        key = api.key("alice")
        monkeypatch.setenv("OPENAI_API_KEY", key)
        base_url = f"{api.url}/v1/models/{MODEL}/v1/completions"
        served = evaluate("local-completions", {"base_url": base_url, "auth_token": key}, ["amft_choice", "amft_until"], tmp_path)
        assert "amft_until" in served["results"], worker.logs()

    assert served["results"]["amft_choice"]["acc,none"] == pytest.approx(reference["results"]["amft_choice"]["acc,none"])
    ours, theirs = logliks(served, "amft_choice"), logliks(reference, "amft_choice")
    assert len(ours) == len(QUESTIONS) and all(len(row) == 3 for row in ours)
    for mine, expected in zip(ours, theirs):
        assert mine == pytest.approx(expected, abs=1e-4)
    assert 0.0 <= served["results"]["amft_until"]["exact_match,none"] <= 1.0
    generated = [s["resps"][0][0] for s in served["samples"]["amft_until"]]
    assert len(generated) == len(QUESTIONS) and all("\n" not in text for text in generated)
