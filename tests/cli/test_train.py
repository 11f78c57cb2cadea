"""`amft train` as a user runs it: a spec file in, checkpoints and metrics.jsonl out."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def amft(*args, home: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, AMFT_HOME=str(home), PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "cli.main", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=300)


def test_train_writes_metrics_and_checkpoints_and_resumes(tmp_path):
    spec = yaml.safe_load((ROOT / "examples" / "tiny_amft.yaml").read_text())
    spec["training"].update(total_steps=6, warmup_steps=2, save_every=3, eval_every=None, sft_batch_size=4,
                            rl_prompts_per_step=2, max_completion_tokens=24)
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    out = tmp_path / "run"

    done = amft("train", str(spec_path), "--out", str(out), home=tmp_path / "home")
    assert done.returncode == 0, done.stderr
    assert "step 6/6" in done.stdout and "mu" in done.stdout and "reward" in done.stdout and "ETA" in done.stdout
    points = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [p["step"] for p in points] == [1, 2, 3, 4, 5, 6]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000003", "step-000006"]

    again = amft("train", str(spec_path), "--out", str(out), "--resume", home=tmp_path / "home")
    assert again.returncode == 0, again.stderr
    assert "completed at step 6" in again.stdout  # nothing left to do

    # A crash after step 6's metrics but before its checkpoint: the resume replays steps 4-6,
    # and metrics.jsonl must hold each step once (it appended them a second time before).
    shutil.rmtree(out / "checkpoints" / "step-000006")
    with (out / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 7, "mu"')  # a line the crash cut short
    replayed = amft("train", str(spec_path), "--out", str(out), "--resume", home=tmp_path / "home")
    assert replayed.returncode == 0, replayed.stderr
    points = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [p["step"] for p in points] == [1, 2, 3, 4, 5, 6]


def test_invalid_spec_prints_one_line_per_problem(tmp_path):
    spec_path = tmp_path / "bad.yaml"
    spec_path.write_text("method: amft\ntraining: {total_steps: -1}\ncontroler: {}\n")
    done = amft("train", str(spec_path), "--out", str(tmp_path / "run"), home=tmp_path / "home")
    assert done.returncode != 0
    assert "training.total_steps: Input should be greater than or equal to 1" in done.stderr
    assert "controler: Extra inputs are not permitted" in done.stderr
    assert not (tmp_path / "run").exists()
