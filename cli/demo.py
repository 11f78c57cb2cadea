"""`amft demo`: the whole service in one command.

Starts `amft serve` in the background (or reuses one already answering on the port),
creates an API key, submits an AMFT job on builtin:tiny with builtin:arithmetic, prints a
line per training step from the job's live event stream (step/total, mu, reward, ETA)
until it ends, lists its checkpoints, generates from the final checkpoint through
POST /generate, and stops what it started.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

DEMO_SPEC = {
    "method": "amft",
    "model": "builtin:tiny",
    "datasets": {"sft": {"source": "builtin:arithmetic"}, "rl": {"source": "builtin:arithmetic"}},
    "training": {"total_steps": 20, "warmup_steps": 4, "save_every": 10, "sft_batch_size": 4,
                 "rl_prompts_per_step": 2, "num_generations": 4, "max_completion_tokens": 24},
    "controller": {"meta_interval": 5},
}


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="Start the service, train a demo AMFT job, stream mu/reward.")
    parser.add_argument("--steps", type=int, default=DEMO_SPEC["training"]["total_steps"], help="Training steps.")
    parser.add_argument("--port", type=int, help="Port of the service (default AMFT_API_PORT, 8000).")
    parser.set_defaults(run=run)


def run(args) -> int:
    import httpx

    from service.settings import get_settings

    settings = get_settings()
    url = f"http://127.0.0.1:{args.port or settings.api_port}"
    server = None if _answers(url) else _start_server(args.port or settings.api_port, settings.home)
    try:
        _wait_ready(url, server)
        key = _create_key()
        spec = json.loads(json.dumps(DEMO_SPEC))
        spec["training"]["total_steps"] = args.steps
        spec["training"]["warmup_steps"] = min(spec["training"]["warmup_steps"], args.steps)
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
            response = client.post("/jobs", json=spec)
            if response.status_code != 201:
                sys.exit(f"amft demo: job rejected: {response.text}")
            job_id = response.json()["id"]
            print(f"job {job_id}: AMFT on builtin:tiny / builtin:arithmetic, {args.steps} steps")
            status = _stream(client, job_id, args.steps)
            print(f"job {job_id} {status}")
            for checkpoint in client.get(f"/jobs/{job_id}/checkpoints").json()["checkpoints"]:
                print(f"  checkpoint step {checkpoint['step']}: {settings.resolved_artifacts_dir / checkpoint['path']}")
            if status == "succeeded":
                _generate_sample(client, job_id)
        return 0 if status == "succeeded" else 1
    except KeyboardInterrupt:
        print("\namft demo: interrupted; the job resumes from its last checkpoint at the next `amft serve`")
        return 130
    finally:
        if server is not None:
            _stop_server(server)


DEMO_PROMPT = "Tom has 3 apples. He buys 4 more. How many apples does Tom have now?"


def _generate_sample(client, job_id: str) -> None:
    """Generate from the job's final checkpoint through POST /generate (the inference worker)."""
    body = {"model": job_id, "prompts": [DEMO_PROMPT], "max_tokens": 24, "temperature": 0}
    response = client.post("/generate", json=body, timeout=180)
    if response.status_code != 200:
        print(f"amft demo: generation failed ({response.status_code}): {response.json().get('detail')}")
        return
    data = response.json()
    completion = data["results"][0]["completions"][0]
    print(f"generate from {data['model']}:\n  prompt: {DEMO_PROMPT}\n  completion: {completion['text']!r} "
          f"({completion['tokens']} tokens, {completion['finish_reason']})")


def _stream(client, job_id: str, total: int) -> str:
    """Print one line per step from the SSE stream; return the final status."""
    step_times: list[float] = []
    with client.stream("GET", f"/jobs/{job_id}/events", headers={"Accept": "text/event-stream"}, timeout=None) as stream:
        kind = None
        for line in stream.iter_lines():
            if line.startswith("event:"):
                kind = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and kind == "metrics":
                point = json.loads(line.split(":", 1)[1])
                step_times.append(float(point.get("step_seconds") or 0.0))
                print(_step_line(point, total, step_times), flush=True)
            elif line.startswith("data:") and kind == "event":
                event = json.loads(line.split(":", 1)[1])
                if event["kind"] not in ("checkpoint", "created"):
                    print(f"  [{event['kind']}] {event['message']}", flush=True)
            elif line.startswith("data:") and kind == "end":
                return json.loads(line.split(":", 1)[1])["status"]
    return client.get(f"/jobs/{job_id}").json()["status"]


def _step_line(point: dict, total: int, step_times: list[float]) -> str:
    step = point["step"]
    recent = step_times[-5:]  # the trainer's own step times: steady even when lines arrive in bursts
    eta = f"{sum(recent) / len(recent) * (total - step):.0f}s"
    reward = point.get("reward_mean")
    reward_text = f"{reward:.3f}" if isinstance(reward, (int, float)) else "  -  "
    mu = point.get("mu")
    mu_text = f"{mu:.4f}" if isinstance(mu, (int, float)) else "  -   "
    return f"step {step:>4}/{total}  {point.get('phase', ''):<7}  mu {mu_text}  reward {reward_text}  ETA {eta}"


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
