"""Does the entropy term respond to collapse? (issue 16, item 2: the `deviation` rule, measured)

    python -m bench.entropy_rule --jobs 2          # writes bench/results/entropy_rule.{json,md}

The stability runs (bench/results/algorithms_stability.md) saw mostly-RL runs collapse at a
too-high learning rate while their rollout entropy *rose*, so the paper's `below_target` rule
(eta_H (H* - H_t)) lowered mu exactly then. `deviation` (eta_H |H_t - H*| / H*) raises mu
when entropy leaves its warm-up level in either direction. Here both meet the failure they
are for: tier 1's task from the committed base, mu0 = MU0 (nearly pure RL, which collapsed at
COLLAPSE_LR), the meta term off, the same eta_H for both rules, against the same run with
the entropy term off (`frozen`). Each rule also runs at the tuned SAFE_LR, where nothing
collapses (one seed), to show what it does to mu when there is nothing to respond to. Scores: greedy
0/1 on the first FINAL_ITEMS ID test items (paired across arms), ID accuracy every
CURVE_EVERY steps, and the mu and entropy curves.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

from bench.algorithms_config import BASE_MODEL, TIER1_CONTROLLER, TIER1_DATASETS, TIER1_TRAINING
from bench.controller import paired, run_all, train_and_score, write_results

STEPS, WARMUP, SEEDS, MU0, ETA_H = 60, 10, (0, 1), 0.1, 0.05
COLLAPSE_LR, SAFE_LR = 3e-4, 1e-5
FINAL_ITEMS, CURVE_ITEMS, CURVE_EVERY = 200, 100, 20
ARMS = {
    "frozen": {"eta_H": 0.0},
    "below_target": {"eta_H": ETA_H, "entropy_rule": "below_target"},
    "deviation": {"eta_H": ETA_H, "entropy_rule": "deviation"},
}


def spec_for(arm: str, lr: float, seed: int) -> dict:
    training = copy.deepcopy(TIER1_TRAINING) | {
        "seed": seed, "total_steps": STEPS, "warmup_steps": WARMUP, "learning_rate": lr,
        "eval_every": CURVE_EVERY, "eval_limit": CURVE_ITEMS, "save_every": STEPS,
    }
    datasets = copy.deepcopy(TIER1_DATASETS) | {"eval": [{"source": "builtin:arithmetic", "split": "id"}]}
    controller = copy.deepcopy(TIER1_CONTROLLER) | {"mu0": MU0, "eta_meta": 0.0} | ARMS[arm]
    return {"method": "amft", "model": f"local:{BASE_MODEL}", "datasets": datasets, "training": training,
            "controller": controller}


def run_one(arm: str, lr: float, seed: int, work: str) -> dict:
    """Train one arm and score it; cached in work/runs."""
    from workers.trainer.data import arithmetic_split

    key = f"entropy-{arm}-lr{lr:g}-s{seed}"
    out = Path(work) / "runs" / f"{key}.json"
    if out.is_file():
        return json.loads(out.read_text())
    trained = train_and_score(key, spec_for(arm, lr, seed), Path(work), {"id": list(arithmetic_split("id"))[:FINAL_ITEMS]})
    record = {"arm": arm, "lr": lr, "seed": seed, "scores": trained.pop("scores")["id"]} | trained
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record))
    return record


def at(record: dict, key: str, step: int) -> float | None:
    return next((p[key] for p in record["steps"] if p["step"] == step and key in p), None)


def summarise(records: list[dict]) -> dict:
    """Per learning rate and arm: final ID %, paired difference to frozen, mu and entropy over time."""
    summary: dict = {}
    marks = list(range(WARMUP + CURVE_EVERY // 2, STEPS + 1, CURVE_EVERY // 2))
    for lr in (COLLAPSE_LR, SAFE_LR):
        rows = {}
        for arm in ARMS:
            runs = sorted((r for r in records if r["arm"] == arm and r["lr"] == lr), key=lambda r: r["seed"])
            if not runs:
                continue
            scores = [x for r in runs for x in r["scores"]]
            rows[arm] = {
                "seeds": [r["seed"] for r in runs], "id": 100 * sum(scores) / len(scores), "scores": scores,
                "per_seed_id": [100 * sum(r["scores"]) / len(r["scores"]) for r in runs],
                "mu": {s: [round(at(r, "mu", s), 3) for r in runs] for s in marks},
                "entropy": {s: [round(at(r, "entropy", s) or float("nan"), 3) for r in runs] for s in marks},
                "curve": {s: [at(r, "eval_accuracy_id", s) for r in runs] for s in range(CURVE_EVERY, STEPS + 1, CURVE_EVERY)},
            }
        if "frozen" in rows:
            for arm, row in rows.items():
                if arm != "frozen" and row["seeds"] == rows["frozen"]["seeds"]:
                    row["minus_frozen"] = paired(row["scores"], rows["frozen"]["scores"])
        summary[f"{lr:g}"] = {arm: {k: v for k, v in row.items() if k != "scores"} for arm, row in rows.items()}
    return summary


def markdown(summary: dict, wall: float) -> str:
    lines = ["# The entropy term against collapse: `below_target` vs `deviation` (issue 16)", "",
             f"Command: `python -m bench.entropy_rule --jobs 2`. {wall / 60:.0f} min of run time. Tier 1's task "
             f"(300 demonstrations) from the committed base, {STEPS} steps ({WARMUP} pure-SFT warm-up), mu0 {MU0}, "
             f"meta term off, eta_H {ETA_H} for both rules, seeds {list(SEEDS)}; final = greedy on the first "
             f"{FINAL_ITEMS} ID items (paired), curve = ID on {CURVE_ITEMS} items every {CURVE_EVERY} steps.", "",
             "<!-- findings -->", "<!-- /findings -->", ""]
    for lr, rows in summary.items():
        lines += [f"## Learning rate {lr}", "", "| arm | final ID % (per seed) | − frozen (paired) | ID curve | "
                  "mu over steps | entropy over steps |", "|---|---|---|---|---|---|"]
        for arm, row in rows.items():
            diff = row.get("minus_frozen")
            diff_text = f"{diff[0]:+.1f} ± {diff[1]:.1f}" if diff else "—"
            curve = "; ".join(f"{s}: {[round(100 * v) if v is not None else None for v in vs]}"
                              for s, vs in row["curve"].items())
            mus = "; ".join(f"{s}: {v}" for s, v in row["mu"].items())
            ents = "; ".join(f"{s}: {v}" for s, v in row["entropy"].items())
            lines.append(f"| {arm} | {row['id']:.1f} ({', '.join(f'{x:.1f}' for x in row['per_seed_id'])}) | "
                         f"{diff_text} | {curve} | {mus} | {ents} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--work", default="/tmp/amft-entropy")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    from bench.algorithms_runner import configure_env, install_committed_base

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    configure_env(work)
    install_committed_base(work)
    # One seed at the safe rate: there it only has to show where each rule takes mu.
    jobs = [(a, COLLAPSE_LR, s) for s in SEEDS for a in ARMS] + [(a, SAFE_LR, SEEDS[0]) for a in ARMS]
    if not args.report_only:
        run_all(jobs, work, args.jobs, run_one)
    records = [json.loads(p.read_text()) for p in sorted((work / "runs").glob("entropy-*.json"))]
    write_results("entropy_rule", summarise(records), records, markdown)


if __name__ == "__main__":
    main()
