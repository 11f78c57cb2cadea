"""How a `model` grader reaches its judge (service/grader_specs.py: ModelGrader).

- A served judge (`<job_id>[:<step>]`, `base:builtin:...`) is resolved like /generate's
  `model` (service.inference.resolve_model: the tenant's own checkpoints only) and generated
  by the inference worker over the `inference` queue, exactly as the API sends /generate.
  The trainer process never loads the judge's weights.
- A URL judge is called with the official `openai` client, only when the deployment's
  AMFT_JUDGE_URL_ALLOWLIST names it (checked again here: the setting may have changed since
  the job was created), with AMFT_JUDGE_API_KEY as its bearer token.

`format: chat` sends the prompt as one user turn (a served model formats it as it formats
its training prompts; a URL gets /chat/completions), `raw` sends the text as it is
(a served model's raw prompt; a URL gets /completions). No torch here.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import cached_property

from service.grader_specs import ModelGrader, judge_url_problem
from service.settings import Settings


URL_PROMPTS_PER_REQUEST = 16  # prompts per /completions request to a URL judge


class JudgeError(RuntimeError):
    """The judge could not be asked (refused URL, unknown model, worker timeout)."""


class Judge:
    """Sends a model grader's prompts to its judge; one reply text per prompt.

    `tenant_id` scopes served judges to that tenant's checkpoints; with only `job_id`, the
    tenant is that job's (looked up once, when first needed).
    """

    def __init__(self, settings: Settings, tenant_id: str | None = None, job_id: str | None = None):
        self.settings, self._tenant_id, self.job_id = settings, tenant_id, job_id

    def replies(self, grader: ModelGrader, prompts: list[str]) -> list[str]:
        """The judge's reply to each prompt, in order."""
        return self._from_url(grader, prompts) if grader.url else self._from_service(grader, prompts)

    # ------------------------------------------------------------------ served judges

    def _from_service(self, grader: ModelGrader, prompts: list[str]) -> list[str]:
        from service.inference import resolve_model

        tenant = self.tenant_id
        model = resolve_model(self.db, tenant, grader.served_model)  # NotFound / Conflict name the problem
        sampling = {"max_tokens": grader.max_tokens, "temperature": grader.temperature, "top_p": 1.0, "n": 1,
                    "seed": 0, "stop": []}
        limits = self.settings
        size = max(1, min(limits.generate_max_prompts, limits.generate_max_work_tokens // grader.max_tokens))
        texts: list[str] = []
        for start in range(0, len(prompts), size):
            payload = {"model": model, "prompts": prompts[start : start + size], "sampling": sampling,
                       "raw": grader.format == "raw", "tenant": tenant, "fit_context": True}
            reply = self.inference.generate(payload)
            texts += [result["completions"][0]["text"] for result in reply["results"]]
        return texts

    @property
    def tenant_id(self) -> str:
        if self._tenant_id is None:
            if self.job_id is None:
                raise JudgeError("a served judge needs the job's tenant: run the job through the service")
            from service.inference import job_tenant

            self._tenant_id = job_tenant(self.db, self.job_id)
        return self._tenant_id

    @cached_property
    def db(self):
        from service.db import get_database

        return get_database(self.settings.resolved_database_url)

    @cached_property
    def inference(self):
        from workers.inference.client import InferenceClient  # celery + redis; no torch

        return InferenceClient(self.settings)

    # ------------------------------------------------------------------ URL judges

    def _from_url(self, grader: ModelGrader, prompts: list[str]) -> list[str]:
        problem = judge_url_problem(grader.url or "", self.settings.judge_url_allowlist)
        if problem:
            raise JudgeError(problem)
        import openai

        client = openai.OpenAI(base_url=grader.url, api_key=self.settings.judge_api_key or "none",
                               timeout=self.settings.judge_timeout_seconds, max_retries=1)
        if grader.format == "raw":
            texts: list[str] = []
            for start in range(0, len(prompts), URL_PROMPTS_PER_REQUEST):
                part = prompts[start : start + URL_PROMPTS_PER_REQUEST]
                reply = client.completions.create(model=grader.model, prompt=part, max_tokens=grader.max_tokens,
                                                  temperature=grader.temperature, seed=0)
                ordered = sorted(reply.choices, key=lambda choice: choice.index)
                if len(ordered) != len(part):
                    raise JudgeError(f"the judge answered {len(ordered)} choices for {len(part)} prompts")
                texts += [choice.text for choice in ordered]
            return texts

        def ask(prompt: str) -> str:
            reply = client.chat.completions.create(
                model=grader.model, messages=[{"role": "user", "content": prompt}], max_tokens=grader.max_tokens,
                temperature=grader.temperature, seed=0,
            )
            return reply.choices[0].message.content or ""

        with ThreadPoolExecutor(max_workers=self.settings.judge_concurrency) as pool:
            return list(pool.map(ask, prompts))
