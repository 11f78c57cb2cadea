"""One job on several ranks (issue 14): step time, communication share, memory per rank and
checkpoint seconds, on SmolLM2-135M with the same global batch in one run.

    .venv/bin/python -m bench.distributed                  # CPU: gloo, ~10 min on 2 cores
    .venv/bin/python -m bench.distributed --device cuda    # GPUs: NCCL, torch.cuda.max_memory_allocated

Every variant runs the real loop (`setup` + `train_step`, method sft) in its own processes:
- `one process`: 1 process x 2 threads (CPU) / 1 GPU, global batch GLOBAL_ROWS rows;
- `unsharded replica`: 1 process x 1 thread with GLOBAL_ROWS / 2 rows, i.e. what each rank of
  a replicated (DDP-style, unsharded) 2-rank run holds: full weights, grads and Adam state;
- `fsdp2`: torchrun 2 ranks x 1 thread (CPU) / 2 GPUs, FSDP2-sharded, and the same with each
  memory option (bf16 MixedPrecisionPolicy, activation checkpointing, CPU offload; offload
  applies on CUDA only: on CPU the parameters already live in CPU memory).
Communication: every torch.distributed collective (FSDP2's all-gathers and reduce-scatters,
the loop's all-reduces) is timed from its call to the end of its wait(), so the share
includes waiting for the slower rank. Memory: on CPU the peak RSS sampled during the steps
and the tensor state per rank (parameters + gradients + Adam moments, from the live tensors);
on CUDA torch.cuda.max_memory_allocated. Checkpoints: the sharded training state through
torch.distributed.checkpoint (every rank writes its shard, training_state.py) vs the
consolidated one (gather model and optimizer to rank 0, one safetensors file each; every rank
reads them whole and keeps its shard), save and load seconds.
Writes bench/results/distributed.json and distributed.md (CPU) or distributed_cuda.*.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
GLOBAL_ROWS, STEPS, COMPLETION_TOKENS, PROMPT_TOKENS = 4, 3, 24, 32
VARIANTS = {  # name: (ranks, threads per rank, rows, resources)
    "one process": (1, 2, GLOBAL_ROWS, {}),
    "fsdp2": (2, 1, GLOBAL_ROWS, {}),
    "unsharded replica": (1, 1, GLOBAL_ROWS // 2, {}),
    "fsdp2 + bf16": (2, 1, GLOBAL_ROWS, {"mixed_precision": True}),
    "fsdp2 + activation ckpt": (2, 1, GLOBAL_ROWS, {"activation_checkpointing": True}),
    "fsdp2 + cpu offload": (2, 1, GLOBAL_ROWS, {"cpu_offload": True}),
}
CHECKPOINTED = ("one process", "fsdp2")


def spec_for(rows: int, ranks: int, resources: dict, device: str, model: str):
    from service.specs import JobSpec

    return JobSpec.model_validate({
        "method": "sft", "model": model,
        "datasets": {"sft": {"source": "gsm8k", "split": "train"}},
        "resources": {"devices": ranks, **resources},
        "training": {"total_steps": STEPS, "warmup_steps": 0, "learning_rate": 1e-5, "sft_batch_size": rows,
                     "micro_batch_size": rows, "max_completion_tokens": COMPLETION_TOKENS,
                     "max_prompt_tokens": PROMPT_TOKENS, "save_every": 1000, "device": device},
    })


class CommTimer:
    """Wall seconds inside torch.distributed collectives, from call to the end of wait()."""

    NAMES = ("all_gather_single", "reduce_scatter_single", "all_gather_into_tensor", "reduce_scatter_tensor",
             "all_reduce", "all_gather", "broadcast", "all_gather_object", "broadcast_object_list", "barrier")

    def __init__(self):
        import torch.distributed as dist

        self.seconds = 0.0
        for name in self.NAMES:
            if hasattr(dist, name):
                setattr(dist, name, self._timed(getattr(dist, name)))

    def _timed(self, call):
        timer = self

        class TimedWork:
            def __init__(self, work, started):
                self._work, self._started = work, started

            def wait(self, *args, **kwargs):
                try:
                    return self._work.wait(*args, **kwargs)
                finally:
                    timer.seconds += time.perf_counter() - self._started

            def __getattr__(self, name):
                return getattr(self._work, name)

        def timed(*args, **kwargs):
            started = time.perf_counter()
            result = call(*args, **kwargs)
            if kwargs.get("async_op") and result is not None:
                return TimedWork(result, started)
            timer.seconds += time.perf_counter() - started
            return result

        return timed


class RssSampler:
    """Peak resident memory of this process, sampled every 10 ms while running."""

    def __init__(self):
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        page = os.sysconf("SC_PAGE_SIZE")
        while not self._stop.is_set():
            with open("/proc/self/statm") as statm:
                self.peak = max(self.peak, int(statm.read().split()[1]) * page)
            time.sleep(0.01)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *_):
        self._stop.set()
        self._thread.join()


def tensor_state_bytes(model, optimizer) -> int:
    """Bytes of this rank's parameters, gradients (as after backward) and Adam moments."""
    def local(t):
        return t.to_local() if hasattr(t, "to_local") else t

    params = [local(p) for p in model.parameters() if p.requires_grad]
    moments = [local(v) for state in optimizer.state.values() for v in state.values() if v.dim() > 0]
    return sum(t.numel() * t.element_size() for t in params) * 2 + sum(t.numel() * t.element_size() for t in moments)


def checkpoint_seconds(run, folder: Path) -> dict:
    """Save and load seconds of the sharded (DCP) and the consolidated training state."""
    from safetensors.torch import load_file, save_file
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict, set_model_state_dict,
                                                         set_optimizer_state_dict)

    from workers.trainer.training_state import load_training_state, save_training_state

    world, collective = run.world, run.world.size > 1
    barrier = (lambda: world.sum([0.0])) if collective else (lambda: None)
    times = {}

    def timed(name, action):
        barrier()
        started = time.perf_counter()
        result = action()
        barrier()
        times[name] = time.perf_counter() - started
        return result

    meta = timed("sharded_save", lambda: save_training_state(folder, run.model, run.optimizer, collective))
    timed("sharded_load", lambda: load_training_state(folder, run.model, run.optimizer, meta, collective))

    full = StateDictOptions(full_state_dict=True, cpu_offload=True)

    def consolidated_save():
        model_state = get_model_state_dict(run.model, options=full)
        optim = get_optimizer_state_dict(run.model, run.optimizer, options=full)
        if world.rank == 0:
            save_file({k: v.contiguous() for k, v in model_state.items() if "lm_head" not in k}, str(folder / "model.safetensors"))
            save_file({f"{name}.{key}": value for name, entry in optim["state"].items() for key, value in entry.items()},
                      str(folder / "optimizer.safetensors"))
        return get_optimizer_state_dict(run.model, run.optimizer)["param_groups"]  # every rank's (names only)

    def consolidated_load(groups):
        model_state = load_file(str(folder / "model.safetensors"))
        flat = load_file(str(folder / "optimizer.safetensors"))
        state: dict = {}
        for name, value in flat.items():
            fqn, key = name.rsplit(".", 1)
            state.setdefault(fqn, {})[key] = value
        options = StateDictOptions(full_state_dict=True, strict=False)
        set_model_state_dict(run.model, model_state, options=options)
        set_optimizer_state_dict(run.model, run.optimizer, {"state": state, "param_groups": groups}, options=options)

    groups = timed("consolidated_save", consolidated_save)
    timed("consolidated_load", lambda: consolidated_load(groups))
    times["sharded_bytes_this_rank"] = sum(p.stat().st_size for p in (folder / "sharded").glob(f"shard-{world.rank + 1:05d}-*"))
    return times


def rank_main(variant: str, device: str, out: Path, model: str) -> None:
    """One rank (or the only process) of a variant: steps, then checkpoints; writes JSON."""
    import torch

    from workers.trainer.loop import setup, train_step

    ranks, threads, rows, resources = VARIANTS[variant]
    torch.set_num_threads(threads)
    comm = CommTimer()
    run = setup(spec_for(rows, ranks, resources, device, model))
    cuda = run.device.type == "cuda"
    points, comm_seconds = [], []
    sampler = RssSampler()
    with sampler:
        for step in range(1, STEPS + 1):
            if step == 2 and cuda:
                torch.cuda.reset_peak_memory_stats()
            before = comm.seconds
            points.append(train_step(run, step))
            comm_seconds.append(comm.seconds - before)
    result = {
        "rank": run.world.rank, "loss": [p["loss"] for p in points],
        "step_seconds": [p["step_seconds"] for p in points], "comm_seconds": comm_seconds,
        "peak_rss_mib": sampler.peak / 2**20, "tensor_state_mib": tensor_state_bytes(run.model, run.optimizer) / 2**20,
        "cuda_max_allocated_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
    }
    if variant in CHECKPOINTED:
        folder = Path(run.world.write_once(lambda: tempfile.mkdtemp(prefix="amft-bench-ckpt-")))
        result["checkpoint"] = checkpoint_seconds(run, folder)
        run.world.write_once(lambda: shutil.rmtree(folder))
    (out / f"{variant.replace(' ', '_')}-rank{run.world.rank}.json").write_text(json.dumps(result))
    run.world.close()


def run_variant(variant: str, device: str, out: Path, model: str) -> list[dict]:
    ranks, threads, _, _ = VARIANTS[variant]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false", RAYON_NUM_THREADS="1")
    program = ["-m", "bench.distributed", "--rank", variant, "--device", device, "--out", str(out), "--model", model]
    if ranks > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}", *program]
    else:
        command = [sys.executable, *program]
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{variant} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    print(f"{variant}: {time.perf_counter() - started:.0f} s", flush=True)
    return [json.loads((out / f"{variant.replace(' ', '_')}-rank{r}.json").read_text()) for r in range(ranks)]


def summarise(raw: dict[str, list[dict]], device: str) -> dict:
    median = statistics.median
    rows = {}
    for variant, ranks in raw.items():
        measured = slice(1, None)  # step 1 warms up
        step = median(max(r["step_seconds"][i] for r in ranks) for i in range(1, STEPS))
        comm = median(statistics.mean(r["comm_seconds"][measured]) / statistics.mean(r["step_seconds"][measured])
                      for r in ranks)
        rows[variant] = {
            "ranks": len(ranks), "threads_per_rank": VARIANTS[variant][1], "rows_per_rank": VARIANTS[variant][2] // len(ranks),
            "step_seconds_median": step, "comm_share": comm if len(ranks) > 1 else 0.0,
            "peak_rss_mib_per_rank": max(r["peak_rss_mib"] for r in ranks),
            "tensor_state_mib_per_rank": max(r["tensor_state_mib"] for r in ranks),
            "cuda_max_allocated_mib_per_rank": max(r["cuda_max_allocated_mib"] or 0 for r in ranks) if device == "cuda" else None,
            "loss": ranks[0]["loss"],
        }
        if "checkpoint" in ranks[0]:
            rows[variant]["checkpoint_seconds"] = {k: max(r["checkpoint"][k] for r in ranks)
                                                   for k in ranks[0]["checkpoint"] if k.endswith(("save", "load"))}
    return rows


def write_report(summary: dict, device: str, seconds: float, results: Path = RESULTS) -> None:
    suffix = "" if device == "cpu" else "_cuda"
    (results / f"distributed{suffix}.json").write_text(json.dumps(summary, indent=1) + "\n")
    rows = summary["variants"]
    memory = "max allocated MiB" if device == "cuda" else "peak RSS MiB"
    lines = [
        f"# One job on several ranks ({device}, bench/distributed.py)", "",
        f"{summary['model']}, fp32 weights, method sft, global batch {GLOBAL_ROWS} GSM8K rows (prompt <= {PROMPT_TOKENS}, "
        f"completion <= {COMPLETION_TOKENS} tokens), {STEPS} steps (step 1 is warm-up; medians of steps 2-{STEPS}, "
        f"the slowest rank per step). {summary['machine']}. Run took {seconds / 60:.1f} min.", "",
        f"| variant | ranks x threads | rows/rank | step s | comm share | {memory}/rank | tensor state MiB/rank |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        mem = r["cuda_max_allocated_mib_per_rank"] if device == "cuda" else r["peak_rss_mib_per_rank"]
        lines.append(f"| {name} | {r['ranks']} x {r['threads_per_rank']} | {r['rows_per_rank']} | {r['step_seconds_median']:.2f} "
                     f"| {r['comm_share']:.0%} | {mem:.0f} | {r['tensor_state_mib_per_rank']:.0f} |")
    lines += ["", "| checkpoint (training state: model + AdamW) | save s | load s |", "|---|---|---|"]
    for name in (n for n in CHECKPOINTED if n in rows):
        c = rows[name]["checkpoint_seconds"]
        for kind in ("sharded", "consolidated"):
            lines.append(f"| {name}, {kind} | {c[kind + '_save']:.2f} | {c[kind + '_load']:.2f} |")
    lines += ["", *summary["notes"]]
    (results / f"distributed{suffix}.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--rank", help=argparse.SUPPRESS)  # internal: run one variant's rank
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--only", nargs="*", help="variants to run (default all; cpu offload on CUDA only)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the JSON and markdown go")
    parser.add_argument("--model", default="builtin:smollm2-135m", help="a smoke run can pass builtin:tiny")
    args = parser.parse_args()
    if args.rank:
        rank_main(args.rank, args.device, args.out, args.model)
        return
    from service.settings import get_settings
    from workers.trainer.models import smollm2_folder

    if args.model == "builtin:smollm2-135m":
        smollm2_folder(get_settings())  # convert the GGUF once, before the timed processes
    started = time.perf_counter()
    machine = f"{os.cpu_count()} CPU cores (shared, loaded)" if args.device == "cpu" else _gpu_name()
    notes = [
        "Comm share: seconds inside collectives (call to end of wait, so it includes waiting for "
        "the other rank) over step seconds, per rank, median of ranks.",
        "Tensor state: parameters + gradients + Adam moments held by one rank (FSDP2 shards all "
        "three); activations are not in it. On CPU the RSS includes the Python/torch runtime and "
        "the full model each rank loads before sharding.",
    ]
    if args.device == "cpu":
        notes.append("cpu offload is not run on CPU: distributed.py applies CPUOffloadPolicy on CUDA only "
                     "(on CPU the parameters already live in CPU memory).")
    raw: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="amft-bench-dist-") as out:
        for variant in args.only or [v for v in VARIANTS if args.device == "cuda" or "offload" not in v]:
            raw[variant] = run_variant(variant, args.device, Path(out), args.model)
            # Written after every variant, so a run cut short still reports what it measured.
            summary = {"device": args.device, "model": args.model, "machine": machine, "global_rows": GLOBAL_ROWS,
                       "steps": STEPS, "variants": summarise(raw, args.device), "notes": notes}
            write_report(summary, args.device, time.perf_counter() - started, args.results)


def _gpu_name() -> str:
    import torch

    return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"


if __name__ == "__main__":
    main()
