"""Does the new AMFT controller beat the best tuned constant mix? (issue 16, items 3-5)

    python -m bench.controller --jobs 2            # writes bench/results/controller.{json,md}

A paired benchmark from the committed tier-1 base (bench/base/arith-base), sized for a 2-core CPU:

- two tasks: `arith16` (16 expert demonstrations, which SFT soon exhausts and overfits, next
  to 10,000 RL prompts with answers) and `arith300` (tier 1's 300 demonstrations);
- arms, every one with AMFT's warm-up (WARMUP pure-SFT steps) and the same optimizer steps,
  SFT and rollout batches: constant mu in CONSTANT_MUS (method `amft` with both controller
  terms off and mu0 = c), `amft` with the meta-gradient controller (adam form, K-sample
  window, move gated at |mean| >= meta_min_z * SE), and `bandit` (controller.kind bandit:
  one of the constants per window, picked by discounted UCB on held-out greedy accuracy);
- the learning rate tuned per arm: every arm runs every LEARNING_RATES at TUNE_SEED on the
  tuning task, and keeps the one with the best greedy accuracy on VAL_ITEMS validation
  items (the split AMFT's meta step and the bandit read; no arm sees the test items);
- scores: greedy 0/1 on the first FINAL_ITEMS ID test items at the end (the same items and
  seeds for every arm, so differences are paired per item), plus ID accuracy on the first
  CURVE_ITEMS items at the midpoint, which says whether the best constant mu moves.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import multiprocessing
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from bench.algorithms_config import BASE_MODEL, TIER1_CONTROLLER, TIER1_DATASETS, TIER1_TRAINING

RESULTS = Path(__file__).parent / "results"
STEPS, WARMUP, SEEDS, TUNE_SEED = 80, 10, (0, 1, 2), 0
LEARNING_RATES = (1e-6, 3e-6, 1e-5, 3e-5)
# The rate best or within a point of best on validation for every arm (and the second
# analysis's rate for all of them; arith300 runs only at it).
COMMON_LR = 3e-6
CONSTANT_MUS = (0.5, 0.7, 0.8, 0.9)
FINAL_ITEMS, VAL_ITEMS, CURVE_ITEMS = 200, 200, 100
TASKS = {"arith16": 16, "arith300": 300}  # expert demonstrations (train[:n])
TUNE_TASK = "arith16"  # learning rates are picked here and reused on the other task
KEPT_METRICS = ("step", "mu", "meta_grad", "meta_mean", "meta_snr", "meta_samples", "bandit_score", "entropy",
                "target_entropy", "grad_norm", "eval_accuracy_id", "completion_tokens_mean", "step_seconds")
AMFT = {"meta_form": "adam", "meta_min_z": 2.0, "eta_meta": 0.1, "eta_H": 5e-4, "meta_interval": 5, "mu0": 0.8}
BANDIT = {"kind": "bandit", "bandit_arms": list(CONSTANT_MUS), "meta_interval": 10, "bandit_eval_items": 64,
          "eta_H": 0.0, "eta_meta": 0.0}


def arms() -> dict[str, dict]:
    """Controller settings of every arm (all run as method amft with the same warm-up)."""
    constants = {f"mu{c}": {"mu0": c, "eta_H": 0.0, "eta_meta": 0.0} for c in CONSTANT_MUS}
    return constants | {"amft": AMFT, "bandit": BANDIT}


def spec_for(task: str, arm: str, lr: float, seed: int) -> dict:
    datasets = copy.deepcopy(TIER1_DATASETS)
    datasets["sft"]["limit"] = TASKS[task]
    datasets["eval"] = [{"source": "builtin:arithmetic", "split": "id"}]
    training = copy.deepcopy(TIER1_TRAINING) | {
        "seed": seed, "total_steps": STEPS, "warmup_steps": WARMUP, "learning_rate": lr,
        "eval_every": STEPS // 2, "eval_limit": CURVE_ITEMS, "save_every": STEPS,
    }
    controller = copy.deepcopy(TIER1_CONTROLLER) | arms()[arm]
    return {"method": "amft", "model": f"local:{BASE_MODEL}", "datasets": datasets, "training": training,
            "controller": controller}


def run_key(task: str, arm: str, lr: float, seed: int) -> str:
    return f"{task}-{arm}-lr{lr:g}-s{seed}"


def run_one(task: str, arm: str, lr: float, seed: int, work: str) -> dict:
    """Train one arm, score its final checkpoint item by item; cached in work/runs."""
    key = run_key(task, arm, lr, seed)
    out = Path(work) / "runs" / f"{key}.json"
    if out.is_file():
        return json.loads(out.read_text())
    trained = train_and_score(key, spec_for(task, arm, lr, seed), Path(work), scored_items())
    scores = trained.pop("scores")
    record = {"task": task, "arm": arm, "lr": lr, "seed": seed, "scores": scores["id"], "val_scores": scores["val"]}
    record |= trained
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record))
    return record


def train_and_score(key: str, spec: dict, work: Path, items: dict[str, list[dict]]) -> dict:
    """Train `spec` in this process, then score its final checkpoint greedily (0/1 per item)
    on each named item list: {scores: {name: [...]}, steps, train_seconds, wall_seconds}."""
    from bench.algorithms_runner import _one_thread, _stage_final, configure_env, evaluate_model

    configure_env(work)
    _one_thread()
    from service.specs import JobSpec
    from workers.trainer.hooks import TrainerHooks
    from workers.trainer.loop import train

    points: list[dict] = []
    out_dir = work / "checkpoints" / key
    started = time.perf_counter()
    result = train(JobSpec.model_validate(spec), out_dir, TrainerHooks(on_metrics=lambda p: points.append(dict(p))))
    train_seconds = time.perf_counter() - started
    scores = evaluate_model("local:" + _stage_final(result.last_checkpoint, work, key), items, work, "cpu")
    shutil.rmtree(out_dir, ignore_errors=True)
    shutil.rmtree(work / "models" / f"final-{key}", ignore_errors=True)
    return {"scores": scores, "train_seconds": train_seconds, "wall_seconds": time.perf_counter() - started,
            "steps": [{k: p[k] for k in KEPT_METRICS if k in p} for p in points]}


def scored_items() -> dict[str, list[dict]]:
    """The items every final checkpoint is scored on: ID test ("id") and validation ("val")."""
    from workers.trainer.data import arithmetic_split

    return {"id": list(arithmetic_split("id"))[:FINAL_ITEMS], "val": list(arithmetic_split("validation"))[:VAL_ITEMS]}


def base_accuracy(work: Path) -> dict[str, float]:
    """The committed base's greedy accuracy (%) on the same ID and validation items; cached."""
    from bench.algorithms_runner import evaluate_model

    out = work / "base.json"
    if not out.is_file():
        scores = evaluate_model(f"local:{BASE_MODEL}", scored_items(), work, "cpu")
        out.write_text(json.dumps({name: 100 * sum(v) / len(v) for name, v in scores.items()}))
    return json.loads(out.read_text())


def paired(a: list[int], b: list[int]) -> tuple[float, float]:
    """Mean of a - b over paired items, and its standard error (points)."""
    diffs = [x - y for x, y in zip(a, b)]
    mean = sum(diffs) / len(diffs)
    var = sum((d - mean) ** 2 for d in diffs) / max(len(diffs) - 1, 1)
    return 100 * mean, 100 * math.sqrt(var / len(diffs))


def pick_learning_rates(records: list[dict], arm_names) -> dict[str, float]:
    """Each arm's learning rate: the best validation accuracy at TUNE_SEED on TUNE_TASK."""
    picks = {}
    for arm in arm_names:
        tried = [r for r in records if r["task"] == TUNE_TASK and r["arm"] == arm and r["seed"] == TUNE_SEED]
        if tried:
            picks[arm] = max(tried, key=lambda r: (sum(r["val_scores"]), -r["lr"]))["lr"]
    return picks


def summarise(records: list[dict], arm_names) -> dict:
    """Per task, twice: at the rates tuned per arm, and with every arm at COMMON_LR. Each has
    every arm's accuracy, the best constant, the controllers minus it (paired), the best
    constant at the midpoint vs at the end, and the cost."""
    picks = pick_learning_rates(records, arm_names)
    common = {arm: COMMON_LR for arm in arm_names}
    summary = {"learning_rates": picks, "tuning": tuning_table(records), "tuned": {}, "common": {}}
    for analysis, rates in (("tuned", picks), ("common", common)):
        for task in TASKS:
            chosen = [r for r in records if r["task"] == task and r["arm"] in rates and r["lr"] == rates[r["arm"]]]
            # Only seeds every arm finished, so that every comparison is paired.
            seeds = set.intersection(*[{r["seed"] for r in chosen if r["arm"] == a} for a in rates]) if rates else set()
            runs = {a: sorted((r for r in chosen if r["arm"] == a and r["seed"] in seeds), key=lambda r: r["seed"])
                    for a in rates}
            if seeds and any(a.startswith("mu") for a in runs):
                summary[analysis][task] = task_summary(runs, sorted(seeds))
    return summary


def task_summary(runs: dict[str, list[dict]], seeds: list[int]) -> dict:
    scores = {a: [x for r in rs for x in r["scores"]] for a, rs in runs.items()}
    mid = {a: [100 * next(p["eval_accuracy_id"] for p in r["steps"] if p["step"] == STEPS // 2) for r in rs]
           for a, rs in runs.items()}
    accuracy = {a: 100 * sum(v) / len(v) for a, v in scores.items()}
    constants = [a for a in runs if a.startswith("mu")]
    best = max(constants, key=lambda a: accuracy[a])
    best_mid = max(constants, key=lambda a: sum(mid[a]))
    entry = {"seeds": seeds, "items": len(scores[best]), "accuracy": accuracy,
             "mid_accuracy": {a: sum(v) / len(v) for a, v in mid.items()}, "mid_per_seed": mid, "best_constant": best,
             "best_constant_mid": best_mid,
             "constants_vs_best": {a: paired(scores[a], scores[best]) for a in constants if a != best},
             "controllers_vs_best": {a: paired(scores[a], scores[best]) for a in runs if a not in constants},
             "extra_completions": {a: sum(extra_completions(r) for r in rs) / len(rs) for a, rs in runs.items()},
             "train_minutes": {a: sum(r["train_seconds"] for r in rs) / len(rs) / 60 for a, rs in runs.items()},
             "final_mu": {a: [round(r["steps"][-1]["mu"], 3) for r in rs] for a, rs in runs.items()
                          if a not in constants}}
    if "amft" in runs:
        snrs = [p["meta_snr"] for r in runs["amft"] for p in r["steps"] if "meta_snr" in p]
        entry["amft_snr"] = snrs
        entry["amft_moves"] = sum(1 for s in snrs if abs(s) >= AMFT["meta_min_z"])
    return entry


def extra_completions(record: dict) -> int:
    """Completions a controller decodes beyond the RL rollouts every arm samples: AMFT's
    validation rollouts (one batch per window), the bandit's greedy held-out scores."""
    c, t = arms()[record["arm"]], TIER1_TRAINING
    windows = sum(1 for p in record["steps"] if "meta_samples" in p)
    scores = sum(1 for p in record["steps"] if "bandit_score" in p)
    return windows * TIER1_CONTROLLER["meta_val_prompts"] * t["num_generations"] + scores * c.get("bandit_eval_items", 0)


def tuning_table(records: list[dict]) -> dict[str, dict[str, float]]:
    """Validation accuracy (%) of every arm at every rate tried at TUNE_SEED on TUNE_TASK."""
    table: dict[str, dict[str, float]] = {}
    for r in records:
        if r["task"] == TUNE_TASK and r["seed"] == TUNE_SEED:
            table.setdefault(r["arm"], {})[f"{r['lr']:g}"] = 100 * sum(r["val_scores"]) / len(r["val_scores"])
    return table


def run_all(jobs: list[tuple], work: Path, workers: int, run=None) -> list[dict]:
    """Run `run(*job, work)` (default run_one) for every job, `workers` processes at a time."""
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [(job, pool.submit(run or run_one, *job, str(work))) for job in jobs]
        records = []
        for job, future in futures:
            record = future.result()
            records.append(record)
            print(f"done {job}: {100 * sum(record['scores']) / len(record['scores']):.1f}% "
                  f"({record['wall_seconds']:.0f} s)", flush=True)
    return records


def write_results(stem: str, summary: dict, records: list[dict], markdown) -> None:
    """bench/results/<stem>.json (summary and every run) and <stem>.md; prints the page."""
    RESULTS.mkdir(exist_ok=True)
    wall = sum(r["wall_seconds"] for r in records)
    (RESULTS / f"{stem}.json").write_text(json.dumps({"summary": summary, "wall_seconds": wall, "runs": records}))
    (RESULTS / f"{stem}.md").write_text(markdown(summary, wall))
    print(markdown(summary, wall))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--work", default="/tmp/amft-controller")
    parser.add_argument("--tasks", nargs="*", default=list(TASKS))
    parser.add_argument("--arms", nargs="*", default=list(arms()))
    parser.add_argument("--seeds", nargs="*", type=int, default=list(SEEDS))
    parser.add_argument("--common-lr", action="store_true", help="Run every arm at COMMON_LR, without tuning.")
    parser.add_argument("--report-only", action="store_true", help="Summarise the finished runs in --work.")
    args = parser.parse_args()
    from bench.algorithms_runner import configure_env, install_committed_base

    from bench.controller_report import markdown

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    configure_env(work)
    install_committed_base(work)
    if not args.report_only:
        picks = {a: COMMON_LR for a in args.arms}
        if not args.common_lr:
            tuning = run_all([(TUNE_TASK, a, lr, TUNE_SEED) for a in args.arms for lr in LEARNING_RATES], work, args.jobs)
            picks = pick_learning_rates(tuning, args.arms)
        for task in args.tasks:
            run_all([(task, a, picks[a], s) for s in args.seeds for a in args.arms], work, args.jobs)
    records = [json.loads(p.read_text()) for p in sorted((work / "runs").glob("*.json"))]
    summary = summarise(records, list(arms())) | {"base": base_accuracy(work)}
    write_results("controller", summary, records, markdown)


if __name__ == "__main__":
    main()
