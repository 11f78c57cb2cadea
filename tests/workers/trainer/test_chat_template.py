"""training.chat_template: the spec's template, not the tokenizer's, formats every prompt the
loop feeds the model (rollouts and SFT batches), and it is saved with the checkpoint."""

from __future__ import annotations

import json

import pytest

from service.settings import get_settings
from service.specs import JobSpec
from workers.trainer import loop
from workers.trainer.models import format_prompt, load_model_folder

OVERRIDE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
            "{% if add_generation_prompt %}<assistant>{% endif %}")
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]


def chat_spec(file_id: str, chat_template: str | None) -> JobSpec:
    source = {"source": f"file:{file_id}"}
    return JobSpec.model_validate({
        "method": "fixed", "model": "builtin:tiny", "datasets": {"sft": source, "rl": source, "validation": source, "eval": []},
        "training": {"total_steps": 1, "warmup_steps": 0, "sft_batch_size": 2, "rl_prompts_per_step": 1,
                     "num_generations": 2, "max_completion_tokens": 4, "chat_template": chat_template},
        "controller": {"fixed_mu": 0.5},
    })


def prompts_fed_to_the_model(spec: JobSpec, monkeypatch) -> tuple[list[str], loop.Run]:
    """Run one step (rollouts and an SFT batch) and decode every prompt `pack` received."""
    seen: list[list[int]] = []
    real_pack = loop.pack

    def recording_pack(prompts, completions, pad_id):
        seen.extend(prompts)
        return real_pack(prompts, completions, pad_id)

    monkeypatch.setattr(loop, "pack", recording_pack)
    run = loop.setup(spec)
    loop.train_step(run, 1)
    return [run.tokenizer.decode(ids) for ids in seen], run


@pytest.fixture
def chat_file() -> str:
    file_id = "c" * 32
    folder = get_settings().resolved_artifacts_dir / "files"
    folder.mkdir(parents=True, exist_ok=True)
    record = {"messages": [*MESSAGES, {"role": "assistant", "content": "4"}], "answer": "4"}
    (folder / f"{file_id}.jsonl").write_text(json.dumps(record) + "\n")
    return file_id


def test_the_spec_template_formats_rollout_and_sft_prompts_and_is_saved(chat_file, tmp_path, monkeypatch):
    decoded, run = prompts_fed_to_the_model(chat_spec(chat_file, OVERRIDE), monkeypatch)
    # 2 rollout rows (1 prompt x 2 generations) + 2 SFT rows, all in the override's format.
    assert decoded == ["<system>Be brief.<user>2+2?<assistant>"] * 4

    folder = loop.save(run, tmp_path / "out", 1)
    _model, saved = load_model_folder(folder)
    assert saved.chat_template == OVERRIDE  # inference on the checkpoint formats chats the same way
    assert format_prompt(saved, MESSAGES) == decoded[0]


def test_without_an_override_the_tokenizers_format_is_used(chat_file, monkeypatch):
    decoded, _run = prompts_fed_to_the_model(chat_spec(chat_file, None), monkeypatch)
    assert decoded == ["system: Be brief.\nuser: 2+2?\nAnswer: "] * 4  # builtin:tiny has no template
