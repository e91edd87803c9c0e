"""Pure tensor math, chosen by name from the config.

Registries (each a :class:`rlpost.registry.Registry`):

- ``ADVANTAGES`` (``algo.advantage``): ``fn(inp: AdvantageInput, params) -> (advantages [B,T], metrics)``
- ``POLICY_LOSSES`` (``algo.loss``): ``fn(inp: LossInput, params) -> (loss_mat [B,T], metrics)``
- ``AGGREGATIONS`` (``algo.loss_agg``): ``fn(loss_mat [B,T], mask [B,T], max_len) -> scalar``
- ``KL_ESTIMATORS`` (``algo.kl_estimator``, ``algo.kl_reward.estimator``): ``fn(logp [B,T], ref_logp [B,T]) -> kl [B,T]``
- ``KL_CONTROLLERS`` (``algo.kl_reward.controller``, in :mod:`rlpost.algos.kl_reward`): fixed | adaptive

Importing this package registers the built-in entries and each paper's module.
"""
from rlpost.algos.core import (  # noqa: F401
    ADVANTAGES, AGGREGATIONS, KL_ESTIMATORS, POLICY_LOSSES, AdvantageInput, LossInput,
    build_params, group_stats,
)
from rlpost.algos import advantages, aggregation, kl, kl_reward, losses  # noqa: F401  (registration)
from rlpost.algos import dynamic_sampling  # noqa: F401
from rlpost.algos import constrained, sft_losses  # noqa: F401
from rlpost.algos import hapo, adora, oblr_po, gain_rl, lr_controllers, data_samplers, logits_processors  # noqa: F401
from rlpost.algos import turn_credit  # noqa: F401
