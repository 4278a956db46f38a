"""Event store loss: a stream of events (one request per event, each with its own user, item, timestamp,
type and ``event_id``, so each can be found again) while the store or its writer goes away and comes back.

* Redis: ``redis-server`` (appendonly, appendfsync always) is stopped for a few seconds and started
  again. Afterwards every event that got a 2xx is in Redis with its item, timestamp and type (count and
  content); every event sent while it was down got a 503 ``event_store_unavailable`` with
  ``Retry-After``, and none of those is stored when the 503 says nothing was (never a false 2xx, never a
  silent write).
* SQLite (the embedded store): the ingress replicas read and write the file themselves; one of two is
  killed (SIGKILL) mid-stream and Serve starts a new one. Every 2xx event is in the file afterwards with
  its content; only requests that the killed replica held or was still routed got an error (a 5xx or a
  dropped connection: ``reliability_helpers.lost_to_a_kill``), and the other replica took the rest.

In both, the client then does what it is told to: it retries every event that did not get a 2xx, with
the same ``event_id``; each retry gets a 2xx, and every event of the stream is then stored exactly once
(one that the lost answer had stored already is acknowledged with ``new: 0``, not stored twice).
"""

from __future__ import annotations

import copy
import threading
import time
import uuid

import pytest

from cluster_fixtures import fixed_replicas
from reliability_helpers import (ACTOR_POLL_S, kill_and_wait, load_result, lost_to_a_kill, record,
                                 replica_actors, run_load_in_thread, wait_app_running, wait_ready)

pytestmark = pytest.mark.integration

RATE = 20.0


def _event(prefix: str, items: list[str], i: int) -> dict:
    return {"user_id": f"{prefix}-{i}", "item_id": items[i % len(items)], "timestamp": 1_700_000_000 + i,
            "type": ("view", "click", "buy")[i % 3], "event_id": f"{prefix}-ev-{i}"}


def _retry_until_stored(client, route: str, load, store, prefix: str, items: list[str]) -> dict:
    """Retry every event of the stream that got no 2xx, with its ``event_id`` (as a client told to retry
    does); then every event is stored exactly once, with its content. Returns counts."""
    retried = new = 0
    for s in load.samples:
        if s.status == 200:
            continue
        i = int(round(s.t * RATE))
        r = client.post(route, json={"events": [_event(prefix, items, i)]})
        assert r.status_code == 200, (i, r.status_code, r.text)
        retried += 1
        new += r.json()["new"]
        assert r.json() == {"stored": 1, "new": r.json()["new"]}, r.text
    for s in load.samples:
        i = int(round(s.t * RATE))
        e = _event(prefix, items, i)
        got = [(x.item_id, x.timestamp, x.type) for x in store.events(e["user_id"])]
        assert got == [(e["item_id"], e["timestamp"], e["type"])], (i, got)  # once: each event has its own user
    return {"retried": retried, "retried_new": new, "retried_already_stored": retried - new}


def _check_stream(load, store, prefix: str, items: list[str], held: set[int] = frozenset()) -> dict:
    """Every 2xx event is stored with its content; every other answer is a 503 with Retry-After, and its
    event is not stored when the 503 says "nothing was stored" (it may be when the store's answer went
    missing, and the 503 says so); ``held``: ids (``id()``) of the samples that a killed replica held or
    was still routed (``lost_to_a_kill``), which may end as any 5xx or a dropped connection instead.
    Returns counts."""
    acked, refused, maybe, lost = [], [], [], []
    for s in load.samples:
        i = int(round(s.t * RATE))
        if s.status == 200:
            assert s.body == {"stored": 1, "new": 1}, s.body
            acked.append(i)
        elif id(s) in held and (s.status == 0 or s.status >= 500):
            lost.append(i)
        else:
            assert s.status == 503, (s.status, s.body, s.error)
            assert s.body["error"]["code"] == "event_store_unavailable", s.body
            assert s.retry_after and int(s.retry_after) >= 1, "503 without Retry-After"
            (maybe if "may have been stored" in s.body["error"]["message"] else refused).append(i)
    for i in acked:
        e = _event(prefix, items, i)
        got = [(x.item_id, x.timestamp, x.type) for x in store.events(e["user_id"])]
        assert got == [(e["item_id"], e["timestamp"], e["type"])], (i, got)
    stored_refused = [i for i in refused if store.events(_event(prefix, items, i)["user_id"])]
    stored_maybe = [i for i in maybe + lost if store.events(_event(prefix, items, i)["user_id"])]
    return {"sent": len(load.samples), "acked": len(acked), "refused_503": len(refused) + len(maybe),
            "refused_but_stored": len(stored_refused), "maybe_stored_503": len(maybe),
            "lost_answers": len(lost), "maybe_and_stored": len(stored_maybe)}


def test_redis_stopped_and_started_during_a_stream_of_events_loses_no_acknowledged_event(
        client, serve_config, redis_server, artifact):
    from ray import serve

    from distilrec.stores import open_event_store
    from services.run import deploy

    prefix = f"rel{uuid.uuid4().hex[:6]}"
    app = copy.deepcopy(serve_config["applications"][0])
    app.update(name="distilrec-redis-loss", route_prefix="/redis-loss")
    # A short store timeout: a write to a dead Redis fails in about a second (503), not after 5.
    app["args"]["event_store"] = redis_server.url(with_password=False) + f"?prefix={prefix}&timeout=1"
    app["runtime_env"]["env_vars"]["DISTILREC_REDIS_PASSWORD"] = redis_server.password
    both = copy.deepcopy(serve_config)
    both["applications"].append(app)
    deploy(both)
    items = artifact.items.item_ids
    try:
        wait_ready(client, path="/redis-loss/readyz")
        stop = threading.Event()
        th, out = run_load_in_thread(client.base_url.__str__().rstrip("/"), RATE, 600.0,
                                     lambda i: ("POST", "/redis-loss/v1/events", {"events": [_event(prefix, items, i)]}),
                                     keep_body=True, stop=stop)
        try:
            time.sleep(3)
            t_down = time.monotonic()
            redis_server.stop()
            time.sleep(4)
            redis_server.start()
            t_up = time.monotonic()
            time.sleep(6)
        finally:
            stop.set()
            th.join(timeout=120)
        load = load_result(out)
        with open_event_store(redis_server.url() + f"?prefix={prefix}") as store:
            counts = _check_stream(load, store, prefix, items)
            assert store.count() == counts["acked"] + counts["maybe_and_stored"]
            down = [s for s in load.samples if t_down - load.t0 + 0.5 <= s.t <= t_up - load.t0 - 0.5]
            after = [s for s in load.samples if s.t >= t_up - load.t0 + 3]
            assert counts["refused_but_stored"] == 0  # "nothing was stored" is true
            assert down and all(s.status == 503 for s in down)  # no false 2xx while Redis is down
            assert after and all(s.status == 200 for s in after)  # and writes work again once it is back
            retries = _retry_until_stored(client, "/redis-loss/v1/events", load, store, prefix, items)
            assert store.count() == len(load.samples)  # this prefix holds the stream's events alone
        record("event_store_loss_redis", down_s=t_up - t_down, **counts, **retries,
               sent_while_down=len(down), acked_while_down=sum(s.status == 200 for s in down))
    finally:
        if redis_server.proc is None:
            redis_server.start()
        deploy(serve_config)
    deadline = time.monotonic() + 60
    while "distilrec-redis-loss" in serve.status().applications and time.monotonic() < deadline:
        time.sleep(0.5)


def test_sqlite_store_keeps_every_acknowledged_event_when_a_writer_process_dies(
        client, serve_url, serve_config, event_store_path, artifact):
    """Two Ingress replicas, the writers of the SQLite file (one replica each, fixed: the autoscaler's
    reaction to a restart is not under test here); one is killed mid-stream."""
    from distilrec.stores import open_event_store
    from services.run import deploy

    prefix = f"rel{uuid.uuid4().hex[:6]}"
    items = artifact.items.item_ids
    deploy(fixed_replicas(serve_config, "Ingress", 2))
    writers = replica_actors()["Ingress"]
    assert len(writers) == 2, writers
    victim = writers[0]
    stop = threading.Event()
    th, out = run_load_in_thread(serve_url, RATE, 600.0,
                                 lambda i: ("POST", "/v1/events", {"events": [_event(prefix, items, i)]}),
                                 keep_body=True, stop=stop)
    try:
        time.sleep(3)
        t_kill, t_dead = kill_and_wait(victim["pid"])
        deadline, replaced = t_kill + 60, False
        while not replaced and time.monotonic() < deadline:
            now = replica_actors().get("Ingress", [])
            replaced = len(now) == 2 and victim["actor_id"] not in {r["actor_id"] for r in now}
            if not replaced:
                time.sleep(ACTOR_POLL_S)
        assert replaced, "Serve did not replace the killed Ingress replica within 60 s"
        wait_ready(client)
        t_back = time.monotonic()
        time.sleep(5)
    finally:
        stop.set()
        th.join(timeout=120)
    wait_app_running()  # Serve itself reports the replacement HEALTHY, not only the HTTP path
    load = load_result(out)
    held = lost_to_a_kill(load, t_kill, t_dead)  # in flight at the kill, or sent just after it
    try:
        with open_event_store(str(event_store_path)) as store:
            counts = _check_stream(load, store, prefix, items, held)
            after = [s for s in load.samples if s.t >= t_back - load.t0 + 1]
            # A failed answer may come after the dead process committed (the write and the answer are not
            # atomic): the client retries with the event's id, and the retry stores nothing twice.
            assert counts["acked"] > 0 and after and all(s.status == 200 for s in after)
            retries = _retry_until_stored(client, "/v1/events", load, store, prefix, items)
    finally:
        deploy(fixed_replicas(serve_config, "Ingress", 1))  # one replica now, not after the downscale delay
        deploy(serve_config)
    record("event_store_loss_sqlite", restart_s=t_back - t_kill, exposed_to_the_kill=len(held),
           **counts, **retries)
