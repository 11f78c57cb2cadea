"""Does the new AMFT controller beat the best tuned constant mix? (issue 16, items 3-4)

    python -m bench.controller --jobs 2            # writes bench/results/controller.{json,md}

A deliberately small, paired benchmark from the committed tier-1 base (bench/base/arith-base),
sized for the contended 2-core CPU (see the results page for the scale actually run):

- two tasks: `arith300` (tier 1's 300 expert demonstrations) and `arith16` (16 demonstrations,
  which SFT soon exhausts and overfits, next to the same 10,000 RL prompts with answers);
- arms, every one with AMFT's warm-up (WARMUP pure-SFT steps) and the same optimizer steps,
  SFT and rollout batches: constant mu in CONSTANT_MUS (method `amft` with both controller
  terms off and mu0 = c), and `amft` with the new controller (adam form, K-sample window,
  move gated at |mean| >= meta_min_z * SE);
- scores: greedy 0/1 on the first FINAL_ITEMS ID test items at the end (the same items and
  seeds for every arm, so differences are paired per item), plus ID accuracy on the first
  CURVE_ITEMS items at the midpoint, which says whether the best constant mu moves.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from bench.algorithms_config import BASE_MODEL, TIER1_CONTROLLER, TIER1_DATASETS, TIER1_TRAINING

RESULTS = Path(__file__).parent / "results"
STEPS, WARMUP, SEEDS, LEARNING_RATE = 30, 10, (0, 1), 1e-5
CONSTANT_MUS = (0.5, 0.7, 0.8, 0.9)
FINAL_ITEMS, CURVE_ITEMS = 200, 100
TASKS = {"arith300": 300, "arith16": 16}  # expert demonstrations (train[:n])
AMFT = {"meta_form": "adam", "meta_min_z": 2.0, "eta_meta": 0.1, "eta_H": 5e-4, "meta_interval": 5, "mu0": 0.8}


def arms() -> dict[str, dict]:
    """Controller settings of every arm (all run as method amft with the same warm-up)."""
    constants = {f"mu{c}": {"mu0": c, "eta_H": 0.0, "eta_meta": 0.0} for c in CONSTANT_MUS}
    return constants | {"amft": AMFT}


def spec_for(task: str, arm: str, seed: int) -> dict:
    datasets = copy.deepcopy(TIER1_DATASETS)
    datasets["sft"]["limit"] = TASKS[task]
    datasets["eval"] = [{"source": "builtin:arithmetic", "split": "id"}]
    training = copy.deepcopy(TIER1_TRAINING) | {
        "seed": seed, "total_steps": STEPS, "warmup_steps": WARMUP, "learning_rate": LEARNING_RATE,
        "eval_every": STEPS // 2, "eval_limit": CURVE_ITEMS, "save_every": STEPS,
    }
    controller = copy.deepcopy(TIER1_CONTROLLER) | arms()[arm]
    return {"method": "amft", "model": f"local:{BASE_MODEL}", "datasets": datasets, "training": training,
            "controller": controller}


def run_one(task: str, arm: str, seed: int, work: str) -> dict:
    """Train one arm, score its final checkpoint item by item; cached in work/runs."""
    from bench.algorithms_runner import _one_thread, _stage_final, configure_env, evaluate_model

    work = Path(work)
    out = work / "runs" / f"{task}-{arm}-s{seed}.json"
    if out.is_file():
        return json.loads(out.read_text())
    configure_env(work)
    _one_thread()
    from service.specs import JobSpec
    from workers.trainer.data import arithmetic_split
    from workers.trainer.hooks import TrainerHooks
    from workers.trainer.loop import train

    spec = JobSpec.model_validate(spec_for(task, arm, seed))
    points: list[dict] = []
    key = f"{task}-{arm}-s{seed}"
    out_dir = work / "checkpoints" / key
    started = time.perf_counter()
    result = train(spec, out_dir, TrainerHooks(on_metrics=lambda p: points.append(dict(p))))
    items = {"id": list(arithmetic_split("id"))[:FINAL_ITEMS]}
    scores = evaluate_model("local:" + _stage_final(result.last_checkpoint, work, key), items, work, "cpu")["id"]
    keep = ("step", "mu", "meta_grad", "meta_mean", "meta_snr", "meta_samples", "entropy", "grad_norm",
            "eval_accuracy_id", "step_seconds")
    record = {"task": task, "arm": arm, "seed": seed, "scores": scores, "wall_seconds": time.perf_counter() - started,
              "steps": [{k: p[k] for k in keep if k in p} for p in points]}
    shutil.rmtree(out_dir, ignore_errors=True)
    shutil.rmtree(work / "models" / f"final-{key}", ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record))
    return record


def paired(a: list[int], b: list[int]) -> tuple[float, float]:
    """Mean of a - b over paired items, and its standard error (points)."""
    diffs = [x - y for x, y in zip(a, b)]
    mean = sum(diffs) / len(diffs)
    var = sum((d - mean) ** 2 for d in diffs) / max(len(diffs) - 1, 1)
    return 100 * mean, 100 * math.sqrt(var / len(diffs))


def summarise(records: list[dict]) -> dict:
    """Per task: each arm's accuracy, the best constant, AMFT minus it (paired), mid vs end."""
    summary = {}
    for task in TASKS:
        by_arm: dict[str, list[int]] = {}
        mid: dict[str, list[float]] = {}
        mus: list[float] = []
        snrs: list[float] = []
        mine = [r for r in records if r["task"] == task]
        # Only seeds every arm finished, so that every comparison is paired.
        seeds = set.intersection(*[{r["seed"] for r in mine if r["arm"] == a} for a in arms()]) if mine else set()
        for arm in arms():
            runs = sorted((r for r in mine if r["arm"] == arm and r["seed"] in seeds), key=lambda r: r["seed"])
            if not runs:
                continue
            by_arm[arm] = [x for r in runs for x in r["scores"]]
            mid[arm] = [100 * next(p["eval_accuracy_id"] for p in r["steps"] if p["step"] == STEPS // 2) for r in runs]
            if arm == "amft":
                mus = [r["steps"][-1]["mu"] for r in runs]
                snrs = [p["meta_snr"] for r in runs for p in r["steps"] if "meta_snr" in p]
        constants = [a for a in by_arm if a != "amft"]
        if not constants:
            continue
        accuracy = {a: 100 * sum(v) / len(v) for a, v in by_arm.items()}
        best = max(constants, key=lambda a: accuracy[a])
        entry = {"seeds": sorted(seeds), "accuracy": accuracy, "mid_accuracy": {a: sum(v) / len(v) for a, v in mid.items()},
                 "best_constant": best, "items": len(by_arm[best])}
        entry["best_constant_mid"] = max(constants, key=lambda a: entry["mid_accuracy"][a])
        entry["constants_vs_best"] = {a: paired(by_arm[a], by_arm[best]) for a in constants if a != best}
        if "amft" in by_arm:
            entry["amft_minus_best"] = paired(by_arm["amft"], by_arm[best])
            entry["amft_final_mu"] = mus
            entry["amft_snr"] = snrs
            entry["amft_moves"] = sum(1 for s in snrs if abs(s) >= AMFT["meta_min_z"])
        summary[task] = entry
    return summary


def markdown(summary: dict, wall: float) -> str:
    lines = ["# Controller benchmark: new AMFT controller vs the best constant mix (issue 16)", "",
             f"Command: `python -m bench.controller --jobs 2`. {wall / 60:.0f} min of run time (sum over runs, "
             "2 at a time on the shared, heavily loaded 2-core CPU).",
             f"{STEPS} steps ({WARMUP} pure-SFT warm-up for every arm), seeds planned {list(SEEDS)} (run: per task below), "
             f"lr {LEARNING_RATE}, "
             f"final score = greedy on the first {FINAL_ITEMS} ID items per seed (paired across arms), "
             f"midpoint = step {STEPS // 2} on {CURVE_ITEMS} items. AMFT: {json.dumps(AMFT)}.", ""]
    for task, e in summary.items():
        lines += [f"## {task} ({TASKS[task]} demonstrations; seeds {e['seeds']})", "", "| arm | mid ID % | final ID % |", "|---|---|---|"]
        for arm, acc in e["accuracy"].items():
            lines.append(f"| {arm} | {e['mid_accuracy'][arm]:.1f} | {acc:.1f} |")
        lines += ["", f"Best constant at the end: {e['best_constant']}; at the midpoint: {e['best_constant_mid']}."]
        for arm, (d, se) in e["constants_vs_best"].items():
            lines.append(f"- {arm} − {e['best_constant']}: {d:+.1f} ± {se:.1f} points (paired, n = {e['items']})")
        if "amft_minus_best" in e:
            d, se = e["amft_minus_best"]
            lines.append(f"- **amft − {e['best_constant']}: {d:+.1f} ± {se:.1f} points** (paired, n = {e['items']}); "
                         f"final mu {e['amft_final_mu']}; windows moving mu {e['amft_moves']} of {len(e['amft_snr'])}; "
                         f"snr {[round(s, 2) for s in e['amft_snr']]}")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--work", default="/tmp/amft-controller")
    parser.add_argument("--tasks", nargs="*", default=list(TASKS))
    parser.add_argument("--report-only", action="store_true", help="Summarise the finished runs in --work.")
    args = parser.parse_args()
    from bench.algorithms_runner import configure_env, install_committed_base

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    configure_env(work)
    install_committed_base(work)
    jobs = [(t, a, s) for s in SEEDS for t in args.tasks for a in arms()]
    records = []
    if args.report_only:
        records = [json.loads(p.read_text()) for p in sorted((work / "runs").glob("*.json"))]
        jobs = []
    import multiprocessing

    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(run_one, t, a, s, str(work)): (t, a, s) for t, a, s in jobs}
        for future in as_completed(futures):
            record = future.result()
            records.append(record)
            print(f"done {futures[future]}: {100 * sum(record['scores']) / len(record['scores']):.1f}% "
                  f"({record['wall_seconds']:.0f} s)", flush=True)
    wall = sum(r["wall_seconds"] for r in records)
    summary = summarise(records)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "controller.json").write_text(json.dumps({"summary": summary, "wall_seconds": wall, "runs": records}))
    (RESULTS / "controller.md").write_text(markdown(summary, wall))
    print(markdown(summary, wall))


if __name__ == "__main__":
    main()
