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

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator

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


GraderSpec = Annotated[
    Union[MathVerifyGrader, StringCheckGrader, RegexGrader, JsonSchemaGrader, PythonGrader],
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
