"""workers.tracking.Export with a real tracker (TensorBoard's SummaryWriter): a tracker that
cannot write records an event naming it, backs off, and once it can write again receives
every step it missed, in order, and the samples table."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.settings import Settings
from workers.tracking import Export

pytestmark = pytest.mark.timeout(120)
SPEC = {"method": "sft", "integrations": [{"kind": "tensorboard"}]}
ROWS = [{"split": "id", "prompt": "1 + 1 =", "completion": "2 | two", "reward": 1.0, "correct": True}]


def read(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return events


def scalars(folder: Path, tag: str) -> dict[int, float]:
    return {e.step: round(e.value, 6) for e in read(folder).Scalars(tag)}


def export(tmp_path: Path, backoff: float, notes: list) -> Export:
    settings = Settings(home=tmp_path / "home", tracker_backoff_seconds=backoff)
    return Export(SPEC, tmp_path / "job", lambda kind, message: notes.append((kind, message)), "j1", settings)


def test_a_recovered_tracker_gets_every_missed_step(tmp_path):
    notes: list = []
    (tmp_path / "job").mkdir()
    blocker = tmp_path / "job" / "tensorboard"
    blocker.write_text("not a folder")
    tracking = export(tmp_path, 0.0, notes)  # no backoff: retried on the next step
    tracking.on_metrics({"step": 1, "mu": 0.9, "phase": "warmup"})
    assert [kind for kind, _ in notes] == ["tracker_error"] and notes[0][1].startswith("tensorboard export failed")
    blocker.unlink()
    tracking.on_samples(2, ROWS)
    tracking.on_metrics({"step": 2, "mu": 0.8, "loss": float("nan")})
    tracking.close()
    assert len(notes) == 1
    assert scalars(blocker, "mu") == {1: 0.9, 2: 0.8}
    events = read(blocker)
    assert "loss" not in events.Tags()["scalars"]  # a NaN is never sent
    (table,) = events.Tensors("samples/text_summary")
    assert table.step == 2 and "| id | 1 + 1 = | 2 \\| two | 1.0 | True |" in table.tensor_proto.string_val[0].decode()


def test_backoff_waits_and_close_tries_once_more(tmp_path):
    notes: list = []
    (tmp_path / "job").mkdir()
    blocker = tmp_path / "job" / "tensorboard"
    blocker.write_text("not a folder")
    tracking = export(tmp_path, 100.0, notes)
    tracking.on_metrics({"step": 1, "mu": 0.9})
    blocker.unlink()
    tracking.on_metrics({"step": 2, "mu": 0.8})  # within the backoff: not retried, no new event
    assert len(notes) == 1 and "retrying in 100 s" in notes[0][1]
    assert not blocker.exists()
    tracking.close()  # the last try sends both
    assert scalars(blocker, "mu") == {1: 0.9, 2: 0.8}


def test_an_export_that_saw_no_step_opens_no_tracker(tmp_path):
    notes: list = []
    export(tmp_path, 0.0, notes).close()  # the torchrun worker's Export: rank 0 reports, not it
    assert not (tmp_path / "job" / "tensorboard").exists() and notes == []
