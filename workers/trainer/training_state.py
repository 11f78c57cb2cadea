"""The sharded training state of a checkpoint: model and optimizer tensors through
`torch.distributed.checkpoint` (DCP), in its safetensors storage.

Every rank writes its own shard of every parameter and of AdamW's moments to
`sharded/shard-<rank+1>-model-00001-of-00001.safetensors`, with each shard's offsets in the
safetensors header (JSON). A reader plans from those headers alone, so any world size can
read any other's shards (2 -> 1, 1 -> 2): DCP reassembles and re-slices them for the
reading ranks' own FSDP2 layout. Nothing here is pickled:
- DCP's default `FileSystemReader` unpickles a `.metadata` file with plain `pickle.load`
  (torch 2.13, filesystem.py `read_metadata`) and non-tensor values with
  `torch.load(weights_only=False)` (default_planner.py `load_bytes`). We use neither: the
  `HuggingFaceStorageWriter/Reader` pair writes no `.metadata` and builds the plan from
  safetensors headers, and only tensors go in (optimizer hyperparameters are JSON in
  trainer_state.json, written by the caller);
- the load planner refuses any non-tensor item outright, as a second lock.
The same code runs in one process (DCP without a process group) and in N ranks.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

SHARDED = "sharded"


def save_training_state(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, collective: bool) -> dict:
    """Collective on every rank: write this rank's shards under folder/sharded.

    Returns the JSON part of the optimizer (its hyperparameters per group, and whether it
    has any state yet) for the caller's trainer_state.json."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.hf_storage import HuggingFaceStorageWriter

    has_state = bool(optimizer.state)  # never make an optimizer that has not stepped take one
    state, _, _ = _state(model, optimizer if has_state else None)
    dcp.save(state, storage_writer=HuggingFaceStorageWriter(str(folder / SHARDED), save_distributed=True),
             no_dist=not collective)
    groups = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    return {"param_groups": groups, "has_state": has_state}


def load_training_state(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, saved: dict,
                        collective: bool) -> None:
    """Collective on every rank: read this rank's share of the saved shards into the live
    (possibly FSDP2-sharded) model and optimizer. `saved` is save_training_state's dict."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.hf_storage import HuggingFaceStorageReader
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    state, model_state, live_groups = _state(model, optimizer if saved["has_state"] else None)
    # dcp.load fills the tensors in place (a tied weight is one tensor: filled once).
    dcp.load(state, storage_reader=HuggingFaceStorageReader(str(folder / SHARDED)), planner=_tensors_only_planner(),
             no_dist=not collective)
    set_model_state_dict(model, model_state, options=_options())
    if saved["has_state"]:
        groups = [dict(live, **hyper) for live, hyper in zip(live_groups, saved["param_groups"], strict=True)]
        set_optimizer_state_dict(model, optimizer, {"state": state["optim"], "param_groups": groups}, options=_options())
    else:
        for group, hyper in zip(optimizer.param_groups, saved["param_groups"], strict=True):
            group.update(hyper)


def _options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # Frozen parameters (a LoRA base) come from the model source at setup, not the checkpoint.
    return StateDictOptions(ignore_frozen_params=True)


def _state(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> tuple[dict, dict, list]:
    """(the DCP state: tensors only, tied weights once; the model's state dict; the
    optimizer's param groups keyed by parameter name) for set_state_dict."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    model_state = get_model_state_dict(model, options=_options())
    state, groups = {"model": _distinct(model_state)}, []
    if optimizer is not None:
        by_name = get_optimizer_state_dict(model, optimizer, options=_options())
        state["optim"], groups = by_name["state"], by_name["param_groups"]
    return state, model_state, groups


def _distinct(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop entries that alias an earlier one (a tied LM head): safetensors refuses shared
    storage, and the alias is filled when its original is."""
    seen, kept = set(), {}
    for name, tensor in state.items():
        local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
        key = (local.untyped_storage().data_ptr(), local.storage_offset(), tuple(local.shape))
        if local.numel() and key in seen:
            continue
        seen.add(key)
        kept[name] = tensor
    return kept


def _tensors_only_planner():
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

    class TensorsOnly(DefaultLoadPlanner):
        """DefaultLoadPlanner.load_bytes would torch.load(weights_only=False): refuse instead."""

        def load_bytes(self, read_item, value: io.BytesIO) -> None:
            raise ValueError(f"{read_item.dest_index.fqn}: a non-tensor item in a checkpoint is refused")

    return TensorsOnly()
