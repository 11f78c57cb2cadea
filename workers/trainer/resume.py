"""What a checkpoint holds of a run, and how a run comes back from one (loop.py's save/restore).

Everything a resume needs to repeat the uninterrupted run exactly: weights, optimizer, LR
and mu schedules, data cursors, every rank's RNG, the KL reference once taken and, when the
checkpoint falls inside a meta window, the window's validation gradient g_val (the next
steps' m_t samples dot with it).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from workers.trainer.checkpoint import META_VALIDATION, REFERENCE, load_checkpoint, read_tensors, save_checkpoint
from workers.trainer.reference import trained_names

if TYPE_CHECKING:  # loop.py imports this module
    from workers.trainer.loop import Run


def save(run: Run, out_dir: Path, step: int) -> Path:
    """Checkpoint everything a resume needs: weights, optimizer, LR and mu schedules, data
    cursors, every rank's RNG, the KL reference and, mid-window, the window's g_val.
    Collective: every rank writes its shard, rank 0 the rest."""
    state = {
        "lr_scheduler": run.lr_scheduler.state_dict(),
        "schedule": run.schedule.state_dict(),
        "streams": {name: stream.state_dict() for name, stream in run.streams.items()},
    }
    taken = run.reference_after and step >= run.reference_after  # else the reference is the initial model
    names = trained_names(run.model)
    reference = run.world.full_parameters(run.reference, names) if taken else None
    # Mid-window the next steps reuse g_val; a completed run is not resumed, so its last checkpoint needs none.
    mid_window = step < run.spec.training.total_steps and run.meta_validation is not None \
        and run.schedule.reuses_validation(step + 1)
    validation = run.world.full_tensors(dict(zip(names, run.meta_validation, strict=True))) if mid_window else None
    return save_checkpoint(run.world, out_dir, step, state, run.model, run.tokenizer, run.optimizer, run.spec.model,
                           {REFERENCE: reference, META_VALIDATION: validation})


def restore(run: Run, path: Path) -> int:
    """Load a checkpoint (of any world size) into the run; returns the step it was taken after."""
    state = load_checkpoint(run.world, Path(path), run.model, run.optimizer)
    run.lr_scheduler.load_state_dict(state["lr_scheduler"])
    run.schedule.load_state_dict(state["schedule"])
    for name, stream_state in state["streams"].items():
        run.streams[name].load_state_dict(stream_state)
    if run.reference is not None and (reference := read_tensors(Path(path), REFERENCE)) is not None:
        run.world.load_parameters(run.reference, reference)
    if (validation := read_tensors(Path(path), META_VALIDATION)) is not None:  # a mid-window checkpoint
        params = [p for p in run.model.parameters() if p.requires_grad]
        run.meta_validation = run.world.shard_like(params, [validation[name] for name in trained_names(run.model)])
    return int(state["step"])
