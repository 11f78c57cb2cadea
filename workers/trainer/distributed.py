"""Everything distributed about a training run (issue 14), behind one object chosen at setup.

`make_world()` returns `SingleProcess` unless a launcher (torchrun, Ray Train) started this
process as one rank of several: then it returns `Sharded`. The loop calls the same methods
either way and never asks which rank it is; in one process every method is the identity,
so the single-process run is exactly what it was before.

`Sharded` is data parallel with FSDP2 (`fully_shard`) over NCCL on CUDA or gloo on CPU:
- each rank takes an equal, contiguous slice of the global batch's prompts and SFT rows
  (so a GRPO group of one prompt's G completions never crosses ranks);
- losses are normalised by the global token count and gradients are *summed* across ranks
  (divide factor 1), so an N-rank step is the one-process step on the same global batch;
- scalar statistics are token-weighted sums all-reduced across ranks, the meta-gradient's
  dot products are local-shard sums all-reduced, so every rank holds the same mu;
- rank 0 is the only writer: `reporter` gives other ranks no-op hooks, `write_once` runs a
  write on rank 0 and hands its result (or its failure) to every rank;
- rollouts decode on gathered (unsharded) weights, so ranks may take different numbers of
  decode steps without their collectives falling out of step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import random
from typing import Callable, Iterator, TypeVar

import torch

from workers.trainer.hooks import TrainerHooks

T = TypeVar("T")


class SingleProcess:
    """One process on one device: every distributed operation is the identity."""

    rank, size = 0, 1

    def device(self, kind: str) -> torch.device:
        return torch.device(kind)

    def seed_rank(self, seed: int) -> None:
        """Give each rank its own sampling stream; rank 0 keeps the one-process stream."""

    def wrap(self, model: torch.nn.Module, resources, bf16: bool = False) -> torch.nn.Module:
        return model

    def shard(self, rows: list[T]) -> list[T]:
        return rows

    def sum(self, values: list[float]) -> list[float]:
        return values

    def gather(self, values: torch.Tensor) -> torch.Tensor:
        return values

    def local(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        return tensors

    def full_weights(self, model: torch.nn.Module) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def clip_grad_norm(self, params: list[torch.nn.Parameter], max_norm: float) -> float:
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))

    def reporter(self, hooks: TrainerHooks) -> TrainerHooks:
        return hooks

    def write_once(self, write: Callable[[], T]) -> T:
        return write()

    def full_model_state(self, model) -> dict | None:
        """The full model state for the Hugging Face folder, on rank 0 (None: the model's own)."""
        return None

    def gather_rng(self) -> tuple[dict[str, torch.Tensor], list]:
        """Every rank's RNG states: tensors keyed `torch.rank<r>` / `cuda.rank<r>`, and the
        Python random states in rank order (JSON)."""
        from workers.trainer.checkpoint import rng_state

        return _by_rank([rng_state()])

    def full_parameters(self, model: torch.nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
        """Full (unsharded) CPU copies of the named parameters; a collective when sharded."""
        params = dict(model.named_parameters())
        return {name: params[name].detach().cpu().clone() for name in names}

    def load_parameters(self, model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
        """Copy full tensors (by name) into the model's parameters, or into this rank's shards."""
        model.load_state_dict(tensors, strict=False)

    def full_tensors(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Full (unsharded) contiguous CPU copies of parameter-shaped tensors (gradients, by
        name) for a checkpoint; a collective when sharded."""
        return {name: t.detach().cpu().contiguous() for name, t in tensors.items()}

    def shard_like(self, params: list[torch.nn.Parameter], tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """Full tensors (one per parameter, as `full_tensors` wrote them) laid out like the
        parameters: on their device, or as this rank's shards of them."""
        return [t.to(device=p.device, dtype=p.dtype) for p, t in zip(params, tensors, strict=True)]

    def close(self) -> None:
        return None


class Sharded(SingleProcess):
    """One rank of a torch.distributed group; see the module docstring."""

    def __init__(self, own_group: bool):
        import torch.distributed as dist

        self.dist = dist
        self.rank, self.size = dist.get_rank(), dist.get_world_size()
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.own_group = own_group
        self.mesh = None

    def device(self, kind: str) -> torch.device:
        if kind == "cuda":
            torch.cuda.set_device(self.local_rank)
            return torch.device("cuda", self.local_rank)
        return torch.device(kind)

    def seed_rank(self, seed: int) -> None:
        if self.rank:
            torch.manual_seed(seed + 7919 * self.rank)
            random.seed(seed + 7919 * self.rank)

    def wrap(self, model: torch.nn.Module, resources, bf16: bool = False) -> torch.nn.Module:
        """Shard each decoder layer, then the rest (embeddings, final norm, tied head).

        With `bf16` (a bfloat16 job) or resources.mixed_precision, FSDP2 gathers bf16 copies
        of the fp32 shards for compute and reduces gradients in fp32: the shards, and the
        optimizer state built on them, stay fp32 master copies."""
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, OffloadPolicy, fully_shard

        device_type = next(model.parameters()).device.type
        if self.mesh is None:
            self.mesh = init_device_mesh(device_type, (self.size,))
        if resources.activation_checkpointing and model.training:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        mixed = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
            if resources.mixed_precision or bf16 else MixedPrecisionPolicy()
        # On CPU the parameters already live in CPU memory: offloading is a no-op there.
        offload = CPUOffloadPolicy() if resources.cpu_offload and device_type == "cuda" else OffloadPolicy()
        layer_types = set(getattr(model, "_no_split_modules", None) or ())
        for module in list(model.modules()):
            if type(module).__name__ in layer_types:
                fully_shard(module, mesh=self.mesh, mp_policy=mixed, offload_policy=offload)
        fully_shard(model, mesh=self.mesh, mp_policy=mixed, offload_policy=offload)
        for module in model.modules():
            if isinstance(module, FSDPModule):
                # Losses are already divided by the global token count: sum, don't average
                # (as a plain SUM: gloo has no PREMUL_SUM).
                module.set_gradient_divide_factor(1.0)
                module.set_force_sum_reduction_for_comms(True)
        return model

    def shard(self, rows: list[T]) -> list[T]:
        per_rank = len(rows) // self.size  # the spec guarantees divisibility
        return rows[self.rank * per_rank : (self.rank + 1) * per_rank]

    def sum(self, values: list[float]) -> list[float]:
        summed = torch.tensor(values, dtype=torch.float64, device=self._comm_device())
        self.dist.all_reduce(summed)
        return summed.tolist()

    def gather(self, values: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's equally sized tensor in rank order."""
        local = values.to(self._comm_device())
        parts = [torch.empty_like(local) for _ in range(self.size)]
        self.dist.all_gather(parts, local)
        return torch.cat(parts).to(values.device)

    def local(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        return [t.to_local() if hasattr(t, "to_local") else t for t in tensors]

    @contextlib.contextmanager
    def full_weights(self, model: torch.nn.Module) -> Iterator[None]:
        """All-gather every layer once, decode with no collectives, then reshard."""
        from torch.distributed.fsdp import FSDPModule

        modules = [m for m in model.modules() if isinstance(m, FSDPModule)]
        for module in modules:
            module.set_reshard_after_forward(False)
            module.unshard()
        try:
            yield
        finally:
            for module in modules:
                module.reshard()
                module.set_reshard_after_forward(True)

    def clip_grad_norm(self, params: list[torch.nn.Parameter], max_norm: float) -> float:
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)

    def reporter(self, hooks: TrainerHooks) -> TrainerHooks:
        """Rank 0 reports; every rank stops together on rank 0's decision."""
        if self.rank == 0:
            return dataclasses.replace(hooks, should_stop=lambda: self._broadcast(hooks.should_stop()))
        # Other ranks write nothing, but score their own shard with the same judge.
        return TrainerHooks(should_stop=lambda: self._broadcast(None), judge=hooks.judge)

    def write_once(self, write: Callable[[], T]) -> T:
        outcome: list = [None, None]
        if self.rank == 0:
            try:
                outcome = [write(), None]
            except Exception as error:  # noqa: BLE001 - every rank must learn of it
                outcome = [None, error]
        self.dist.broadcast_object_list(outcome, src=0)
        if outcome[1] is not None:
            raise outcome[1]
        return outcome[0]

    def full_model_state(self, model) -> dict | None:
        """Gather the full (unsharded) model state onto rank 0's CPU (collective)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def gather_rng(self) -> tuple[dict[str, torch.Tensor], list]:
        from workers.trainer.checkpoint import rng_state

        states = [None] * self.size
        self.dist.all_gather_object(states, rng_state())
        return _by_rank(states)

    def full_parameters(self, model: torch.nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
        params = dict(model.named_parameters())
        return {name: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().cpu()
                for name, p in ((name, params[name]) for name in names)}

    def load_parameters(self, model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(model, tensors, options=StateDictOptions(full_state_dict=True, strict=False))

    def full_tensors(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # full_tensor() all-gathers: every rank calls it, in the same (name) order.
        return {name: (t.full_tensor() if hasattr(t, "full_tensor") else t).detach().cpu().contiguous()
                for name, t in tensors.items()}

    def shard_like(self, params: list[torch.nn.Parameter], tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        from torch.distributed.tensor import DTensor, distribute_tensor

        out = []
        for p, full in zip(params, tensors, strict=True):
            if not isinstance(p, DTensor):
                out.append(full.to(device=p.device, dtype=p.dtype))
                continue
            # Every rank read the same full tensor: each slices its own shard, no communication.
            local = distribute_tensor(full.to(p.dtype), p.device_mesh, p.placements, src_data_rank=None).to_local()
            # The shard's device is the parameter's (CPU when FSDP2 offloads), as a gradient's is.
            out.append(DTensor.from_local(local.to(p.to_local().device), p.device_mesh, p.placements, run_check=False,
                                          shape=p.shape, stride=p.stride()))
        return out

    def close(self) -> None:
        if self.own_group and self.dist.is_initialized():
            self.dist.destroy_process_group()

    def _broadcast(self, value):
        box = [value]
        self.dist.broadcast_object_list(box, src=0)
        return box[0]

    def _comm_device(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if self.dist.get_backend() == "nccl" else torch.device("cpu")


def _by_rank(states: list[tuple[dict[str, torch.Tensor], list]]) -> tuple[dict[str, torch.Tensor], list]:
    tensors = {f"{kind}.rank{rank}": value.cpu() for rank, (own, _) in enumerate(states) for kind, value in own.items()}
    return tensors, [python for _, python in states]


def make_world(device_kind: str, collective_timeout_seconds: float) -> SingleProcess:
    """The world this process is part of, chosen once at setup.

    Ray Train initialises the process group itself; torchrun only sets WORLD_SIZE and the
    rendezvous variables, and the group is initialised here with a bounded timeout so a
    dead rank fails the others' collectives instead of hanging them.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return Sharded(own_group=False) if dist.get_world_size() > 1 else SingleProcess()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return SingleProcess()
    backend = "nccl" if device_kind == "cuda" else "gloo"
    timeout = datetime.timedelta(seconds=collective_timeout_seconds)
    dist.init_process_group(backend, timeout=timeout)
    return Sharded(own_group=True)
