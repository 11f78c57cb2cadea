"""Issue 13, security item 3: every name of every capped generation parameter is held to
the deployment's cap, on /generate, /v1/completions, /v1/chat/completions and evaluations.
The example was `max_completion_tokens` on /v1/chat/completions, capped only as `max_tokens`.

Each alias is sent at its cap (accepted: the request gets past validation to the model
lookup, 404 for a job id nobody has) and at cap + 1 (422 naming it). Fields of these request
schemas whose names size the work (tokens, n, prompts) must all be in the table, so an
alias added later without a test fails here."""

from __future__ import annotations

import re

import pytest

from api.app import create_app
from service.settings import get_settings
from tests.security.conftest import error_text, job_with_checkpoint, was_refused

pytestmark = pytest.mark.timeout(120)

NOBODYS_JOB = "0" * 32  # a well-formed model reference no tenant has: 404 once validation passes
CHAT = [{"role": "user", "content": "x"}]
BASES = {
    "/generate": {"model": NOBODYS_JOB, "prompts": ["x"]},
    "/v1/completions": {"model": NOBODYS_JOB, "prompt": "x"},
    "/v1/chat/completions": {"model": NOBODYS_JOB, "messages": CHAT},
}
SIZING = re.compile(r"token|^n$|^best_of$|prompt|^limit$")  # field names that size the work


def _cases():
    """(route, field, body at the cap, body over the cap) for every capped name."""
    caps = get_settings()
    tokens, n, prompts = caps.generate_max_tokens, caps.generate_max_n, caps.generate_max_prompts
    for route, base in BASES.items():
        yield route, "max_tokens", {**base, "max_tokens": tokens}, {**base, "max_tokens": tokens + 1}
        yield route, "n", {**base, "n": n}, {**base, "n": n + 1}
    chat = BASES["/v1/chat/completions"]
    yield ("/v1/chat/completions", "max_completion_tokens", {**chat, "max_completion_tokens": tokens},
           {**chat, "max_completion_tokens": tokens + 1})
    # Both names at once: the larger one is what the engine would use, so it is the one checked.
    yield ("/v1/chat/completions", "max_completion_tokens", {**chat, "max_tokens": 1, "max_completion_tokens": tokens},
           {**chat, "max_tokens": 1, "max_completion_tokens": tokens + 1})
    # best_of sizes the work like n (issue 19 refuses best_of != n): capped with it.
    completions = BASES["/v1/completions"]
    yield ("/v1/completions", "best_of", {**completions, "n": n, "best_of": n},
           {**completions, "n": n, "best_of": n + 1})
    yield ("/generate", "prompts", {**BASES["/generate"], "prompts": ["x"] * prompts},
           {**BASES["/generate"], "prompts": ["x"] * (prompts + 1)})
    yield ("/v1/completions", "prompt", {**BASES["/v1/completions"], "prompt": ["x"] * prompts},
           {**BASES["/v1/completions"], "prompt": ["x"] * (prompts + 1)})


def test_13_3_every_alias_of_a_capped_parameter_is_capped(tenants, record):
    schema = create_app(tenants.api.settings, publish=lambda _id: None, broker_ping=lambda: None).openapi()
    cases = list(_cases())
    tested = {(route, field) for route, field, _, _ in cases}
    for route in BASES:
        ref = schema["paths"][route]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        props = schema["components"]["schemas"][ref.rsplit("/", 1)[1]]["properties"]
        sizing = {name for name in props if SIZING.search(name) and name != "prompt_tokens"}
        assert {(route, name) for name in sizing} <= tested, f"{route}: untested work-sizing fields {sizing}"
    caps = get_settings()
    job_id, evaluation_id = job_with_checkpoint(tenants)
    evaluation = f"/jobs/{job_id}/evaluations"
    eval_cases = [
        ("sampling.max_tokens", {"sampling": {"max_tokens": caps.generate_max_tokens + 1}}),
        ("sampling.n", {"sampling": {"n": caps.generate_max_n + 1}}),
        ("limit", {"limit": caps.evaluation_max_items + 1}),
        ("dataset.limit", {"dataset": {"source": "builtin:arithmetic", "split": "id",
                                       "limit": caps.evaluation_max_items + 1}}),
    ]
    with tenants.alice() as alice:
        for route, field, at_cap, over in cases:
            response = alice.post(route, json=at_cap)
            assert response.status_code == 404, (route, field, "at the cap", response.status_code, response.text)
            response = alice.post(route, json=over)
            assert was_refused(route, response), (route, field, "over the cap", response.status_code, response.text)
            assert field.split(".")[-1] in error_text(response), (route, field, response.json())
        for field, body in eval_cases:
            response = alice.post(evaluation, json=body)
            assert response.status_code == 422, (field, response.status_code, response.text)
            assert "limit" in response.json()["detail"] or field.split(".")[-1] in response.json()["detail"], response.text
        listed = [e["id"] for e in alice.get(evaluation).json()["evaluations"]]
        assert listed == [evaluation_id], "an over-cap evaluation was queued"
    record("13.3", f"each capped generation parameter under every name it is accepted by, at its cap and one over: "
                   f"{', '.join(sorted(f'{r} {f}' for r, f in tested))}; evaluations: "
                   f"{', '.join(f for f, _ in eval_cases)}",
           "at the cap: accepted; over: 422 naming the parameter, nothing queued",
           f"{len(cases)} over-cap requests and {len(eval_cases)} over-cap evaluations answered 422 naming "
           f"the parameter (max_completion_tokens on /v1/chat/completions included, also next to a small "
           f"max_tokens); at the cap all passed validation (404 for the unknown model); no evaluation queued")
