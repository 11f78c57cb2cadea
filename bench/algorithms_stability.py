"""The stability report (tier 1, `--stability`): every method at learning rates that are too high.

Claim 3 says AMFT's controller keeps training stable. The runs (bench/algorithms_config.py,
STABILITY_*) repeat tier 1 at stress learning rates; this module turns them into a table per
rate, the controller-on minus controller-off differences, and one figure of curves.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from bench.algorithms_plots import COLORS, mean_curve, plt
from bench.algorithms_report import (FINDINGS_PLACEHOLDER, by_name, controller_row, curve, diff_line, mean_std, pct,
                                     report_header, tail_mean)

AMFT_VARIANTS = ("amft", "amft_frozen", "amft_entropy")


def split_name(name: str) -> tuple[str, str]:
    """"amft@lr1e-4" -> ("amft", "1e-4")."""
    variant, _, lr = name.partition("@lr")
    return variant, lr


def drop_from_best(run: dict, base: dict) -> float:
    """Best curve ID accuracy (the base included) minus the last one: how much the run gave back."""
    _, _, values = curve(run, "eval_accuracy_id", base, "id")
    return max(values) - values[-1]


def stability_row(variant: str, runs: list[dict], base: dict, collapse: float) -> str:
    ids = [r["final"]["id"] for r in runs]
    collapsed = sum(v < collapse * base["scores"]["id"] for v in ids)
    drop = mean_std([drop_from_best(r, base) for r in runs])
    grad = max(max(p.get("grad_norm", 0.0) for p in r["steps"]) for r in runs)
    entropy = mean_std([tail_mean(r, "entropy") for r in runs])
    entropy_text = "—" if math.isnan(entropy[0]) else f"{entropy[0]:.3f} ± {entropy[1]:.3f}"
    mus = [p["mu"] for r in runs for p in r["steps"] if p.get("phase") == "main"]
    mu_text = f"{min(mus):.2f}–{max(mus):.2f}" if mus else "1.00"
    return (f"| {variant} | {pct(*mean_std(ids))} | {pct(*mean_std([r['final']['ood'] for r in runs]))} | "
            f"{pct(min(ids))} | {collapsed}/{len(runs)} | {pct(*drop)} | {grad:.1f} | {entropy_text} | {mu_text} |")


def stability_markdown(results: dict, out_dir: Path, stem: str) -> str:
    base, config = results["base"], results["config"]
    groups = by_name(results["runs"])
    rates = list(dict.fromkeys(split_name(n)[1] for n in groups))
    variants = [v for v in config["variants"] if any(split_name(n)[0] == v for n in groups)]
    collapse = config["collapse_fraction"]
    plots = stability_plots(groups, base, rates, variants, Path(out_dir), stem)
    lines = report_header(results, "Algorithms benchmark, tier 1: stability at too-high learning rates",
                          "python -m bench.algorithms --tier 1 --stability",
                          "Protocol: bench/ALGORITHMS_PROTOCOL.md (section Stability).") + [
        "",
        f"Same base, data, steps and seeds as tier 1 (bench/results/algorithms.md); only the learning rate differs "
        f"(tier 1 uses the tuned {results['picks']['learning_rate']:g}). Base: test ID "
        f"{pct(base['scores']['id'])}%, OOD {pct(base['scores']['ood'])}% (n = {base['n']['id']} each). AMFT "
        f"variants use the tuned controller (eta_meta {results['picks']['eta_meta']:g}, eta_H "
        f"{results['picks']['eta_H']:g}) unless named otherwise: amft_frozen has both terms off (mu stays 0.8), "
        "amft_entropy has eta_H 0.05.",
        "",
        FINDINGS_PLACEHOLDER,
    ]
    for rate in rates:
        lines += ["", f"## Learning rate {rate}", "",
                  f"Final accuracy on {base['n']['id']} ID / {base['n']['ood']} OOD items, mean ± std over seeds; "
                  f"collapsed = final ID below {collapse:.0%} of the base's; given back = best curve ID (base "
                  "included) minus the last, in points; grad norm = the largest before clipping (clip 1.0); "
                  "entropy = rollout entropy, last 10 steps.", "",
                  "| run | ID % | OOD % | worst seed ID % | collapsed | ID given back | max grad norm | "
                  "final entropy | mu range |", "|---|---|---|---|---|---|---|---|---|"]
        lines += [stability_row(v, groups[f"{v}@lr{rate}"], base, collapse) for v in variants
                  if f"{v}@lr{rate}" in groups]
        pairs = [(a, b) for a, b in (("amft", "amft_frozen"), ("amft_entropy", "amft_frozen"), ("amft", "fixed"),
                                     ("amft", "sft_then_grpo"), ("amft", "sft")) if a in variants and b in variants]
        if pairs:
            lines += ["", "Differences (final accuracy, points; ± standard error from the seed spread):", "",
                      "| pair | ID | OOD |", "|---|---|---|"]
            lines += [f"| {a} − {b} | {diff_line(f'{a}@lr{rate}', f'{b}@lr{rate}', groups, 'id')} | "
                      f"{diff_line(f'{a}@lr{rate}', f'{b}@lr{rate}', groups, 'ood')} |" for a, b in pairs]
    lines += ["", "## Controller diagnostics", "",
              "| run | seed | H* | mean entropy | mu: start -> min / max -> final | meta steps | m_t mean | m_t range |",
              "|---|---|---|---|---|---|---|---|"]
    lines += [controller_row(r) for rate in rates for v in AMFT_VARIANTS for r in groups.get(f"{v}@lr{rate}", [])]
    lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    return "\n".join(lines) + "\n"


def stability_plots(groups, base, rates, variants, out_dir: Path, stem: str) -> list[Path]:
    """ID accuracy, rollout entropy and mu against step: one row per learning rate."""
    out_dir.mkdir(parents=True, exist_ok=True)
    panels = (("eval_accuracy_id", "ID greedy accuracy %", variants),
              ("entropy", "rollout entropy (nats, 5-step mean)", [v for v in variants if v != "sft"]),
              ("mu", "mu", [v for v in variants if v in AMFT_VARIANTS]))
    fig, axes = plt.subplots(len(rates), len(panels), figsize=(16, 4.2 * len(rates)), squeeze=False)
    for row, rate in zip(axes, rates):
        for ax, (key, label, names) in zip(row, panels):
            for variant in names:
                runs = groups.get(f"{variant}@lr{rate}")
                if not runs:
                    continue
                accuracy = key == "eval_accuracy_id"
                xs, mean, _, _ = mean_curve(runs, key, base if accuracy else None, "id" if accuracy else None)
                if key == "entropy":
                    mean = [statistics.fmean(mean[max(0, i - 4): i + 1]) for i in range(len(mean))]
                scale = 100 if accuracy else 1
                ax.plot(xs, [scale * v for v in mean], label=variant, color=COLORS.get(variant), lw=1.6,
                        ls="--" if variant in ("amft_frozen", "amft_entropy") else "-")
            ax.set_title(f"lr {rate}: {label} (mean over seeds)", fontsize=10)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
        row[0].legend(fontsize=8)
    fig.tight_layout()
    path = out_dir / f"{stem}_curves.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [path]
