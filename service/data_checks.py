"""Whether a job's data has the fields its use needs, checked when the job is created.

The validation stream feeds the meta-gradient's utility (DESIGN §2): `reward` scores sampled
completions with the job's graders, so every record needs the fields they read (`answer` for
math_verify); `nll` needs the expert `completion`. The bandit controller scores greedy
completions with the graders, so it needs their fields too. A stream without them used to fail with a
KeyError at the first meta step, minutes into a run; `POST /jobs` now answers one line
naming the field and the dataset. Built-in sources have fixed fields; an uploaded file is
read (one line at a time); a hub dataset is only known when loaded, so the trainer repeats
the check at setup (workers/trainer/loop.py) before its first step.
"""

from __future__ import annotations

from pathlib import Path

from service.errors import InvalidInput
from service.files import file_path
from service.records import iter_jsonl
from service.specs import DataSourceSpec, JobSpec

# Fields every record of a built-in source carries (workers/trainer/data.py).
BUILTIN_FIELDS = {
    "builtin:arithmetic": {"prompt", "completion", "answer"},
    "builtin:json_extract": {"prompt", "completion", "name", "age", "city"},
    "gsm8k": {"prompt", "completion", "answer"},
    "svamp": {"prompt", "completion", "answer"},
}


def reads_validation(spec: JobSpec) -> bool:
    """Whether the job reads datasets.validation: AMFT's meta step, or its bandit controller."""
    c = spec.controller
    return spec.method == "amft" and (c.kind == "bandit" or c.eta_meta > 0)


def validation_fields(spec: JobSpec) -> dict[str, str]:
    """{field: what needs it} for the validation stream; empty when the job never reads it."""
    c = spec.controller
    if not reads_validation(spec):
        return {}
    if c.kind == "bandit":
        use = "the bandit's held-out accuracy (controller.kind)"
    elif c.meta_utility == "nll":
        return {"completion": "the meta-gradient's nll utility (controller.meta_utility)"}
    else:
        use = "the meta-gradient's reward utility"
    return {name: f"{use} (grader {g.label} reads it)" for g in spec.reward for name in sorted(g.fields_read())}


def check_validation_data(spec: JobSpec, artifacts_dir: Path | None) -> None:
    """Raise InvalidInput (one line) if the validation stream lacks a field it needs.

    `artifacts_dir` is where uploads live; None skips uploaded files (checked at setup)."""
    needs = validation_fields(spec)
    source = spec.datasets.validation
    missing = _missing_field(source, set(needs), artifacts_dir) if needs else None
    if missing is not None:
        name, where = missing
        hint = "; or set controller.meta_utility: nll" if "reward" in needs[name] else ""
        raise InvalidInput(f"datasets.validation: {source.source} has no {name!r} {where}, which {needs[name]} "
                           f"needs: use a validation set with {name!r} on every record{hint}")


def _missing_field(source: DataSourceSpec, fields: set[str], artifacts_dir: Path | None) -> tuple[str, str] | None:
    """(a needed field, where it is missing) or None when every record has every field."""
    if source.source in BUILTIN_FIELDS:
        absent = sorted(fields - BUILTIN_FIELDS[source.source])
        return (absent[0], "on its records") if absent else None
    if not source.source.startswith("file:") or artifacts_dir is None:
        return None  # hf: is known only when loaded; the trainer checks it at setup
    path = file_path(artifacts_dir, source.source.removeprefix("file:"))
    with path.open("rb") as lines:
        for number, record in enumerate(iter_jsonl(lines), start=1):
            if source.limit is not None and number > source.limit:
                break
            for name in sorted(fields):
                if record.get(name) in (None, ""):
                    return name, f"on record {number}"
    return None
