"""The job spec: everything one training run needs, as a validated pydantic model.

A five-line spec works (`method`, `model`, `datasets` have defaults); every field has a
description and unknown fields are rejected, so a typo never silently does nothing.
Limits come from deployment settings, so an absurd value fails at validation with a
message that names the field instead of failing hours into a run.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from service.grader_specs import GraderSpec, MathVerifyGrader, as_grader_list, check_graders
from service.integration_specs import IntegrationSpec
from service.settings import get_settings

Method = Literal["amft", "sft", "grpo", "sft_then_grpo", "fixed", "chord"]

# Python regexes here are always applied with .fullmatch(): `$` also matches before a
# trailing newline, so "builtin:tiny\n" passed a .match() check (issue 13, item 4).
MODEL_SOURCE = re.compile(
    r"builtin:(tiny|smollm2-135m)"  # bundled models
    r"|local:[A-Za-z0-9][A-Za-z0-9._-]{0,127}"  # a folder name under AMFT_MODELS_DIR
    r"|hub:[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}"  # a hub id
    r"|job:[0-9a-f]{32}(:[0-9]{1,10})?"  # issue 17: another job's checkpoint (newest or a step)
)
DATA_SOURCE = re.compile(
    r"builtin:arithmetic|builtin:json_extract|gsm8k|svamp"
    r"|file:[0-9a-f]{32}"  # an uploaded JSONL file, by id
    r"|hf:.*",  # checked by hub_dataset_problem
    re.DOTALL,
)
# A Hugging Face hub dataset id, `org/name` and nothing else (issue 13, item 1): a bare
# name can be one of the `datasets` packaged builders (text, json, csv, ...), which glob
# the working directory; paths, globs, URLs and data_files have no way in.
_HUB_PART = r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9])?"
HUB_DATASET_ID = re.compile(_HUB_PART + "/" + _HUB_PART)
HUB_RESERVED_ORGS = ("buckets", "datasets", "models", "spaces")  # hub URL prefixes, not owners


@lru_cache(maxsize=1)
def packaged_builder_names() -> frozenset[str]:
    """The `datasets` library's packaged builders (text, json, csv, parquet, imagefolder, ...),
    asked of the library itself; empty where it is not installed (the API image), where
    HUB_DATASET_ID alone already keeps every builder name out (none has a '/')."""
    try:
        from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES
    except ImportError:
        return frozenset()
    return frozenset(name.lower() for name in _PACKAGED_DATASETS_MODULES)


def hub_dataset_problem(dataset_id: str) -> str | None:
    """Why `dataset_id` (after `hf:`) may not reach `datasets.load_dataset`, or None if it
    is a plain hub id. Checked at spec validation and again by the worker before loading."""
    if not HUB_DATASET_ID.fullmatch(dataset_id) or ".." in dataset_id or "--" in dataset_id:
        return "hf: takes a hub dataset id <org>/<name> (letters, digits, '.', '_', '-'), not a path, glob or URL"
    org, name = dataset_id.split("/")
    builders = packaged_builder_names()
    if org.lower() in HUB_RESERVED_ORGS or {dataset_id.lower(), org.lower()} & builders or name.lower().endswith(".py"):
        return f"hf:{dataset_id} names a datasets builder, script or reserved hub prefix, not a hub dataset"
    return None


class Strict(BaseModel):
    # allow_inf_nan=False: every float of a spec is finite; Infinity/NaN (also as strings)
    # answer 422 naming the field (issue 13, item 2).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class DataSourceSpec(Strict):
    """One dataset: where it comes from, which split, how many records."""

    source: str = Field(
        "builtin:arithmetic",
        description="builtin:arithmetic | gsm8k | svamp | file:<uploaded file id> | hf:<org>/<hub dataset>.",
    )
    split: str = Field(
        "train",
        pattern=r"^[A-Za-z0-9_]{1,32}$",
        description="Split name. builtin:arithmetic has train, validation, id (test) and ood.",
    )
    limit: int | None = Field(None, ge=1, le=1_000_000, description="Use at most this many records.")
    name: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_]{1,32}$",
        description="Label for eval metrics (eval_accuracy_<name>); defaults to the split.",
    )

    @field_validator("source")
    @classmethod
    def _known_source(cls, value: str) -> str:
        if not DATA_SOURCE.fullmatch(value):
            raise ValueError(
                "must be builtin:arithmetic, builtin:json_extract, gsm8k, svamp, file:<32-hex file id> or hf:<org>/<name>"
            )
        if value.startswith("hf:") and (problem := hub_dataset_problem(value.removeprefix("hf:"))):
            raise ValueError(problem)
        return value

    @property
    def label(self) -> str:
        return self.name or self.split


class DatasetsSpec(Strict):
    """The four data streams of a run."""

    sft: DataSourceSpec = Field(
        DataSourceSpec(split="train"), description="Expert solutions for the SFT loss."
    )
    rl: DataSourceSpec = Field(
        DataSourceSpec(split="train"), description="Prompts with answers for GRPO rollouts."
    )
    validation: DataSourceSpec = Field(
        DataSourceSpec(split="validation"),
        description="Held-out prompts (with answers or solutions) for the meta-gradient utility.",
    )
    eval: list[DataSourceSpec] = Field(
        default_factory=lambda: [DataSourceSpec(split="id"), DataSourceSpec(split="ood")],
        max_length=8,
        description="Splits scored by greedy accuracy every eval_every steps.",
    )


class LoraSpec(Strict):
    """Optional low-rank adapters (peft) instead of full fine-tuning."""

    r: int = Field(8, ge=1, le=256, description="Adapter rank.")
    alpha: int = Field(16, ge=1, le=1024, description="Adapter scaling numerator.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Adapter dropout.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        description="Module names that get adapters.",
    )


class TrainingSpec(Strict):
    """Optimisation, batching and sampling settings."""

    total_steps: int = Field(100, ge=1, description="Optimizer steps in the whole run.")
    warmup_steps: int = Field(
        10,
        ge=0,
        description="Pure-SFT steps before the controller starts (amft, chord); the switch point of sft_then_grpo.",
    )
    learning_rate: float = Field(1e-5, gt=0.0, le=1.0, description="Peak AdamW learning rate.")
    lr_schedule: Literal["constant", "linear", "cosine"] = Field(
        "constant", description="Learning-rate decay after lr_warmup_steps."
    )
    lr_warmup_steps: int = Field(0, ge=0, description="Linear learning-rate ramp at the start.")
    weight_decay: float = Field(0.0, ge=0.0, le=1.0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0.0, description="Gradient clipping norm.")
    sft_batch_size: int = Field(4, ge=1, description="Expert examples per SFT step.")
    rl_prompts_per_step: int = Field(4, ge=1, description="Prompts sampled per RL step.")
    num_generations: int = Field(4, ge=2, description="Completions per prompt (GRPO group size).")
    max_prompt_tokens: int = Field(256, ge=8, description="Prompts are left-truncated to this.")
    max_completion_tokens: int = Field(128, ge=1, description="Tokens generated per rollout; SFT targets are truncated to it.")
    temperature: float = Field(1.0, gt=0.0, le=2.0, description="Rollout sampling temperature.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Rollout nucleus sampling.")
    micro_batch_size: int = Field(
        8, ge=1, description="Rows per forward/backward pass; bounds activation memory, not the maths."
    )
    clip_eps: float = Field(
        0.2, gt=0.0, lt=1.0, description="PPO ratio clip range; active when num_iterations > 1 (the first update's ratio is 1)."
    )
    num_iterations: int = Field(
        1, ge=1, le=16, description="Optimizer updates per rollout batch (TRL GRPO's num_iterations); each step"
        " samples once and updates this many times, the PPO ratio taken against the sampling policy.",
    )
    kl_beta: float = Field(0.0, ge=0.0, description="Weight of KL to a frozen reference policy (0 = no reference model).")
    kl_reference: Literal["after_warmup", "initial"] = Field(
        "after_warmup", description="The KL reference: the policy at the end of the SFT warm-up (amft, chord,"
        " sft_then_grpo; the initial policy when there is none), so KL keeps what SFT taught; or the initial policy.",
    )
    scale_rewards: bool = Field(True, description="Divide group advantages by the group std.")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed for data order, sampling and init.")
    save_every: int = Field(50, ge=1, description="Checkpoint every this many steps (and at the end).")
    eval_every: int | None = Field(None, ge=1, description="Greedy evaluation every this many steps.")
    eval_limit: int = Field(200, ge=1, le=100_000, description="Items per eval split.")
    dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="Compute precision: bfloat16 runs forward passes under bf16 autocast (FSDP2: bf16"
        " compute, fp32 gradient reduction) over fp32 master weights and optimizer state.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where to train.")
    lora: LoraSpec | None = Field(None, description="Train LoRA adapters instead of all weights.")
    chat_template: str | None = Field(
        None, max_length=20_000,
        description="Jinja chat template for chat prompts, replacing the tokenizer's own (saved with checkpoints).",
    )


class ControllerSpec(Strict):
    """The mu schedule's parameters; which apply depends on the method."""

    mu0: float = Field(0.8, ge=0.0, le=1.0, description="amft: mu at the end of warm-up.")
    mu_min: float = Field(0.05, ge=0.0, le=1.0, description="Lower bound of mu (amft, chord).")
    mu_max: float = Field(
        0.95, ge=0.0, le=1.0, description="Upper bound of mu (amft, chord); amft holds mu below 1 (at most 0.999)."
    )
    eta_H: float = Field(5e-4, ge=0.0, description="amft: step size of the entropy term (0 disables it).")
    # A move of mu per meta window that passes the meta_min_z test (issue 16): a sign step, so
    # one value serves every meta_form and learning rate (adam/raw m_t scale with lr).
    eta_meta: float = Field(
        0.1, ge=0.0, description="amft: how far mu moves at the end of a meta window that passes the test (0 disables it)."
    )
    meta_interval: int = Field(
        20, ge=1, description="amft: K, the steps per meta window (one m_t sample each; mu moves at its end); the "
        "bandit's steps per arm choice.",
    )
    meta_form: Literal["adam", "raw", "cosine"] = Field(
        "cosine",
        description="m_t: 'adam' = dU/dmu through the real clipped AdamW step; 'raw' = lr*<g_val, g_SFT-g_RL> "
        "(SGD look-ahead); 'cosine' = cos(g_val,g_SFT)-cos(g_val,g_RL), a normalised heuristic, not a derivative.",
    )
    meta_min_z: float = Field(
        2.0, ge=0.0,
        description="amft: mu moves at a window's end only if |mean m_t| >= meta_min_z * its standard error "
        "over the window's per-step samples (0: always move).",
    )
    entropy_rule: Literal["below_target", "deviation"] = Field(
        "below_target",
        description="amft entropy term: 'below_target' eta_H*(H*-H_t) (the paper's); 'deviation' "
        "eta_H*|H_t-H*|/H*, raising mu whenever entropy leaves the warm-up level (collapse here gained entropy).",
    )
    meta_utility: Literal["reward", "nll"] = Field(
        "reward", description="Validation utility: verifier reward (policy gradient) or expert NLL."
    )
    meta_val_prompts: int = Field(4, ge=1, description="Validation prompts per meta step.")
    target_entropy: Literal["auto"] | float = Field(
        "auto", description="H*: 'auto' measures it on rollouts at the end of warm-up, or a number in nats."
    )
    fixed_mu: float = Field(0.5, ge=0.0, le=1.0, description="fixed: the constant mu.")
    kind: Literal["meta_gradient", "bandit"] = Field(
        "meta_gradient",
        description="amft: how mu is learned. 'meta_gradient': the entropy and meta terms above; 'bandit': one "
        "of bandit_arms per meta_interval-step window, picked by discounted UCB on the window's gain in greedy "
        "accuracy on bandit_eval_items validation items (the metric users read).",
    )
    bandit_arms: list[Annotated[float, Field(ge=0.0, le=0.999)]] = Field(
        [0.5, 0.7, 0.8, 0.9], min_length=2, max_length=8, description="bandit: the mu values it chooses among."
    )
    bandit_eval_items: int = Field(
        64, ge=1, le=1000, description="bandit: validation items scored greedily at every window's end."
    )
    bandit_exploration: float = Field(
        0.02, ge=0.0, le=1.0,
        description="bandit: UCB's exploration bonus scale, in accuracy (fraction) per window.",
    )
    bandit_discount: float = Field(
        0.8, gt=0.0, le=1.0,
        description="bandit: weight kept per window by older gains (below 1 tracks a best mu that moves).",
    )

    @field_validator("target_entropy")
    @classmethod
    def _non_negative(cls, value: str | float) -> str | float:
        if not isinstance(value, str) and value < 0:
            raise ValueError("must be 'auto' or a non-negative number of nats")
        return value

    @model_validator(mode="after")
    def _bounds_in_order(self) -> ControllerSpec:
        if self.mu_min > self.mu_max:
            raise ValueError(f"mu_min ({self.mu_min}) must not exceed mu_max ({self.mu_max})")
        return self


# ---- issue 17 (MLOps): checkpoint retention
class KeepBestSpec(Strict):
    """Keep the checkpoint with the best value of an eval metric recorded at its step."""

    metric: str = Field(
        ..., pattern=r"^[A-Za-z0-9_]{1,64}$", description="Metric name, e.g. eval_accuracy_id (needs eval_every)."
    )
    mode: Literal["max", "min"] = Field("max", description="Whether larger (max) or smaller (min) is better.")


class RetentionSpec(Strict):
    """Which checkpoints keep their weights; the others' folders are deleted as training goes.
    The newest checkpoint (what a resume needs) is always kept."""

    keep_last_n: int = Field(2, ge=1, le=10_000, description="Keep the newest N checkpoints.")
    keep_best: KeepBestSpec | None = Field(None, description="Also keep the best checkpoint by an eval metric.")


class ResourcesSpec(Strict):
    """How many devices and machines one job spans (issue 14); 1 x 1 is one process."""

    devices: int = Field(1, ge=1, description="Devices (GPU ranks, or CPU processes) per node.")
    nodes: int = Field(1, ge=1, description="Machines; more than one runs through Ray Train.")
    mixed_precision: bool = Field(
        False, description="Sharded runs: bf16 compute with fp32 gradient reduction (FSDP2 MixedPrecisionPolicy)."
    )
    activation_checkpointing: bool = Field(
        False, description="Recompute each layer's activations in backward instead of keeping them."
    )
    cpu_offload: bool = Field(False, description="Sharded runs: keep parameters and optimizer state in CPU memory.")

    @property
    def world_size(self) -> int:
        return self.devices * self.nodes


class JobSpec(Strict):
    """A training job. Only `method` and `model` usually need setting."""

    method: Method = Field("amft", description="The mu schedule: amft | sft | grpo | sft_then_grpo | fixed | chord.")
    model: str = Field(
        "builtin:tiny",
        description="builtin:tiny | builtin:smollm2-135m | local:<folder in AMFT_MODELS_DIR> | hub:<org/name>"
        " | job:<your job id>[:<step>] (its checkpoint's weights, fresh optimizer; default the newest).",
    )
    datasets: DatasetsSpec = Field(default_factory=DatasetsSpec, description="SFT, RL, validation and eval data.")
    reward: list[GraderSpec] = Field(
        default_factory=lambda: [MathVerifyGrader()], max_length=16,
        description="Weighted graders (service/grader_specs.py); default [math_verify]. One object is read as a list of one.",
    )
    training: TrainingSpec = Field(default_factory=TrainingSpec, description="Optimisation and sampling.")
    controller: ControllerSpec = Field(default_factory=ControllerSpec, description="The mu schedule.")
    # ---- issue 17 (MLOps)
    retention: RetentionSpec | None = Field(None, description="Delete older checkpoints' weights (default: keep all).")
    integrations: list[IntegrationSpec] = Field(
        default_factory=list, max_length=4, description="Experiment trackers (tensorboard | mlflow | wandb) that receive metrics, the spec and sample tables."
    )

    resources: ResourcesSpec = Field(default_factory=ResourcesSpec, description="Devices and machines for the job.")

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        if not MODEL_SOURCE.fullmatch(value):
            raise ValueError(
                "must be builtin:tiny, builtin:smollm2-135m, local:<folder name>, hub:<org/name>"
                " or job:<32-hex job id>[:<step>]"
            )
        return value

    @field_validator("reward", mode="before")
    @classmethod
    def _reward_list(cls, value: object) -> object:
        return as_grader_list(value)

    @field_validator("reward")
    @classmethod
    def _reward_checked(cls, value: list) -> list:
        return check_graders(value)

    @model_validator(mode="after")
    def _within_limits(self) -> JobSpec:
        limits = get_settings()
        t = self.training
        checks = [
            ("training.total_steps", t.total_steps, limits.max_total_steps),
            ("training.max_prompt_tokens", t.max_prompt_tokens, limits.max_tokens),
            ("training.max_completion_tokens", t.max_completion_tokens, limits.max_tokens),
            ("training.sft_batch_size", t.sft_batch_size, limits.max_batch_size),
            ("training.rl_prompts_per_step", t.rl_prompts_per_step, limits.max_batch_size),
            ("training.num_generations", t.num_generations, limits.max_generations),
        ]
        for name, value, limit in checks:
            if value > limit:
                raise ValueError(f"{name} = {value} exceeds this deployment's limit of {limit}")
        _check_resources(self, limits)
        if t.warmup_steps > t.total_steps:
            raise ValueError(
                f"training.warmup_steps ({t.warmup_steps}) must not exceed training.total_steps ({t.total_steps})"
            )
        return self


def _check_resources(spec: JobSpec, limits) -> None:
    """Within the deployment's limits, and every rank gets the same number of rows (FSDP's
    collectives need every rank to run the same number of forward passes)."""
    r, t, c = spec.resources, spec.training, spec.controller
    for name, value, limit in (("resources.devices", r.devices, limits.max_devices),
                               ("resources.nodes", r.nodes, limits.max_nodes)):
        if value > limit:
            raise ValueError(f"{name} = {value} exceeds this deployment's limit of {limit}")
    if r.world_size == 1:
        return
    if t.lora is not None:
        raise ValueError("training.lora is not supported on more than one device yet; set resources.devices = 1")
    for name, value in (("training.sft_batch_size", t.sft_batch_size), ("training.rl_prompts_per_step",
                        t.rl_prompts_per_step), ("controller.meta_val_prompts", c.meta_val_prompts)):
        if value % r.world_size:
            raise ValueError(f"{name} = {value} must be a multiple of devices x nodes = {r.world_size}")


def spec_error_lines(error: Exception) -> list[str]:
    """One line per problem, `field.path: message`, for CLI and HTTP error bodies."""
    errors = getattr(error, "errors", None)
    if errors is None:
        return [str(error)]
    lines = []
    for item in errors():
        where = ".".join(str(part) for part in item["loc"]) or "spec"
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"{where}: {message}")
    return lines
