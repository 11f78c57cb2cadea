"""The tuning pass's selection rules (validation accuracy only) and its report section."""

from __future__ import annotations

import statistics

from bench import algorithms_config as cfg


def _val(record: dict) -> float:
    return record["final"]["validation"]


def _meta_values(records: list[dict]) -> list[float]:
    return [abs(p["meta_grad"]) for r in records for p in r["steps"] if "meta_grad" in p]


def choose(tuning: list[dict]) -> dict:
    """The picks: one shared learning rate, eta_meta, eta_H, and a raw eta matched to the cosine one.

    - learning_rate: best mean final validation accuracy over TUNE_LR_METHODS;
    - eta_meta / eta_H: best final validation accuracy of AMFT with that term alone;
    - raw_eta_meta: eta_meta * median|m_cos| / median|m_raw|, so a typical raw meta step
      moves mu as far as a typical cosine one (magnitudes from the same tuning runs).
    Ties go to the first in grid order.
    """
    by_lr: dict[float, list[float]] = {}
    metas, entropies, cosine_runs, raw_runs = {}, {}, [], []
    for r in tuning:
        spec = r["spec"]
        if r["name"].startswith("tune-amft-rawprobe"):
            raw_runs.append(r)
        elif r["name"].startswith("tune-amft-meta"):
            metas[spec["controller"]["eta_meta"]] = _val(r)
            cosine_runs.append(r)
        elif r["name"].startswith("tune-amft-H"):
            entropies[spec["controller"]["eta_H"]] = _val(r)
        else:
            by_lr.setdefault(spec["training"]["learning_rate"], []).append(_val(r))
    picks: dict = {}
    if by_lr:
        picks["learning_rate"] = max(by_lr, key=lambda lr: statistics.fmean(by_lr[lr]))
    if metas:
        picks["eta_meta"] = max(metas, key=metas.get)
    if entropies:
        picks["eta_H"] = max(entropies, key=entropies.get)
    cos_m, raw_m = _meta_values(cosine_runs), _meta_values(raw_runs)
    if "eta_meta" in picks and cos_m and raw_m and statistics.median(raw_m) > 0:
        picks["raw_eta_meta"] = picks["eta_meta"] * statistics.median(cos_m) / statistics.median(raw_m)
        picks["median_abs_m_cosine"] = statistics.median(cos_m)
        picks["median_abs_m_raw"] = statistics.median(raw_m)
    return picks


def tuning_markdown(tuning: list[dict], picks: dict) -> list[str]:
    """Lines of the tuning section: every point's final validation accuracy and the picks."""
    if not tuning:
        return []
    lines = ["## Tuning pass (validation split only, seed %d, one run per point)" % cfg.TUNE_SEED, "",
             "| run | method | lr | eta_H | eta_meta | form | validation acc % | final mu | median abs m_t | device |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(tuning, key=lambda r: r["name"]):
        s, c = r["spec"], r["spec"]["controller"]
        amft = s["method"] == "amft"
        meta = _meta_values([r])
        lines.append(
            f"| {r['name']} | {s['method']} | {s['training']['learning_rate']:g} | "
            f"{c['eta_H'] if amft else '—'} | {c['eta_meta'] if amft else '—'} | {c['meta_form'] if amft else '—'} | "
            f"{100 * _val(r):.1f} | {r['steps'][-1]['mu']:.3f} | "
            f"{statistics.median(meta) if meta else float('nan'):.3g} | {r.get('torch_device', '?')} |")
    lines += ["", "Picks: " + ", ".join(f"{k} = {v:.4g}" for k, v in picks.items()), ""]
    return lines
