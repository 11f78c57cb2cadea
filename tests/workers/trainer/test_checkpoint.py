"""The sharded training state of a checkpoint (issue 14): torch.distributed.checkpoint in its
safetensors storage, covered by the manifest, read without unpickling anything. One process
here; the 2-rank and cross-world-size cases are in test_distributed.py."""

import json
import os
import pickle
import shutil

import pytest

from tests.workers.trainer.test_loop import run_collecting, tiny_spec
from workers.trainer.checkpoint import MANIFEST, CheckpointError, _write_manifest, verify_checkpoint


class Payload:
    """Unpickling this creates `marker` (what an attacker's code would do)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def checkpoint(tmp_path):
    """A 2-step SFT run's checkpoint at step 2 (and the spec to resume it with)."""
    spec = tiny_spec("sft", total_steps=3, save_every=2)
    _, _, checkpoints = run_collecting(spec, tmp_path / "run", stop_after=2)
    return spec, checkpoints[-1][1]


def test_sharded_state_is_safetensors_listed_in_the_manifest(checkpoint):
    _, folder = checkpoint
    shards = sorted(p.name for p in (folder / "sharded").iterdir())
    assert shards == ["shard-00001-model-00001-of-00001.safetensors"]  # one rank wrote it
    manifest = json.loads((folder / MANIFEST).read_text())
    assert "sharded/" + shards[0] in manifest
    assert not [p for p in folder.rglob("*") if p.suffix in (".metadata", ".distcp", ".pt", ".bin", ".pkl")]
    assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()  # the HF folder, as before
    state = json.loads((folder / "trainer_state.json").read_text())
    assert state["world_size"] == 1 and state["optimizer"]["has_state"] is True


def test_a_tampered_shard_is_refused(checkpoint, tmp_path):
    spec, folder = checkpoint
    shard = next((folder / "sharded").iterdir())
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF  # one bit pattern in the last tensor's bytes: still a loadable safetensors file
    shard.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sharded/shard-00001.*checksum"):
        verify_checkpoint(folder)
    with pytest.raises(CheckpointError, match="checksum"):
        run_collecting(spec, tmp_path / "resumed", resume_from=folder)


def test_an_unlisted_file_among_the_shards_is_refused_and_never_unpickled(checkpoint, tmp_path):
    """DCP's default reader would `pickle.load` a `.metadata` file: ours neither accepts an
    unlisted file there nor, even when the manifest is rewritten to list it, reads it."""
    spec, folder = checkpoint
    marker = tmp_path / "PWNED"
    (folder / "sharded" / ".metadata").write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(CheckpointError, match="not in the manifest"):
        verify_checkpoint(folder)
    forged = tmp_path / "forged"
    shutil.copytree(folder, forged)
    (forged / MANIFEST).unlink()
    _write_manifest(forged)  # someone who could write the folder and its manifest
    result, points, _ = run_collecting(spec, tmp_path / "resumed", resume_from=forged)
    assert result.status == "completed" and [p["step"] for p in points] == [3]
    assert not marker.exists()
