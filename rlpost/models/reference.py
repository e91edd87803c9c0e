"""Reference-model updates during training: ``algo.sync_ref_model`` (TRL's names and defaults).

Every ``ref_model_sync_steps`` RL steps the frozen reference moves towards the policy (Gorbatovski et al. 2024,
"Learn Your Reference Model for Real Good Alignment", TR-DPO's soft update; TRL's SyncRefModelCallback):

    theta_ref <- alpha * theta + (1 - alpha) * theta_ref        (alpha = ref_model_mixup_alpha, default 0.6)

alpha = 1 copies the policy (hard update); alpha = 0 leaves the reference unchanged. The reference weights are
part of rlpost's checkpoints when this is on, so a resumed run continues from the mixed reference.
"""
from __future__ import annotations

import torch


@torch.no_grad()
def mix_into_reference(ref_model, policy, alpha: float) -> None:
    """theta_ref <- alpha * theta + (1 - alpha) * theta_ref for every parameter (matched by name)."""
    policy_params = dict(policy.named_parameters())
    for name, ref_param in ref_model.named_parameters():
        if name not in policy_params:
            raise KeyError(f"algo.sync_ref_model: the policy has no parameter {name!r} (reference and policy differ)")
        ref_param.mul_(1.0 - alpha).add_(policy_params[name].detach().to(ref_param.dtype), alpha=alpha)
