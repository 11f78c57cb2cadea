"""The dashboard in a real browser (headless Chromium) against a real service: the API with
PostgreSQL, Redis and a real Celery train worker running the real tiny model."""

from __future__ import annotations

import pytest

from tests.api.browser import browser, screenshot, sign_in  # noqa: F401 (fixture)
from tests.conftest import TINY_SPEC

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
LONG_SPEC = {**TINY_SPEC, "training": {**TINY_SPEC["training"], "total_steps": 400, "save_every": 200}}


def chart_points(page, name: str) -> int:
    return int(page.get_attribute(f"#chart-{name}", "data-points") or 0)


def test_served_without_a_key_and_with_a_strict_policy(pg_api):
    with pg_api.client() as anonymous:
        page = anonymous.get("/ui/")
        assert page.status_code == 200 and '<script type="module" src="app.js">' in page.text
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert anonymous.get("/ui", follow_redirects=False).headers["location"].endswith("/ui/")
        assert anonymous.get("/ui/vendor/uPlot.esm.js").status_code == 200
        assert anonymous.get("/ui/vendor/uPlot.LICENSE").status_code == 200
        assert anonymous.get("/jobs").status_code == 401  # the data still needs a key


def test_sign_in_watch_cancel_validate_and_tenancy(pg_api, pg_workers, browser):  # noqa: F811
    pg_workers.start()
    alice, bob = pg_api.key("alice"), pg_api.key("bob")
    with pg_api.client(alice) as client:
        job_id = client.post("/jobs", json=LONG_SPEC).json()["id"]
    # bypass_csp: the page forbids eval, which Playwright's wait_for_function uses to poll
    context = browser.new_context(viewport={"width": 1280, "height": 800}, bypass_csp=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))

    sign_in(page, pg_api.url, "amft_not_a_key")
    assert "not accepted" in page.locator("#sign-in-status").inner_text(timeout=10_000)

    sign_in(page, pg_api.url, alice)
    row = page.locator(f'tr[data-job="{job_id}"]')
    row.wait_for(timeout=15_000)
    assert "amft" in row.inner_text() and "builtin:tiny" in row.inner_text()
    page.wait_for_function(f'document.querySelector(\'tr[data-job="{job_id}"]\')?.innerText.includes("running")',
                           timeout=120_000)
    screenshot(page, "jobs-list")

    row.get_by_role("link").click()
    page.wait_for_function("(window.__amft.charts.mu?.points || 0) >= 2", timeout=400_000)
    first_mu, first_reward = chart_points(page, "mu"), chart_points(page, "reward")
    page.wait_for_function(f"window.__amft.charts.mu.points > {first_mu} && "  # new steps land on the charts
                           f"window.__amft.charts.reward.points > {first_reward}", timeout=400_000)
    state = page.evaluate("window.__amft.charts")
    assert state["mu"]["points"] > first_mu and 0.0 <= state["mu"]["last"] <= 1.0
    assert state["reward"]["points"] > first_reward
    assert page.locator("#events-log li[data-kind=started]").count() >= 1
    screenshot(page, "job-page")

    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("#cancel-job").click()
    page.wait_for_function("document.querySelector('#job-header')?.innerText.includes('cancelled')", timeout=120_000)
    with pg_api.client(alice) as client:
        assert client.get(f"/jobs/{job_id}").json()["status"] == "cancelled"

    page.goto(f"{pg_api.url}/ui/#/new")
    page.get_by_label("Job spec (YAML or JSON)").fill("method: amft\ntraining:\n  total_steps: 0\n")
    page.get_by_role("button", name="Submit job").click()
    problem = page.locator('#spec-errors li[data-field="training.total_steps"]')
    problem.wait_for(timeout=10_000)
    assert "line 3" in problem.inner_text()

    page.get_by_role("button", name="Sign out").click()
    sign_in(page, pg_api.url, bob)
    page.locator("#jobs-table tbody tr").first.wait_for(timeout=10_000)
    assert "No jobs yet" in page.locator("#jobs-table").inner_text()
    assert page.locator(f'tr[data-job="{job_id}"]').count() == 0
    page.goto(f"{pg_api.url}/ui/#/job/{job_id}")
    page.wait_for_function("document.querySelector('#job-header')?.innerText.includes('No job')", timeout=10_000)
    assert errors == []
    context.close()


def test_compare_two_jobs_and_upload_a_dataset(pg_api, browser, tmp_path):  # noqa: F811
    """Two jobs' points written through the worker's own write path, overlaid on the compare page,
    which offers every metric they recorded (here also eval_accuracy_id, at eval steps only, and a
    grader's reward/exact), not a fixed list."""
    from service import lifecycle, metrics
    from service.auth import authenticate
    from service.db import get_database
    from service.specs import JobSpec

    db = get_database(pg_api.settings.resolved_database_url)
    key = pg_api.key("carol")
    tenant = authenticate(db, key).tenant_id
    jobs = []
    for method, eval_steps in (("amft", (5,)), ("sft_then_grpo", (3, 5))):
        job, _ = lifecycle.create_job(db, tenant, JobSpec.model_validate({**TINY_SPEC, "method": method}),
                                      None, lambda _id: None, 3)
        held = lifecycle.claim(db, job.id, "test-writer", lease_seconds=300)
        for step in range(1, 6):
            evaluated = {"eval_accuracy_id": step / 8} if step in eval_steps else {}
            metrics.record_step(db, held, {"step": step, "mu": 0.5, "reward_mean": step / 10,
                                           "reward/exact": step / 10, **evaluated})
        jobs.append(job.id)
    context = browser.new_context(viewport={"width": 1280, "height": 800}, bypass_csp=True)
    page = context.new_page()
    sign_in(page, pg_api.url, key)
    page.locator("#jobs-table tbody tr[data-job]").first.wait_for(timeout=15_000)
    page.goto(f"{pg_api.url}/ui/#/compare")
    for job_id in jobs:
        page.locator(f"#pick-{job_id}").check()
    page.get_by_label("Metric").select_option("reward_mean")
    page.get_by_role("button", name="Overlay").click()
    page.wait_for_function("window.__amft.compare?.jobs === 2", timeout=15_000)
    compared = page.evaluate("window.__amft.compare")
    assert compared["metric"] == "reward_mean" and compared["points"] == [5, 5]
    assert {"eval_accuracy_id", "reward/exact"} <= set(compared["names"])
    page.get_by_label("Metric").select_option("eval_accuracy_id")
    page.get_by_role("button", name="Overlay").click()
    page.wait_for_function("window.__amft.compare.metric === 'eval_accuracy_id'", timeout=15_000)
    compared = page.evaluate("window.__amft.compare")
    assert dict(zip(compared["ids"], compared["points"])) == {jobs[0]: 1, jobs[1]: 2}  # each job's eval steps

    page.goto(f"{pg_api.url}/ui/#/new")
    data = tmp_path / "mine.jsonl"
    data.write_text('{"prompt": "1+1=", "answer": "2"}\n')
    page.get_by_label("File").set_input_files(str(data))
    page.get_by_role("button", name="Upload").click()
    page.locator("#upload-result code").wait_for(timeout=15_000)
    assert page.locator("#upload-result code").inner_text().startswith("file:")
    context.close()
