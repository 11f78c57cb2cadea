"""The frozen KL reference policy (DESIGN §2): its copy, its refresh and what a checkpoint keeps.

By default (`training.kl_reference: after_warmup`) the reference is the policy at the end of
the SFT warm-up, so the KL term keeps what SFT taught instead of pulling the policy back to
the model as loaded. Only the parameters the policy trains can differ from the loaded model,
so only those are saved with a checkpoint once the reference has been taken.
"""

from __future__ import annotations

import copy

import torch


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """An eval-mode copy of the model whose parameters take no gradient."""
    reference = copy.deepcopy(model).eval()
    for p in reference.parameters():
        p.requires_grad_(False)
    return reference


@torch.no_grad()
def take_reference(reference: torch.nn.Module, model: torch.nn.Module) -> None:
    """Make the reference the model's current weights (in place)."""
    for frozen, live in zip(reference.parameters(), model.parameters()):
        frozen.copy_(live)  # the same shapes and, when sharded, the same shards


def trained_names(model: torch.nn.Module) -> list[str]:
    """Names of the parameters the policy trains: where the reference can differ from the loaded model."""
    return [name for name, p in model.named_parameters() if p.requires_grad]
