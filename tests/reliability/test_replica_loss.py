"""Replica loss: the scorer replica's process is killed (SIGKILL to its PID, as the kernel's OOM killer or
a lost node would) during a steady open-loop load. No request gets a 5xx or a transport error: while
the scorer is gone the ingress answers from the co-occurrence fallback (``degraded: true``); Serve
starts a new scorer replica, and full (undegraded) answers are back within 30 s of the kill and stay.
(tests/integration/test_service.py keeps the simpler ``ray.kill`` test whose degraded counter the
metrics test there reads.)

The ingress's rank deadline is raised from 1 s to 10 s for this test (the score deadline, the one the
fallback hangs on, stays 1 s). On a 2-vCPU CI machine the scorer's successor starts beside the ranker
and starves it for a second or more: a few fallback answers then missed the 1 s rank deadline and
became 503s (1 of 665 and 10 of 678 requests in two slow runs, in bursts within milliseconds), the
machine's contention and not the scorer's loss under test. A node of a real cluster does not share its
cores so; the production deadline stays 1 s."""

from __future__ import annotations

import copy
import os
import signal
import threading
import time

import pytest

from reliability_helpers import ACTOR_POLL_S, load_result, record, replica_actors, run_load_in_thread

pytestmark = pytest.mark.integration

RECOVERY_S = 30.0


def _rank_deadline(cfg: dict, ms: int) -> dict:
    cfg = copy.deepcopy(cfg)
    for dep in cfg["applications"][0]["deployments"]:
        if dep["name"] == "Ingress":
            deadlines = {**dep.get("user_config", {}).get("deadline_ms", {}), "rank": ms}
            dep["user_config"] = {**dep.get("user_config", {}), "deadline_ms": deadlines}
    return cfg


def test_killing_the_scorer_process_under_load_gives_degraded_answers_then_full_ones_within_30s(
        client, serve_url, serve_config, artifact):
    from services.run import deploy

    users = list(artifact.histories)
    deploy(_rank_deadline(serve_config, 10000))  # user_config only: the same replicas, reconfigured
    scorers = replica_actors()["StudentScorer"]
    assert len(scorers) == 1 and scorers[0]["pid"]
    stop = threading.Event()
    th, out = run_load_in_thread(serve_url, 20.0, 600.0,
                                 lambda i: ("POST", "/v1/recommend", {"user_id": users[i % len(users)], "k": 5}),
                                 keep_body=True, stop=stop)
    try:
        time.sleep(3)
        t_kill = time.monotonic()
        os.kill(scorers[0]["pid"], signal.SIGKILL)
        # Keep the load on until full answers have been back for 5 s, or RECOVERY_S + 15 s.
        deadline = t_kill + RECOVERY_S + 15
        while time.monotonic() < deadline:
            now = replica_actors().get("StudentScorer", [])
            if now and now[0]["actor_id"] != scorers[0]["actor_id"]:
                break
            time.sleep(ACTOR_POLL_S)
        time.sleep(8)
    finally:
        stop.set()
        th.join(timeout=120)
        deploy(serve_config)
    load = load_result(out)
    kill_t = t_kill - load.t0  # the kill on the load's time axis
    codes = load.codes()
    after = [s for s in load.samples if s.t >= kill_t]
    degraded = [s for s in after if s.status == 200 and s.body["degraded"]]
    last_degraded = max((s.t for s in degraded), default=kill_t)
    recovered_s = last_degraded - kill_t
    tail = [s for s in after if s.t > last_degraded]
    record("replica_loss", requests=len(load.samples), codes=codes, degraded=len(degraded),
           full_again_after_s=recovered_s, p99_ms=load.p(0.99), p99_after_kill_ms=load.p(0.99, since=kill_t))
    assert codes == {200: len(load.samples)}, [(s.status, s.body, s.error) for s in load.samples if s.status != 200][:5]
    assert degraded, "no degraded answer: the kill did not take the scorer away"
    assert recovered_s <= RECOVERY_S, f"degraded answers until {recovered_s:.1f} s after the kill"
    assert len(tail) >= 20 and not any(s.body["degraded"] for s in tail)
    for s in load.ok():
        assert len(s.body["items"]) == 5
    assert replica_actors()["StudentScorer"][0]["actor_id"] != scorers[0]["actor_id"]
