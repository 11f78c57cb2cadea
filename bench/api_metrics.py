"""Benchmark: GET /jobs/{id}/metrics under load, and step-end to visible-in-API latency.

Setup: a fresh PostgreSQL database, one job with 10,000 steps x 20 metrics, the API run by
the production server command (the API image's: uvicorn, 2 worker processes, no access
log), and load from a separate process: 50 concurrent keep-alive HTTP/1.1 clients.

While the load runs, a writer records new steps through the worker's own write path
(service.metrics.record_step) and a poller reads them back over HTTP: the time from the
step's end (the trainer's on_metrics call) to the point being served is the visibility
latency.

    .venv/bin/python -m bench.api_metrics            # writes bench/results/api_metrics.{json,md}

Needs PostgreSQL (AMFT_BENCH_PG, default the test database's server) and Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
PG = os.environ.get("AMFT_BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("AMFT_BENCH_REDIS", "redis://127.0.0.1:6379/0")
STEPS, METRICS = 10_000, 20
SERVER_WORKERS = 2
# The request under load: a dashboard's fetch of two curves, `limit` steps at a random offset.
QUERY = "names=mu,reward_mean&limit={limit}&after_step={after}"
# (name, steps per request, offered requests/s or 0 for as fast as the clients can go)
SCENARIOS = [("saturation", 100, 0), ("paced at 300 req/s", 100, 300), ("saturation, large pages", 1000, 0)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20.0, help="Length of each scenario.")
    parser.add_argument("--loadgen", nargs=6, metavar=("URL", "KEY", "JOB", "SECONDS", "LIMIT", "RATE"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.loadgen:
        url, key, job, seconds, limit, rate = args.loadgen
        result = asyncio.run(load(url, key, job, args.clients, float(seconds), int(limit), float(rate)))
        print(json.dumps(result))
        return 0
    return run_benchmark(args.clients, args.seconds)


# --------------------------------------------------------------------------- setup


def run_benchmark(clients: int, seconds: float) -> int:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    load_before = os.getloadavg()  # other work on this shared machine, before ours starts
    name = f"amft_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    url = make_url(PG).set(database=name).render_as_string(hide_password=False)
    server = None
    try:
        key, job_id, live_job = seed(url)
        server, base = start_server(url)
        result = measure(base, key, job_id, live_job, url, clients, seconds)
        result["load_average_before"] = load_before
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        from service.db import get_database

        get_database(url).engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()
    write_results(result)
    return 0


def seed(url: str) -> tuple[str, str, str]:
    """Migrate, create a key, a finished-size job with 10k x 20 metric points, and a live job."""
    from sqlalchemy import insert, text

    from service import lifecycle
    from service.auth import create_key
    from service.db import get_database, migrate
    from service.models import MetricPoint
    from service.specs import JobSpec

    migrate(url)
    db = get_database(url)
    key, row = create_key(db, "bench")
    spec = JobSpec.model_validate({"training": {"total_steps": STEPS}})
    job, _ = lifecycle.create_job(db, row.tenant_id, spec, None, lambda _id: None, 3)
    live, _ = lifecycle.create_job(db, row.tenant_id, spec, None, lambda _id: None, 3)
    names = ["mu", "reward_mean", "reward_std", "accuracy", "zero_signal_frac", "sft_loss", "rl_loss", "loss",
             "entropy", "target_entropy", "meta_grad", "kl", "clip_frac", "grad_norm", "lr",
             "completion_tokens_mean", "step_seconds", "gen_seconds", "train_seconds", "tokens_per_second"]
    rng = random.Random(0)
    rows = [{"job_id": job.id, "step": step,
             "values": {"step": step, "phase": "main", **{n: rng.random() for n in names[: METRICS - 1]}}}
            for step in range(1, STEPS + 1)]
    with db.transaction() as session:
        for start in range(0, len(rows), 1000):
            session.execute(insert(MetricPoint), rows[start:start + 1000])
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("ANALYZE metric_points"))  # what autovacuum does after a bulk load
    return key, job.id, live.id


def start_server(url: str) -> tuple[subprocess.Popen, str]:
    """The API image's server command, on a free loopback port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    prom = tempfile.mkdtemp(prefix="amft-prom-")
    env = {**os.environ, "AMFT_DATABASE_URL": url, "AMFT_BROKER_URL": REDIS, "PROMETHEUS_MULTIPROC_DIR": prom,
           "AMFT_HOME": tempfile.mkdtemp(prefix="amft-bench-home-")}
    command = [sys.executable, "-m", "uvicorn", "--factory", "api.app:create_app", "--host", "127.0.0.1",
               "--port", str(port), "--workers", str(SERVER_WORKERS), "--no-access-log", "--log-level", "warning"]
    server = subprocess.Popen(command, cwd=ROOT, env=env)
    base = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return server, base
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError("server did not start")


# ------------------------------------------------------------------------ measuring


def measure(base: str, key: str, job_id: str, live_job: str, url: str, clients: int, seconds: float) -> dict:
    results = []
    for name, limit, rate in SCENARIOS:
        loadgen = subprocess.Popen(
            [sys.executable, "-m", "bench.api_metrics", "--clients", str(clients),
             "--loadgen", base, key, job_id, str(seconds), str(limit), str(rate)],
            cwd=ROOT, stdout=subprocess.PIPE, text=True,
        )
        visibility = None
        if rate:  # measured while the paced load runs
            time.sleep(min(3.0, seconds / 4))
            visibility = visibility_latencies(base, key, live_job, url, steps=int(seconds * 5), interval=0.1)
        out, _ = loadgen.communicate(timeout=seconds + 120)
        results.append({"scenario": name, "limit": limit, "offered_rate": rate, **json.loads(out)})
        if visibility:
            results[-1]["visibility"] = visibility
    return {"scenarios": results, "clients": clients, "seconds": seconds}


def visibility_latencies(base: str, key: str, job_id: str, url: str, steps: int, interval: float) -> dict:
    """Write `steps` steps the way a worker does; a poller reads them over HTTP."""
    import httpx

    from service import lifecycle, metrics
    from service.db import get_database

    db = get_database(url)
    held = lifecycle.claim(db, job_id, "bench-writer", lease_seconds=300)
    ended: dict[int, float] = {}
    seen: dict[int, float] = {}
    done = threading.Event()

    def poll():
        after = 0
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=10) as client:
            while not done.is_set() or after < steps:
                body = client.get(f"/jobs/{job_id}/metrics", params={"after_step": after, "names": "mu"}).json()
                now = time.perf_counter()
                for point in body["points"]:
                    seen.setdefault(point["step"], now)
                after = body["next_after_step"]
                if after >= steps:
                    return

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    for step in range(1, steps + 1):
        ended[step] = time.perf_counter()  # the step ends: the trainer calls on_metrics now
        metrics.record_step(db, held, {"step": step, "mu": 0.8, "reward_mean": 0.5})
        time.sleep(interval)
    done.set()
    poller.join(timeout=30)
    latencies = sorted(seen[s] - ended[s] for s in ended if s in seen)
    return {"steps": steps, "seen": len(latencies), **percentiles(latencies)}


def percentiles(values: list[float]) -> dict:
    values = sorted(values)
    if not values:
        return {}

    def pick(q: float) -> float:
        return values[min(len(values) - 1, int(q * len(values)))]

    return {"p50_ms": round(pick(0.50) * 1000, 1), "p99_ms": round(pick(0.99) * 1000, 1),
            "max_ms": round(values[-1] * 1000, 1), "mean_ms": round(statistics.fmean(values) * 1000, 1)}


# -------------------------------------------------------------------- load generator


async def load(base: str, key: str, job_id: str, clients: int, seconds: float, limit: int, rate: float) -> dict:
    """`clients` keep-alive connections for `seconds`: back to back (rate 0), or together
    offering `rate` requests/s on a fixed timetable. Latency counts from the scheduled send
    time, so a slow server cannot hide its queueing (no coordinated omission)."""
    host, port = base.removeprefix("http://").split(":")
    latencies: list[float] = []
    errors: list[str] = []
    sizes: list[int] = []
    start = time.perf_counter()
    period = clients / rate if rate else 0.0
    await asyncio.gather(*(
        client(host, int(port), key, job_id, limit, start + i * period / clients, period, start + seconds,
               latencies, errors, sizes)
        for i in range(clients)
    ))
    elapsed = time.perf_counter() - start
    return {"requests": len(latencies), "errors": len(errors), "error_sample": errors[:3],
            "requests_per_second": round(len(latencies) / elapsed, 1),
            "mean_response_bytes": round(statistics.fmean(sizes)) if sizes else 0, **percentiles(latencies)}


async def client(host, port, key, job_id, limit, first, period, stop_at, latencies, errors, sizes) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    rng = random.Random()
    scheduled = first
    try:
        while scheduled < stop_at:
            if period:
                await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
            else:
                scheduled = time.perf_counter()
            path = f"/jobs/{job_id}/metrics?" + QUERY.format(limit=limit, after=rng.randrange(0, STEPS - limit))
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            length = next(int(line.split(":")[1]) for line in lines if line.lower().startswith("content-length"))
            body = await reader.readexactly(length)
            latencies.append(time.perf_counter() - scheduled)
            sizes.append(len(body))
            if " 200 " not in lines[0]:
                errors.append(lines[0] + " " + body[:200].decode(errors="replace"))
            scheduled += period
    finally:
        writer.close()


# ------------------------------------------------------------------------- results


def write_results(result: dict) -> None:
    result["setup"] = {
        "job": f"{STEPS} steps x {METRICS} metrics on PostgreSQL",
        "request": f"GET /jobs/{{id}}/metrics?{QUERY.format(limit='<limit>', after='<random>')}",
        "server": f"uvicorn --factory api.app:create_app --workers {SERVER_WORKERS} --no-access-log (httptools, uvloop)",
        "auth_cache_seconds": float(os.environ.get("AMFT_AUTH_CACHE_SECONDS", 0)),
        "machine": f"{os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}",
        "targets": {"p99_ms": 100, "requests_per_second": 300, "visibility_p99_ms": 1000},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "api_metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    load1, load5, _ = result["load_average_before"]
    lines = [
        "# GET /jobs/{id}/metrics under load",
        "",
        f"Job: {result['setup']['job']}. Request: `{result['setup']['request']}`. "
        f"Server: `{result['setup']['server']}`, AMFT_AUTH_CACHE_SECONDS={result['setup']['auth_cache_seconds']:g} "
        "(0: every request looks its key up). "
        f"Load: {result['clients']} concurrent keep-alive clients, "
        f"{result['seconds']:.0f} s per scenario, from a separate process on the same machine "
        f"({result['setup']['machine']}; shared: load average {load1:.1f} / {load5:.1f} (1 / 5 min) from other "
        "work just before the run). Latency counts from the scheduled send time.",
        "",
        "| scenario | steps per request | response bytes | requests/s | p50 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in result["scenarios"]:
        lines.append(f"| {run['scenario']} | {run['limit']} | {run['mean_response_bytes']} | "
                     f"{run['requests_per_second']} | {run['p50_ms']} | {run['p99_ms']} | {run['errors']} |")
    vis = next(run["visibility"] for run in result["scenarios"] if "visibility" in run)
    lines += [
        "",
        "Step end to visible in the API (a writer records a step every 100 ms through the worker's write path "
        "while the paced load runs; a poller reads it back over HTTP): "
        f"p50 {vis['p50_ms']} ms, p99 {vis['p99_ms']} ms, max {vis['max_ms']} ms over {vis['seen']} steps.",
        "",
        "Targets: p99 <= 100 ms and >= 300 requests/s at 50 clients; step end to visible p99 <= 1 s.",
        "",
    ]
    (RESULTS / "api_metrics.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
