"""Issue 13, security item 2: every float of every request model is finite. The test walks
the app's own OpenAPI schema, so a float field added later is covered without editing it:
each one answers 422 naming the field for Infinity, -Infinity and NaN, as JSON literals and
as strings. Uploaded records are checked too (a numeric `answer`)."""

from __future__ import annotations

import json
import re

import pytest

from api.app import create_app
from service.specs import JobSpec
from tests.conftest import TINY_SPEC
from tests.security.conftest import error_text, was_refused

pytestmark = pytest.mark.timeout(180)

BAD = [float("inf"), float("-inf"), float("nan"), "Infinity", "-Infinity", "NaN", "inf", "nan", "1e999"]
CHAT = [{"role": "user", "content": "x"}]
# A valid body for each operation that takes one; a new body-taking route must be added here.
BASE_BODIES = {
    "/jobs": TINY_SPEC,
    "/generate": {"model": "base:builtin:tiny", "prompts": ["x"]},
    "/v1/completions": {"model": "base:builtin:tiny", "prompt": "x"},
    "/v1/chat/completions": {"model": "base:builtin:tiny", "messages": CHAT},
    "/jobs/{job_id}/evaluations": {},
    "/evaluations": {"model": "base:builtin:tiny"},
    "/v1/models/{model_id}/tokenize": {"prompt": "x"},
    "/v1/models/{model_id}/detokenize": {"tokens": [1]},
    "/v1/models/{model_id}/v1/completions": {"prompt": "x"},
    "/webhooks": {"url": "https://hooks.example.com/amft", "events": ["job.succeeded"]},
    "/v1/fine_tuning/jobs": {"model": "builtin:tiny", "training_file": "file-0"},
}


def _resolve(schema: dict, node: dict) -> dict:
    while "$ref" in node:
        node = schema["components"]["schemas"][node["$ref"].rsplit("/", 1)[1]]
    return node


def number_paths(schema: dict, node: dict, path: tuple = (), seen: frozenset = frozenset()):
    """Every JSON path (tuple of keys / list indexes) at which the request schema takes a number."""
    ref = node.get("$ref")
    if ref in seen:
        return
    seen = seen | {ref} if ref else seen
    node = _resolve(schema, node)
    if node.get("type") == "number":
        yield path
    for option in node.get("anyOf", []) + node.get("oneOf", []) + node.get("allOf", []):
        yield from number_paths(schema, option, path, seen)
    for name, prop in node.get("properties", {}).items():
        yield from number_paths(schema, prop, path + (name,), seen)
    if node.get("type") == "array" and "items" in node:
        yield from number_paths(schema, node["items"], path + (0,), seen)


def with_value(body: dict, path: tuple, value) -> dict:
    """A deep copy of `body` with `value` at `path`, creating objects and one-item lists
    (a list of numbers gets `value` as its item)."""
    body = json.loads(json.dumps(body))
    node = body
    for key, nxt in zip(path, path[1:]):
        if isinstance(key, int):
            while len(node) <= key:
                node.append({})
            node = node[key]
        else:
            default = [] if isinstance(nxt, int) else {}
            if not isinstance(node.get(key), type(default)):
                node[key] = default
            node = node[key]
    if isinstance(path[-1], int):  # a list of numbers (e.g. controller.bandit_arms)
        while len(node) <= path[-1]:
            node.append(value)
    node[path[-1]] = value
    return body


def test_13_2_every_request_float_is_finite(tenants, record):
    schema = create_app(tenants.api.settings, publish=lambda _id: None, broker_ping=lambda: None).openapi()
    fields: dict[str, list[tuple]] = {}
    for route, operations in schema["paths"].items():
        for method, operation in operations.items():
            numeric_params = [p["name"] for p in operation.get("parameters", []) if "number" in json.dumps(p["schema"])]
            assert numeric_params == [], f"{method} {route} has float parameters {numeric_params}: test them too"
            body = operation.get("requestBody", {}).get("content", {}).get("application/json")
            if body is None:
                continue
            assert route in BASE_BODIES, f"{method} {route} takes a JSON body: add a valid one to BASE_BODIES"
            fields[route] = sorted(set(number_paths(schema, body["schema"])), key=str)
    spec_fields = {".".join(map(str, p)) for p in fields["/jobs"]}
    # The examples are among the walked fields (so the walk itself is not empty or wrong).
    assert {"training.max_grad_norm", "training.kl_beta", "controller.eta_H", "controller.eta_meta",
            "controller.target_entropy", "training.lora.dropout", "reward.0.format_weight", "reward.0.weight"} <= spec_fields
    refused = 0
    with tenants.alice() as alice:
        job_id = alice.post("/jobs", json=TINY_SPEC).json()["id"]
        for route, paths in fields.items():
            url = route.replace("{job_id}", job_id)
            for path in paths:
                where = ".".join(map(str, path))
                for value in BAD:
                    # json.dumps writes float('inf') as the literal Infinity (httpx's json= refuses to).
                    body = json.dumps(with_value(BASE_BODIES[route], path, value))
                    response = alice.post(url, content=body, headers={"Content-Type": "application/json"})
                    assert was_refused(route, response), (route, where, value, response.status_code, response.text)
                    # A tagged union (reward graders) names its tag in the location: reward.0.math_verify.weight.
                    named = r"(\.\w+)?\.".join(re.escape(str(part)) for part in path)
                    assert re.search(named, error_text(response)), (route, where, value, response.json())
                    refused += 1
        jobs = alice.get("/jobs").json()["jobs"]
        assert len(jobs) == 1, "a non-finite spec created a job"
        # Uploaded records: a numeric answer must be finite too.
        for literal in ("Infinity", "-Infinity", "NaN"):
            line = b'{"prompt": "p", "answer": ' + literal.encode() + b"}\n"
            response = alice.post("/files", params={"filename": "x.jsonl"}, content=line)
            assert response.status_code == 422 and "finite" in response.json()["detail"], response.text
            refused += 1
    # The spec model refuses them outside HTTP as well (the CLI and the worker validate with it).
    for path in fields["/jobs"]:
        with pytest.raises(ValueError):
            JobSpec.model_validate(with_value(TINY_SPEC, path, float("nan")))
    count = sum(len(paths) for paths in fields.values())
    record("13.2", f"Infinity, -Infinity, NaN (JSON literals and strings), 'inf', 'nan', 1e999 in each of the "
                   f"{count} float fields of every request body found in the OpenAPI schema "
                   f"({', '.join(f'{r}: {len(p)}' for r, p in fields.items())}); numeric answers in an upload",
           "422 naming the field, nothing stored",
           f"{refused} requests answered 422 naming the field (e.g. training.max_grad_norm, training.kl_beta, "
           f"controller.eta_H, controller.eta_meta, controller.target_entropy, training.lora.dropout); no job "
           f"created; JobSpec.model_validate refuses NaN in all {len(fields['/jobs'])} spec float fields")
