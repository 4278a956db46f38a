"""The canary's decisions (services/canary.py): the checks on a ``canary`` block, its ladder of shares,
the weights that give the canary its share, the comparison with the stable arms (wait, step, rollback
with the reason) and the rollout state's moves."""

from __future__ import annotations

import pytest

from services.arms import ArmsConfigError, parse_experiment
from services.canary import (COMPLETE, RUNNING, ROLLED_BACK, Bounds, Figures, Rollout, judge, parse_canary,
                             state_key, weights)

ARMS = {"experiment": "c", "arms": [{"name": "stable", "weight": 3}, {"name": "other", "weight": 1},
                                    {"name": "shadowed", "shadow": True}, {"name": "next", "weight": 0}]}


def _cfg(**canary):
    return parse_canary({**ARMS, "canary": {"arm": "next", **canary}}, parse_experiment(ARMS, "student"))


def test_the_ladder_goes_from_the_start_to_the_top_by_steps_or_by_a_list():
    assert _cfg().ladder[:3] == (0.05, 0.15, 0.25) and _cfg().ladder[-1] == 1.0 and len(_cfg().ladder) == 11
    assert _cfg(start_weight=0.1, step=0.5, max_weight=0.5).ladder == (0.1, 0.5)
    assert _cfg(step=[0.1, 0.5]).ladder == (0.05, 0.1, 0.5, 1.0)
    assert _cfg(interval_s=2, bounds={"min_requests": 10}).bounds == Bounds(min_requests=10)
    assert parse_canary(ARMS, parse_experiment(ARMS, "student")) is None
    assert _cfg().fingerprint != _cfg(interval_s=30).fingerprint and _cfg().fingerprint == _cfg().fingerprint


@pytest.mark.parametrize("canary, match", [
    ({"arm": "nope"}, "is not one of the arms"),
    ({"arm": "shadowed"}, "shadow arm"),
    ({"arm": "stable"}, "must be the last served arm"),
    ({"arm": "next", "start_weight": 0}, "start_weight must be a number > 0"),
    ({"arm": "next", "start_weight": 0.5, "max_weight": 0.2}, "above max_weight"),
    ({"arm": "next", "step": [0.3, 0.2]}, "increasing"),
    ({"arm": "next", "step": -0.1}, "step must be"),
    ({"arm": "next", "interval_s": 0}, "interval_s"),
    ({"arm": "next", "bounds": {"min_requests": 0}}, "min_requests"),
    ({"arm": "next", "bounds": {"p99": 2}}, "bounds must be a mapping"),
    ({"arm": "next", "weight": 1}, "unknown keys"),
])
def test_a_bad_canary_block_is_refused_with_the_reason(canary, match):
    with pytest.raises(ArmsConfigError, match=match):
        parse_canary({**ARMS, "canary": canary}, parse_experiment(ARMS, "student"))


def test_a_canary_needs_another_served_arm_with_weight():
    lone = {"arms": [{"name": "stable", "weight": 0}, {"name": "next"}]}
    with pytest.raises(ArmsConfigError, match="no other served arm"):
        parse_canary({**lone, "canary": {"arm": "next"}}, parse_experiment(lone, "student"))


def test_the_canary_gets_its_share_and_the_others_keep_their_proportions():
    exp = parse_experiment(ARMS, "student")
    w = weights(exp, "next", 0.2)
    assert w == pytest.approx({"stable": 0.6, "other": 0.2, "next": 0.2})
    grown = exp.with_weights(w)
    shares = {a["name"]: a["share"] for a in grown.describe()["arms"]}
    assert shares == pytest.approx({"stable": 0.6, "other": 0.2, "shadowed": 0.0, "next": 0.2})
    assert weights(exp, "next", 1.0)["stable"] == 0.0 and exp.with_weights(weights(exp, "next", 1.0))


def _figures(n: int, errors: int = 0, degraded: int = 0, ms: float = 2.0) -> Figures:
    f = Figures()
    for i in range(n):
        f.add(ms, degraded=i < degraded, error=i < errors)
    return f


def test_judge_waits_steps_or_rolls_back_with_the_first_bound_broken():
    b = Bounds(min_requests=100)
    stable = _figures(1000, errors=0, degraded=10, ms=3.0)
    assert judge(b, _figures(99), stable)[0] == "wait"
    assert judge(b, _figures(200, degraded=2), stable)[:2] == ("step", None)
    # The floors: one error in 200 against a stable arm with none is noise (0.5 % <= 2 x 1 %).
    assert judge(b, _figures(200, errors=1), stable)[:2] == ("step", None)
    verdict, reason, detail = judge(b, _figures(200, errors=10), stable)
    assert (verdict, reason) == ("rollback", "errors") and "error share 5.00%" in detail
    assert judge(b, _figures(200, degraded=200), stable)[:2] == ("rollback", "degraded")
    assert judge(b, _figures(200, ms=8.0), stable)[:2] == ("rollback", "latency")  # 8 > 1.5 x max(3, 5)
    assert judge(b, _figures(200, ms=7.0), stable)[:2] == ("step", None)


def test_the_rollout_moves_up_the_ladder_and_stops_or_rolls_back():
    cfg = _cfg(step=[0.5], interval_s=10)
    r = Rollout.start(cfg, now=100.0)
    assert (r.weight, r.status, r.step) == (0.05, RUNNING, 0) and not r.due(cfg, 105.0) and r.due(cfg, 110.0)
    up = r.decide(cfg, "step", None, "ok", 110.0)
    assert (up.weight, up.status, up.step) == (0.5, RUNNING, 1)
    top = up.decide(cfg, "step", None, "ok", 120.0)
    assert (top.weight, top.status) == (1.0, COMPLETE) and not top.due(cfg, 1e9)
    back = up.decide(cfg, "rollback", "degraded", "degraded share 50%", 120.0)
    assert (back.weight, back.status, back.reason) == (0.0, ROLLED_BACK, "degraded") and not back.due(cfg, 1e9)
    # Through the store's JSON and back, with the generation beside the value.
    again = Rollout.of(back.value(), 7)
    assert again.generation == 7 and again.value() == back.value() and "generation" not in back.value()
    assert state_key("c", "next") == "canary:c:next"


def test_figures_merge_and_summarise():
    a, b = _figures(10, errors=1, ms=1.0), _figures(10, degraded=5, ms=9.0)
    a.merge(b)
    assert a.summary() == {"requests": 20, "error_share": 0.05, "degraded_share": 0.25, "p99_ms": 9.0}
    assert Figures().summary()["p99_ms"] is None
