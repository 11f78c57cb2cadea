"""Inference speed: the micro-batching transformers engine vs sequential `model.generate`.

Setup (issue 4): builtin:smollm2-135m on CPU, 64 new tokens, 8 concurrent clients, greedy
decoding so both paths produce the same tokens (checked). Each client sends `--rounds`
requests back to back; the baseline serves the same requests one at a time with plain
`model.generate`, the way a server without batching would.

    .venv/bin/python -m bench.inference_speed            # CPU, writes bench/results/inference_speed.{json,md}

On a GPU machine with vllm installed (the worker-inference image), the same script
benchmarks the vLLM backend against the same baseline:

    docker-compose run --rm worker-inference python -m bench.inference_speed --backend vllm --device cuda
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

from service.settings import get_settings
from workers.inference.types import Sampling
from workers.trainer.data import arithmetic_split
from workers.trainer.models import format_prompt, load_policy

RESULTS = Path(__file__).resolve().parent / "results"
MODEL = "builtin:smollm2-135m"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="Requests per client.")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads.")
    parser.add_argument("--backend", choices=["transformers", "vllm"], default="transformers")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = get_settings()
    model, tokenizer = load_policy(MODEL, settings, device=args.device)
    prompts = [r["prompt"] for r in arithmetic_split("id")[: args.clients * args.rounds]]
    engine = make_engine(args, model, tokenizer, settings)
    # Rounds alternate between the two paths, so both see the same load on a shared machine.
    baseline, batched = _empty(), _empty()
    for start in range(0, len(prompts), args.clients):
        group = prompts[start : start + args.clients]
        _add(baseline, run_baseline(model, tokenizer, group, args.new_tokens))
        _add(batched, run_clients(engine, group, args.clients, args.new_tokens))
        print(f"round {start // args.clients + 1}: sequential {baseline['wall_s']:.1f} s, batched {batched['wall_s']:.1f} s", flush=True)
    report = summarise(args, baseline, batched, engine)
    write(report)


def _empty() -> dict:
    return {"wall_s": 0.0, "tokens": 0, "latencies": [], "texts": []}


def _add(total: dict, run: dict) -> None:
    total["wall_s"] += run["wall_s"]
    total["tokens"] += run["tokens"]
    total["latencies"] += run["latencies"]
    total["texts"] += run["texts"]


def make_engine(args, model, tokenizer, settings):
    if args.backend == "vllm":
        from workers.inference.loader import EngineFactory, model_key

        factory = EngineFactory(settings.model_copy(update={"inference_backend": "vllm"}))
        return factory.load(model_key({"kind": "base", "source": MODEL}))
    from workers.inference.transformers_engine import TransformersEngine

    return TransformersEngine(model, tokenizer, window_s=settings.inference_batch_window_ms / 1000)


@torch.inference_mode()
def run_baseline(model, tokenizer, prompts: list[str], new_tokens: int) -> dict:
    """One plain greedy `model.generate` call per request, in sequence."""
    latencies, tokens, texts = [], 0, []
    start = time.perf_counter()
    for prompt in prompts:
        began = time.perf_counter()
        ids = tokenizer(format_prompt(tokenizer, prompt), add_special_tokens=False, return_tensors="pt")["input_ids"]
        ids = ids.to(model.device)
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, do_sample=False)
        generated = out[0, ids.shape[1]:].tolist()
        if tokenizer.eos_token_id in generated:
            generated = generated[: generated.index(tokenizer.eos_token_id)]
        tokens += len(generated)
        texts.append(tokenizer.decode(generated, skip_special_tokens=True))
        latencies.append(time.perf_counter() - began)
    wall = time.perf_counter() - start
    # Clients wait for everything queued before them: latency as a client sees it.
    waited = [sum(latencies[: index + 1]) for index in range(len(latencies))]
    return {"wall_s": wall, "tokens": tokens, "latencies": waited, "texts": texts}


def run_clients(engine, prompts: list[str], clients: int, new_tokens: int) -> dict:
    """`clients` threads, each sending its share of the prompts one after another."""
    sampling = Sampling(max_tokens=new_tokens, temperature=0)
    texts: list[str | None] = [None] * len(prompts)
    latencies: list[float] = []
    tokens = [0]
    lock = threading.Lock()

    def client(index: int) -> None:
        for position in range(index, len(prompts), clients):
            began = time.perf_counter()
            completion = engine.generate([prompts[position]], sampling)[0].completions[0]
            with lock:
                latencies.append(time.perf_counter() - began)
                tokens[0] += completion.tokens
                texts[position] = completion.text

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"wall_s": time.perf_counter() - start, "tokens": tokens[0], "latencies": latencies, "texts": texts}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summarise(args, baseline: dict, batched: dict, engine) -> dict:
    def side(run: dict) -> dict:
        return {
            "tokens": run["tokens"], "wall_s": round(run["wall_s"], 2),
            "tokens_per_s": round(run["tokens"] / run["wall_s"], 1),
            "p50_latency_s": round(statistics.median(run["latencies"]), 2),
            "p99_latency_s": round(percentile(run["latencies"], 0.99), 2),
        }

    same = sum(a == b for a, b in zip(baseline["texts"], batched["texts"]))
    stats = engine.stats
    return {
        "model": MODEL, "backend": args.backend, "device": args.device, "torch_threads": args.threads,
        "clients": args.clients, "requests": len(baseline["texts"]), "new_tokens": args.new_tokens,
        "decoding": "greedy", "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "sequential_generate": side(baseline), "batched_engine": side(batched),
        "speedup": round((batched["tokens"] / batched["wall_s"]) / (baseline["tokens"] / baseline["wall_s"]), 2),
        "identical_outputs": f"{same}/{len(baseline['texts'])}",
        "engine_generate_calls": stats.calls, "mean_requests_per_call": round(stats.requests / max(stats.calls, 1), 2),
    }


def write(report: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "inference_speed.json").write_text(json.dumps(report, indent=2) + "\n")
    b, s = report["batched_engine"], report["sequential_generate"]
    lines = [
        "# Inference speed",
        "",
        f"{report['model']} on {report['device']} ({report['machine']}), {report['new_tokens']} new tokens, "
        f"{report['clients']} concurrent clients, {report['requests']} requests, greedy. "
        "Command: `.venv/bin/python -m bench.inference_speed`.",
        "",
        "| | tokens/s | p50 latency (s) | p99 latency (s) | wall (s) |",
        "|---|---:|---:|---:|---:|",
        f"| sequential `model.generate` | {s['tokens_per_s']} | {s['p50_latency_s']} | {s['p99_latency_s']} | {s['wall_s']} |",
        f"| batched engine ({report['backend']}) | {b['tokens_per_s']} | {b['p50_latency_s']} | {b['p99_latency_s']} | {b['wall_s']} |",
        "",
        f"Speed-up: **{report['speedup']}x** (target >= 3x). Outputs identical to the baseline: "
        f"{report['identical_outputs']}. The engine served the requests in {report['engine_generate_calls']} "
        f"generate calls ({report['mean_requests_per_call']} requests per call on average).",
        "",
        "Sequential latency is what a client waits when its round's requests queue for a non-batching "
        "server (its own call plus the calls before it). Rounds alternate between the two paths.",
        "",
        "vLLM backend (GPU machine with vllm, e.g. the worker-inference image):",
        "`docker-compose run --rm worker-inference python -m bench.inference_speed --backend vllm --device cuda`",
        "",
    ]
    (RESULTS / "inference_speed.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
