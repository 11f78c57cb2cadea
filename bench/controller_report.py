"""The markdown page of bench/controller.py (bench/results/controller.md)."""

from __future__ import annotations

import json

from bench.controller import AMFT, BANDIT, COMMON_LR, CURVE_ITEMS, FINAL_ITEMS, LEARNING_RATES, STEPS, TASKS, TUNE_SEED, \
    TUNE_TASK, VAL_ITEMS, WARMUP


def markdown(summary: dict, wall: float) -> str:
    """Findings placeholder, the tuning table, then one section per task."""
    lines = ["# Controller benchmark: the new AMFT controllers vs the best tuned constant mix (issue 16)", "",
             "Commands: `python -m bench.controller --jobs 2 --tasks arith16` (tuning, then every seed at the "
             "picked rates), `python -m bench.controller --jobs 2 --tasks arith300 --seeds 0 1 --common-lr`. "
             f"{wall / 60:.0f} min of run time (sum over runs, 2 at a time on a 2-core CPU).",
             f"{STEPS} steps ({WARMUP} pure-SFT warm-up for every arm); learning rate per arm picked from "
             f"{list(LEARNING_RATES)} on {TUNE_TASK}, seed {TUNE_SEED}, by greedy accuracy on {VAL_ITEMS} validation "
             f"items; final score = greedy on the first {FINAL_ITEMS} ID test items per seed (paired across arms); "
             f"midpoint = step {STEPS // 2} on {CURVE_ITEMS} items.",
             f"AMFT: {json.dumps(AMFT)}. Bandit: {json.dumps(BANDIT)}.",
             f"The base before training: ID {summary['base']['id']:.1f}%, validation {summary['base']['val']:.1f}% "
             "(same items).", "",
             "<!-- findings -->", "<!-- /findings -->", "",
             f"## Learning-rate tuning ({TUNE_TASK}, seed {TUNE_SEED}, validation accuracy %)", ""]
    rates = [f"{lr:g}" for lr in LEARNING_RATES]
    lines += ["| arm | " + " | ".join(rates) + " | picked |", "|---" * (len(rates) + 2) + "|"]
    for arm, row in summary["tuning"].items():
        cells = [f"{row[r]:.1f}" if r in row else "–" for r in rates]
        picked = summary["learning_rates"].get(arm)
        lines.append(f"| {arm} | " + " | ".join(cells) + (f" | {picked:g} |" if picked else " | – |"))
    lines.append("")
    for analysis, title in (("tuned", "learning rate tuned per arm"), ("common", f"every arm at {COMMON_LR:g}")):
        for task in TASKS:
            if task in summary[analysis]:
                lines += task_section(task, summary[analysis][task], title)
    return "\n".join(lines)


def task_section(task: str, e: dict, title: str) -> list[str]:
    lines = [f"## {task}, {title} ({TASKS[task]} demonstrations; seeds {e['seeds']})", "",
             "| arm | mid ID % (per seed) | final ID % | extra completions per run | train min per run |",
             "|---|---|---|---|---|"]
    for arm, acc in e["accuracy"].items():
        seeds = ", ".join(f"{x:.0f}" for x in e["mid_per_seed"][arm])
        lines.append(f"| {arm} | {e['mid_accuracy'][arm]:.1f} ({seeds}) | {acc:.1f} | {e['extra_completions'][arm]:.0f} "
                     f"| {e['train_minutes'][arm]:.1f} |")
    lines += ["", f"Best constant at the end: {e['best_constant']}; at the midpoint: {e['best_constant_mid']}."]
    for arm, (d, se) in e["constants_vs_best"].items():
        lines.append(f"- {arm} − {e['best_constant']}: {d:+.1f} ± {se:.1f} points (paired, n = {e['items']})")
    for arm, (d, se) in e["controllers_vs_best"].items():
        lines.append(f"- **{arm} − {e['best_constant']}: {d:+.1f} ± {se:.1f} points** (paired, n = {e['items']}); "
                     f"final mu {e['final_mu'].get(arm)}")
    if "amft_snr" in e:
        lines.append(f"- amft windows moving mu: {e['amft_moves']} of {len(e['amft_snr'])}; "
                     f"snr {[round(s, 2) for s in e['amft_snr']]}")
    return lines + [""]
