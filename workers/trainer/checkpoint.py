"""Atomic, pickle-free checkpoints that resume a run exactly, on any world size.

A checkpoint folder `checkpoints/step-000050/` holds:
- the model as a `save_pretrained` folder (safetensors weights, config, tokenizer), gathered
  whole on rank 0, so the inference worker and downloads load it directly; for LoRA runs
  the adapter plus base_model.json;
- sharded/: the training state, model and optimizer tensors, one safetensors file per rank
  that wrote it, through torch.distributed.checkpoint (training_state.py), so a run resumes
  on another world size without gathering the optimizer anywhere;
- trainer_state.json + rng.safetensors: scheduler, optimizer hyperparameters, data
  cursors, controller state (mu, H*, step) and every rank's RNG states — no pickle anywhere;
- reference.safetensors (the KL reference, once taken after the warm-up) and
  meta_validation.safetensors (the current meta window's validation gradient, when the
  checkpoint falls mid-window): full tensors by parameter name, readable by any world size;
- manifest.json: the SHA-256 of every file, checked before a resume trusts the folder.
Every rank writes its shard into a hidden temp folder that rank 0 names; rank 0 writes the
rest and renames it into place, so a crash or a full disk never leaves a half-written
checkpoint under a real name.
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
from workers.trainer.training_state import SHARDED, load_training_state, save_training_state

MANIFEST = "manifest.json"
STATE = "trainer_state.json"
RNG = "rng.safetensors"
REFERENCE = "reference.safetensors"  # the KL reference's trained weights, once taken after the warm-up
META_VALIDATION = "meta_validation.safetensors"  # g_val of the meta window a checkpoint falls inside


class CheckpointError(RuntimeError):
    """A checkpoint could not be written, or a folder is not a valid checkpoint."""


def checkpoint_dir(out_dir: Path, step: int) -> Path:
    return out_dir / "checkpoints" / f"step-{step:06d}"


def save_checkpoint(world, out_dir: Path, step: int, run_state: dict, model, tokenizer, optimizer,
                    base_source: str, tensor_files: dict[str, dict[str, torch.Tensor] | None] | None = None) -> Path:
    """Collective (every rank of `world` calls it): write the checkpoint for `step`
    atomically and return its folder. `tensor_files` maps a file name (REFERENCE,
    META_VALIDATION) to the full tensors rank 0 writes there; None entries are skipped."""
    from torch.distributed.checkpoint.api import CheckpointException

    final = checkpoint_dir(out_dir, step)
    tmp = Path(world.write_once(lambda: str(_new_temp(final))))
    try:
        full_weights = world.full_model_state(model)  # on rank 0, for the Hugging Face folder
        optimizer_meta = save_training_state(tmp, model, optimizer, collective=world.size > 1)
        rng_tensors, python_rng = world.gather_rng()
        state = dict(run_state, step=step, world_size=world.size, optimizer=optimizer_meta, python_rng=python_rng)
        world.write_once(lambda: _finish(tmp, final, state, rng_tensors, model, tokenizer, base_source, full_weights,
                                               tensor_files or {}))
    except (OSError, SafetensorError, CheckpointException) as error:
        # safetensors reports a full disk as SafetensorError, not OSError (issue 6, case 8),
        # DCP a failed shard write as CheckpointException on every rank: either way the
        # partial folder goes, so a full disk leaves no half checkpoint.
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"could not write checkpoint for step {step}: {error}") from error
    return final


def load_checkpoint(world, path: Path, model, optimizer) -> dict:
    """Collective: restore weights, optimizer and this rank's RNG from a verified `path`
    (written by any world size); return the run state to resume from."""
    world.write_once(lambda: verify_checkpoint(path))  # rank 0 hashes; a failure reaches every rank
    state = json.loads((path / STATE).read_text())
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        load_training_state(path, model, optimizer, state["optimizer"], collective=world.size > 1)
    except (CheckpointException, ValueError, KeyError, RuntimeError) as error:  # missing keys, shapes
        raise CheckpointError(f"{path.name}: the training state does not fit this run: {error}") from error
    restore_rng(state, path, world.rank)
    return state


def read_tensors(path: Path, name: str) -> dict[str, torch.Tensor] | None:
    """A checkpoint's tensor file by parameter name (REFERENCE, META_VALIDATION), or None when
    the run did not need it then; the folder was verified by the resume that reads it."""
    file = Path(path) / name
    return load_file(str(file)) if file.is_file() else None


def checkpoint_step(path: Path) -> int:
    """The step a checkpoint was taken after (from its run state, not its folder name)."""
    return int(json.loads((Path(path) / STATE).read_text())["step"])


def _new_temp(final: Path) -> Path:
    tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    return tmp


def _finish(tmp: Path, final: Path, state: dict, rng_tensors: dict, model, tokenizer, base_source: str,
            full_weights: dict | None, tensor_files: dict[str, dict | None]) -> None:
    """Rank 0: the Hugging Face folder, trainer state, RNG, manifest; then the rename."""
    save_model_folder(model, tokenizer, tmp, base_source, state_dict=full_weights)
    save_file(rng_tensors, str(tmp / RNG))
    for name, tensors in tensor_files.items():
        if tensors is not None:
            save_file(tensors, str(tmp / name))
    (tmp / STATE).write_text(json.dumps(state))
    _write_manifest(tmp)
    if final.exists():  # a re-run of the same step after a crash: replace it
        shutil.rmtree(final)
    os.replace(tmp, final)


def verify_checkpoint(path: Path) -> None:
    """Raise CheckpointError unless every file matches the manifest's checksum."""
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise CheckpointError(f"{path.name}: no manifest, not a complete checkpoint")
    expected = json.loads(manifest_path.read_text())
    unlisted = {str(p.relative_to(path)) for p in (path / SHARDED).rglob("*") if p.is_file()} - expected.keys()
    if unlisted:  # the shard reader reads every file there: only the ones this service wrote
        raise CheckpointError(f"{path.name}: {sorted(unlisted)[0]} is not in the manifest")
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


def restore_rng(state: dict, folder: Path, rank: int) -> None:
    """Restore this rank's saved RNG states; a rank the saving run did not have (it ran on
    fewer ranks) gets a fresh stream of its own, fixed by the step."""
    tensors = load_file(str(folder / RNG))
    own = tensors.get(f"torch.rank{rank}")
    if own is None:
        seed = int(state["step"]) * 104729 + 7919 * rank
        torch.manual_seed(seed)
        random.seed(seed)
        return
    torch.set_rng_state(own)
    version, internal, gauss = state["python_rng"][rank]
    random.setstate((version, tuple(internal), gauss))
    cuda = tensors.get(f"cuda.rank{rank}")
    if cuda is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(cuda)


def rng_state() -> tuple[dict[str, torch.Tensor], list]:
    """This process's (torch and CUDA RNG tensors, Python random state as JSON)."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["cuda"] = torch.cuda.get_rng_state()
    version, internal, gauss = random.getstate()
    return tensors, [version, list(internal), gauss]
