"""Issue 13, security item 4: strings with a trailing newline passed the `$` pattern checks
(Python's `$` also matches before a final "\\n"). Every pattern check now matches the whole
string: Python regexes with `.fullmatch()`, pydantic `pattern=` with its default Rust
engine, whose `$` is the end of the text (checked here, so a switch to the python-re
engine fails this test)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from pydantic import BaseModel, Field, ValidationError

from service import lifecycle
from service.auth import authenticate
from service.db import get_database
from service.errors import InvalidInput
from service.specs import JobSpec
from tests.conftest import TINY_SPEC
from tests.security.conftest import was_refused

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parents[2]


def _regex_uses(folder: str):
    """(file, line, call) of every `<compiled regex>.match(` / `re.match(` / `re.search(` with an
    anchor in api/ and service/: each would accept a trailing newline where `$` is used."""
    for path in sorted((ROOT / folder).rglob("*.py")):
        tree = ast.parse(path.read_text())
        compiled = {
            target.id
            for node in ast.walk(tree) if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
            and getattr(node.value.func, "attr", None) == "compile"
            for target in node.targets if isinstance(target, ast.Name)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("match", "search"):
                owner = node.func.value
                name = owner.id if isinstance(owner, ast.Name) else None
                if name in compiled or name == "re":
                    yield f"{path.relative_to(ROOT)}:{node.lineno} {name}.{node.func.attr}"


def test_13_4_trailing_newlines_fail_every_pattern(tenants, record):
    # pydantic's pattern= semantics in this version: `$` is the end of the text.
    class Probe(BaseModel):
        value: str = Field(pattern=r"^[a-z]{1,5}$")

    with pytest.raises(ValidationError):
        Probe(value="abc\n")
    assert not re.match(r"^[a-z]{1,5}$", "abc\n") is None, "Python's $ does match before a trailing newline"
    partial = [use for folder in ("api", "service") for use in _regex_uses(folder)]
    assert partial == [], f"anchored partial matches left: {partial}"

    spec_fields = {
        "model": ["builtin:tiny\n", "local:mine\n", "hub:org/name\n", "builtin:tiny\r\n"],
        "datasets.sft.source": ["gsm8k\n", "builtin:arithmetic\n", f"file:{'a' * 32}\n", "hf:org/name\n"],
        "datasets.rl.split": ["train\n"],
        "datasets.eval.0.name": ["mine\n"],
    }
    refused = 0
    with tenants.alice() as alice:
        job_id = alice.post("/jobs", json=TINY_SPEC).json()["id"]
        for field, values in spec_fields.items():
            for value in values:
                body = {**TINY_SPEC}
                if field == "model":
                    body["model"] = value
                elif field == "datasets.eval.0.name":
                    body["datasets"] = {"eval": [{"name": value}]}
                else:
                    _, stream, key = field.split(".")
                    body["datasets"] = {stream: {key: value}}
                response = alice.post("/jobs", json=body)
                assert response.status_code == 422 and field in response.json()["detail"], (field, value, response.text)
                refused += 1
        others = [
            ("POST /generate model", alice.post("/generate", json={"model": f"{job_id}\n", "prompts": ["x"]})),
            ("POST /generate model:step", alice.post("/generate", json={"model": f"{job_id}:5\n", "prompts": ["x"]})),
            ("POST /v1/completions model", alice.post("/v1/completions", json={"model": f"{job_id}\n", "prompt": "x"})),
            ("POST /jobs/{id}/evaluations dataset.split", alice.post(
                f"/jobs/{job_id}/evaluations", json={"dataset": {"source": "builtin:arithmetic", "split": "id\n"}})),
            ("POST /files filename", alice.post("/files", params={"filename": "train.jsonl\n"},
                                                 content=b'{"prompt": "p", "answer": "1"}\n')),
            ("GET /jobs status", alice.get("/jobs", params={"status": "queued\n"})),
            ("GET /jobs/{id}/events Last-Event-ID 5_0-3", alice.get(
                f"/jobs/{job_id}/events", headers={"Accept": "text/event-stream", "Last-Event-ID": "5_0-3"})),
            ("GET /jobs/{id}/events Last-Event-ID +5-3", alice.get(
                f"/jobs/{job_id}/events", headers={"Accept": "text/event-stream", "Last-Event-ID": "+5-3"})),
        ]
        for what, response in others:
            assert was_refused(what.split()[1], response), (what, response.status_code, response.text)
            refused += 1
        assert alice.get("/files").json()["files"] == [], "the newline filename was stored"
        assert len(alice.get("/jobs").json()["jobs"]) == 1
    # Idempotency-Key: HTTP clients cannot send a newline in a header, so the service check itself.
    db = get_database(tenants.api.settings.resolved_database_url)
    tenant_id = authenticate(db, tenants.alice_key).tenant_id
    with pytest.raises(InvalidInput, match="Idempotency-Key"):
        lifecycle.create_job(db, tenant_id, JobSpec.model_validate(TINY_SPEC), "retry-1\n", lambda _id: None, 3)
    refused += 1
    # The spec model outside HTTP (CLI, worker) refuses them too.
    with pytest.raises(ValidationError):
        JobSpec.model_validate({**TINY_SPEC, "model": "builtin:tiny\n"})
    record("13.4", f"a trailing newline (and CRLF) on {sum(map(len, spec_fields.values()))} spec values (model, data "
                   f"sources, split, eval name), the /generate and /v1 model references, an evaluation split, an "
                   f"upload filename, the status filter, the Idempotency-Key; Last-Event-ID '5_0-3' and '+5-3'; an "
                   f"AST scan of api/ and service/ for anchored .match()/.search()",
           "422 for each (the service check for the header), nothing created; no partial-match check left",
           f"{refused} values refused (422, or InvalidInput for the Idempotency-Key); no job, file or evaluation "
           f"created; pydantic {__import__('pydantic').VERSION} pattern= rejects 'abc\\n' for ^...$ (Rust engine); "
           f"no anchored .match()/.search() left in api/ or service/")
