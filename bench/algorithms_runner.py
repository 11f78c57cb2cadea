"""Running the algorithms benchmark: the shared base checkpoint, single runs, a process pool.

Every run is `workers.trainer.loop.train` itself, watched through TrainerHooks; its
per-step metrics, the final greedy scores and timings are written to
`<work>/runs/<key>.json`, so an interrupted tier continues where it stopped.
Each run is one process with one torch thread (set before any work).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

WORK_ENV = "AMFT_BENCH_WORK"


def configure_env(work: Path) -> None:
    """Point the trainer's settings at the benchmark's work folder (models, uploads, cache)."""
    os.environ["AMFT_HOME"] = str(work / "home")
    os.environ["AMFT_MODELS_DIR"] = str(work / "models")
    os.environ[WORK_ENV] = str(work)
    from service.settings import get_settings

    get_settings.cache_clear()


def _one_thread(threads: int = 1) -> None:
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set in this process
        pass


# ------------------------------------------------------------------ base checkpoint


def upload_records(records: list[dict], tag: str) -> str:
    """Write records as an uploaded JSONL file (as POST /files would) and return its source."""
    from service.settings import get_settings

    folder = get_settings().resolved_artifacts_dir / "files"
    folder.mkdir(parents=True, exist_ok=True)
    file_id = hashlib.md5(tag.encode()).hexdigest()
    path = folder / f"{file_id}.jsonl"
    if not path.is_file():
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(dict(r)) + "\n" for r in records), encoding="utf-8")
        tmp.rename(path)
    return f"file:{file_id}"


def materialise(recipe: list, tag: str, seed: int = 0) -> tuple[str, list[dict]]:
    """Concatenate (source, split, start, stop) slices, shuffle them (seeded), upload them."""
    import random

    from service.settings import get_settings
    from service.specs import DataSourceSpec
    from workers.trainer.data import load_records

    records = []
    for source, split, start, stop in recipe:
        records += load_records(DataSourceSpec(source=source, split=split), get_settings())[start:stop]
    if len(recipe) > 1:  # mix the sources (a single slice keeps its order)
        random.Random(seed).shuffle(records)
    return upload_records(records, f"{tag}-{json.dumps(recipe)}"), records


COMMITTED_BASE = Path(__file__).parent / "base"


def install_committed_base(work: Path) -> bool:
    """Copy the committed tier-1 base (bench/base/) into the work folder, unless one is there.

    `build_base` then reuses it when its recorded recipe hash matches the config's.
    """
    from bench.algorithms_config import BASE_MODEL

    source, info = COMMITTED_BASE / BASE_MODEL, COMMITTED_BASE / f"{BASE_MODEL}.json"
    target = work / "models" / BASE_MODEL
    if target.exists() or not info.is_file():
        return False
    shutil.copytree(source, target)
    shutil.copy2(info, work / "models" / info.name)
    return True


def build_base(config: dict, work: Path, train_source: str, validation: list[dict], log=print) -> dict:
    """SFT-pretrain the shared base and save it as `local:<name>`; cached by config hash.

    Stops at the first check where greedy accuracy on `validation` reaches the target.
    """
    configure_env(work)
    _one_thread(os.cpu_count() or 1)  # nothing else runs while the base trains
    from service.specs import JobSpec
    from workers.trainer.evaluation import evaluate_splits
    from workers.trainer.loop import setup, train_step
    from workers.trainer.models import save_model_folder

    from bench.algorithms_config import BASE_MODEL

    digest = hashlib.sha256(json.dumps([config, train_source], sort_keys=True).encode()).hexdigest()[:16]
    folder = work / "models" / BASE_MODEL
    info_path = work / "models" / f"{BASE_MODEL}.json"
    if folder.is_dir() and info_path.is_file():
        info = json.loads(info_path.read_text())
        if info.get("config_hash") == digest:
            log(f"base: reusing {folder} (val acc {info['val_accuracy']:.3f} at step {info['steps']})")
            return info
    spec = JobSpec.model_validate({
        "method": "sft",
        "model": config["model"],
        "datasets": {"sft": {"source": train_source}, "eval": [{"split": "validation"}]},
        "training": {
            "total_steps": config["max_steps"], "warmup_steps": 0, "learning_rate": config["learning_rate"],
            "lr_warmup_steps": config["lr_warmup_steps"], "sft_batch_size": config["batch_size"],
            "max_prompt_tokens": 512, "max_completion_tokens": config.get("max_completion_tokens", 100),
            "seed": config["seed"], "device": config.get("device", "cpu"),
            "micro_batch_size": config.get("micro_batch_size", config["batch_size"]),
        },
    })
    run = setup(spec)
    validation = {"validation": validation[: config["validation_items"]]}
    started, history, accuracy, step = time.perf_counter(), [], 0.0, 0
    for step in range(1, config["max_steps"] + 1):
        point = train_step(run, step)
        if step % config["check_every"] == 0 or step == config["max_steps"]:
            accuracy = evaluate_splits(run.engine, run.tokenizer, validation, spec.training)["eval_accuracy_validation"]
            history.append({"step": step, "sft_loss": point["sft_loss"], "val_accuracy": accuracy})
            log(f"base: step {step} loss {point['sft_loss']:.3f} val acc {accuracy:.3f} ({time.perf_counter() - started:.0f} s)")
            if accuracy >= config["target_val_accuracy"]:
                break
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_model_folder(run.model, run.tokenizer, tmp, base_source=None)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    info = {"config": config, "config_hash": digest, "steps": step, "val_accuracy": accuracy,
            "seconds": time.perf_counter() - started, "device": _device_name(run.device.type), "history": history}
    info_path.write_text(json.dumps(info, indent=1))
    return info


def evaluate_model(source: str, sets: dict[str, list[dict]], work: Path, device: str = "cpu",
                   max_new_tokens: int = 100) -> dict:
    """Greedy correctness (0/1 per item) of a model source on each named record list."""
    configure_env(work)
    _one_thread()
    from service.settings import get_settings
    from service.specs import TrainingSpec
    from workers.trainer.evaluation import greedy_completions
    from workers.trainer.models import load_policy
    from workers.trainer.rewards import is_correct
    from workers.trainer.graph_rollout import make_engine

    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    model, tokenizer = load_policy(source, get_settings(), device=device)
    engine = make_engine(model.eval(), tokenizer.pad_token_id, tokenizer.eos_token_id, get_settings().cuda_graph_rollouts)
    training = TrainingSpec(max_prompt_tokens=512, max_completion_tokens=max_new_tokens)
    scores = {}
    for name, records in sets.items():
        texts = greedy_completions(engine, tokenizer, records, training)
        scores[name] = [int(is_correct(text, r["answer"])) for text, r in zip(texts, records)]
    return scores


def arithmetic_sets(limit: int) -> dict[str, list[dict]]:
    from workers.trainer.data import arithmetic_split

    return {name: list(arithmetic_split(name))[:limit] for name in ("id", "ood")}


# ------------------------------------------------------------------ one run

KEEP = ("step", "phase", "mu", "entropy", "target_entropy", "reward_mean", "accuracy", "zero_signal_frac",
        "meta_grad", "sft_loss", "rl_loss", "grad_norm", "completion_tokens_mean", "step_seconds",
        "gen_seconds", "train_seconds")


def run_one(run_dict: dict, work: str, final_eval: int) -> dict:
    """Train one configuration from the shared base, then score its final checkpoint."""
    work = Path(work)
    configure_env(work)
    _one_thread()
    from bench.algorithms_config import RunConfig, job_spec
    from workers.trainer.hooks import TrainerHooks
    from workers.trainer.loop import train

    run = RunConfig(**run_dict)
    out = work / "runs" / f"{run.key}.json"
    if out.is_file():
        return json.loads(out.read_text())
    deadline = float(os.environ.get("AMFT_BENCH_DEADLINE", "inf"))
    if time.time() > deadline:  # --deadline: leave the rest for a later invocation
        return {"skipped": True, "name": run.name, "seed": run.seed}
    spec = job_spec(run)
    points: list[dict] = []
    started = time.perf_counter()
    out_dir = work / "checkpoints" / run.key
    shutil.rmtree(out_dir, ignore_errors=True)
    result = train(spec, out_dir, TrainerHooks(on_metrics=lambda p: points.append(dict(p))))
    wall = time.perf_counter() - started
    final = {}
    if final_eval:  # tier 1: a larger score on the final checkpoint than the curve points
        scores = evaluate_model("local:" + _stage_final(result.last_checkpoint, work, run.key),
                                arithmetic_sets(final_eval), work, spec.training.device)
        final = {name: sum(v) / len(v) for name, v in scores.items()} | {"n": {k: len(v) for k, v in scores.items()}}
    else:  # tier 2: the loop's own evaluation at the last step
        final = {k.removeprefix("eval_accuracy_"): v for k, v in points[-1].items() if k.startswith("eval_accuracy_")}
        final["n"] = {k: spec.training.eval_limit for k in final}
    record = {
        "name": run.name, "group": run.group, "seed": run.seed, "spec": spec.model_dump(mode="json"),
        "steps": [{k: p[k] for k in KEEP if k in p} | {k: v for k, v in p.items() if k.startswith("eval_")} for p in points],
        "final": final, "wall_seconds": wall, "host": platform.node(), "torch_device": _device_name(spec.training.device),
        "train_seconds": sum(p["step_seconds"] for p in points),
    }
    shutil.rmtree(out_dir, ignore_errors=True)
    shutil.rmtree(work / "models" / f"final-{run.key}", ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    tmp.rename(out)
    return record


def _device_name(device: str) -> str:
    """"cpu", or the GPU's name where `device` is (or "auto" resolves to) CUDA."""
    import torch

    if device == "cpu" or not torch.cuda.is_available():
        return "cpu"
    return torch.cuda.get_device_name(0)


def _stage_final(checkpoint: Path, work: Path, key: str) -> str:
    """Copy the final checkpoint's model files into the models folder, loadable as local:."""
    name = f"final-{key}"
    target = work / "models" / name
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for item in Path(checkpoint).iterdir():
        if item.is_file() and item.name not in ("optimizer.safetensors", "trainer_state.json", "manifest.json"):
            shutil.copy2(item, target / item.name)
    return name


def _safe_run(run_dict: dict, work: str, final_eval: int) -> dict:
    try:
        return run_one(run_dict, work, final_eval)
    except Exception:  # noqa: BLE001 - report and keep the other runs going
        return {"error": traceback.format_exc(), "name": run_dict["name"], "seed": run_dict["seed"]}


def run_all(runs: list, work: Path, jobs: int, final_eval: int, log=print) -> list[dict]:
    """Run every configuration, `jobs` processes at a time; finished runs are reused."""
    records = []
    import multiprocessing

    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_safe_run, vars(r), str(work), final_eval): r for r in runs}
        for future in as_completed(futures):
            record = future.result()
            run = futures[future]
            if "error" in record:
                log(f"FAILED {run.key}:\n{record['error']}")
                continue
            if record.get("skipped"):
                log(f"skipped {run.key} (past the deadline)")
                continue
            scores = " ".join(f"{k} {v:.3f}" for k, v in record["final"].items() if k != "n")
            log(f"done {run.key}: {scores}; train {record['train_seconds']:.0f} s, wall {record['wall_seconds']:.0f} s")
            records.append(record)
    return records
