"""Does AMFT beat SFT, GRPO, SFT->GRPO, fixed-mu and CHORD? The evidence benchmark (issue 5).

    python -m bench.algorithms --tier 1             # every run, committed base and picks (33 min on 2 cores)
    python -m bench.algorithms --tier 1 --tune-only # the validation-only tuning pass that made the picks
    python -m bench.algorithms --tier 1 --stability # the stability claim: every method at too-high learning rates
    python -m bench.algorithms --tier 1 --dry-run   # 2 steps, 1 seed, tiny evals: checks it all runs
    python -m bench.algorithms --tier 2 --jobs 3    # SmolLM2-135M (GPU advised)
    python -m bench.algorithms --tier 1 --report-only   # rebuild md/plots from algorithms.json

Tier 1: builtin:tiny on the built-in arithmetic task. One shared base checkpoint (a short
SFT pre-training on train[10000:20000], disjoint from every record the methods use), then
every method and AMFT ablation for the same number of steps from it, 3 seeds, in the
limited-demonstration regime (300 expert solutions, 10,000 RL prompts). Configurations in
bench/algorithms_config.py, protocol in bench/ALGORITHMS_PROTOCOL.md. Results go to
bench/results/algorithms{.json,.md,_*.png} (tier 2: algorithms_tier2*); a dry run writes
only under its work folder.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from bench import algorithms_config as cfg
from bench import algorithms_runner as runner

RESULTS = Path(__file__).parent / "results"
TUNING_JSON = "algorithms_tuning.json"  # the committed tuning pass; its picks are cfg.TIER1_PICKS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tier", type=int, choices=(1, 2), required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/amft-bench"), help="models, uploads, per-run results")
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (one torch thread each)")
    parser.add_argument("--steps", type=int, help="override the steps of every run (shrinks evals too)")
    parser.add_argument("--seeds", type=int, nargs="+", help="override the seeds")
    parser.add_argument("--only", nargs="+", help="run only these method/ablation names")
    parser.add_argument("--dry-run", action="store_true", help="2 steps, 1 seed, tiny base and evals; results stay in --work")
    parser.add_argument("--report-only", action="store_true", help="rebuild the report from the results json")
    parser.add_argument("--tune", action="store_true",
                        help="tier 1: run the validation-only tuning pass first and use its picks")
    parser.add_argument("--tune-only", action="store_true",
                        help="tier 1: run the tuning pass, write results/algorithms_tuning.json, then stop")
    parser.add_argument("--deadline", type=float, help="start no new run after this many seconds")
    parser.add_argument("--build-base", dest="committed_base", action="store_false",
                        help="tier 1: build the base here instead of starting from the committed bench/base/")
    parser.add_argument("--base-only", action="store_true", help="tier 1: build (or reuse) the shared base, then stop")
    parser.add_argument("--stability", action="store_true",
                        help="tier 1: the stability runs at stress learning rates instead of the methods")
    args = parser.parse_args(argv)
    if args.dry_run:
        args.steps, args.seeds = args.steps or 2, args.seeds or [0]
        args.work = args.work / f"dry-tier{args.tier}"
    out_dir = args.work / "results" if args.dry_run else RESULTS
    stem = "algorithms_tier2" if args.tier == 2 else "algorithms_stability" if args.stability else "algorithms"
    json_path = out_dir / f"{stem}.json"
    if args.report_only:
        from bench.algorithms_report import write_report

        write_report(json.loads(json_path.read_text()), out_dir, stem)
        return 0
    args.work.mkdir(parents=True, exist_ok=True)
    runner.configure_env(args.work)
    if args.deadline:
        os.environ["AMFT_BENCH_DEADLINE"] = str(time.time() + args.deadline)
    log = _logger(args.work / f"{stem}.log")
    if args.base_only or args.tune_only:
        base = tier1_base(args)
        log(f"base: {base['steps']} SFT steps, validation accuracy {base['val_accuracy']:.3f}, {base['seconds']:.0f} s")
        if args.tune_only:
            tuning = tune(args, log)
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / TUNING_JSON).write_text(json.dumps(tuning, indent=1))
        return 0
    started = time.perf_counter()
    results = tier1(args, log) if args.tier == 1 else tier2(args, log)
    results["total_seconds"] = time.perf_counter() - started
    results["command"] = "python -m bench.algorithms " + " ".join(sys.argv[1:] if argv is None else argv)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=1))
    from bench.algorithms_report import write_report

    write_report(results, out_dir, stem)
    log(f"wrote {json_path} and the report in {time.perf_counter() - started:.0f} s")
    return 0


def tier1_base(args) -> dict:
    """The shared base: the committed one when its recipe matches, else built (~17 min on 2 cores)."""
    base_config = tier1_base_config(args.dry_run)
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        # Build the base in a child process, so this one never starts torch threads.
        return pool.submit(_tier1_base, base_config, args.work, args.committed_base and not args.dry_run).result()


def tier1_base_config(dry: bool) -> dict:
    return cfg.TIER1_BASE | ({"max_steps": 2, "check_every": 1, "validation_items": 4} if dry else {})


def tier1(args, log) -> dict:
    dry = args.dry_run
    base_config = tier1_base_config(dry)
    final_eval = 8 if dry else cfg.TIER1_FINAL_EVAL
    base = tier1_base(args)
    log(f"base: {base['steps']} SFT steps, validation accuracy {base['val_accuracy']:.3f}, {base['seconds']:.0f} s")
    tuning = tune(args, log) if args.tune else committed_tuning()
    picks = tuning["picks"]
    seeds = tuple(args.seeds or cfg.TIER1_SEEDS)
    make_runs = cfg.stability_runs if args.stability else cfg.tier1_runs
    runs = make_runs(seeds=seeds, steps=args.steps, picks=picks)
    if args.only:
        runs = [r for r in runs if r.name in args.only]
    records = runs_beside_base(runs, base, args, final_eval, log)
    config = {"base": base_config, "training": cfg.TIER1_TRAINING, "controller": cfg.TIER1_CONTROLLER,
              "datasets": cfg.TIER1_DATASETS, "final_eval_items": final_eval, "amft_warmup": cfg.TIER1_AMFT_WARMUP,
              "sft_then_grpo_switch": cfg.TIER1_SWITCH}
    if args.stability:
        config |= {"learning_rates": cfg.STABILITY_LRS, "variants": cfg.STABILITY_VARIANTS,
                   "collapse_fraction": cfg.STABILITY_COLLAPSE}
    else:
        config["ablations"] = cfg.TIER1_ABLATIONS
    return {
        "tier": 1, "kind": "stability" if args.stability else "methods", "dry_run": dry,
        "threshold": cfg.TIER1_THRESHOLD, "base": base, "runs": records, "picks": picks,
        "tuning": tuning["runs"], "tuning_command": tuning.get("command"), "config": config,
    }


def committed_tuning() -> dict:
    """The committed tuning pass (its picks are cfg.TIER1_PICKS), kept for the report."""
    committed = RESULTS / TUNING_JSON
    return json.loads(committed.read_text()) if committed.is_file() else {"picks": dict(cfg.TIER1_PICKS), "runs": []}


def runs_beside_base(runs: list, base: dict, args, final_eval: int, log) -> list[dict]:
    """Every run, while the base is scored alongside (step 0 of every curve); fills base["scores"]."""
    runs.sort(key=lambda r: r.spec["method"] == "sft")  # the cheap runs last: no straggler at the end
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending = pool.submit(runner.evaluate_model, f"local:{cfg.BASE_MODEL}", runner.arithmetic_sets(final_eval), args.work)
        records = runner.run_all(runs, args.work, args.jobs, final_eval, log)
        base_scores = pending.result()
    curve_items = 4 if args.steps else cfg.TIER1_TRAINING["eval_limit"]
    base["scores"] = {name: sum(v) / len(v) for name, v in base_scores.items()}
    base["curve_scores"] = {name: sum(v[:curve_items]) / len(v[:curve_items]) for name, v in base_scores.items()}
    base["n"] = {name: len(v) for name, v in base_scores.items()}
    return records


def tune(args, log) -> dict:
    """The tuning pass (validation split only): the learning rate first, then the controller at it."""
    from bench.algorithms_tuning import choose

    started = time.perf_counter()
    records = runner.run_all(cfg.tune_lr_runs(args.steps), args.work, args.jobs, 0, log)
    learning_rate = choose(records)["learning_rate"]
    log(f"tuning: learning rate {learning_rate:g} (validation only); now the controller at it")
    records += runner.run_all(cfg.tune_controller_runs(learning_rate, args.steps), args.work, args.jobs, 0, log)
    picks = choose(records)
    log(f"tuning picks (validation only): {picks}")
    return {"picks": picks, "runs": records, "seconds": time.perf_counter() - started,
            "command": "python -m bench.algorithms --tier 1 --tune-only"}


def _tier1_base(config: dict, work: Path, committed: bool) -> dict:
    runner.configure_env(work)
    from workers.trainer.data import arithmetic_split

    if committed:
        runner.install_committed_base(work)

    source, _ = runner.materialise(config["data"], "pretrain")
    return runner.build_base(config, work, source, list(arithmetic_split("validation")))


def tier2(args, log) -> dict:
    dry = args.dry_run
    base_config = cfg.TIER2_BASE | ({"max_steps": 1, "check_every": 1, "validation_items": 2} if dry else {})
    eval_items = 2 if dry else cfg.TIER2_EVAL_ITEMS
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        sources, base = pool.submit(_tier2_base, base_config, args.work).result()
    log(f"base: {base['steps']} SFT steps, validation accuracy {base['val_accuracy']:.3f}, {base['seconds']:.0f} s")
    runs = cfg.tier2_runs(sources, seeds=tuple(args.seeds or cfg.TIER2_SEEDS), steps=args.steps,
                          eval_items=eval_items)
    if args.only:
        runs = [r for r in runs if r.name in args.only]
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        # The base's scores are computed alongside the runs (on a GPU they share the card).
        sets = pool.submit(_tier2_eval_sets, args.work, eval_items).result()
        pending = pool.submit(runner.evaluate_model, f"local:{cfg.BASE_MODEL}", sets, args.work, "auto",
                              cfg.TIER2_TRAINING["max_completion_tokens"])
        records = runner.run_all(runs, args.work, args.jobs, 0, log)
        base_scores = pending.result()
    base["scores"] = {name: sum(v) / len(v) for name, v in base_scores.items()}
    base["n"] = {name: len(v) for name, v in base_scores.items()}
    return {"tier": 2, "dry_run": dry, "base": base, "runs": records,
            "config": {"base": base_config, "training": cfg.TIER2_TRAINING, "data": cfg.TIER2_DATA,
                       "eval": cfg.TIER2_EVAL, "controller": cfg.TIER2_CONTROLLER}}


def _tier2_base(config: dict, work: Path) -> tuple[dict, dict]:
    runner.configure_env(work)
    sources, records = {}, {}
    for name, recipe in cfg.TIER2_DATA.items():
        sources[name], records[name] = runner.materialise(recipe, name)
    return sources, runner.build_base(config, work, sources["pretrain"], records["validation"])


def _tier2_eval_sets(work: Path, items: int) -> dict:
    runner.configure_env(work)
    from service.settings import get_settings
    from service.specs import DataSourceSpec
    from workers.trainer.data import load_records

    sets = {}
    for item in cfg.TIER2_EVAL:
        source = DataSourceSpec(**item)
        sets[source.label] = load_records(source, get_settings())[:items]
    return sets


def _logger(path: Path):
    def log(message: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {message}"
        print(line, flush=True)
        with path.open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")

    return log


if __name__ == "__main__":
    raise SystemExit(main())
