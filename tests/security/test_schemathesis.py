"""Issue 6, case 22: Schemathesis against the service's own OpenAPI schema, over HTTP,
with both tenants' keys. No 5xx, and every response conforms to the schema (body,
status code, content type). Version pinned in requirements.txt; a fixed seed
(derandomize) and a bounded number of examples per operation keep it CI-sized.

The inference worker is replaced by a stub that answers like it (the API is under test;
the worker has its own tests), so valid generation requests get a 200 in milliseconds.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import TINY_SPEC
from tests.security.conftest import job_with_checkpoint

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]
MAX_EXAMPLES = 25  # per operation and key
CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance, content_type_conformance]


class StubInference:
    """Answers generation requests as the inference worker would (n completions per prompt)."""

    def generate(self, payload: dict, disconnected=None) -> dict:
        if payload.get("op"):  # the served tokenizer (/v1/models/{id}/tokenize ...)
            return {"tokens": [1, 2], "count": 2, "prompt": "ab", "eos_token": "</s>"}
        n = payload["sampling"]["n"]
        results = [{"prompt_tokens": 3, "completions": [{"text": " 4", "tokens": 2, "finish_reason": "stop"}] * n}
                   for _ in payload["prompts"]]
        return {"results": results, "backend": "stub"}

    def stream(self, payload: dict, disconnected=None):
        """Streamed requests: a text delta per choice, then the reply."""
        reply = self.generate(payload)
        yield {"deltas": [[i, " "] for i in range(len(payload["prompts"]) * payload["sampling"]["n"])]}
        yield reply

    def publish_evaluation(self, evaluation_id: str) -> None:
        pass


def test_22_schemathesis_finds_no_5xx_and_no_schema_violation(tenants, record):
    tenants.api.app.state.inference = StubInference()
    # No worker runs here: /readyz checks the database and the broker only (else an honest 503).
    state = tenants.api.app.state
    state.settings = state.settings.model_copy(update={"ready_worker_queues": ""})
    job_id, _ = job_with_checkpoint(tenants)  # so that some generated ids hit real rows
    schema = schemathesis.openapi.from_url(f"{tenants.api.url}/openapi.json")
    failures, calls = [], {"n": 0}
    operations = [result.ok() for result in schema.get_all_operations()]
    def runner(operation, key):
            @settings(max_examples=MAX_EXAMPLES, derandomize=True, database=None, deadline=None,
                      phases=[Phase.explicit, Phase.generate],
                      suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy())
            def run(case):
                if case.path_parameters and "job_id" in case.path_parameters and calls["n"] % 3 == 0:
                    case.path_parameters["job_id"] = job_id  # every third case uses a real job
                calls["n"] += 1
                response = case.call(base_url=tenants.api.url, headers={"Authorization": f"Bearer {key}"},
                                     timeout=30)
                try:
                    case.validate_response(response, checks=CHECKS)
                except (Exception, BaseExceptionGroup) as error:  # noqa: BLE001 - collect all, report at the end
                    failures.append(f"{operation.label}: {str(error)[:600]}")

            return run

    for operation in operations:
        for key in (tenants.alice_key, tenants.bob_key):
            runner(operation, key)()
    # Valid requests a fuzzer rarely builds (a real model reference), so their 200s are checked too.
    chat = [{"role": "user", "content": "2+2?"}]
    explicit = {
        ("POST", "/jobs"): [TINY_SPEC],
        ("POST", "/generate"): [{"model": job_id, "prompts": ["2+2?"], "n": 2}, {"model": "base:builtin:tiny",
                                                                               "prompts": [chat]}],
        ("POST", "/v1/completions"): [{"model": f"{job_id}:5", "prompt": ["a", "b"]}],
        ("POST", "/v1/chat/completions"): [{"model": job_id, "messages": chat},
                                           {"model": job_id, "messages": chat, "stream": True}],
    }
    by_route = {(op.method.upper(), op.path): op for op in operations}
    for (method, path), bodies in explicit.items():
        for body in bodies:
            case = by_route[(method, path)].Case(body=body)
            response = case.call(base_url=tenants.api.url, headers={"Authorization": f"Bearer {tenants.alice_key}"})
            assert response.status_code in (200, 201), (path, response.status_code, response.text[:300])
            try:
                case.validate_response(response, checks=CHECKS)
            except (Exception, BaseExceptionGroup) as error:  # noqa: BLE001
                failures.append(f"{method} {path} {body}: {str(error)[:600]}")
            calls["n"] += 1
    assert not failures, f"{len(failures)} failures:\n\n" + "\n\n".join(list(dict.fromkeys(failures))[:15])
    record("22", f"Schemathesis {schemathesis.__version__ if hasattr(schemathesis, '__version__') else ''} on "
           f"/openapi.json: {len(operations)} operations x 2 tenants' keys x {MAX_EXAMPLES} examples (derandomized)",
           "no 5xx, responses conform to the schema",
           f"{calls['n']} requests, checks {[c.__name__ for c in CHECKS]}: no failure")
