"""The canary and shadow arms through Ray Serve's real HTTP proxy, on the session's application with
arms in the Ingress's ``user_config`` (applied by ``reconfigure()`` on the running replica; the session's
config comes back at the end of the module).

A canary whose answers degrade (its arm's own model budget is far below any model step) is rolled back by
its controller under load with every request answered 200, and the rollback shows in ``GET /v1/model``
and ``distilrec_canary_rollbacks_total``; a healthy canary moves up a step; a shadow arm changes no answer
and adds at most its budget to the p99, and every answer's shadow scoring is recorded (its overlap metric)
or dropped and counted.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from reliability_helpers import open_loop
from test_arms_http import _counter, _wait_counter, _with_ingress_config

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def restore(serve_config):
    """Put the session's config back after the module."""
    from services.run import deploy

    yield deploy
    deploy(serve_config)


def _canary(name: str, arm: dict, start: float, bounds: dict) -> dict:
    """Two arms, ``stable`` and the canary (last), the canary judged every 1.5 s."""
    return {"experiment": name, "arms": [{"name": "stable", "weight": 1}, {"weight": 0, **arm}],
            "canary": {"arm": arm["name"], "start_weight": start, "step": 0.2, "interval_s": 1.5, "bounds": bounds}}


def _load(serve_url: str, users: list[str], rate: float, duration_s: float):
    """Open-loop recommendations for ``users`` (cycled) at ``rate`` per second; the bodies are kept."""
    return asyncio.run(open_loop(serve_url, rate, duration_s,
                                 lambda i: ("POST", "/v1/recommend", {"user_id": users[i % len(users)], "k": 5}),
                                 keep_body=True))


def _canary_state(client) -> dict:
    return client.get("/v1/model").json()["experiment"]["canary"]


def _wait_canary(client, done, timeout_s: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        state = _canary_state(client)
        if done(state):
            return state
        assert time.monotonic() < deadline, state
        time.sleep(0.5)


def test_a_degrading_canary_is_rolled_back_under_load_without_a_failed_request(client, serve_url, serve_config,
                                                                               artifact, metrics_port, restore):
    name = f"degrade-{uuid.uuid4().hex[:6]}"
    # The canary serves the same model with a budget of 1 microsecond: every model step is over it, so its
    # answers come from the fallback (degraded), never fail.
    restore(_with_ingress_config(serve_config, _canary(
        name, {"name": "tight", "score_deadline_ms": 0.001}, 0.3, {"min_requests": 30})))
    before = _counter(metrics_port, "ray_distilrec_canary_rollbacks_total", arm="tight", reason="degraded")
    state = _wait_canary(client, lambda s: s is not None and s["status"] == "running" and s["weight"] == 0.3)
    assert state["ladder"][:2] == [0.3, 0.5]
    users = list(artifact.histories)
    result = _load(serve_url, users, rate=150, duration_s=6.0)
    assert result.codes() == {200: len(result.samples)} and len(result.samples) >= 600, result.codes()
    arms = {s.body["arm"] for s in result.samples}
    assert "tight" in arms and all(s.body["degraded"] for s in result.samples if s.body["arm"] == "tight")
    state = _wait_canary(client, lambda s: s["status"] == "rolled_back")
    assert state["weight"] == 0.0 and state["reason"] == "degraded" and "degraded share" in state["detail"], state
    shares = {a["name"]: a["share"] for a in client.get("/v1/model").json()["experiment"]["arms"]}
    assert shares == {"stable": 1.0, "tight": 0.0}
    _wait_counter(metrics_port, "ray_distilrec_canary_rollbacks_total", before + 1, arm="tight", reason="degraded")
    # Rolled back: the canary's users are answered by the stable arm, undegraded.
    after = _load(serve_url, users, rate=100, duration_s=1.0)
    assert after.codes() == {200: len(after.samples)}
    assert {s.body["arm"] for s in after.samples} == {"stable"}


def test_a_healthy_canary_moves_up_a_step(client, serve_url, serve_config, artifact, metrics_port, restore):
    name = f"healthy-{uuid.uuid4().hex[:6]}"
    restore(_with_ingress_config(serve_config, _canary(
        name, {"name": "same"}, 0.2, {"min_requests": 30, "p99_floor_ms": 200})))
    _wait_canary(client, lambda s: s is not None and s["status"] == "running" and s["weight"] == 0.2)
    result = _load(serve_url, list(artifact.histories), rate=120, duration_s=4.0)
    assert result.codes() == {200: len(result.samples)}, result.codes()
    state = _wait_canary(client, lambda s: s["weight"] >= 0.4)
    assert state["status"] == "running" and state["reason"] is None and "within bounds" in state["detail"], state
    assert state["generation"] >= 2
    _wait_counter(metrics_port, "ray_distilrec_canary_steps_total", 1, arm="same")


SHADOW_BUDGET_MS = 50


def test_a_shadow_arm_changes_no_answer_and_stays_within_its_budget(client, serve_url, serve_config, artifact,
                                                                    metrics_port, restore):
    users = list(artifact.histories)[:200]
    served = {"experiment": "shadow-test", "arms": [{"name": "served"}], "shadow_deadline_ms": SHADOW_BUDGET_MS}
    shadowed = {**served, "arms": [{"name": "served"}, {"name": "teach", "scorer_model": "teacher", "shadow": True}]}
    rate, duration = 100, 6.0  # 600 requests a phase: the p99 is the 6th slowest

    def phase(config: dict):
        restore(_with_ingress_config(serve_config, config))
        _load(serve_url, users, rate=rate, duration_s=1.0)  # warm-up after the reconfigure
        return _load(serve_url, users, rate=rate, duration_s=duration)

    without = phase(served)
    overlap_before = _counter(metrics_port, "ray_distilrec_shadow_overlap_count", arm="teach")
    dropped_before = {r: _counter(metrics_port, "ray_distilrec_shadow_dropped_total", arm="teach", reason=r)
                      for r in ("cap", "timeout", "error")}
    with_shadow = phase(shadowed)
    exp = client.get("/v1/model").json()["experiment"]
    assert [a["shadow"] for a in exp["arms"]] == [False, True] and exp["shadow"]["deadline_ms"] == SHADOW_BUDGET_MS
    for result in (without, with_shadow):
        assert result.codes() == {200: len(result.samples)}, result.codes()

    def answers(result) -> dict:
        return {users[s.i % len(users)]: [it["item_id"] for it in s.body["items"]] for s in result.samples}

    a, b = answers(without), answers(with_shadow)
    assert a == b and all(s.body["arm"] == "served" for s in with_shadow.samples)
    p99_without, p99_with = without.p(99), with_shadow.p(99)
    assert p99_with - p99_without <= SHADOW_BUDGET_MS, (p99_with, p99_without)
    # Every answer of the phase had its shadow scored (recorded) or dropped (counted), none forgotten.
    deadline = time.monotonic() + 30
    while True:
        dropped = {r: _counter(metrics_port, "ray_distilrec_shadow_dropped_total", arm="teach", reason=r) - before
                   for r, before in dropped_before.items()}
        recorded = _counter(metrics_port, "ray_distilrec_shadow_overlap_count", arm="teach") - overlap_before
        if recorded + sum(dropped.values()) >= len(with_shadow.samples) or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    assert recorded > 0 and recorded + sum(dropped.values()) >= len(with_shadow.samples), (recorded, dropped)
    print(f"shadow: p99 {p99_without:.1f} ms without, {p99_with:.1f} ms with; overlap samples "
          f"{recorded:.0f} (the phase and its warm-up), dropped {dropped}")
