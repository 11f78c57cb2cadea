"""`amft demo`: the whole service in one command, driven through the Python client.

Starts `amft serve` in the background (or reuses one already answering on the port),
creates an API key and prints the dashboard URL, submits an AMFT job that starts from a
small arithmetic model which already answers some items (bench/base/arith-base, ~25% greedy
accuracy, copied into the models folder as `local:arith-base`), prints a line per training
step from the job's live event stream (step/total, mu, reward, accuracy, ETA) until it
ends, lists its checkpoints, generates from the final checkpoint, and stops what it
started (or keeps serving with --keep, so the dashboard stays up).
"""

from __future__ import annotations

import copy
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARITH_BASE = ROOT / "bench" / "base" / "arith-base"  # committed: see bench/ALGORITHMS_PROTOCOL.md
DEMO_SPEC = {
    "method": "amft",
    "model": "local:arith-base",
    "datasets": {"sft": {"source": "builtin:arithmetic", "split": "train", "limit": 300},
                 "rl": {"source": "builtin:arithmetic", "split": "train", "limit": 10000},
                 "eval": [{"source": "builtin:arithmetic", "split": "id"}]},
    # Meant for about 1-2 minutes on an idle 2-core CPU; not timed idle: on the shared machine it was
    # built on (load 15+), an RL step took about a minute.
    "training": {"total_steps": 20, "warmup_steps": 4, "save_every": 10, "sft_batch_size": 8,
                 "rl_prompts_per_step": 2, "num_generations": 4, "max_completion_tokens": 56,
                 "learning_rate": 1e-4, "eval_every": 10, "eval_limit": 20, "micro_batch_size": 16},
    "controller": {"meta_interval": 5, "meta_val_prompts": 2},
}


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="Start the service, train a demo AMFT job, stream mu/reward.")
    parser.add_argument("--steps", type=int, default=DEMO_SPEC["training"]["total_steps"], help="Training steps.")
    parser.add_argument("--port", type=int, help="Port of the service (default AMFT_API_PORT, 8000).")
    parser.add_argument("--keep", action="store_true", help="Keep serving (and the dashboard) until Ctrl-C.")
    parser.set_defaults(run=run)


def demo_spec(steps: int, models_dir: Path) -> dict:
    """The demo job: on the arithmetic base when it can be installed, else on builtin:tiny."""
    spec = copy.deepcopy(DEMO_SPEC)
    training = spec["training"]
    training["total_steps"] = steps
    training["warmup_steps"] = min(training["warmup_steps"], steps)
    training["save_every"] = min(training["save_every"], steps)
    training["eval_every"] = min(training["eval_every"], steps)
    target = models_dir / "arith-base"
    if not target.exists() and ARITH_BASE.is_dir():
        models_dir.mkdir(parents=True, exist_ok=True)
        shutil.copytree(ARITH_BASE, target)
    if not target.exists():
        spec["model"] = "builtin:tiny"
    return spec


def run(args) -> int:
    from client import ApiError, Client
    from service.settings import get_settings

    settings = get_settings()
    url = f"http://127.0.0.1:{args.port or settings.api_port}"
    server = None if _answers(url) else _start_server(args.port or settings.api_port, settings.home)
    try:
        _wait_ready(url, server)
        key = _create_key()
        print(f"dashboard: {url}/ui/  (sign in with this key: {key})", flush=True)
        spec = demo_spec(args.steps, settings.resolved_models_dir)
        with Client(url, key) as amft:
            try:
                job = amft.jobs.create(spec)
            except ApiError as error:
                sys.exit(f"amft demo: job rejected: {error.detail}")
            print(f"job {job.id}: AMFT on {spec['model']} / builtin:arithmetic, {args.steps} steps "
                  f"(watch it: {url}/ui/#/job/{job.id})", flush=True)
            status = _stream(amft, job.id, args.steps)
            print(f"job {job.id} {status}")
            for checkpoint in amft.jobs.checkpoints(job.id):
                print(f"  checkpoint step {checkpoint['step']}: {settings.resolved_artifacts_dir / checkpoint['path']}")
            if status == "succeeded":
                _generate_sample(amft, job.id)
            if args.keep:
                print(f"amft demo: serving {url}/ui/ until Ctrl-C", flush=True)
                while True:
                    time.sleep(3600)
        return 0 if status == "succeeded" else 1
    except KeyboardInterrupt:
        print("\namft demo: interrupted; the job resumes from its last checkpoint at the next `amft serve`")
        return 130
    finally:
        if server is not None:
            _stop_server(server)


DEMO_PROMPT = "Tom has 3 apples. He buys 4 more. How many apples does Tom have now?"


def _generate_sample(amft, job_id: str) -> None:
    """Generate from the job's final checkpoint through POST /generate (the inference worker)."""
    from client import ApiError

    try:
        data = amft.generate(job_id, [DEMO_PROMPT], max_tokens=64, temperature=0)
    except ApiError as error:
        print(f"amft demo: generation failed ({error.status}): {error.detail}")
        return
    completion = data["results"][0]["completions"][0]
    print(f"generate from {data['model']}:\n  prompt: {DEMO_PROMPT}\n  completion: {completion['text']!r} "
          f"({completion['tokens']} tokens, {completion['finish_reason']})")


def _stream(amft, job_id: str, total: int) -> str:
    """Print one line per step from the SSE stream; return the final status."""
    step_times: list[float] = []
    for message in amft.jobs.events(job_id, stream=True):
        data = message["data"]
        if message["event"] == "metrics":
            step_times.append(float(data.get("step_seconds") or 0.0))
            print(_step_line(data, total, step_times), flush=True)
        elif message["event"] == "event" and data["kind"] not in ("checkpoint", "created"):
            print(f"  [{data['kind']}] {data['message']}", flush=True)
        elif message["event"] == "end":
            return data["status"]
    return amft.jobs.get(job_id).status


def _step_line(point: dict, total: int, step_times: list[float]) -> str:
    step = point["step"]
    recent = step_times[-5:]  # the trainer's own step times: steady even when lines arrive in bursts
    eta = f"{sum(recent) / len(recent) * (total - step):.0f}s"
    line = f"step {step:>4}/{total}  {point.get('phase', ''):<7}  mu {_num(point.get('mu'), 4)}"
    line += f"  reward {_num(point.get('reward_mean'))}  acc {_num(point.get('accuracy'))}  ETA {eta}"
    evals = [f"{name.removeprefix('eval_accuracy_')} {value:.2f}" for name, value in point.items()
             if name.startswith("eval_accuracy_") and isinstance(value, (int, float))]
    return line + (f"  eval: {', '.join(evals)}" if evals else "")


def _num(value, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "-".center(digits + 2)


def _answers(url: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _start_server(port: int, home) -> subprocess.Popen:
    home.mkdir(parents=True, exist_ok=True)
    log_path = home / "logs" / "serve.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    print(f"amft demo: starting `amft serve` (log {log_path})", flush=True)
    return subprocess.Popen([sys.executable, "-m", "cli.main", "serve", "--port", str(port)],
                            stdout=log_path.open("a"), stderr=subprocess.STDOUT, start_new_session=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _wait_ready(url: str, server: subprocess.Popen | None, timeout: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server is not None and server.poll() is not None:
            sys.exit("amft demo: `amft serve` exited; see its log above")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    sys.exit(f"amft demo: the service at {url} did not become ready in {timeout:.0f}s")


def _create_key() -> str:
    from service.auth import create_key
    from service.db import get_database
    from service.settings import get_settings

    return create_key(get_database(get_settings().resolved_database_url), "demo")[0]


def _stop_server(server: subprocess.Popen) -> None:
    if server.poll() is None:
        server.send_signal(signal.SIGINT)  # like Ctrl-C: stops the API, then the worker
        try:
            server.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
