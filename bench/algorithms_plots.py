"""PNG plots of the algorithms benchmark (tier 1) and the tier-2 markdown table."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from bench.algorithms_report import FINDINGS_PLACEHOLDER, curve, pct  # noqa: E402

COLORS = {"amft": "C3", "sft": "C0", "grpo": "C2", "sft_then_grpo": "C1", "fixed": "C4", "chord": "C5",
          "amft_entropy_only": "C6", "amft_meta_only": "C7", "amft_raw_meta": "C8", "amft_mu0_0.5": "C9",
          "amft_frozen": "C6", "amft_entropy": "C7", "amft_nll_utility": "black",
          "amft_val64": "tab:olive"}


def mean_curve(runs: list[dict], key: str, base=None, split=None, x="step"):
    """Mean over seeds of a metric at the steps all seeds share; x = step or mean seconds."""
    curves = [curve(r, key, base, split) for r in runs]
    steps = sorted(set.intersection(*(set(c[0]) for c in curves)))
    if not steps:
        return [], [], [], []
    rows, xs = [], []
    for step in steps:
        values = [c[2][c[0].index(step)] for c in curves]
        seconds = [c[1][c[0].index(step)] for c in curves]
        rows.append(values)
        xs.append(step if x == "step" else statistics.fmean(seconds))
    return xs, [statistics.fmean(v) for v in rows], [min(v) for v in rows], [max(v) for v in rows]


def _accuracy_figure(groups, base, names, x: str, path: Path, title: str) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharex=True)
    for ax, split in zip(axes, ("id", "ood")):
        for name in names:
            xs, mean, low, high = mean_curve(groups[name], f"eval_accuracy_{split}", base, split, x)
            ax.plot(xs, [100 * v for v in mean], marker="o", ms=3, label=name, color=COLORS.get(name))
            ax.fill_between(xs, [100 * v for v in low], [100 * v for v in high], alpha=0.12, color=COLORS.get(name))
        ax.set_title(f"{split.upper()} greedy accuracy (mean, band = min-max over seeds)")
        ax.set_xlabel("step" if x == "step" else "training seconds (mean over seeds, evals excluded)")
        ax.set_ylabel("accuracy %")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _metric_figure(groups, names, key: str, ylabel: str, path: Path, title: str, smooth: int = 1) -> Path:
    fig, ax = plt.subplots(figsize=(9, 4.8))
    for name in names:
        xs, mean, low, high = mean_curve(groups[name], key)
        if not xs:
            continue
        if smooth > 1:
            mean = [statistics.fmean(mean[max(0, i - smooth + 1): i + 1]) for i in range(len(mean))]
        style = "--" if name not in ("amft",) and name.startswith("amft") else "-"
        ax.plot(xs, mean, style, label=name, color=COLORS.get(name), lw=1.6)
        if smooth == 1:
            ax.fill_between(xs, low, high, alpha=0.08, color=COLORS.get(name))
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def tier1_plots(groups, base, methods, ablations, out_dir: Path, stem: str) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = [
        _accuracy_figure(groups, base, methods, "step", out_dir / f"{stem}_accuracy_vs_step.png", "Accuracy vs step"),
        _accuracy_figure(groups, base, methods, "seconds", out_dir / f"{stem}_accuracy_vs_seconds.png",
                         "Accuracy vs training wall-clock"),
        _metric_figure(groups, methods + ablations, "mu", "mu (weight of the SFT loss)", out_dir / f"{stem}_mu_vs_step.png",
                       "mu vs step, every schedule (mean over seeds)"),
        _metric_figure(groups, [m for m in methods + ablations if m != "sft"], "entropy", "rollout token entropy (nats)",
                       out_dir / f"{stem}_entropy_vs_step.png", "Entropy of the policy's rollouts vs step (5-step mean)", 5),
    ]
    if ablations:
        plots.append(_accuracy_figure(groups, base, ["amft"] + ablations, "step",
                                      out_dir / f"{stem}_ablations_accuracy_vs_step.png", "AMFT ablations: accuracy vs step"))
    return plots


def tier2_markdown(results: dict) -> str:
    """Tier 2: one seed per method; binomial standard errors on every score."""
    from bench.algorithms_report import report_header, tail_mean

    base = results["base"]
    splits = list(base["scores"])
    lines = report_header(results, "Algorithms benchmark, tier 2: SmolLM2-135M", "python -m bench.algorithms --tier 2",
                          "Accuracy % ± binomial standard error. Protocol: bench/ALGORITHMS_PROTOCOL.md.") + [
        "",
        f"Base: {base['steps']} SFT steps, validation accuracy {pct(base['val_accuracy'])}%.",
        "",
        FINDINGS_PLACEHOLDER,
        "",
        "| run | steps | train s | " + " | ".join(splits) + " |",
        "|---|---|---|" + "---|" * len(splits),
        "| base | 0 | 0 | " + " | ".join(_binomial(base["scores"][s], base["n"][s]) for s in splits) + " |",
    ]
    for run in results["runs"]:
        final = run["final"]
        lines.append(f"| {run['name']} (seed {run['seed']}) | {len(run['steps'])} | {run['train_seconds']:.0f} | "
                     + " | ".join(_binomial(final.get(s, math.nan), final["n"].get(s, 0)) for s in splits) + " |")
    lines += ["", "Training signals, mean over each run's last 10 steps that had rollouts:", "",
              "| run | final mu | rollout accuracy % | zero-signal groups % | entropy | completion tokens |",
              "|---|---|---|---|---|---|"]
    formats = {"accuracy": pct, "zero_signal_frac": pct, "entropy": "{:.2f}".format,
               "completion_tokens_mean": "{:.0f}".format}
    for run in results["runs"]:
        cells = [("n/a" if (v := tail_mean(run, k)) is None else f(v)) for k, f in formats.items()]
        lines.append(f"| {run['name']} | {run['steps'][-1]['mu']:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _binomial(p: float, n: int) -> str:
    if not n or math.isnan(p):
        return "n/a"
    return f"{pct(p)} ± {100 * math.sqrt(p * (1 - p) / n):.1f} (n={n})"
