"""Evaluations of a job's checkpoints, or of any model /generate accepts (POST /evaluations):
accuracy on a dataset, scored by the training
verifier on the inference worker. Thin: validate, one service call, return."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from api.deps import principal
from service import evaluations
from service.auth import Principal
from service.evaluations import EvaluationRequest, ModelEvaluationRequest

router = APIRouter(tags=["evaluations"])


@router.post("/jobs/{job_id}/evaluations", status_code=202)
def create_evaluation(job_id: str, body: EvaluationRequest, request: Request, who: Principal = Depends(principal)) -> dict:
    """Queue an evaluation of checkpoint `step` (default: latest) on `dataset`; poll
    GET /jobs/{job_id}/evaluations/{id} until `status` is succeeded or failed."""
    state = request.app.state
    return evaluations.create_evaluation(state.db, who.tenant_id, job_id, body, state.inference.publish_evaluation)


@router.get("/jobs/{job_id}/evaluations")
def list_evaluations(job_id: str, request: Request, who: Principal = Depends(principal)) -> dict:
    """The job's evaluations, newest first (accuracy, no items)."""
    return {"evaluations": evaluations.list_evaluations(request.app.state.db, who.tenant_id, job_id)}


@router.get("/jobs/{job_id}/evaluations/{evaluation_id}")
def get_evaluation(job_id: str, evaluation_id: str, request: Request, who: Principal = Depends(principal)) -> dict:
    """One evaluation with every item: prompt, answer, output, extracted answer, correct."""
    return evaluations.get_evaluation(request.app.state.db, who.tenant_id, job_id, evaluation_id)


@router.post("/evaluations", status_code=202)
def create_model_evaluation(body: ModelEvaluationRequest, request: Request, who: Principal = Depends(principal)) -> dict:
    """Queue an evaluation of any model /generate accepts (`base:builtin:tiny`, `<job_id>`,
    `<job_id>:<step>`): the untrained base is scored with the service's own grader."""
    state = request.app.state
    return evaluations.create_model_evaluation(state.db, who.tenant_id, body, state.inference.publish_evaluation)


@router.get("/evaluations")
def list_all_evaluations(request: Request, who: Principal = Depends(principal)) -> dict:
    """Your evaluations (jobs' and base models'), newest first, without items."""
    return {"evaluations": evaluations.list_tenant_evaluations(request.app.state.db, who.tenant_id)}


@router.get("/evaluations/{evaluation_id}")
def get_any_evaluation(evaluation_id: str, request: Request, who: Principal = Depends(principal)) -> dict:
    """One of your evaluations with every item."""
    return evaluations.get_evaluation(request.app.state.db, who.tenant_id, None, evaluation_id)
