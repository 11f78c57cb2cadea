"""Hostile python graders: each is contained by the sandbox, scores 0 with a clear message,
and leaves the calling process (the worker) alive; a job with one records an event per
failed batch, keeps its finished steps and fails after max_consecutive_failures."""

from __future__ import annotations

import re

import subprocess
import uuid
from pathlib import Path

import pytest

from service.grader_specs import parse_graders
from service.settings import get_settings
from tests.conftest import TINY_SPEC, wait_for
from workers.trainer.graders import Scorer
from workers.trainer.sandbox import describe_launcher

OK_TAIL = "    return [1.0] * len(completions)\n"
HOSTILE = {
    "infinite_loop": ("def reward(completions, **kw):\n    while True:\n        pass\n",
                      # whichever comes first: the wall clock or the CPU-time rlimit
                      r"timed out after 3s|killed by SIGXCPU \(CPU-time limit\)|killed by SIGKILL \(CPU-time limit\)"),
    "memory_bomb": ("def reward(completions, **kw):\n    x = bytearray(8 << 30)\n" + OK_TAIL, "MemoryError"),
    "fork_bomb": (
        "import os\ndef reward(completions, **kw):\n    while True:\n        os.fork()\n",
        "",  # contained either by the process limit (BlockingIOError) or the wall clock
    ),
    "socket": (
        "import socket\ndef reward(completions, **kw):\n    socket.create_connection(('1.1.1.1', 80), timeout=2)\n" + OK_TAIL,
        "Network is unreachable",
    ),
    "read_passwd": ("def reward(completions, **kw):\n    open('/etc/passwd').read()\n" + OK_TAIL, "No such file or directory: '/etc/passwd'"),
    "read_artifacts": (
        "import os\ndef reward(completions, **kw):\n    print(os.listdir(ARTIFACTS))\n" + OK_TAIL,
        "No such file or directory",
    ),
    "write_outside": (
        "def reward(completions, **kw):\n    open(TARGET, 'w').write('pwned')\n" + OK_TAIL,
        "No such file or directory",
    ),
    "os_system": (
        "import os\ndef reward(completions, **kw):\n    rc = os.system('cat /etc/passwd && touch ' + TARGET)\n"
        "    raise RuntimeError(f'os.system returned {rc}')\n",
        "RuntimeError: os.system returned",
    ),
    "wrong_count": ("def reward(completions, **kw):\n    return [1.0]\n", "returned 1 scores for 3 completions"),
    "nan": ("def reward(completions, **kw):\n    return [float('nan')] * len(completions)\n", "score 0 is nan, not a finite number"),
}


@pytest.fixture
def grader_env(tmp_path, monkeypatch):
    artifacts = tmp_path / "artifacts"
    (artifacts / "files").mkdir(parents=True)
    (artifacts / "jobs").mkdir()
    (artifacts / "jobs" / "secret.txt").write_text("tenant secret")
    monkeypatch.setenv("AMFT_ARTIFACTS_DIR", str(artifacts))
    monkeypatch.setenv("AMFT_GRADER_TIMEOUT_SECONDS", "3")
    monkeypatch.setenv("AMFT_GRADER_CPU_SECONDS", "2")
    monkeypatch.setenv("AMFT_GRADER_MAX_PROCESSES", "8")
    get_settings.cache_clear()
    yield artifacts
    get_settings.cache_clear()


def upload(artifacts: Path, source: str) -> str:
    file_id = uuid.uuid4().hex
    (artifacts / "files" / f"{file_id}.py").write_text(source)
    return f"file:{file_id}"


def sandbox_processes() -> list[str]:
    lines = subprocess.run(["ps", "-eo", "pid,cmd"], capture_output=True, text=True).stdout.splitlines()
    return [line for line in lines if "sandbox_harness.py" in line or "/sandbox/harness.py" in line]


def test_the_sandbox_in_use_is_bubblewrap():
    # The container this suite runs in allows user namespaces (scripts/setup.sh installs bwrap).
    assert describe_launcher(get_settings().grader_sandbox) == "bwrap"


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_grader_scores_zero_with_a_clear_message(case, grader_env, tmp_path):
    target = tmp_path / "outside.txt"
    code, expected = HOSTILE[case]
    source = f"ARTIFACTS = {str(grader_env / 'jobs')!r}\nTARGET = {str(target)!r}\n" + code
    grader = parse_graders([{"kind": "python", "name": "hostile", "file": upload(grader_env, source)}])
    events = []
    scorer = Scorer(grader, on_failure=lambda name, message: events.append((name, message)))
    scored = scorer.score(["a", "b", "c"], [{"prompt": "p", "answer": "1"}] * 3)
    assert scored.rewards == [0.0, 0.0, 0.0]
    assert len(events) == 1 and events[0][0] == "hostile"
    assert events[0][1].startswith("grader hostile (python) failed, batch scored 0: ")
    assert re.search(expected, events[0][1]), events[0][1]
    assert not target.exists()  # nothing written outside the sandbox
    # This process lives; the sandbox's pid namespace is torn down (asynchronously after the kill).
    wait_for(lambda: sandbox_processes() == [], timeout=30, what="no sandbox process left")


def test_a_trl_reward_function_moves_over_unchanged(grader_env):
    # Verbatim the shape of TRL's documented example (GRPOTrainer reward_funcs), with a column.
    source = (
        "import re\n\n"
        "def reward(completions, **kwargs):\n"
        '    """Reward completions that follow <think>...</think><answer>...</answer>."""\n'
        '    pattern = r"^<think>.*?</think><answer>(.*?)</answer>$"\n'
        "    matches = [re.match(pattern, content) for content in completions]\n"
        "    return [1.0 if m and m.group(1) == truth else 0.0 for m, truth in zip(matches, kwargs['ground_truth'])]\n"
    )
    grader = parse_graders([{"kind": "python", "file": upload(grader_env, source)}])
    completions = ["<think>hm</think><answer>4</answer>", "<answer>4</answer>", "<think>x</think><answer>5</answer>"]
    records = [{"prompt": "2+2?", "ground_truth": "4"}] * 3
    assert Scorer(grader).score(completions, records).rewards == [1.0, 0.0, 0.0]


def test_a_job_with_a_hostile_grader_records_events_keeps_steps_and_fails(pg_api, pg_workers, tmp_path):
    with pg_api.client(pg_api.key("alice")) as client:
        code = "def reward(completions, **kw):\n    while True:\n        pass\n"
        grader = client.post("/files", params={"purpose": "grader", "filename": "loop.py"}, content=code.encode())
        assert grader.status_code == 201, grader.text
        spec = {
            **TINY_SPEC,
            "training": {**TINY_SPEC["training"], "total_steps": 6, "save_every": 1},
            # No meta step: its validation rollouts would be scored by the looper too, and
            # this test counts the training batches' failures.
            "controller": {"eta_meta": 0.0},
            "reward": [{"kind": "math_verify"}, {"kind": "python", "name": "looper", "file": grader.json()["source"],
                                                  "max_consecutive_failures": 2}],
        }
        job = client.post("/jobs", json=spec)
        assert job.status_code == 201, job.text
        job_id = job.json()["id"]
        worker = pg_workers.start(pg_api.settings.model_copy(update={"grader_timeout_seconds": 2.0}))
        final = wait_for(lambda: (j := client.get(f"/jobs/{job_id}").json())["status"] in ("failed", "succeeded") and j,
                         timeout=600, interval=1, what="the job to end")
        events = client.get(f"/jobs/{job_id}/events").json()
        points = client.get(f"/jobs/{job_id}/metrics").json()["points"]
    assert final["status"] == "failed", final
    assert re.search(r"grader looper \(python\) failed 2 batches in a row: (timed out after 2s|killed by SIG)", str(final)), final
    failed = [e for e in _event_list(events) if e["kind"] == "grader_failed"]
    assert len(failed) == 2 and all(re.search(r"grader looper \(python\) failed, batch scored 0: (timed out|killed by SIG)", e["message"]) for e in failed)
    # Steps 1-2 are SFT warm-up, step 3 had the first failed batch (scored 0) and finished.
    steps = [p["step"] for p in points]
    assert steps[:3] == [1, 2, 3] and points[2]["reward/looper"] == 0.0
    assert worker.poll() is None  # the worker process lives on


def _event_list(body) -> list[dict]:
    return body["events"] if isinstance(body, dict) else body
