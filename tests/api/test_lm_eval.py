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


def hf_reference(tmp_path, monkeypatch) -> dict:
    """The multiple-choice task scored by lm-eval's `hf` model on a folder of the same weights."""
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(name, "1")
    write_tasks(tmp_path)
    folder = tmp_path / "tiny"
    save_model_folder(build_tiny_model(), build_char_tokenizer(), folder, base_source=None)
    return evaluate("hf", {"pretrained": str(folder), "dtype": "float32", "device": "cpu"}, ["amft_choice"], tmp_path)


@pytest.mark.timeout(600)
def test_lm_eval_local_completions_matches_hf(pg_settings, tmp_path, monkeypatch):
    import requests

    reference = hf_reference(tmp_path, monkeypatch)

    with ApiServer(pg_settings) as api, InferenceWorker(pg_settings, tmp_path) as worker:
        key = api.key("alice")
        monkeypatch.setenv("OPENAI_API_KEY", key)
        base_url = f"{api.url}/v1/models/{MODEL}/v1/completions"
        requests.get(f"{api.url}/v1/models/{MODEL}/tokenizer_info", headers={"Authorization": f"Bearer {key}"},
                     timeout=120)  # loads the model: the harness's detection waits only 5 s
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


@pytest.mark.timeout(600)
def test_harness_finds_the_served_tokenizer_and_scores_like_hf(pg_settings, tmp_path, monkeypatch):
    """The harness's own pieces that need no tenacity: its remote-tokenizer detection and
    client, its loglikelihood payload and its parser, item by item against the `hf` model."""
    from types import SimpleNamespace

    import requests
    from lm_eval.models.openai_completions import LocalCompletionsAPI
    from lm_eval.utils import RemoteTokenizer, check_remote_tokenizer_support

    reference = hf_reference(tmp_path, monkeypatch)
    samples = sorted(reference["samples"]["amft_choice"], key=lambda s: s["doc_id"])
    tokenizer = build_char_tokenizer()
    with ApiServer(pg_settings) as api, InferenceWorker(pg_settings, tmp_path) as worker:
        key = api.key("alice")
        base_url = f"{api.url}/v1/models/{MODEL}/v1/completions"
        assert not check_remote_tokenizer_support(base_url, max_retries=1)  # the endpoints need the key
        warm = requests.get(f"{api.url}/v1/models/{MODEL}/tokenizer_info", headers={"Authorization": f"Bearer {key}"},
                            timeout=120)  # loads the model: the harness's detection waits only 5 s
        assert warm.status_code == 200 and warm.json()["eos_token"] == tokenizer.eos_token, warm.text
        assert check_remote_tokenizer_support(base_url, auth_token=key), worker.logs()
        remote = RemoteTokenizer(base_url, auth_token=key)
        assert remote.encode("2 + 2 = 4") == tokenizer("2 + 2 = 4", add_special_tokens=False)["input_ids"]
        assert remote.decode(remote.encode("Hi there")) == "Hi there" and remote.eos_token == tokenizer.eos_token
        for sample in samples:
            for (context, continuation), expected in zip(sample["arguments"], sample["resps"]):
                context_ids = remote.encode(context)
                whole = remote.encode(context + continuation)
                payload = LocalCompletionsAPI._create_payload(SimpleNamespace(model=None), [whole], generate=False)
                reply = requests.post(base_url, json=payload, headers={"Authorization": f"Bearer {key}"}, timeout=120)
                assert reply.status_code == 200, reply.text
                [(loglik, _greedy)] = LocalCompletionsAPI.parse_logprobs(reply.json(), ctxlens=[len(context_ids)])
                assert loglik == pytest.approx(expected[0][0], abs=1e-4)
        gen = LocalCompletionsAPI._create_payload(SimpleNamespace(model=None, _max_gen_toks=256), [remote.encode("Question: 2 + 2 =")],
                                                  generate=True, gen_kwargs={"until": ["\n"], "max_gen_toks": 8}, eos="</s>")
        reply = requests.post(base_url, json=gen, headers={"Authorization": f"Bearer {key}"}, timeout=120)
        [text] = LocalCompletionsAPI.parse_generations(reply.json())
        assert reply.status_code == 200 and "\n" not in text and len(remote.encode(text)) <= 8
