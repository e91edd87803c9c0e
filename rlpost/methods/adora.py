"""ADORA needs no hooks: ``algo.advantage: adora`` reads ``AdvantageInput.truncated``, which the
trainer always passes, and logs ``adora/tas_frac`` (share of advantageous groups),
``adora/length_adv_frac``, ``adora/difficulty_adv_frac``, ``adora/success_rate_mean`` and
``adora/weight_mean`` with the advantage metrics. This module holds its combination rules;
``method: {adora: {}}`` is accepted (and only validates) for symmetry with the other recipes.
"""
from __future__ import annotations

from rlpost.algos import ADVANTAGES
from rlpost.config import ConfigError, component
from rlpost.methods import METHODS, MethodHooks, Needs, SetupContext
from rlpost.methods._util import active, params_of, user_set


def validate(cfg) -> None:
    name, node = component(cfg.algo.advantage)
    if name != "adora":
        if active(cfg, "adora"):
            raise ConfigError("method.adora is set but algo.advantage is not adora: set algo.advantage: "
                              "{name: adora, ...} (ADORA is an advantage weighting)")
        return
    p = params_of(ADVANTAGES, cfg.algo.advantage, "algo.advantage", shared=user_set(cfg.algo))
    if p.base not in ADVANTAGES:
        raise ConfigError(f"algo.advantage adora: unknown base estimator {p.base!r}; known: "
                          f"{', '.join(n for n in ADVANTAGES.names() if n != 'adora')}")
    base = ADVANTAGES.entry(p.base)
    try:  # adora builds its base exactly like this
        from rlpost.algos import build_params
        build_params(base.params, shared={"scale_rewards": p.scale_rewards, "eps": p.eps},
                     where=f"algo.advantage.base={p.base}")
    except (ValueError, TypeError) as err:
        raise ConfigError(f"algo.advantage adora: its base {p.base!r} rejects the forwarded settings: {err}") from None
    if not 0.0 <= p.tau <= 1.0:
        raise ConfigError(f"algo.advantage adora: tau is a success-rate threshold in [0, 1], got {p.tau}")
    if p.p_lo is not None and not 0.0 <= p.p_lo <= p.tau:
        raise ConfigError(f"algo.advantage adora: p_lo must be in [0, tau={p.tau}], got {p.p_lo} "
                          "(no group could be advantageous by difficulty)")
    if p.kappa_tas < 0 or p.kappa_tds < 0:
        raise ConfigError("algo.advantage adora: kappa_tas and kappa_tds are advantage weights and must be >= 0 "
                          "(a negative weight reverses the update of a whole group)")


@METHODS.register("adora")
class ADORAMethod(MethodHooks):
    """No-op hooks; setup only re-checks the combination rules."""

    def setup(self, ctx: SetupContext) -> Needs:
        validate(ctx.cfg)
        return Needs()
