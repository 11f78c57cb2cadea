"""Experiment trackers a job exports to (issue 17): the spec's `integrations` list.

One model per kind, told apart by `kind`. Where data goes is the operator's choice: an
MLflow tracking URI must be on AMFT_MLFLOW_TRACKING_URI_ALLOWLIST (no user string reaches
a URL otherwise), and W&B's host, API key and entity are deployment settings
(AMFT_WANDB_*); a user names only the experiment, project and run.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

from service.settings import get_settings

NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"  # experiment, project and run names


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TensorBoardIntegration(_Strict):
    """Event files in the job's artifacts (GET /jobs/{id}/artifacts/tensorboard)."""

    kind: Literal["tensorboard"] = Field(..., description="tensorboard: event files in the job's artifacts.")


class MlflowIntegration(_Strict):
    """An MLflow tracking server: one run per job, named by the job id."""

    kind: Literal["mlflow"] = Field(..., description="mlflow: a tracking server on the operator's allowlist.")
    tracking_uri: str = Field(
        ..., max_length=512, description="The tracking server, exactly as listed in AMFT_MLFLOW_TRACKING_URI_ALLOWLIST."
    )
    experiment: str = Field("amft", pattern=NAME, description="Experiment name (created if missing).")
    run_name: str | None = Field(None, pattern=NAME, description="Run name; default the job id.")

    @field_validator("tracking_uri")
    @classmethod
    def _allowlisted(cls, value: str) -> str:
        allowed = mlflow_allowlist()
        if normalized_uri(value) not in allowed:
            listed = ", ".join(sorted(allowed)) or "none"
            raise ValueError(f"{value!r} is not on this deployment's MLflow allowlist (allowed: {listed}); "
                             "an operator adds it to AMFT_MLFLOW_TRACKING_URI_ALLOWLIST")
        return normalized_uri(value)


class WandbIntegration(_Strict):
    """Weights & Biases, on the deployment's host and entity (AMFT_WANDB_*)."""

    kind: Literal["wandb"] = Field(..., description="wandb: Weights & Biases (host and key set by the operator).")
    project: str = Field("amft", pattern=NAME, description="W&B project name.")
    run_name: str | None = Field(None, pattern=NAME, description="Run display name; default the job id.")


IntegrationSpec = Annotated[
    Union[TensorBoardIntegration, MlflowIntegration, WandbIntegration], Field(discriminator="kind")
]


def normalized_uri(uri: str) -> str:
    return uri.strip().rstrip("/")


def mlflow_allowlist() -> set[str]:
    """The tracking URIs jobs may export to, from AMFT_MLFLOW_TRACKING_URI_ALLOWLIST."""
    raw = get_settings().mlflow_tracking_uri_allowlist
    return {normalized_uri(item) for item in raw.split(",") if item.strip()}
