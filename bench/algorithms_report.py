"""The algorithms benchmark's report: tables (markdown) and plots (PNG) from the results json.

A hand-written section between `<!-- findings -->` and `<!-- /findings -->` in an existing
report is kept when the report is regenerated.
"""

from __future__ import annotations

import math
import re
import statistics
from pathlib import Path

METHOD_ORDER = ("amft", "sft", "grpo", "sft_then_grpo", "fixed", "chord")
FINDINGS = re.compile(r"<!-- findings -->.*?<!-- /findings -->", re.S)
FINDINGS_PLACEHOLDER = "<!-- findings -->\n## Findings\n\n(to be written from the tables below)\n<!-- /findings -->"


def report_header(results: dict, title: str, default_command: str, note: str) -> list[str]:
    """Title, the command that made the results, and where and how long it ran."""
    devices = sorted({r.get("torch_device", "?") for r in results["runs"]})
    return [
        f"# {title}",
        "",
        f"Command: `{results.get('command', default_command)}`" + (" (DRY RUN: not a result)" if results.get("dry_run") else ""),
        f"Total time {results.get('total_seconds', 0) / 60:.1f} min on {', '.join(devices)}. {note}",
    ]


def by_name(runs: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for run in sorted(runs, key=lambda r: r["seed"]):
        groups.setdefault(run["name"], []).append(run)
    return groups


def mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def pct(mean: float, std: float | None = None) -> str:
    if math.isnan(mean):
        return "n/a"
    return f"{100 * mean:.1f}" + ("" if std is None else f" ± {100 * std:.1f}")


def curve(run: dict, key: str, base: dict | None = None, split: str | None = None) -> tuple[list, list, list]:
    """(steps, cumulative train seconds, values) of a metric; eval curves start at the base."""
    steps, seconds, values, elapsed = [], [], [], 0.0
    if base is not None and split is not None:
        steps, seconds, values = [0], [0.0], [base["curve_scores"][split]]
    for point in run["steps"]:
        elapsed += point["step_seconds"]
        if key in point:
            steps.append(point["step"])
            seconds.append(elapsed)
            values.append(point[key])
    return steps, seconds, values


def reach(run: dict, base: dict, threshold: float) -> tuple[int | None, float | None]:
    """First eval step (and train seconds) where curve ID accuracy >= threshold."""
    for step, seconds, value in zip(*curve(run, "eval_accuracy_id", base, "id")):
        if value >= threshold:
            return step, seconds
    return None, None


def tail_mean(run: dict, key: str, last: int = 10) -> float | None:
    values = [p[key] for p in run["steps"] if key in p]
    return statistics.fmean(values[-last:]) if values else None


def summary(name: str, runs: list[dict], base: dict, threshold: float, main_device: str | None = None) -> dict:
    reached = [reach(r, base, threshold) for r in runs]
    hit = [(s, t) for s, t in reached if s is not None]
    elsewhere = main_device and any(r.get("torch_device", "unrecorded") != main_device for r in runs)
    return {
        "name": name + (" †" if elsewhere else ""),
        "seeds": len(runs),
        "id": mean_std([r["final"]["id"] for r in runs]),
        "ood": mean_std([r["final"]["ood"] for r in runs]),
        "reached": len(hit),
        "steps_to": statistics.fmean(s for s, _ in hit) if hit else None,
        "seconds_to": statistics.fmean(t for _, t in hit) if hit else None,
        "entropy": mean_std([tail_mean(r, "entropy") for r in runs]),
        "mu_final": mean_std([r["steps"][-1]["mu"] for r in runs]),
        "zero_signal": mean_std([tail_mean(r, "zero_signal_frac", 10_000) for r in runs]),
        "step_s": statistics.fmean(r["train_seconds"] / len(r["steps"]) for r in runs),
        "train_s": statistics.fmean(r["train_seconds"] for r in runs),
    }


def summary_row(s: dict) -> str:
    steps = "—" if s["steps_to"] is None else f"{s['steps_to']:.0f} ({s['reached']}/{s['seeds']})"
    secs = "—" if s["seconds_to"] is None else f"{s['seconds_to']:.0f}"
    entropy = "n/a (no rollouts)" if math.isnan(s["entropy"][0]) else f"{s['entropy'][0]:.3f} ± {s['entropy'][1]:.3f}"
    zero = "—" if math.isnan(s["zero_signal"][0]) else f"{100 * s['zero_signal'][0]:.0f}%"
    return (f"| {s['name']} | {pct(*s['id'])} | {pct(*s['ood'])} | {steps} | {secs} | {entropy} | "
            f"{s['mu_final'][0]:.2f} | {zero} | {s['step_s']:.2f} | {s['train_s']:.0f} |")


HEADER = ("| run | ID acc % (mean ± std) | OOD acc % | steps to {thr} ID (seeds reaching) | seconds to {thr} ID | "
          "final entropy (nats/token, last 10 steps) | final mu | zero-signal groups | s/step | train s |\n"
          "|---|---|---|---|---|---|---|---|---|---|")


def _curve_items(results: dict) -> int:
    return results["config"]["training"]["eval_limit"] if not results.get("dry_run") else 4


def equal_time(groups: dict[str, list[dict]], base: dict, names: list[str], budget: float) -> dict[str, tuple]:
    """ID/OOD curve accuracy of each method within a training-seconds budget (last eval within it)."""
    out = {}
    for name in names:
        scores = {"id": [], "ood": []}
        for run in groups[name]:
            for split in scores:
                _, seconds, values = curve(run, f"eval_accuracy_{split}", base, split)
                scores[split].append([v for t, v in zip(seconds, values) if t <= budget * 1.0001][-1])
        out[name] = (mean_std(scores["id"]), mean_std(scores["ood"]))
    return out


def diff_line(a: str, b: str, groups: dict, split: str) -> str:
    """Mean difference a - b over seeds with its standard error (seed spread only)."""
    va, vb = [r["final"][split] for r in groups[a]], [r["final"][split] for r in groups[b]]
    (ma, sa), (mb, sb) = mean_std(va), mean_std(vb)
    se = math.sqrt(sa**2 / len(va) + sb**2 / len(vb))
    return f"{100 * (ma - mb):+.1f} ± {100 * se:.1f}"


def write_report(results: dict, out_dir: Path, stem: str) -> Path:
    out_dir = Path(out_dir)
    if results["tier"] == 2:
        from bench.algorithms_plots import tier2_markdown

        text = tier2_markdown(results)
    elif results.get("kind") == "stability":
        from bench.algorithms_stability import stability_markdown

        text = stability_markdown(results, out_dir, stem)
    else:
        text = tier1_markdown(results, out_dir, stem)
    return write_keeping_findings(out_dir / f"{stem}.md", text)


def write_keeping_findings(path: Path, text: str) -> Path:
    """Write a generated report, keeping the hand-written findings block of the one it replaces."""
    if path.is_file():
        kept = FINDINGS.search(path.read_text(encoding="utf-8"))
        if kept:
            text = FINDINGS.sub(lambda _: kept.group(0), text)
    path.write_text(text, encoding="utf-8")
    return path


def tier1_markdown(results: dict, out_dir: Path, stem: str) -> str:
    from bench.algorithms_plots import tier1_plots

    base, thr = results["base"], results["threshold"]
    groups = by_name(results["runs"])
    methods = [m for m in METHOD_ORDER if m in groups]
    ablations = [n for n in groups if n not in METHOD_ORDER]
    plots = tier1_plots(groups, base, methods, ablations, out_dir, stem)
    header = HEADER.format(thr=f"{100 * thr:.0f}%")
    lines = [
        "# Algorithms benchmark, tier 1: builtin:tiny on built-in arithmetic",
        "",
        f"Command: `{results.get('command', 'python -m bench.algorithms --tier 1')}`"
        + (" (DRY RUN: not a result)" if results.get("dry_run") else ""),
        f"Total time {results.get('total_seconds', 0) / 60:.1f} min. Protocol: bench/ALGORITHMS_PROTOCOL.md.",
        "",
        f"Base checkpoint: {base['steps']} SFT steps (lr {base['config']['learning_rate']:g}, batch "
        f"{base['config']['batch_size']}), validation accuracy {pct(base['val_accuracy'])}%; "
        f"test ID {pct(base['scores']['id'])}%, OOD {pct(base['scores']['ood'])}% (n = {base['n']['id']} each).",
        "",
        "Where the runs ran: " + ", ".join(f"{n} run(s) on {d}" for d, n in _devices(results["runs"]).items())
        + ". Seconds compare only between runs on the same device.",
        "",
        FINDINGS_PLACEHOLDER,
        "",
        "## Methods",
        "",
        f"Final greedy accuracy on {base['n']['id']} ID and {base['n']['ood']} OOD test items per run, "
        f"mean ± std over {len(groups[methods[0]]) if methods else 0} seeds. Steps/seconds to {100 * thr:.0f}% use "
        f"the curve evaluations ({_curve_items(results)} items per split, every "
        f"{results['config']['training']['eval_every']} steps) and count training seconds only (no eval time); "
        "the mean is over the seeds that reached it. Entropy: mean token entropy of the step's own rollouts.",
        "",
        header,
    ]
    devices = _devices(results["runs"])
    main_device = max(devices, key=devices.get) if devices else None
    lines += [summary_row(summary(m, groups[m], base, thr, main_device)) for m in methods]
    if methods:
        totals = sorted(statistics.fmean(r["train_seconds"] for r in groups[m]) for m in methods)
        budgets = sorted({totals[0], totals[len(totals) // 2]})
        tables = [equal_time(groups, base, methods, b) for b in budgets]
        lines += ["", "## Equal wall-clock", "",
                  "Accuracy of the last curve evaluation within a training-time budget (the cheapest method's whole "
                  "run, and the median method's), mean ± std over seeds; a method that had not reached its first "
                  "evaluation scores the base's.", "",
                  "| method | " + " | ".join(f"ID at {b:.0f} s | OOD at {b:.0f} s" for b in budgets) + " |",
                  "|---|" + "---|---|" * len(budgets)]
        lines += [f"| {m} | " + " | ".join(f"{pct(*t[m][0])} | {pct(*t[m][1])}" for t in tables) + " |" for m in methods]
    if "amft" in groups:
        others = [m for m in methods if m != "amft"] + ablations
        lines += ["", "## AMFT minus each other run (final accuracy, points; ± standard error from the seed spread)", "",
                  "| vs | ID | OOD |", "|---|---|---|"]
        lines += [f"| {o} | {diff_line('amft', o, groups, 'id')} | {diff_line('amft', o, groups, 'ood')} |" for o in others]
    if ablations:
        lines += ["", "## Ablations (AMFT controller)", "", header, summary_row(summary("amft", groups["amft"], base, thr))]
        lines += [summary_row(summary(a, groups[a], base, thr, main_device)) for a in ablations]
        lines += ["", f"Seeds per ablation: " + ", ".join(f"{a} {len(groups[a])}" for a in ablations)
                  + (f". Not run: {', '.join(results['skipped'])}." if results.get("skipped") else ".")
                  + f" † = ran on another device than {main_device}: its seconds are not comparable."]
    lines += ["", "## Controller diagnostics (AMFT runs)", "",
              "| run | seed | H* | mean entropy | mu: start -> min / max -> final | meta steps | m_t mean | m_t range |",
              "|---|---|---|---|---|---|---|---|"]
    for name in ["amft"] + ablations:
        for run in groups.get(name, []):
            lines.append(controller_row(run))
    lines += ["", "## Per-seed final accuracy (ID / OOD, %)", "", "| run | " + " | ".join(f"seed {r['seed']}" for r in next(iter(groups.values()))) + " |",
              "|---|" + "---|" * len(next(iter(groups.values())))]
    for name, runs in groups.items():
        lines.append(f"| {name} | " + " | ".join(f"{pct(r['final']['id'])} / {pct(r['final']['ood'])}" for r in runs) + " |")
    from bench.algorithms_tuning import tuning_markdown

    lines += [""] + tuning_markdown(results.get("tuning") or [], results.get("picks") or {})
    lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    return "\n".join(lines) + "\n"


def _devices(runs: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for run in runs:
        device = run.get("torch_device", "unrecorded")
        counts[device] = counts.get(device, 0) + 1
    return counts


def controller_row(run: dict) -> str:
    main = [p for p in run["steps"] if p.get("phase") == "main"]
    mus = [p["mu"] for p in main] or [run["steps"][-1]["mu"]]
    meta = [p["meta_grad"] for p in run["steps"] if "meta_grad" in p]
    target = next((p["target_entropy"] for p in run["steps"] if "target_entropy" in p), None)
    entropy = tail_mean(run, "entropy", 10_000)
    fmt = lambda v: "—" if v is None else f"{v:.3g}"  # noqa: E731
    meta_text = (f"{statistics.fmean(meta):+.3g} | [{min(meta):+.3g}, {max(meta):+.3g}]" if meta else "— | —")
    return (f"| {run['name']} | {run['seed']} | {fmt(target)} | {fmt(entropy)} | {mus[0]:.3f} -> {min(mus):.3f} / "
            f"{max(mus):.3f} -> {mus[-1]:.3f} | {len(meta)} | {meta_text} |")
