"""Issue 14: a 2-rank FSDP2 run (real torchrun, gloo on CPU) equals the one-process run on
the same global batch: the loss curve, the final weights, and for AMFT mu and the
meta-gradient at every step, identical on both ranks."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from service.specs import JobSpec
from tests.workers.trainer.rank_program import run_program

REPO = Path(__file__).resolve().parents[3]
PROGRAM = Path(__file__).with_name("rank_program.py")
BASE = {"learning_rate": 1e-3, "micro_batch_size": 2, "max_completion_tokens": 24, "device": "cpu", "save_every": 100}
SPECS = {
    "sft": {"method": "sft", "training": {**BASE, "total_steps": 5, "warmup_steps": 0, "sft_batch_size": 4}},
    "grpo": {"method": "grpo", "training": {**BASE, "total_steps": 3, "warmup_steps": 0, "rl_prompts_per_step": 2,
                                             "num_generations": 2}},
    "amft": {"method": "amft", "training": {**BASE, "total_steps": 4, "warmup_steps": 1, "sft_batch_size": 2,
                                             "rl_prompts_per_step": 2, "num_generations": 2},
             "controller": {"meta_interval": 1, "eta_H": 0.01, "meta_val_prompts": 2}},
}


def torchrun(spec: dict, out: Path, fixed: bool, nproc: int = 2, extra: tuple[str, ...] = ()) -> None:
    """Launch the rank program under torch.distributed.run and fail with its log if it fails."""
    spec_file = out / "spec.json"
    spec_file.write_text(json.dumps(spec))
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", RAYON_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               str(PROGRAM), str(spec_file), str(out)] + (["--fixed-completions"] if fixed else []) + list(extra)
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]


def relative_weight_error(a: Path, b: Path) -> float:
    wa, wb = load_file(str(a / "weights.safetensors")), load_file(str(b / "weights.safetensors"))
    assert wa.keys() == wb.keys()
    return max(float((wa[k] - wb[k]).norm() / wa[k].norm().clamp(min=1e-12)) for k in wa)


@pytest.mark.parametrize("method", ["sft", "grpo", "amft"])
def test_two_ranks_equal_one_process(method, tmp_path):
    raw = {"model": "builtin:tiny", "resources": {"devices": 2}, **SPECS[method]}
    fixed = method != "sft"  # each rank samples its own rollouts: fix them to compare
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    run_program(JobSpec.model_validate(raw), one, fixed)  # no WORLD_SIZE here: one process
    torchrun(raw, two, fixed)

    single = json.loads((one / "rank0.json").read_text())
    rank0, rank1 = (json.loads((two / f"rank{r}.json").read_text()) for r in (0, 1))
    assert [p["step"] for p in rank0] == [p["step"] for p in single] == list(range(1, len(single) + 1))
    for s, r0, r1 in zip(single, rank0, rank1):
        print(f"step {s['step']}: loss {s['loss']:.7f} vs {r0['loss']:.7f}; mu rank0 {r0['mu']} rank1 {r1['mu']}"
              + (f"; meta_grad {s['meta_grad']:.7f} vs {r0['meta_grad']:.7f} / {r1['meta_grad']:.7f}"
                 if "meta_grad" in s else ""))
        assert r0 == r1, "every rank must report the same global metrics (mu, meta_grad, losses)"
        for key in ("loss", "sft_loss", "rl_loss", "entropy", "grad_norm", "meta_grad", "mu", "reward_mean"):
            if key in s:
                assert r0[key] == pytest.approx(s[key], rel=1e-5, abs=1e-6), (s["step"], key)
    assert relative_weight_error(one, two) < 1e-4
    if method == "amft":
        assert sum("meta_grad" in p for p in rank0) == 3 and len({p["mu"] for p in rank0}) > 2


def test_resume_on_a_different_world_size_continues_the_curve(tmp_path):
    """One process saves at step 2, 2 ranks resume to step 4 and save, one process resumes
    that to step 6: the curve is the uninterrupted one. The training state is sharded
    (torch.distributed.checkpoint, one safetensors file per saving rank) and each reader
    re-slices it for its own world size; a tampered shard is refused by the manifest."""
    from tests.workers.trainer.rank_program import train_program
    from workers.trainer.checkpoint import CheckpointError, verify_checkpoint

    def spec_for(total: int) -> dict:
        training = {**SPECS["sft"]["training"], "total_steps": total, "save_every": 2}
        return {"model": "builtin:tiny", "resources": {"devices": 2}, **SPECS["sft"], "training": training}

    reference_dir, first, second, third = (tmp_path / name for name in ("reference", "first", "second", "third"))
    for folder in (reference_dir, first, second, third):
        folder.mkdir()
    reference = train_program(JobSpec.model_validate(spec_for(6)), reference_dir, None)
    train_program(JobSpec.model_validate(spec_for(2)), first, None)
    torchrun(spec_for(4), second, False, extra=("--train", str(first / "checkpoints" / "step-000002")))  # 1 -> 2
    two_ranks = json.loads((second / "points.json").read_text())
    saved_by_two = second / "checkpoints" / "step-000004"
    assert sorted(p.name for p in (saved_by_two / "sharded").iterdir()) == [
        f"shard-0000{r}-model-00001-of-00001.safetensors" for r in (1, 2)]
    one_again = train_program(JobSpec.model_validate(spec_for(6)), third, saved_by_two)  # 2 -> 1
    assert [p["step"] for p in two_ranks + one_again] == [3, 4, 5, 6]
    for got, want in zip(two_ranks + one_again, reference[2:]):
        print(f"step {got['step']}: loss {got['loss']:.7f} vs uninterrupted {want['loss']:.7f}")
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)
        assert got["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-4)

    shard = saved_by_two / "sharded" / "shard-00002-model-00001-of-00001.safetensors"
    shard.write_bytes(shard.read_bytes()[:-4] + bytes(4))  # rank 1's last values zeroed
    with pytest.raises(CheckpointError, match="shard-00002.*checksum"):
        verify_checkpoint(saved_by_two)
    with pytest.raises(CheckpointError, match="checksum"):
        train_program(JobSpec.model_validate(spec_for(6)), tmp_path / "refused", saved_by_two)


def test_resume_mid_meta_window_on_a_different_world_size_replays_the_window(tmp_path):
    """AMFT with K = 2 after 1 warm-up step (windows 2-3, 4-5) saves after steps 2 and 4, both
    mid-window. One process saves at 2, 2 ranks resume it (each takes its shard of the
    window's validation gradient), run to 5 and save at 4 (gathering it), one process resumes
    that: mu and every m_t sample are the uninterrupted run's (fixed completions, so the
    ranks' own samplers do not matter)."""
    from tests.workers.trainer.rank_program import train_program
    from workers.trainer.checkpoint import META_VALIDATION

    training = {**SPECS["amft"]["training"], "total_steps": 5, "save_every": 2}
    raw = {"model": "builtin:tiny", "resources": {"devices": 2}, **SPECS["amft"], "training": training,
           "controller": {**SPECS["amft"]["controller"], "meta_interval": 2, "meta_form": "adam", "meta_min_z": 0.0}}
    spec = JobSpec.model_validate(raw)
    straight, two, one = (tmp_path / name for name in ("straight", "two", "one"))
    for folder in (straight, two, one):
        folder.mkdir()
    reference = train_program(spec, straight, None, fixed_completions=True)
    torchrun(raw, two, True, extra=("--train", str(straight / "checkpoints" / "step-000002")))  # 1 -> 2
    saved_by_two = two / "checkpoints" / "step-000004"
    assert (saved_by_two / META_VALIDATION).is_file()
    by_two = json.loads((two / "points.json").read_text())
    by_one = train_program(spec, one, saved_by_two, True)  # 2 -> 1
    assert [p["step"] for p in by_two] == [3, 4, 5] and [p["step"] for p in by_one] == [5]
    for got in by_two + by_one:
        want = reference[got["step"] - 1]
        for key in ("mu", "meta_grad", "loss"):
            assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), (got["step"], key)


def test_bf16_mixed_precision_and_activation_checkpointing_train_close_to_fp32(tmp_path):
    """The memory options are real FSDP2/HF settings on the same loop: bf16 compute stays
    within bf16 rounding of the fp32 curve (cpu_offload is CUDA-only: a no-op on CPU)."""
    raw = {"model": "builtin:tiny", **SPECS["sft"], "training": {**SPECS["sft"]["training"], "total_steps": 2},
           "resources": {"devices": 2, "mixed_precision": True, "activation_checkpointing": True, "cpu_offload": True}}
    one = tmp_path / "one"
    one.mkdir()
    run_program(JobSpec.model_validate({**raw, "resources": {"devices": 2}}), one, False)
    torchrun(raw, tmp_path, False)
    fp32 = json.loads((one / "rank0.json").read_text())
    bf16 = json.loads((tmp_path / "rank0.json").read_text())
    for a, b in zip(fp32, bf16):
        assert b["loss"] != a["loss"] and b["loss"] == pytest.approx(a["loss"], rel=1e-2)
