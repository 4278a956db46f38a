"""Replica loss, on the session's (inline) application: a replica's process is killed (SIGKILL to its PID,
as the kernel's OOM killer or a lost node would) during a steady open-loop load.

1. One of two Ingress replicas (each holds the model and scores in process; HAProxy in front of them):
   only requests that the killed replica held or was still routed may fail (a 5xx or a dropped
   connection: a client retries them): the ones in flight at the kill, and the ones sent while the kernel
   tore its process down or within ``LOSS_WINDOW_S`` after (HAProxy's view catching up); every later
   request is a full 200 (HAProxy retries a refused connection on the other replica), and Serve replaces
   the replica within ``RECOVERY_S``.
2. The TextEncoder (the one handle call left in inline mode; it embeds a request's ``query``): no request
   gets an error; while it is gone a query is answered without it (``degraded: true``, still k items),
   and full answers are back within ``RECOVERY_S`` of the kill and stay.

The Scorer deployment's loss (``scorer: deployment``) is tests/integration/test_scorer_deployment.py's."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from cluster_fixtures import fixed_replicas
from reliability_helpers import (ACTOR_POLL_S, AfterKill, kill_and_wait, load_result, lost_to_a_kill, record,
                                 replica_actors, run_load_in_thread, wait_app_running)

pytestmark = pytest.mark.integration

RECOVERY_S = 30.0
RATE = 20.0


def test_killing_one_of_two_ingress_replicas_fails_only_the_requests_it_held(client, serve_url, serve_config,
                                                                           artifact):
    from services.run import deploy

    users = list(artifact.histories)
    deploy(fixed_replicas(serve_config, "Ingress", 2))
    ingress = replica_actors()["Ingress"]
    assert len(ingress) == 2 and all(a["pid"] for a in ingress), ingress
    victim = ingress[0]
    stop = threading.Event()
    th, out = run_load_in_thread(serve_url, RATE, 600.0,
                                 lambda i: ("POST", "/v1/recommend", {"user_id": users[i % len(users)], "k": 5}),
                                 keep_body=True, stop=stop)
    try:
        time.sleep(3)
        t_kill, t_dead = kill_and_wait(victim["pid"])
        deadline = t_kill + RECOVERY_S
        while time.monotonic() < deadline:
            now = replica_actors().get("Ingress", [])
            if len(now) == 2 and victim["actor_id"] not in {a["actor_id"] for a in now}:
                break
            time.sleep(ACTOR_POLL_S)
        t_back = time.monotonic()
        wait_app_running()
        time.sleep(5)  # the successor takes its share of the load
    finally:
        stop.set()
        th.join(timeout=120)
        deploy(fixed_replicas(serve_config, "Ingress", 1))  # one replica now, not after the downscale delay
        deploy(serve_config)
    load = load_result(out)
    kill_t = t_kill - load.t0  # the kill on the load's time axis
    codes = load.codes()
    failed = [s for s in load.samples if s.status != 200]
    exposed = lost_to_a_kill(load, t_kill, t_dead)  # in flight at the kill, or sent just after it
    degraded = [s for s in load.ok() if s.body["degraded"]]
    record("replica_loss_ingress", requests=len(load.samples), codes=codes, exposed_to_the_kill=len(exposed),
           process_gone_after_ms=(t_dead - t_kill) * 1000,
           failed=[(round(s.t - kill_t, 3), s.status, s.error or str(s.body)[:80]) for s in failed][:10],
           degraded=len(degraded), replaced_after_s=t_back - t_kill, p99_ms=load.p(99),
           p99_after_kill_ms=load.p(99, since=kill_t))
    assert t_back - t_kill < RECOVERY_S, "Serve did not replace the killed Ingress replica"
    # Failed: only requests the killed replica held or was still routed (see LOSS_WINDOW_S).
    assert {id(s) for s in failed} <= exposed, [(round(s.t - kill_t, 3), s.status, s.error) for s in failed][:5]
    assert all(s.status == 0 or s.status >= 500 for s in failed), [(s.status, s.body) for s in failed][:5]
    assert not degraded, "the surviving replica degraded its answers"
    assert len(load.ok()) >= len(load.samples) - len(exposed) > 0
    assert all(len(s.body["items"]) == 5 for s in load.ok())


def test_killing_the_text_encoder_degrades_queries_then_they_are_full_again(client, serve_url, serve_config,
                                                                          artifact):
    users = list(artifact.histories)
    encoders = replica_actors()["TextEncoder"]
    assert len(encoders) == 1 and encoders[0]["pid"], encoders
    queries = ("a ghost story", "a comedy about a road trip", "space opera with robots", "a quiet drama")

    def request(i: int):  # every other request a known user's query, the rest a cold start's query
        body = {"query": queries[i % len(queries)], "k": 5}
        return "POST", "/v1/recommend", ({**body, "user_id": users[i % len(users)]} if i % 2 else body)

    stop = threading.Event()
    th, out = run_load_in_thread(serve_url, RATE, 600.0, request, keep_body=True, stop=stop)
    try:
        time.sleep(3)
        t_kill = time.monotonic()
        os.kill(encoders[0]["pid"], signal.SIGKILL)
        deadline = t_kill + RECOVERY_S + 15
        while time.monotonic() < deadline:
            now = replica_actors().get("TextEncoder", [])
            if now and now[0]["actor_id"] != encoders[0]["actor_id"]:
                break
            time.sleep(ACTOR_POLL_S)
        time.sleep(8)
    finally:
        stop.set()
        th.join(timeout=120)
    wait_app_running()
    load = load_result(out)
    k = AfterKill.of(load, t_kill)
    record("replica_loss_text_encoder", **k.figures(load))
    assert load.codes() == {200: len(load.samples)}, \
        [(s.status, s.body, s.error) for s in load.samples if s.status != 200][:5]
    assert k.degraded, "no degraded answer: the kill did not take the text encoder away"
    assert k.recovered_s <= RECOVERY_S, f"degraded answers until {k.recovered_s:.1f} s after the kill"
    assert len(k.tail) >= 20 and not any(s.body["degraded"] for s in k.tail)
    assert all(len(s.body["items"]) == 5 for s in load.ok())
    assert replica_actors()["TextEncoder"][0]["actor_id"] != encoders[0]["actor_id"]
