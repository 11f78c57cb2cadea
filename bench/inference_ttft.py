"""Time to first token vs total time: token streaming from the engine's decode loop.

Before issue 19 every streamed chunk was sent when generation ended, so the first chunk
came at the total time. Now the engine hands each decode step's text to the stream
(`on_text`), so a client sees the first token after the prefill and one step. This
measures both times for one streamed request, alone and among concurrent requests,
on the transformers backend (builtin:tiny on CPU unless --model says otherwise):

    .venv/bin/python -m bench.inference_ttft      # writes bench/results/inference_ttft.{json,md}

Engine-level figures: the API's reply channel and SSE add a few milliseconds per chunk on
loopback (not measured here).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import threading
import time
from pathlib import Path

import torch

from service.settings import get_settings
from workers.inference.transformers_engine import TransformersEngine
from workers.inference.types import Sampling
from workers.trainer.models import load_policy

RESULTS = Path(__file__).resolve().parent / "results"
PROMPT = "Tom has 3 apples. He buys 4 more. How many apples does Tom have now?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:tiny")
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--concurrent", type=int, default=4, help="Other requests decoding at the same time.")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = load_policy(args.model, get_settings())
    engine = TransformersEngine(model, tokenizer, window_s=0.005)
    sampling = Sampling(max_tokens=args.new_tokens, temperature=1.0, seed=1)
    measure(engine, sampling, 0)  # warm-up
    alone = [measure(engine, sampling, 0) for _ in range(args.repeats)]
    loaded = [measure(engine, sampling, args.concurrent) for _ in range(args.repeats)]
    engine.close()
    write(args, {"alone": summarise(alone), f"with {args.concurrent} concurrent": summarise(loaded)})


def measure(engine, sampling: Sampling, others: int) -> dict:
    """One streamed request (with `others` plain requests alongside): TTFT and total."""
    first: list[float] = []
    background = [threading.Thread(target=engine.generate, args=([PROMPT], sampling)) for _ in range(others)]
    for thread in background:
        thread.start()
    start = time.perf_counter()
    result = engine.generate([PROMPT], sampling, on_text=lambda _deltas: first or first.append(time.perf_counter()))
    total = time.perf_counter() - start
    for thread in background:
        thread.join()
    return {"ttft_s": first[0] - start, "total_s": total, "tokens": result[0].completions[0].tokens}


def summarise(runs: list[dict]) -> dict:
    ttft = statistics.median(r["ttft_s"] for r in runs)
    total = statistics.median(r["total_s"] for r in runs)
    return {"ttft_s": ttft, "total_s": total, "ttft_share": ttft / total, "tokens": runs[0]["tokens"], "runs": runs}


def write(args, cases: dict) -> None:
    report = {"model": args.model, "new_tokens": args.new_tokens, "repeats": args.repeats, "threads": args.threads,
              "machine": f"{platform.machine()}, CPU", "cases": cases}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "inference_ttft.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# Time to first token (streaming)", "",
        f"{args.model} on CPU ({platform.machine()}, {args.threads} torch threads, load average "
        f"{os.getloadavg()[0]:.1f} at the end), up to {args.new_tokens} new tokens, median of {args.repeats} streamed requests. Command: `.venv/bin/python -m bench.inference_ttft`.", "",
        "| case | time to first token (s) | total (s) | first token at | tokens |", "|---|---:|---:|---:|---:|",
    ]
    for name, case in cases.items():
        lines.append(f"| {name} | {case['ttft_s']:.3f} | {case['total_s']:.2f} | {100 * case['ttft_share']:.1f}% of total "
                     f"| {case['tokens']} |")
    lines += ["", "Before token streaming the first chunk came with the last, at 100% of the total time.", ""]
    (RESULTS / "inference_ttft.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
