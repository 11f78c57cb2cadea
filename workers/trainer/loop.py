"""The AMFT training loop (DESIGN §2), top to bottom: setup, loop, one step (checkpoints: resume.py).

Every method runs this loop; only the mu schedule differs (schedules.make_schedule). Each
step: sample rollouts if mu < 1, take an SFT batch if mu > 0, backpropagate
mu * L_SFT + (1 - mu) * L_RL, clip, step AdamW (num_iterations times on one rollout
batch, PPO-clipped against the sampling policy), let the schedule observe the step's
entropy (and, every K steps for AMFT, the meta-gradient), then report metrics.

Metric names per step (the service and plots depend on them): step, phase, mu,
reward_mean, reward_std, accuracy, zero_signal_frac, sft_loss, rl_loss, loss, entropy,
target_entropy, meta_grad (each AMFT main step's sample of m_t), meta_mean, meta_snr and
meta_samples (the end of each meta window), bandit_score and bandit_gain (the bandit
controller's window ends), kl, clip_frac, grad_norm, lr,
completion_tokens_mean, step_seconds, gen_seconds, train_seconds, tokens_per_second,
train_tokens (prompt and completion tokens trained on, all ranks),
reward/<grader name> (each grader's mean score), and eval_accuracy_<split> /
eval_reward_<split> at eval steps. RL metrics are absent on steps without rollouts.

The same loop runs as one rank of many (issue 14): `run.world` (distributed.py) shards
the model and the batch, sums statistics across ranks and lets only rank 0 write. In
one process its every method is the identity.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from service.data_checks import reads_validation, validation_fields
from service.settings import get_settings
from service.specs import JobSpec
from workers.judges import Judge
from workers.trainer import losses
from workers.trainer.batching import completion_logits, encode_completion, encode_prompt, pack
from workers.trainer.distributed import SingleProcess, make_world
from workers.trainer.data import BatchStream, load_records, require_completions, require_fields
from workers.trainer.evaluation import evaluate_splits, load_eval_sets
from workers.trainer.hooks import Metrics, TrainerHooks, TrainResult
from workers.trainer.meta_gradient import meta_signal
from workers.trainer.models import load_policy
from workers.trainer.graders import Scorer
from workers.trainer.graph_rollout import make_engine
from workers.trainer.reference import frozen_copy, take_reference
from workers.trainer.resume import restore, save
from workers.trainer.rollout import RolloutEngine
from workers.trainer.schedules import MuSchedule, make_schedule


@dataclass
class Run:
    """Everything a step needs, built once by `setup`."""

    spec: JobSpec
    model: torch.nn.Module
    tokenizer: object
    reference: torch.nn.Module | None
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LambdaLR
    schedule: MuSchedule
    engine: RolloutEngine
    streams: dict[str, BatchStream]
    eval_sets: dict[str, list[dict]]
    device: torch.device
    scorer: Scorer
    world: SingleProcess  # or distributed.Sharded: one rank of a sharded run
    precision: Callable[[], contextlib.AbstractContextManager]  # around every training forward pass
    reference_after: int  # the reference becomes the policy after this step (0: the initial policy)
    meta_validation: list[torch.Tensor] | None = None  # g_val of the current meta window


@dataclass
class Rollouts:
    """One RL batch: P prompts x G completions, with rewards and GRPO advantages."""

    prompts: list[list[int]]  # [P * G] prompt ids, each prompt repeated G times
    completions: list[list[int]]  # [P * G] sampled ids
    rewards: torch.Tensor  # [P * G]
    correct: torch.Tensor  # [P * G] 0/1
    per_grader: dict[str, float]  # each grader's mean score
    advantages: torch.Tensor  # [P * G]
    zero_signal: torch.Tensor  # [P] bool
    sampling: losses.SamplingLogprobs = field(default_factory=losses.SamplingLogprobs)  # PPO's old policy


def train(spec: JobSpec, out_dir: Path, hooks: TrainerHooks | None = None, resume_from: Path | None = None) -> TrainResult:
    """Run (or resume) the job the spec describes, writing checkpoints under out_dir."""
    out_dir = Path(out_dir)
    run = setup(spec, hooks)
    try:
        return run_steps(run, out_dir, run.world.reporter(hooks or TrainerHooks()), resume_from)
    finally:
        run.world.close()


def run_steps(run: Run, out_dir: Path, hooks: TrainerHooks, resume_from: Path | None) -> TrainResult:
    """Steps from the checkpoint (or the start) to the end, saving and reporting as they go."""
    spec = run.spec
    start_step = restore(run, resume_from) if resume_from else 0
    last_checkpoint = resume_from
    total = spec.training.total_steps
    step = start_step
    if start_step == 0 and spec.training.eval_every and spec.model.startswith("job:"):
        # Issue 17: a continued job's curve starts where its parent's left off (step 0).
        hooks.on_metrics({"step": 0, **evaluate_splits(run.engine, run.tokenizer, run.eval_sets, spec.training)})
    for step in range(start_step + 1, total + 1):
        point = train_step(run, step)
        if step == run.reference_after:
            take_reference(run.reference, run.model)
        if spec.training.eval_every and (step % spec.training.eval_every == 0 or step == total):
            with run.world.full_weights(run.model):  # every rank scores the full sets
                point.update(evaluate_splits(run.engine, run.tokenizer, run.eval_sets, spec.training, run.scorer,
                                             lambda rows: hooks.on_samples(step, rows)))  # trackers' table
        hooks.on_metrics(point)
        stopping = hooks.should_stop()
        if step % spec.training.save_every == 0 or step == total or stopping:
            last_checkpoint = save(run, out_dir, step)
            hooks.on_checkpoint(step, last_checkpoint)
        if stopping and step < total:
            return TrainResult("stopped", step, last_checkpoint)
    return TrainResult("completed", step, last_checkpoint)


# --------------------------------------------------------------------------- setup


def setup(spec: JobSpec, hooks: TrainerHooks | None = None) -> Run:
    """Seed, load model and data, build optimizer, LR schedule, mu schedule and graders."""
    t = spec.training
    settings = get_settings()
    random.seed(t.seed)
    torch.manual_seed(t.seed)
    kind = "cuda" if t.device == "cuda" or (t.device == "auto" and torch.cuda.is_available()) else "cpu"
    world = make_world(kind, settings.collective_timeout_seconds)
    device = world.device(kind)
    # Weights and AdamW's state stay float32 (master copies) whatever t.dtype says: pure
    # bf16 parameters lose most small updates to rounding (issue 16: only 5-11% of weights
    # changed per step at lr 1e-5). bf16 is the compute precision of the forward passes.
    model, tokenizer = load_policy(spec.model, settings, dtype=torch.float32, device=device)
    bf16 = t.dtype == "bfloat16"
    if device.type == "cuda" and bf16:
        # sdpa's bf16 CUDA kernels return NaN gradients for the fully masked query rows that
        # left padding makes (measured on an H200: 3 of 10 steps had a NaN grad norm, then
        # skipped); eager attention has none.
        model.set_attn_implementation("eager")
    if t.chat_template:  # the spec's template wins over the tokenizer's own (and is saved with it)
        tokenizer.chat_template = t.chat_template
    if t.lora:
        model = _with_lora(model, t.lora)
    model.train()
    reference = world.wrap(frozen_copy(model), spec.resources, bf16) if t.kl_beta > 0 else None
    model = world.wrap(model, spec.resources, bf16)
    world.seed_rank(t.seed)  # after the weights: every rank starts from the same ones
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=t.learning_rate, weight_decay=t.weight_decay)
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(spec))
    schedule = make_schedule(spec)
    engine = make_engine(model, tokenizer.pad_token_id, tokenizer.eos_token_id, settings.cuda_graph_rollouts)
    hooks = hooks or TrainerHooks()
    judge = hooks.judge or Judge(settings)
    scorer = Scorer(spec.reward, on_failure=lambda _name, message: hooks.on_event("grader_failed", message), judge=judge)
    streams = _data_streams(spec, schedule, settings, scorer.fields_read())
    eval_sets = load_eval_sets(spec, settings, scorer.fields_read()) if t.eval_every else {}
    precision = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    # KL to the pre-SFT model would pull the policy back from what the warm-up taught.
    reference_after = schedule.warmup_steps if reference is not None and t.kl_reference == "after_warmup" else 0
    return Run(spec, model, tokenizer, reference, optimizer, lr_scheduler, schedule, engine, streams, eval_sets, device, scorer,
               world, precision, reference_after)


def _data_streams(spec: JobSpec, schedule: MuSchedule, settings, graded_fields: set[str]) -> dict[str, BatchStream]:
    """Load only the data this method uses: no SFT data for pure GRPO, no RL data for SFT."""
    total = spec.training.total_steps
    mus = schedule.possible_mus(total)
    streams = {}
    seed = spec.training.seed
    if any(m > 0 for m in mus):
        sft = load_records(spec.datasets.sft, settings)
        require_completions(sft, "datasets.sft")
        streams["sft"] = BatchStream(sft, seed)
    if any(m < 1 for m in mus):
        rl = load_records(spec.datasets.rl, settings)
        require_fields(rl, graded_fields, "datasets.rl")
        streams["rl"] = BatchStream(rl, seed + 1)
    if reads_validation(spec):  # the meta step's utility or the bandit's held-out score
        validation = load_records(spec.datasets.validation, settings)
        # Checked at POST /jobs where it can be; a hub dataset is first seen here.
        require_fields(validation, set(validation_fields(spec)), "datasets.validation")
        streams["validation"] = BatchStream(validation, seed + 2)
    return streams


def _lr_lambda(spec: JobSpec):
    t = spec.training

    def factor(done: int) -> float:
        if done < t.lr_warmup_steps:
            return (done + 1) / t.lr_warmup_steps
        progress = (done - t.lr_warmup_steps) / max(t.total_steps - t.lr_warmup_steps, 1)
        if t.lr_schedule == "linear":
            return max(1.0 - progress, 0.0)
        if t.lr_schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
        return 1.0

    return factor


def _with_lora(model, lora):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules)
    return get_peft_model(model, config)


# --------------------------------------------------------------------------- one step


def train_step(run: Run, step: int) -> Metrics:
    """One optimizer step of mu * L_SFT + (1 - mu) * L_RL; returns the step's metrics."""
    started = time.perf_counter()
    mu = run.schedule.mu(step)
    point: Metrics = {"step": step, "phase": run.schedule.phase(step), "mu": mu, "lr": run.lr_scheduler.get_last_lr()[0]}

    rollouts = None
    if mu < 1:
        rollouts = sample_rollouts(run, run.world.shard(run.streams["rl"].next_batch(run.spec.training.rl_prompts_per_step)))
        point.update(rollout_metrics(run, rollouts))
    gen_seconds = time.perf_counter() - started
    sft_batch = run.world.shard(run.streams["sft"].next_batch(run.spec.training.sft_batch_size)) if mu > 0 else None

    train_started = time.perf_counter()
    # A meta step needs both gradients; with mu at 0 or 1 one of them does not exist.
    meta = run.schedule.wants_meta(step) and sft_batch is not None and rollouts is not None
    # num_iterations updates on a step's rollouts (the first is the meta step, if any).
    # One LR-schedule step per step.
    iterations = run.spec.training.num_iterations if rollouts is not None else 1
    fresh = run.schedule.wants_validation(step)  # g_val is taken once per meta window
    updates = [update(run, mu, sft_batch, rollouts, meta and i == 0, fresh) for i in range(iterations)]
    tokens = sum(u.pop("_tokens") for u in updates)
    point.update(_step_stats(updates))
    with warnings.catch_warnings():  # counting a skipped step is intended, not a misordering
        warnings.filterwarnings("ignore", r"Detected call of `lr_scheduler.step\(\)` before")
        run.lr_scheduler.step()
    train_seconds = time.perf_counter() - train_started

    score = held_out_accuracy(run) if run.schedule.wants_score(step) else None
    run.schedule.observe(step, point.get("entropy"), point.get("meta_grad"), score)
    point.update(run.schedule.metrics())
    if run.schedule.target_entropy is not None:
        point["target_entropy"] = run.schedule.target_entropy
    step_seconds = time.perf_counter() - started
    point.update(step_seconds=step_seconds, gen_seconds=gen_seconds, train_seconds=train_seconds)
    point["tokens_per_second"] = tokens / step_seconds
    point["train_tokens"] = tokens
    return point


def update(run: Run, mu: float, sft_batch, rollouts, meta: bool, fresh_validation: bool) -> Metrics:
    """One optimizer update on the step's batch: backward, clip, AdamW; its statistics."""
    if meta:
        stats = meta_backward(run, mu, sft_batch, rollouts, fresh_validation)
    else:
        stats = weighted_backward(run, mu, sft_batch, rollouts)
    params = [p for p in run.model.parameters() if p.requires_grad]
    stats["grad_norm"] = run.world.clip_grad_norm(params, run.spec.training.max_grad_norm)
    # A batch with no learning signal (every group's rewards equal and no SFT term) must not
    # move the weights. Adam would: it steps along its momentum, replaying the last noisy
    # gradients at nearly full step size for tens of steps (issue 5: in pure GRPO, where
    # most steps were zero-signal, that drift ran completions up to the 100-token cap).
    # Its state is left as it was, so the next real step is unchanged.
    if stats["grad_norm"] > 0:
        run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    return stats


def _step_stats(updates: list[Metrics]) -> Metrics:
    """A step's statistics: the mean over its updates, except the entropy, which is H_t, the
    entropy of the policy that sampled the rollouts (the first update's)."""
    keys = set().union(*updates)
    stats = {key: sum(u[key] for u in updates if key in u) / sum(key in u for u in updates) for key in keys}
    if "entropy" in updates[0]:
        stats["entropy"] = updates[0]["entropy"]
    return stats


def sample_rollouts(run: Run, records: list[dict]) -> Rollouts:
    """Sample G completions per prompt from the current policy and score them."""
    t = run.spec.training
    prompts = [encode_prompt(run.tokenizer, r["prompt"], t.max_prompt_tokens) for r in records]
    with run.world.full_weights(run.model):
        completions = run.engine.generate(prompts, t.num_generations, t.max_completion_tokens, t.temperature, t.top_p)
    texts = run.tokenizer.batch_decode(completions, skip_special_tokens=True)
    scored = run.scorer.score(texts, [r for r in records for _ in range(t.num_generations)])
    rewards = torch.tensor(scored.rewards, dtype=torch.float32)
    advantages, zero_signal = losses.group_advantages(rewards, t.num_generations, t.scale_rewards)
    repeated = [p for p in prompts for _ in range(t.num_generations)]
    correct = torch.tensor(scored.correct, dtype=torch.float32)
    return Rollouts(repeated, completions, rewards, correct, scored.per_grader, advantages, zero_signal)


def rollout_metrics(run: Run, rollouts: Rollouts) -> Metrics:
    """Statistics of the global batch (every rank's rollouts)."""
    rewards, correct = run.world.gather(rollouts.rewards), run.world.gather(rollouts.correct)
    lengths = run.world.gather(torch.tensor([len(c) for c in rollouts.completions], dtype=torch.float64))
    return {
        "reward_mean": rewards.mean().item(),
        "reward_std": rewards.std().item() if len(rewards) > 1 else 0.0,
        "accuracy": correct.mean().item(),
        "zero_signal_frac": run.world.gather(rollouts.zero_signal.float()).mean().item(),
        "completion_tokens_mean": lengths.mean().item(),
        **_per_grader_means(run, rollouts.per_grader),
    }


def _per_grader_means(run: Run, per_grader: dict[str, float]) -> Metrics:
    """reward/<grader>: each grader's mean over the global batch (ranks hold equal shares)."""
    names = sorted(per_grader)
    if not names:
        return {}
    means = run.world.gather(torch.tensor([per_grader[name] for name in names], dtype=torch.float64))
    return {f"reward/{name}": value for name, value in zip(names, means.view(-1, len(names)).mean(0).tolist())}


def weighted_backward(run: Run, mu: float, sft_batch, rollouts) -> Metrics:
    """Accumulate grad of mu * L_SFT + (1 - mu) * L_RL; a zero-weight loss is not computed."""
    stats: Metrics = {"_tokens": 0, "loss": 0.0}
    if sft_batch is not None:
        stats.update(sft_backward(run, sft_batch, weight=mu))
        stats["loss"] += mu * stats["sft_loss"]
    if rollouts is not None:
        stats.update(rl_backward(run, rollouts, weight=1.0 - mu))
        stats["loss"] += (1.0 - mu) * stats["rl_loss"]
    stats["_tokens"] = stats.pop("_sft_tokens", 0) + stats.pop("_rl_tokens", 0)
    return stats


def meta_backward(run: Run, mu: float, sft_batch, rollouts, fresh_validation: bool) -> Metrics:
    """Like weighted_backward, but keep g_SFT and g_RL apart to compute this step's sample of m_t."""
    params = [p for p in run.model.parameters() if p.requires_grad]
    if fresh_validation or run.meta_validation is None:  # once per window (and after a resume)
        run.meta_validation = validation_gradient(run, params)
    g_val = run.meta_validation
    stats = sft_backward(run, sft_batch, weight=1.0)
    g_sft = take_grads(params)
    stats.update(rl_backward(run, rollouts, weight=1.0))
    g_rl = take_grads(params)
    form, lr = run.spec.controller.meta_form, run.lr_scheduler.get_last_lr()[0]
    local = run.world.local  # this rank's shards; meta_signal sums the dots over ranks
    stats["meta_grad"] = meta_signal(form, local(g_val), local(g_sft), local(g_rl), mu, run.optimizer, params,
                                     run.spec.training.max_grad_norm, lr, local, run.world.sum)
    for p, gs, gr in zip(params, g_sft, g_rl):
        p.grad = gr.mul_(1.0 - mu).add_(gs, alpha=mu)  # in place: no third parameter-sized buffer
    stats["loss"] = mu * stats["sft_loss"] + (1.0 - mu) * stats["rl_loss"]
    stats["_tokens"] = stats.pop("_sft_tokens") + stats.pop("_rl_tokens")
    return stats


def validation_gradient(run: Run, params: list[torch.nn.Parameter]) -> list[torch.Tensor]:
    """Gradient of L_val = -U on a held-out batch (reward utility, or expert NLL)."""
    c = run.spec.controller
    records = run.world.shard(run.streams["validation"].next_batch(c.meta_val_prompts))
    run.optimizer.zero_grad(set_to_none=True)
    if c.meta_utility == "nll":
        sft_backward(run, records, weight=1.0)
    else:
        # Policy gradient of expected reward: advantage = reward - group mean, unscaled.
        rollouts = sample_rollouts(run, records)
        centred = rollouts.rewards.view(-1, run.spec.training.num_generations)
        rollouts.advantages = (centred - centred.mean(dim=1, keepdim=True)).flatten()
        rl_backward(run, rollouts, weight=1.0, with_kl=False)
    return take_grads(params)


def held_out_accuracy(run: Run) -> float:
    """Greedy accuracy on the first bandit_eval_items validation records (the bandit's reward)."""
    records = run.streams["validation"].records[: run.spec.controller.bandit_eval_items]
    with run.world.full_weights(run.model):
        scores = evaluate_splits(run.engine, run.tokenizer, {"held_out": records}, run.spec.training, run.scorer)
    return scores["eval_accuracy_held_out"]


def take_grads(params: list[torch.nn.Parameter]) -> list[torch.Tensor]:
    """Detach the accumulated gradients from the parameters and return them (no copy)."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    for p in params:
        p.grad = None
    return grads


def sft_backward(run: Run, records: list[dict], weight: float) -> Metrics:
    """Backpropagate weight * L_SFT on expert completions; prompt tokens carry no loss."""
    t = run.spec.training
    prompts = [encode_prompt(run.tokenizer, r["prompt"], t.max_prompt_tokens) for r in records]
    targets = [encode_completion(run.tokenizer, r["completion"], t.max_completion_tokens) for r in records]
    batch = pack(prompts, targets, run.tokenizer.pad_token_id).to(run.device)
    total = global_tokens(run, batch.completion_mask)
    loss_value = 0.0
    for part in batch.micro_batches(t.micro_batch_size):
        # share * token-mean over the part = this part's sum over the whole batch's tokens.
        share = part.completion_mask.sum() / total
        with run.precision():
            logprobs = losses.token_logprobs(completion_logits(run.model, part), part.targets)
        loss = losses.sft_loss(logprobs, part.completion_mask)
        (weight * share * loss).backward()
        loss_value += (share * loss).item()
    loss_value, tokens = run.world.sum([loss_value, float(batch.attention_mask.sum())])
    return {"sft_loss": loss_value, "_sft_tokens": int(tokens)}


def rl_backward(run: Run, rollouts: Rollouts, weight: float, with_kl: bool = True) -> Metrics:
    """Backpropagate weight * L_RL (GRPO) on the rollouts; also measure their entropy."""
    t = run.spec.training
    batch = pack(rollouts.prompts, rollouts.completions, run.tokenizer.pad_token_id).to(run.device)
    advantages = rollouts.advantages.to(run.device)
    total = global_tokens(run, batch.completion_mask)
    sums = {"rl_loss": 0.0, "entropy": 0.0, "clip_frac": 0.0, "kl": 0.0}
    for start, part in zip(range(0, len(advantages), t.micro_batch_size), batch.micro_batches(t.micro_batch_size)):
        share = part.completion_mask.sum() / total
        with run.precision():
            logits = _tempered(completion_logits(run.model, part), t.temperature)
        logprobs = losses.token_logprobs(logits, part.targets)
        entropy = losses.masked_mean(losses.token_entropy(logits), part.completion_mask).item()
        del logits
        ref_logprobs = _reference_logprobs(run, part) if with_kl else None
        # Old = the sampling policy's: this forward's own on a batch's first update (ratio 1).
        loss, extra = losses.grpo_loss(
            logprobs, rollouts.sampling.old(start, logprobs), advantages[start : start + t.micro_batch_size],
            part.completion_mask, t.clip_eps, ref_logprobs, t.kl_beta,
        )
        (weight * share * loss).backward()
        share = share.item()
        for key, value in (("rl_loss", loss.item()), ("entropy", entropy), *extra.items()):
            sums[key] += share * value
    # Token-weighted shares of the global batch: their sum over ranks is the global mean.
    *values, tokens = run.world.sum([*sums.values(), float(batch.attention_mask.sum())])
    return {**dict(zip(sums, values)), "_rl_tokens": int(tokens)}


def global_tokens(run: Run, mask: torch.Tensor) -> torch.Tensor:
    """Completion tokens in the global batch (all ranks): every loss is normalised by it."""
    return mask.sum().new_tensor(run.world.sum([float(mask.sum())])[0])


def _tempered(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """The sampling distribution's logits (generation divides by the temperature too)."""
    return logits if temperature == 1.0 else logits / temperature


def _reference_logprobs(run: Run, part) -> torch.Tensor | None:
    if run.reference is None:
        return None
    with torch.no_grad(), run.precision():
        logits = _tempered(completion_logits(run.reference, part), run.spec.training.temperature)
        return losses.token_logprobs(logits, part.targets)
