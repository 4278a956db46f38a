"""A/B arms and online feedback through Ray Serve's real HTTP proxy: the session's application with two
arms in the Ingress's ``user_config`` (the student and the teacher of the session's model), applied by
``reconfigure()`` on the running replica and removed again at the end of the module.

Users split by weight and stay on their arm; answers carry ``arm`` and ``recommendation_id``; an event
that names a recommendation raises its arm's hit counter; an event with an unknown id is stored and
counted unmatched; a bad arms config is refused and the arms before it keep serving.
"""

from __future__ import annotations

import copy
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from distilrec.stores import open_event_store

pytestmark = pytest.mark.integration

ARMS = {"experiment": "itest", "arms": [{"name": "control", "model": "latest", "weight": 0.7},
                                         {"name": "teacher", "scorer_model": "teacher", "weight": 0.3}]}
WEIGHTS = {"control": 0.7, "teacher": 0.3}
USERS = 2000


def _with_ingress_config(serve_config: dict, extra: dict) -> dict:
    cfg = copy.deepcopy(serve_config)
    for dep in cfg["applications"][0]["deployments"]:
        if dep["name"] == "Ingress":
            dep["user_config"] = {**dep.get("user_config", {}), **extra}
    return cfg


@pytest.fixture(scope="module")
def arms(client, serve_config):
    """The session's application with :data:`ARMS`; the config without them afterwards."""
    from services.run import deploy

    deploy(_with_ingress_config(serve_config, ARMS))
    try:
        yield client.get("/v1/model").json()["experiment"]
    finally:
        deploy(serve_config)


def _rec(client, **payload) -> dict:
    r = client.post("/v1/recommend", json=payload)
    assert r.status_code == 200, r.text
    return r.json()


def _counter(metrics_port: int, name: str, **tags: str) -> float:
    """The sum over the session's processes of ``name``'s samples that carry ``tags`` (0 before its first
    increment)."""
    import httpx

    text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
    want = [f'{k}="{v}"' for k, v in tags.items()]
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(w in line for w in want):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _wait_counter(metrics_port: int, name: str, at_least: float, timeout_s: float = 60.0, **tags: str) -> float:
    deadline = time.monotonic() + timeout_s
    while True:
        value = _counter(metrics_port, name, **tags)
        if value >= at_least:
            return value
        assert time.monotonic() < deadline, f"{name}{tags} stayed at {value}, expected at least {at_least}"
        time.sleep(1.0)


def test_arms_split_users_by_weight_and_keep_them(client, arms, artifact):
    assert [(a["name"], a["scorer_model"], a["share"]) for a in arms["arms"]] == [
        ("control", "student", 0.7), ("teacher", "teacher", 0.3)]
    assert arms["name"] == "itest" and arms["arms_error"] is None
    assert {a["version"] for a in arms["arms"]} == {artifact.version}
    users = [f"arm-{uuid.uuid4().hex[:10]}" for _ in range(USERS)]
    with ThreadPoolExecutor(8) as pool:
        first = list(pool.map(lambda u: _rec(client, user_id=u, k=3), users))
    ids = [b["recommendation_id"] for b in first]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids) and len(set(ids)) == USERS
    shares = {name: sum(b["arm"] == name for b in first) / USERS for name in WEIGHTS}
    for name, weight in WEIGHTS.items():
        assert abs(shares[name] - weight) < 0.05, shares
    # Sticky: the same users again (a few hundred), and a known user on every request.
    again = [_rec(client, user_id=u, k=3)["arm"] for u in users[:300]]
    assert again == [b["arm"] for b in first[:300]]
    known = next(iter(artifact.histories))
    assert len({_rec(client, user_id=known)["arm"] for _ in range(5)}) == 1
    # Both arms answer known users from their own model, undegraded.
    by_arm = {}
    for u in list(artifact.histories)[:60]:
        body = _rec(client, user_id=u, k=5)
        assert not body["degraded"] and body["model_version"] == artifact.version, body
        by_arm.setdefault(body["arm"], body)
    assert set(by_arm) == set(WEIGHTS)


def test_feedback_counts_a_hit_for_the_arm_and_an_unknown_id_as_unmatched(client, arms, artifact, metrics_port,
                                                                          event_store_path):
    user = next(u for u in artifact.histories if _rec(client, user_id=u)["arm"] == "teacher")
    body = _rec(client, user_id=user, k=5)
    assert body["arm"] == "teacher" and len(body["items"]) == 5
    hits = "ray_distilrec_arm_hits_total"
    before = _counter(metrics_port, hits, arm="teacher", rank="2")
    unmatched_before = _counter(metrics_port, "ray_distilrec_feedback_events_total", result="unmatched")
    time.sleep(1.0)  # the impression is written about 0.1 s after the answer
    second = body["items"][1]["item_id"]
    r = client.post("/v1/events", json={"events": [
        {"user_id": user, "item_id": second, "recommendation_id": body["recommendation_id"]}]})
    assert r.status_code == 200, r.text
    assert r.json() == {"stored": 1, "new": 1, "feedback": {"hits": 1, "not_shown": 0, "unmatched": 0,
                                                            "duplicate": 0, "lookup_failed": 0}}
    _wait_counter(metrics_port, hits, before + 1, arm="teacher", rank="2")

    stranger = f"fb-{uuid.uuid4().hex[:10]}"
    r = client.post("/v1/events", json={"events": [
        {"user_id": stranger, "item_id": second, "recommendation_id": "no-such-recommendation"}]})
    assert r.status_code == 200, r.text
    assert r.json()["stored"] == 1 and r.json()["feedback"]["unmatched"] == 1
    with open_event_store(str(event_store_path)) as store:  # the event itself is stored
        assert store.history(stranger) == [second]
    _wait_counter(metrics_port, "ray_distilrec_feedback_events_total", unmatched_before + 1, result="unmatched")
    # An event without a recommendation_id answers as before.
    r = client.post("/v1/events", json={"events": [{"user_id": stranger, "item_id": second}]})
    assert r.json() == {"stored": 1, "new": 1}


def test_a_bad_arms_config_is_refused_and_the_arms_keep_serving(client, arms, serve_config):
    from services.run import deploy

    bad = {"experiment": "itest", "arms": [{"name": "control", "weight": -1}, {"name": "x", "model": "no-such-v"}]}
    deploy(_with_ingress_config(serve_config, {**ARMS, **bad}))
    try:
        exp = client.get("/v1/model").json()["experiment"]
        assert "weight must be a finite number >= 0" in exp["arms_error"]["reason"], exp
        assert [a["name"] for a in exp["arms"]] == ["control", "teacher"]
        assert _rec(client, user_id="still-served")["arm"] in WEIGHTS
    finally:
        deploy(_with_ingress_config(serve_config, ARMS))
    assert client.get("/v1/model").json()["experiment"]["arms_error"] is None
