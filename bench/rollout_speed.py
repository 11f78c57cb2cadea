"""Rollout speed on a GPU: the dynamic-cache decode loop vs the static cache replayed as CUDA graphs.

Both engines sample the same batch side by side in one run: an RL step's shape (4 prompts x 4
samples) and an evaluation's (200 greedy rows), each for a fixed number of new tokens (EOS is
never honoured, so every row runs to the end and both engines do the same work). The greedy
outputs of the two engines are compared row by row (a row can part ways where two logits are
within rounding of each other, since the two attend over different cache lengths).

    python -m bench.rollout_speed                               # SmolLM2-135M's shape, random weights
    python -m bench.rollout_speed --model builtin:smollm2-135m  # the real weights

Writes bench/results/rollout_speed.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from service.settings import get_settings
from workers.trainer.graph_rollout import StaticCacheEngine
from workers.trainer.models import load_policy
from workers.trainer.rollout import TransformersEngine

RESULTS = Path(__file__).resolve().parent / "results"
# SmolLM2-135M-Instruct's architecture (its config.json), for timing without its weights.
SMOLLM2_SHAPE = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                     num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                     rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True)
SHAPES = {"rl_step": (4, 4, 120), "eval": (200, 1, 120)}  # prompts, samples per prompt, prompt tokens
NEVER = -1  # an EOS id no token has: every row decodes all max_new_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-shape", help="smollm2-shape (random weights) or a model source")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    model = _model(args.model, getattr(torch, args.dtype)).eval()
    results = {"model": args.model, "dtype": args.dtype, "new_tokens": args.new_tokens,
               "repeats": args.repeats, "device": torch.cuda.get_device_name(), "torch": torch.__version__, "shapes": {}}
    for name, shape in SHAPES.items():
        results["shapes"][name] = _compare(model, shape, args.new_tokens, args.repeats)
        print(name, results["shapes"][name], flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "rollout_speed.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "rollout_speed.md").write_text(_markdown(results))
    print(_markdown(results))


def _model(source: str, dtype: torch.dtype) -> torch.nn.Module:
    if source == "smollm2-shape":
        torch.manual_seed(0)
        return LlamaForCausalLM(LlamaConfig(**SMOLLM2_SHAPE)).to("cuda", dtype)
    model, _ = load_policy(source, get_settings(), dtype=dtype, device=torch.device("cuda"))
    return model


def _compare(model, shape: tuple[int, int, int], new_tokens: int, repeats: int) -> dict:
    prompts_n, samples, prompt_len = shape
    generator = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, model.config.vocab_size, (prompt_len - i % 7,), generator=generator).tolist() for i in range(prompts_n)]
    eager = TransformersEngine(model, 0, NEVER)
    graphed = StaticCacheEngine(model, 0, NEVER, use_graphs=True)
    pairs = zip(eager.generate(prompts, samples, new_tokens, greedy=True),
                graphed.generate(prompts, samples, new_tokens, greedy=True))
    identical = sum(a == b for a, b in pairs) / (prompts_n * samples)
    row = {"rows": prompts_n * samples, "greedy_rows_identical": identical}
    for label, engine in (("eager", eager), ("graphed", graphed)):
        seconds = []
        for seed in range(repeats):
            torch.manual_seed(seed)
            torch.cuda.synchronize()
            start = time.perf_counter()
            engine.generate(prompts, samples, new_tokens)
            torch.cuda.synchronize()
            seconds.append(time.perf_counter() - start)
        row[f"{label}_s"] = sum(seconds) / len(seconds)
        row[f"{label}_ms_per_token"] = 1000 * row[f"{label}_s"] / new_tokens
    row["speedup"] = row["eager_s"] / row["graphed_s"]
    return row


def _markdown(results: dict) -> str:
    lines = [
        "# Rollout speed: dynamic-cache decode vs static cache + CUDA graphs",
        "",
        f"Command: `python -m bench.rollout_speed` ({results['model']}, {results['dtype']}, "
        f"{results['new_tokens']} new tokens per row, sampled, mean of {results['repeats']} repeats). "
        f"{results['device']}, torch {results['torch']}.",
        "",
        "| batch | rows | eager s | graphed s | eager ms/token | graphed ms/token | speedup | greedy rows identical |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results["shapes"].items():
        lines.append(f"| {name} | {r['rows']} | {r['eager_s']:.2f} | {r['graphed_s']:.2f} | "
                     f"{r['eager_ms_per_token']:.1f} | {r['graphed_ms_per_token']:.1f} | {r['speedup']:.1f}x | "
                     f"{100 * r['greedy_rows_identical']:.0f}% |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
