"""The reward of a job: a list of weighted graders, each a pydantic model keyed by `kind`.

The reward of one completion is sum(weight_i * score_i) / sum(weight_i); each grader is
also reported on its own as the metric `reward/<name>`. The same list scores training
rollouts, `eval_every` evaluations and POST /jobs/{id}/evaluations
(workers/trainer/graders.py does the scoring; this module only validates).

An old spec's `reward: {"kind": "math_verify", "format_weight": ...}` (one object) still
means the same: it is read as a one-grader list. Pure pydantic: the API imports it.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator

GRADER_NAME = r"^[A-Za-z0-9_]{1,32}$"
FIELD_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
FILE_SOURCE = re.compile(r"file:[0-9a-f]{32}")  # fullmatch: `$` passes "...\n"


class _Grader(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = Field(
        None, pattern=GRADER_NAME, description="Metric name (reward/<name>); defaults to the kind."
    )
    weight: float = Field(1.0, ge=0.0, le=100.0, description="Weight of this grader in the combined reward.")

    @property
    def label(self) -> str:
        return self.name or self.kind  # type: ignore[attr-defined]

    def fields_read(self) -> set[str]:
        """Record fields this grader needs on every record (checked when data loads)."""
        return set()


class MathVerifyGrader(_Grader):
    """Today's verifier: math-verify equivalence of the extracted answer with a field."""

    kind: Literal["math_verify"] = Field("math_verify", description="Math answer equivalence (math-verify).")
    format_weight: float = Field(
        0.0, ge=0.0, le=1.0, description="Extra reward for an explicitly marked answer (\\boxed or ####)."
    )
    field: str = Field("answer", pattern=FIELD_NAME, description="Record field holding the ground truth.")

    def fields_read(self) -> set[str]:
        return {self.field}


class StringCheckGrader(_Grader):
    """1 when the completion (or one key of it parsed as JSON) matches a record field."""

    kind: Literal["string_check"] = Field(description="Compare text with a record field.")
    field: str = Field(pattern=FIELD_NAME, description="Record field holding the expected text.")
    operation: Literal["equals", "contains", "starts_with"] = Field(
        "equals", description="How the (stripped) completion is compared with the field."
    )
    case_sensitive: bool = Field(True, description="False compares case-insensitively (casefold).")
    json_key: str | None = Field(
        None, max_length=64, description="Compare this key of the completion parsed as a JSON object instead."
    )

    def fields_read(self) -> set[str]:
        return {self.field}


class RegexGrader(_Grader):
    """1 when the pattern matches and each named group equals the record field of that name."""

    kind: Literal["regex"] = Field(description="A regular expression over the completion.")
    pattern: str = Field(min_length=1, max_length=1000, description="Python `regex` syntax; (?P<field>...) groups are compared with fields.")
    mode: Literal["fullmatch", "search"] = Field("search", description="Match the whole stripped completion, or anywhere.")
    case_sensitive: bool = Field(True, description="False matches and compares case-insensitively.")

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as error:
            raise ValueError(f"not a valid regular expression: {error}") from None
        return value

    def fields_read(self) -> set[str]:
        return set(re.compile(self.pattern).groupindex)


class JsonSchemaGrader(_Grader):
    """1 when the completion parses as JSON and validates against the schema."""

    kind: Literal["json_schema"] = Field(description="JSON that validates against a JSON Schema.")
    json_schema: dict = Field(alias="schema", description="A JSON Schema (draft 2020-12 unless $schema says otherwise).")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, serialize_by_alias=True)

    @field_validator("json_schema")
    @classmethod
    def _valid_schema(cls, value: dict) -> dict:
        import jsonschema  # pure Python; only spec validation needs it here

        try:
            jsonschema.validators.validator_for(value).check_schema(value)
        except jsonschema.SchemaError as error:
            raise ValueError(f"not a valid JSON Schema: {error.message}") from None
        return value


class PythonGrader(_Grader):
    """A user's TRL-style `reward(completions, **columns)` from an uploaded file, sandboxed."""

    kind: Literal["python"] = Field(description="A user function, run in a sandbox process per batch.")
    file: str = Field(description="file:<id> of a grader uploaded with POST /files?purpose=grader.")
    max_consecutive_failures: int = Field(
        3, ge=1, le=1000, description="Fail the job after this many batches in a row where the grader failed."
    )

    @field_validator("file")
    @classmethod
    def _file_ref(cls, value: str) -> str:
        if not FILE_SOURCE.fullmatch(value):
            raise ValueError("must be file:<32-hex file id> of an uploaded grader (POST /files?purpose=grader)")
        return value


# A served judge: `<job_id>[:<step>]` (also written `job:<job_id>[:<step>]`) or a base model.
SERVED_JUDGE = re.compile(r"(job:)?[0-9a-f]{32}(:[0-9]{1,9})?|base:builtin:(tiny|smollm2-135m)")
# A judge template's pieces: `{{` and `}}` (literal braces) or a `{name}` placeholder.
TEMPLATE_TOKEN = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]{0,63})\}")
TEMPLATE_NAMES = {"completion", "prompt"}  # not record fields a grader needs from every record


class ModelGrader(_Grader):
    """An LLM judge: a prompt template over the record and the completion, sent to a model
    this service serves or to an OpenAI-compatible URL on the operator's allowlist; the score
    is the first match of `score_pattern` in its reply, divided by `score_max`, clamped to [0, 1]."""

    kind: Literal["model"] = Field(description="An LLM judge whose reply holds the score.")
    model: str = Field(
        min_length=1, max_length=200,
        description="Without `url`: <job_id>[:<step>] (or job:<job_id>[:<step>]) of your own job, or "
        "base:builtin:tiny | base:builtin:smollm2-135m, generated by this service's inference worker. "
        "With `url`: the model name that endpoint serves.",
    )
    url: str | None = Field(
        None, max_length=500,
        description="Base URL of an OpenAI-compatible API (e.g. https://host/v1); must be named by the "
        "deployment's AMFT_JUDGE_URL_ALLOWLIST. The deployment's AMFT_JUDGE_API_KEY is its bearer token.",
    )
    prompt: str = Field(
        min_length=1, max_length=20_000,
        description="Template of the judge's prompt: {completion}, {prompt} and {<record field>} are "
        "replaced by their values ({{ and }} are literal braces); it must contain {completion}.",
    )
    format: Literal["chat", "raw"] = Field(
        "chat", description="chat: the prompt is one user message (chat template); raw: sent as plain text."
    )
    score_pattern: str = Field(
        r"-?\d+(?:\.\d+)?", min_length=1, max_length=500,
        description="Regex searched in the reply; its first group (or the whole match) is the number. "
        "A reply without a match scores 0 and is reported as the grader's error.",
    )
    score_max: float = Field(1.0, gt=0.0, le=1e6, description="The parsed number is divided by this (e.g. 10 for 0-10).")
    max_tokens: int = Field(16, ge=1, le=1024, description="Longest judge reply, in tokens.")
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="Judge sampling temperature (0 = greedy).")
    max_consecutive_failures: int = Field(
        3, ge=1, le=1000, description="Fail the job after this many batches in a row the judge could not score."
    )

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("score_pattern")
    @classmethod
    def _pattern_compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as error:
            raise ValueError(f"not a valid regular expression: {error}") from None
        return value

    @field_validator("prompt")
    @classmethod
    def _has_completion(cls, value: str) -> str:
        if "completion" not in template_names(value):
            raise ValueError("must contain {completion}, where the graded completion goes")
        return value

    @field_validator("url")
    @classmethod
    def _url_allowed(cls, value: str | None) -> str | None:
        if value is not None and (problem := judge_url_problem(value)) is not None:
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _served_model(self) -> "ModelGrader":
        if self.url is None and not SERVED_JUDGE.fullmatch(self.model):
            raise ValueError(
                "model: without url, use <job_id>[:<step>], job:<job_id>[:<step>], base:builtin:tiny "
                "or base:builtin:smollm2-135m"
            )
        return self

    def fields_read(self) -> set[str]:
        return template_names(self.prompt) - TEMPLATE_NAMES

    @property
    def served_model(self) -> str:
        """The service's model reference (/generate's form) of a served judge."""
        return self.model.removeprefix("job:")


def template_names(template: str) -> set[str]:
    """The {name} placeholders of a judge prompt template."""
    return {match[1] for match in TEMPLATE_TOKEN.finditer(template) if match[1]}


def render_template(template: str, values: dict[str, str]) -> str:
    """The template with each {name} replaced by values[name] and {{ / }} by one brace.
    Plain substitution, not str.format: a placeholder cannot reach attributes or indexes."""
    return TEMPLATE_TOKEN.sub(lambda match: values[match[1]] if match[1] else match[0][0], template)


def judge_url_problem(url: str, allowlist: str | None = None) -> str | None:
    """Why a judge URL may not be called, or None when the allowlist (default: this
    process's AMFT_JUDGE_URL_ALLOWLIST) names it, compared without a trailing slash."""
    from service.settings import get_settings

    allowed = judge_url_allowlist(get_settings().judge_url_allowlist if allowlist is None else allowlist)
    if url.rstrip("/") not in allowed:
        return (f"{url[:100]!r} is not on this deployment's judge allowlist (AMFT_JUDGE_URL_ALLOWLIST); "
                "ask the operator to add it, or judge with a model this service serves")
    return None


def judge_url_allowlist(setting: str) -> set[str]:
    """The comma-separated AMFT_JUDGE_URL_ALLOWLIST as a set of base URLs."""
    return {item.strip().rstrip("/") for item in setting.split(",") if item.strip()}


GraderSpec = Annotated[
    Union[MathVerifyGrader, StringCheckGrader, RegexGrader, JsonSchemaGrader, PythonGrader, ModelGrader],
    Field(discriminator="kind"),
]


def as_grader_list(value: object) -> object:
    """An old single-object `reward` becomes a one-grader list; `kind` defaults to math_verify."""
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, list):
        return [{"kind": "math_verify", **item} if isinstance(item, dict) and "kind" not in item else item for item in value]
    return value


def check_graders(graders: list) -> list:
    """At least one grader, unique names, some positive weight."""
    if not graders:
        raise ValueError("needs at least one grader")
    names = [grader.label for grader in graders]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"grader names must be unique; give these a `name`: {', '.join(duplicates)}")
    if sum(grader.weight for grader in graders) <= 0:
        raise ValueError("at least one grader needs a positive weight")
    return graders


def parse_graders(value: object) -> list:
    """A stored spec's `reward` (list, old single object, or None = default) as grader models."""
    if value is None:
        return [MathVerifyGrader()]
    return check_graders(_GRADER_LIST.validate_python(as_grader_list(value)))


_GRADER_LIST = TypeAdapter(list[GraderSpec])
