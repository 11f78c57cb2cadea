"""Model sources, safety checks on model folders, saving and prompt formatting."""

import json

import pytest
import torch
from safetensors.torch import save_file

from service.settings import Settings
from workers.trainer.models import (
    ModelSourceError,
    build_char_tokenizer,
    check_model_folder,
    format_prompt,
    load_model_folder,
    load_policy,
    save_model_folder,
)


@pytest.fixture
def settings(tmp_path):
    return Settings(home=tmp_path, models_dir=tmp_path / "models", cache_dir=tmp_path / "cache")


def logits_of(model, tokenizer, text="Question: 12 + 7?\nAnswer: 19"):
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_tiny_model_is_identical_across_loads_and_keeps_caller_rng(settings):
    torch.manual_seed(7)
    expected_draw = torch.rand(3)
    torch.manual_seed(7)
    first, tokenizer = load_policy("builtin:tiny", settings)
    second, _ = load_policy("builtin:tiny", settings)
    assert torch.equal(torch.rand(3), expected_draw)  # the caller's RNG stream is untouched
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), name
    params = sum(p.numel() for p in first.parameters())
    assert 0.8e6 < params < 1.2e6
    assert first.config.hidden_size == 128 and first.config.num_hidden_layers == 4
    assert tokenizer.pad_token == "<pad>" and tokenizer.eos_token == "</s>"


def test_tiny_weights_are_the_same_in_another_process(settings):
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "from workers.trainer.models import build_tiny_model\n"
        "print(float(build_tiny_model().model.layers[3].mlp.down_proj.weight.double().sum()))"
    )
    repo = Path(__file__).resolve().parents[3]
    out = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, check=True)
    model, _ = load_policy("builtin:tiny", settings)
    assert float(out.stdout) == float(model.model.layers[3].mlp.down_proj.weight.detach().double().sum())


def test_char_tokenizer_round_trip_is_exact(tmp_path):
    tokenizer = build_char_tokenizer()
    text = "Tom has 12 apples.\n  He buys 7 more!  #### 14 {x}\n~`'\"\\ ,.;"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text)  # one token per character
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode(ids + [tokenizer.eos_token_id], skip_special_tokens=True) == text
    assert tokenizer("é", add_special_tokens=False)["input_ids"] == [tokenizer.unk_token_id]
    assert not tokenizer.chat_template
    tokenizer.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded(text, add_special_tokens=False)["input_ids"] == ids
    assert reloaded.decode(ids) == text


def test_format_prompt_without_and_with_chat_template():
    tokenizer = build_char_tokenizer()
    assert format_prompt(tokenizer, "2+2?") == "Question: 2+2?\nAnswer: "
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]
    assert format_prompt(tokenizer, chat) == "system: Be brief.\nuser: 2+2?\nAnswer: "
    tokenizer.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    assert format_prompt(tokenizer, "2+2?") == "<user>2+2?<assistant>"
    assert format_prompt(tokenizer, chat) == "<system>Be brief.<user>2+2?<assistant>"


def test_save_and_load_round_trip_gives_identical_logits(settings):
    model, tokenizer = load_policy("builtin:tiny", settings)
    folder = settings.resolved_models_dir / "tiny-copy"
    save_model_folder(model, tokenizer, folder, base_source=None)
    assert (folder / "model.safetensors").is_file() and not list(folder.glob("*.bin"))
    loaded, loaded_tokenizer = load_policy("local:tiny-copy", settings)
    assert torch.equal(logits_of(model, tokenizer), logits_of(loaded, loaded_tokenizer))
    text = "12 + 7 = 19. #### 19"
    assert loaded_tokenizer.decode(loaded_tokenizer(text, add_special_tokens=False)["input_ids"]) == text
    assert loaded_tokenizer.pad_token_id == tokenizer.pad_token_id


def test_lora_checkpoint_round_trip(settings):
    from peft import LoraConfig, PeftModel, get_peft_model

    base, tokenizer = load_policy("builtin:tiny", settings)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # LoRA B starts at zero; make the adapter change the output
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.fill_(0.01)
    folder = settings.home / "checkpoint"
    save_model_folder(model, tokenizer, folder, base_source="builtin:tiny")
    assert json.loads((folder / "base_model.json").read_text()) == {"source": "builtin:tiny"}
    assert (folder / "adapter_model.safetensors").is_file()
    loaded, loaded_tokenizer = load_model_folder(folder, settings=settings)
    assert isinstance(loaded, PeftModel)
    assert torch.allclose(logits_of(model, tokenizer), logits_of(loaded, loaded_tokenizer), atol=1e-6)
    with pytest.raises(ValueError, match="base_source"):
        save_model_folder(model, tokenizer, settings.home / "other", base_source=None)


@pytest.fixture
def saved_tiny(tmp_path, settings):
    model, tokenizer = load_policy("builtin:tiny", settings)
    folder = tmp_path / "model"
    save_model_folder(model, tokenizer, folder, base_source=None)
    return folder


def test_pickle_only_folder_is_refused(saved_tiny):
    weights = saved_tiny / "model.safetensors"
    (saved_tiny / "pytorch_model.bin").write_bytes(b"not really a pickle")
    weights.unlink()
    with pytest.raises(ModelSourceError, match="only pickle weights found \\(pytorch_model.bin\\)"):
        check_model_folder(saved_tiny)


def test_auto_map_and_code_are_refused(saved_tiny):
    config_path = saved_tiny / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "auto_map": {"AutoModelForCausalLM": "evil.Model"}}))
    with pytest.raises(ModelSourceError, match="auto_map"):
        load_model_folder(saved_tiny)
    config_path.write_text(json.dumps(config))
    (saved_tiny / "evil.py").write_text("import os\n")
    with pytest.raises(ModelSourceError, match="must not contain code"):
        load_model_folder(saved_tiny)


def test_symlink_escaping_the_folder_is_refused(saved_tiny, tmp_path):
    outside = tmp_path / "outside.safetensors"
    save_file({"x": torch.zeros(1)}, str(outside))
    (saved_tiny / "extra.safetensors").symlink_to(outside)
    with pytest.raises(ModelSourceError, match="link to outside"):
        load_model_folder(saved_tiny)


def test_missing_folders_are_refused(settings, tmp_path):
    with pytest.raises(ModelSourceError, match="no model folder"):
        load_policy("local:nothing-here", settings)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelSourceError, match="no .safetensors weights"):
        load_model_folder(tmp_path / "empty")


def test_lora_folder_needs_safetensors_adapter_and_a_valid_base_source(saved_tiny):
    (saved_tiny / "adapter_config.json").write_text("{}")
    (saved_tiny / "adapter_model.bin").write_bytes(b"pickle")
    with pytest.raises(ModelSourceError, match="needs adapter_model.safetensors"):
        load_model_folder(saved_tiny)
    save_file({"x": torch.zeros(1)}, str(saved_tiny / "adapter_model.safetensors"))
    with pytest.raises(ModelSourceError, match="base_model.json"):
        load_model_folder(saved_tiny)
    (saved_tiny / "base_model.json").write_text(json.dumps({"source": "/etc/passwd"}))
    with pytest.raises(ModelSourceError, match="invalid model source"):
        load_model_folder(saved_tiny)


@pytest.mark.timeout(120)
def test_hub_offline_fails_fast_with_a_clear_message(settings, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelSourceError, match="could not load hub:nobody/no-such-model \\(HF_HUB_OFFLINE is set"):
        load_policy("hub:nobody/no-such-model", settings)  # no network wait: the timeout mark bounds a hang


@pytest.mark.slow
def test_smollm2_conversion_matches_the_gguf_model(settings):
    from transformers import AutoModelForCausalLM

    from workers.trainer.models import _smollm2_gguf, smollm2_folder

    gguf_folder, gguf_name = _smollm2_gguf()
    folder = smollm2_folder(settings)
    assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    converted_at = (folder / "model.safetensors").stat().st_mtime_ns
    model, tokenizer = load_policy("builtin:smollm2-135m", settings)
    assert (folder / "model.safetensors").stat().st_mtime_ns == converted_at  # the cached folder, not a second conversion
    assert tokenizer.chat_template and tokenizer.pad_token is not None
    reference = AutoModelForCausalLM.from_pretrained(gguf_folder, gguf_file=gguf_name, dtype=torch.float32)
    prompt = format_prompt(tokenizer, "What is 12 + 7?")
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, reference(input_ids=ids).logits)
