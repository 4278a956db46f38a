"""``POST /v1/events`` through Ray Serve's real HTTP proxy, with the session's SQLite event store.

The store file is read directly (a second ``SQLiteEventStore`` on the same file) to check what was
and was not committed; a real second writer holds the lock to make the store refuse a write.
"""

from __future__ import annotations

import sqlite3
import time
import uuid

import httpx
import pytest
import torch

from cluster_fixtures import fixed_replicas
from distilrec.cli import read_metrics
from distilrec.stores import open_event_store

pytestmark = pytest.mark.integration


@pytest.fixture
def store(event_store_path):
    with open_event_store(str(event_store_path)) as s:
        yield s


def _new_user() -> str:
    return f"new-{uuid.uuid4().hex[:12]}"


def _ids(body: dict) -> list[str]:
    return [it["item_id"] for it in body["items"]]


def _recommend(client, **payload) -> dict:
    r = client.post("/v1/recommend", json=payload)
    assert r.status_code == 200, r.text
    return r.json()


def _post_events(client, events: list[dict]) -> httpx.Response:
    return client.post("/v1/events", json={"events": events})


def _student_scores(artifact, items: list[str], times: list[int]) -> dict[str, float]:
    """The served student's score of every catalogue item after ``items`` (oldest first) at ``times``."""
    from distilrec.models import pad_histories

    m = artifact.student.eval()
    hist = pad_histories([[artifact.items.index[i] for i in items]], m.cfg.n_items, m.cfg.max_len)
    with torch.no_grad():
        scores = m.score(hist, times=pad_histories([times], 0, m.cfg.max_len))[0]
    return dict(zip(artifact.items.item_ids, scores.tolist()))


def _assert_ranked_by(body: dict, scores: dict[str, float], seen: set[str]) -> None:
    """The answer holds the best unseen items by ``scores``, in order (equal within float noise: a
    near-tie may come in either order)."""
    best = sorted((v for k, v in scores.items() if k not in seen), reverse=True)
    for it, expected in zip(body["items"], best):
        assert it["item_id"] not in seen
        assert it["score"] == pytest.approx(scores[it["item_id"]], rel=1e-4, abs=1e-4)
        assert it["score"] == pytest.approx(expected, rel=1e-4, abs=1e-4)


def test_an_event_warms_up_a_new_user(client, store):
    user = _new_user()
    cold = _recommend(client, user_id=user, k=5)
    assert cold["cold_start"] is True
    item = cold["items"][0]["item_id"]

    r = _post_events(client, [{"user_id": user, "item_id": item}])
    assert r.status_code == 200, r.text
    assert r.json() == {"stored": 1, "new": 1}
    assert store.history(user) == [item]  # committed before the 2xx

    warm = _recommend(client, user_id=user, k=5)
    assert warm["cold_start"] is False and warm["degraded"] is False
    assert item not in _ids(warm)
    # The stored event is the model's input, exactly like the same history sent with the request.
    assert _ids(warm) == _ids(_recommend(client, history=[item], k=5))


def test_events_of_a_known_user_are_excluded_and_change_the_ranking(client, artifact, store):
    user, seen = list(artifact.histories.items())[-1]  # not one the other suites use
    before = _recommend(client, user_id=user, k=10)
    posted = _ids(before)[:3]
    now = int(time.time())
    events = [{"user_id": user, "item_id": it, "timestamp": now + i, "type": "click"} for i, it in enumerate(posted)]
    r = _post_events(client, events)
    assert r.status_code == 200 and r.json() == {"stored": 3, "new": 3}, r.text

    after = _recommend(client, user_id=user, k=10)
    assert after["cold_start"] is False
    assert not set(_ids(after)) & (set(posted) | set(seen))
    # The history the model saw is the artifact's, then the stored events in time order, each with its
    # timestamp (the time-gap features).
    assert store.history(user) == posted
    known_times = artifact.history_times[user]
    _assert_ranked_by(after, _student_scores(artifact, seen + posted, known_times + [now, now + 1, now + 2]),
                      set(seen) | set(posted))
    # The user vector moved: items kept in both lists are scored differently.
    score_before = {it["item_id"]: it["score"] for it in before["items"]}
    common = [it for it in after["items"] if it["item_id"] in score_before]
    assert common and any(it["score"] != score_before[it["item_id"]] for it in common)


def test_stored_order_follows_timestamps(client, artifact, store):
    user = _new_user()
    a, b, c = artifact.items.item_ids[:3]
    assert _post_events(client, [{"user_id": user, "item_id": a, "timestamp": 300}]).status_code == 200
    assert _post_events(client, [{"user_id": user, "item_id": b, "timestamp": 100},
                                 {"user_id": user, "item_id": c, "timestamp": 200}]).status_code == 200
    assert store.history(user) == [b, c, a]
    _assert_ranked_by(_recommend(client, user_id=user, k=5), _student_scores(artifact, [b, c, a], [100, 200, 300]),
                      {a, b, c})


def _bad_payloads(item: str, user: str) -> list[tuple[object, str]]:
    ok = {"user_id": user, "item_id": item}
    return [
        ({"events": [ok, {"user_id": user, "item_id": "no-such-item"}]}, "unknown_item"),
        ({"events": [ok] * 3 + [{"user_id": user, "item_id": "missing-1"}, {"user_id": user, "item_id": "m2"}]},
         "unknown_item"),
        ({"events": []}, "invalid_request"),
        ({"events": [ok] * 1001}, "invalid_request"),
        ({}, "invalid_request"),
        ({"events": ok}, "invalid_request"),
        ({"events": [ok], "surprise": 1}, "invalid_request"),
        ({"events": [ok, {**ok, "surprise": 1}]}, "invalid_request"),
        ({"events": [ok, {**ok, "timestamp": "yesterday"}]}, "invalid_request"),
        ({"events": [ok, {**ok, "timestamp": 1_700_000_000_000}]}, "invalid_request"),  # milliseconds
        ({"events": [ok, {**ok, "timestamp": -5}]}, "invalid_request"),
        ({"events": [ok, {**ok, "timestamp": 1.5}]}, "invalid_request"),
        ({"events": [ok, {**ok, "timestamp": True}]}, "invalid_request"),
        ({"events": [ok, {"user_id": 7, "item_id": item}]}, "invalid_request"),
        ({"events": [ok, {"user_id": "", "item_id": item}]}, "invalid_request"),
        ({"events": [ok, {"user_id": "x" * 257, "item_id": item}]}, "invalid_request"),
        ({"events": [ok, {"user_id": user}]}, "invalid_request"),
        ({"events": [ok, {**ok, "type": ""}]}, "invalid_request"),
        ({"events": [ok, {**ok, "type": None}]}, "invalid_request"),
        ({"events": [ok, {**ok, "event_id": ""}]}, "invalid_request"),
        ({"events": [ok, {**ok, "event_id": "e" * 129}]}, "invalid_request"),
        ({"events": [ok, {**ok, "event_id": 7}]}, "invalid_request"),
        ([ok], "invalid_request"),
    ]


def test_bad_events_are_a_json_4xx_and_store_nothing(client, artifact, store):
    user = _new_user()
    before = store.count()
    for payload, code in _bad_payloads(artifact.items.item_ids[0], user):
        r = client.post("/v1/events", json=payload)
        assert 400 <= r.status_code < 500, (payload if len(str(payload)) < 300 else code, r.text)
        assert r.json()["error"]["code"] == code, r.text
        assert "Traceback" not in r.text
    r = client.post("/v1/events", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
    r = client.get("/v1/events")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    assert store.history(user) == [] and store.count() == before
    # The unknown_item message names the offending ids, and the replicas still answer.
    r = _post_events(client, [{"user_id": user, "item_id": "no-such-item"}])
    assert "no-such-item" in r.json()["error"]["message"]
    assert _recommend(client, user_id=user, k=3)["cold_start"] is True
    assert _post_events(client, [{"user_id": user, "item_id": artifact.items.item_ids[0]}]).json() == \
        {"stored": 1, "new": 1}


def test_a_locked_store_is_503_with_retry_after_and_stores_nothing(client, artifact, store, event_store_path):
    user = _new_user()
    item = artifact.items.item_ids[1]
    blocker = sqlite3.connect(event_store_path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another writer holds the lock beyond the 2 s busy timeout
    try:
        r = _post_events(client, [{"user_id": user, "item_id": item}, {"user_id": user, "item_id": item}])
        # Reads go on beside a writer (WAL): recommendations still answer, undegraded.
        during = _recommend(client, user_id=user, k=3)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "event_store_unavailable"
    assert "nothing was stored" in r.json()["error"]["message"]  # SQLite knows: its transaction rolled back
    assert int(r.headers["retry-after"]) >= 1
    assert during["cold_start"] is True and during["degraded"] is False
    assert store.history(user) == []
    # The retry the client was told to make succeeds.
    assert _post_events(client, [{"user_id": user, "item_id": item}]).json() == {"stored": 1, "new": 1}
    assert store.history(user) == [item]


def _wait_ready(client, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if client.get("/readyz").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the application did not become ready again"
        time.sleep(0.5)


def test_events_and_new_items_survive_a_redeploy(client, artifact, serve_config, admin):
    from ray import serve

    from services.run import APP_NAME, deploy

    user = _new_user()
    items = artifact.items.item_ids[5:8]
    r = _post_events(client, [{"user_id": user, "item_id": it, "timestamp": 1000 + i} for i, it in enumerate(items)])
    assert r.json() == {"stored": 3, "new": 3}
    new_id = f"kept-{uuid.uuid4().hex[:8]}"
    r = client.post("/v1/items", headers=admin, json={"items": [{"item_id": new_id, "title": "Kept Across Restarts",
                                                                 "attributes": {"genres": ["drama"]}}]})
    assert r.json() == {"added": 1}, r.text
    expected = _ids(_recommend(client, user_id=user, k=5))

    serve.delete(APP_NAME)
    try:
        assert APP_NAME not in serve.status().applications
    finally:
        deploy(serve_config)
    _wait_ready(client)

    body = _recommend(client, user_id=user, k=5)
    assert body["cold_start"] is False
    assert not set(_ids(body)) & set(items)
    assert _ids(body) == expected
    # The new item is still known: an event can name it and it is recommendable.
    assert _post_events(client, [{"user_id": _new_user(), "item_id": new_id}]).json() == {"stored": 1, "new": 1}
    assert new_id in _ids(_recommend(client, history=[artifact.items.item_ids[0]], k=100))


def test_every_ingress_replica_sees_the_same_store(client, artifact, serve_config):
    """Two Ingress replicas (each reads and writes the store itself): whichever replica answers a
    recommendation reflects the event the other one stored just before."""
    from ray import serve

    from services.run import APP_NAME, deploy

    deploy(fixed_replicas(serve_config, "Ingress", 2))
    try:
        states = serve.status().applications[APP_NAME].deployments["Ingress"].replica_states
        assert states.get("RUNNING") == 2, states
        # Writes and reads are routed to either replica: each read reflects the write before it.
        for n in range(12):
            user = _new_user()
            item = artifact.items.item_ids[n]
            assert _post_events(client, [{"user_id": user, "item_id": item}]).json() == {"stored": 1, "new": 1}
            body = _recommend(client, user_id=user, k=3)
            assert body["cold_start"] is False and item not in _ids(body)
    finally:
        deploy(fixed_replicas(serve_config, "Ingress", 1))  # one replica now, not after the downscale delay
        deploy(serve_config)


def test_an_event_retried_with_its_event_id_is_stored_once(client, artifact, store):
    """A client that retries an event with the same ``event_id`` (it did not see the first answer) gets a
    2xx with ``new: 0``; the user's history holds the event once, in the store and in what the model reads."""
    user = _new_user()
    item, other = artifact.items.item_ids[11], artifact.items.item_ids[12]
    event = {"user_id": user, "item_id": item, "timestamp": 1_700_000_000, "event_id": f"ev-{uuid.uuid4().hex}"}
    first = _post_events(client, [event])
    assert first.status_code == 200 and first.json() == {"stored": 1, "new": 1}, first.text
    retry = _post_events(client, [event])
    assert retry.status_code == 200 and retry.json() == {"stored": 1, "new": 0}, retry.text
    assert [e.item_id for e in store.events(user)] == [item]
    # The model read the history [item] (not [item, item]): the same answer as for that history sent
    # with the request, the item itself excluded.
    body = _recommend(client, user_id=user, k=5)
    assert body["cold_start"] is False and item not in _ids(body)
    assert _ids(body) == _ids(_recommend(client, history=[item], k=5))
    # A batch that repeats a stored event and adds a new one stores only the new one.
    both = _post_events(client, [event, {"user_id": user, "item_id": other, "timestamp": 1_700_000_001,
                                         "event_id": f"ev-{uuid.uuid4().hex}"}])
    assert both.status_code == 200 and both.json() == {"stored": 2, "new": 1}, both.text
    assert [e.item_id for e in store.events(user)] == [item, other]
    # Events without an id are each stored, as before.
    plain = {"user_id": user, "item_id": other, "timestamp": 1_700_000_002}
    assert _post_events(client, [plain]).json() == {"stored": 1, "new": 1}
    assert _post_events(client, [plain]).json() == {"stored": 1, "new": 1}
    assert [e.item_id for e in store.events(user)] == [item, other, other, other]


def test_readiness_checks_the_store_and_openapi_lists_events(client):
    assert client.get("/readyz").status_code == 200
    spec = client.get("/openapi.json").json()
    assert "/v1/events" in spec["paths"]


def _series(lines: list[str], name: str) -> dict[str, float]:
    """``{labels: value}`` of one metric's lines (one series per replica)."""
    out = {}
    for ln in lines:
        if ln.startswith(name):
            labels, value = ln.rsplit(" ", 1)
            out[labels] = float(value)
    return out


def test_events_metric_is_exported(client, artifact, metrics_port):
    names = ("ray_distilrec_events_stored_total", "ray_distilrec_requests_total")
    user = _new_user()
    # A first post makes sure the counter exists, then the increase of a second one is measured per
    # series (replicas of earlier tests may have come and gone).
    assert _post_events(client, [{"user_id": user, "item_id": artifact.items.item_ids[2]}]).json() == \
        {"stored": 1, "new": 1}
    base = _series(read_metrics(metrics_port, names, timeout_s=60), names[0])
    assert _post_events(client, [{"user_id": user, "item_id": artifact.items.item_ids[3]}] * 2).json() == \
        {"stored": 2, "new": 2}
    deadline = time.monotonic() + 60  # Ray exports metrics every few seconds
    while True:
        lines = read_metrics(metrics_port, names, timeout_s=60)
        now = _series(lines, names[0])
        increase = sum(max(0.0, v - base.get(k, 0.0)) for k, v in now.items())
        routes = [ln for ln in lines if ln.startswith(names[1]) and 'route="/v1/events"' in ln]
        if (increase >= 2 and any('code="200"' in ln for ln in routes)) or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert increase >= 2, (base, now)
    assert any('code="200"' in ln for ln in routes)
    assert not any(user in ln for ln in lines)  # no user ids in tags
