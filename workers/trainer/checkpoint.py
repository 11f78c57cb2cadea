"""Atomic, pickle-free checkpoints that resume a run exactly.

A checkpoint folder `checkpoints/step-000050/` holds:
- the model as a `save_pretrained` folder (safetensors weights, config, tokenizer), so the
  inference worker can load it directly; for LoRA runs the adapter plus base_model.json;
- optimizer.safetensors + trainer_state.json: optimizer tensors, scheduler, RNG states,
  data cursors and controller state (mu, H*, step) — no pickle anywhere;
- manifest.json: the SHA-256 of every file, checked before a resume trusts the folder.
It is written to a hidden temp folder and renamed into place, so a crash or a full disk
never leaves a half-written checkpoint under a real name.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import uuid
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from workers.trainer.models import save_model_folder

MANIFEST = "manifest.json"
STATE = "trainer_state.json"
OPTIMIZER = "optimizer.safetensors"
REFERENCE = "reference.safetensors"  # the KL reference's trained weights, once taken after the warm-up


class CheckpointError(RuntimeError):
    """A checkpoint could not be written, or a folder is not a valid checkpoint."""


def checkpoint_dir(out_dir: Path, step: int) -> Path:
    return out_dir / "checkpoints" / f"step-{step:06d}"


def save_checkpoint(
    out_dir: Path, step: int, run_state: dict, model, tokenizer, optimizer_state: dict, base_source: str,
    model_state: dict | None = None, rank_rng: dict[str, torch.Tensor] | None = None,
    reference_state: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write the checkpoint for `step` atomically and return its folder.

    A sharded run passes the gathered full `model_state` (else the model's own is written)
    and the other ranks' RNG states; the files are the same for every world size."""
    final = checkpoint_dir(out_dir, step)
    tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir(parents=True)
        save_model_folder(model, tokenizer, tmp, base_source, state_dict=model_state)
        tensors, optimizer_meta = _flatten_optimizer(optimizer_state)
        save_file(tensors, str(tmp / OPTIMIZER))
        if reference_state is not None:
            save_file(reference_state, str(tmp / REFERENCE))
        state = dict(run_state, step=step, optimizer=optimizer_meta, rng=_capture_rng(tmp, rank_rng or {}))
        (tmp / STATE).write_text(json.dumps(state))
        _write_manifest(tmp)
        if final.exists():  # a re-run of the same step after a crash: replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
    except (OSError, SafetensorError) as error:
        # safetensors reports a full disk as SafetensorError, not OSError (issue 6, case 8):
        # either way the partial folder goes, so a full disk leaves no half checkpoint.
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"could not write checkpoint for step {step}: {error}") from error
    return final


def load_checkpoint(path: Path, model, optimizer) -> dict:
    """Restore weights, optimizer and RNG from `path`; return the run state to resume from."""
    verify_checkpoint(path)
    state = json.loads((path / STATE).read_text())
    _load_weights(model, path)
    optimizer.load_state_dict(_unflatten_optimizer(load_file(str(path / OPTIMIZER)), state["optimizer"]))
    restore_rng(state["rng"], path)
    return state


def read_reference(path: Path) -> dict[str, torch.Tensor] | None:
    """The KL reference's saved weights (by parameter name), or None when the reference is
    the initial model; the folder was verified by the resume that reads it."""
    file = Path(path) / REFERENCE
    return load_file(str(file)) if file.is_file() else None


def checkpoint_step(path: Path) -> int:
    """The step a checkpoint was taken after (from its run state, not its folder name)."""
    return int(json.loads((Path(path) / STATE).read_text())["step"])


def read_checkpoint(path: Path) -> tuple[dict, dict[str, torch.Tensor], dict]:
    """(run state, full model weights, optimizer state) of a verified full-weights checkpoint,
    read from safetensors and JSON only, for a sharded run to take its shards from."""
    verify_checkpoint(path)
    state = json.loads((path / STATE).read_text())
    weights: dict[str, torch.Tensor] = {}
    for file in sorted(path.glob("model*.safetensors")):
        weights.update(load_file(str(file)))
    optimizer_state = _unflatten_optimizer(load_file(str(path / OPTIMIZER)), state["optimizer"])
    return state, weights, optimizer_state


def verify_checkpoint(path: Path) -> None:
    """Raise CheckpointError unless every file matches the manifest's checksum."""
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise CheckpointError(f"{path.name}: no manifest, not a complete checkpoint")
    expected = json.loads(manifest_path.read_text())
    for name, digest in expected.items():
        file = path / name
        if not file.is_file() or _sha256(file) != digest:
            raise CheckpointError(f"{path.name}: {name} is missing or corrupted (checksum mismatch)")


def latest_valid_checkpoint(out_dir: Path) -> Path | None:
    """The newest checkpoint under out_dir that passes verification; corrupt ones are skipped."""
    folders = sorted((out_dir / "checkpoints").glob("step-*"), reverse=True)
    for folder in folders:
        try:
            verify_checkpoint(folder)
            return folder
        except CheckpointError:
            continue
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_manifest(folder: Path) -> None:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    manifest = {str(p.relative_to(folder)): _sha256(p) for p in files}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))


def _flatten_optimizer(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state dict into named tensors and a JSON-able remainder."""
    tensors, scalars = {}, {}
    for index, entry in state_dict["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for name, value in list(tensors.items()) + list(meta["scalars"].items()):
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def _capture_rng(folder: Path, rank_rng: dict[str, torch.Tensor]) -> dict:
    rng_tensors = {"torch": torch.get_rng_state(), **rank_rng}
    if torch.cuda.is_available():
        for i, cuda_state in enumerate(torch.cuda.get_rng_state_all()):
            rng_tensors[f"cuda{i}"] = cuda_state
    save_file(rng_tensors, str(folder / "rng.safetensors"))
    version, internal, gauss = random.getstate()
    return {"python": [version, list(internal), gauss], "cuda_devices": torch.cuda.device_count()}


def restore_rng(rng: dict, folder: Path) -> dict[str, torch.Tensor]:
    """Restore this process's RNG (rank 0's); return the other ranks' saved torch states."""
    tensors = load_file(str(folder / "rng.safetensors"))
    torch.set_rng_state(tensors["torch"])
    if torch.cuda.is_available() and rng["cuda_devices"] == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([tensors[f"cuda{i}"] for i in range(rng["cuda_devices"])])
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))
    return {name: value for name, value in tensors.items() if name.startswith("torch.rank")}


def _load_weights(model, folder: Path) -> None:
    """Copy saved weights into the live model (full weights, or LoRA adapter weights)."""
    adapter = folder / "adapter_model.safetensors"
    if adapter.is_file():
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(str(adapter)))
        return
    weights: dict[str, torch.Tensor] = {}
    for file in sorted(folder.glob("model*.safetensors")):
        weights.update(load_file(str(file)))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    tied = {k for k in missing if k.endswith("lm_head.weight")} if model.config.tie_word_embeddings else set()
    if unexpected or set(missing) - tied:
        raise CheckpointError(f"{folder.name}: weights do not fit the model (missing {sorted(missing)[:3]})")
    if tied:
        model.tie_weights()
