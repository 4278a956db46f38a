"""The Serve application through Ray Serve's real HTTP proxy."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
import uuid

import httpx
import numpy as np
import pytest

from distilrec.cli import read_metrics

pytestmark = pytest.mark.integration


def test_health_and_readiness(client, artifact):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["model_version"] == artifact.version


def test_model_info(client, artifact):
    info = client.get("/v1/model").json()
    assert info["version"] == artifact.version
    assert info["n_items"] == len(artifact.items)
    assert info["metrics"]["student"]["ndcg@10"] >= 0
    # The session's application scores in the ingress (the serve config's default), with its knobs.
    assert info["scorer"]["mode"] == "inline"
    assert info["scorer"]["max_batch_size"] >= 1 and info["scorer"]["candidates"] >= 1
    # retrieval: auto (the default), and the session's catalogue is far below faiss_min_items
    assert info["scorer"]["retrieval"] == "exact"


def test_known_user_gets_k_unseen_items(client, artifact):
    user, seen = next(iter(artifact.histories.items()))
    r = client.post("/v1/recommend", json={"user_id": user, "k": 7})
    assert r.status_code == 200, r.text
    body = r.json()
    ids = [it["item_id"] for it in body["items"]]
    assert len(ids) == 7 == len(set(ids))
    assert not set(ids) & set(seen)
    assert all(it["item_id"] in artifact.items.index for it in body["items"])
    assert [it["title"] for it in body["items"]] == [artifact.items.titles[artifact.items.index[i]] for i in ids]
    scores = [it["score"] for it in body["items"]]
    assert scores == sorted(scores, reverse=True)
    assert body["cold_start"] is False and body["degraded"] is False
    assert body["model_version"] == artifact.version


def test_request_history_and_exclude_are_honoured(client, artifact):
    user, seen = next(iter(artifact.histories.items()))
    first = client.post("/v1/recommend", json={"user_id": user, "k": 5}).json()["items"]
    extra = [first[0]["item_id"]]
    excluded = [first[1]["item_id"]]
    body = client.post("/v1/recommend", json={"user_id": user, "history": extra, "k": 5,
                                               "exclude": excluded}).json()
    ids = {it["item_id"] for it in body["items"]}
    assert not ids & (set(seen) | set(extra) | set(excluded))


def test_history_changes_the_ranking_of_an_anonymous_user(client, artifact):
    a = client.post("/v1/recommend", json={"history": [artifact.items.item_ids[0]], "k": 10}).json()
    b = client.post("/v1/recommend", json={"history": [artifact.items.item_ids[-1]], "k": 10}).json()
    assert a["cold_start"] is False
    assert [i["item_id"] for i in a["items"]] != [i["item_id"] for i in b["items"]]


def test_unknown_user_without_history_gets_cold_start(client):
    body = client.post("/v1/recommend", json={"user_id": "never-seen", "k": 3}).json()
    assert body["cold_start"] is True
    assert len(body["items"]) == 3


@pytest.mark.parametrize(
    "payload, code",
    [
        ({"user_id": "u1", "k": 0}, "invalid_request"),
        ({"user_id": "u1", "k": 1000}, "invalid_request"),
        ({"user_id": "u1", "k": "ten"}, "invalid_request"),
        ({"user_id": 12}, "invalid_request"),
        ({"user_id": "u1", "surprise": True}, "invalid_request"),
        ({"history": ["no-such-item"]}, "unknown_item"),
        ({"history": ["x"] * 10_000}, "invalid_request"),
        ([1, 2, 3], "invalid_request"),
    ],
)
def test_bad_input_is_a_json_4xx(client, payload, code):
    r = client.post("/v1/recommend", json=payload)
    assert 400 <= r.status_code < 500, r.text
    assert r.json()["error"]["code"] == code
    assert "Traceback" not in r.text


def test_malformed_json_and_unknown_route(client):
    r = client.post("/v1/recommend", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
    r = client.get("/v1/nothing-here")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_service_answers_after_bad_input(client):
    for _ in range(5):
        client.post("/v1/recommend", content=b"\xff\xfe", headers={"content-type": "application/json"})
    assert client.post("/v1/recommend", json={"user_id": "u0", "k": 2}).status_code == 200


def test_openapi_is_served(client):
    spec = client.get("/openapi.json").json()
    assert "/v1/recommend" in spec["paths"]
    assert client.get("/docs").status_code == 200


def test_concurrent_requests_are_batched_and_metrics_exported(serve_url, metrics_port, artifact):
    users = list(artifact.histories)[:64]

    async def burst():
        async with httpx.AsyncClient(base_url=serve_url, timeout=30) as c:
            return await asyncio.gather(*(c.post("/v1/recommend", json={"user_id": u, "k": 5}) for u in users))

    responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [200] * len(users)

    def batched(lines):
        # (batches, batches of one request): Ray 2.60 exports a histogram's _sum from bucket midpoints
        # (a batch of 1 adds 0.5), so the bucket counts tell whether batches held several requests.
        count = sum(float(ln.rsplit(" ", 1)[1]) for ln in lines if ln.startswith("ray_distilrec_scorer_batch_size_count"))
        ones = sum(float(ln.rsplit(" ", 1)[1]) for ln in lines
                   if ln.startswith("ray_distilrec_scorer_batch_size_bucket") and 'le="1.0"' in ln)
        return count, ones

    names = ("ray_distilrec_requests_total", "ray_distilrec_request_latency_ms_count",
             "ray_distilrec_stage_latency_ms_count", "ray_distilrec_scorer_batch_size_count",
             "ray_distilrec_scorer_batch_size_bucket")
    deadline = time.monotonic() + 60  # Ray exports metrics every few seconds
    while True:
        lines = read_metrics(metrics_port, names, timeout_s=60)
        count, ones = batched(lines)
        if count > ones or time.monotonic() > deadline:
            break
        time.sleep(2)
    # Not every batch held a single request: some batches held several.
    assert count > ones and count > 0
    # The ingress's own steps of a recommendation: the user's history (a store thread) and the scoring.
    for stage in ("features", "score"):
        assert any(f'stage="{stage}"' in ln for ln in lines if ln.startswith("ray_distilrec_stage_latency_ms_count"))


# ------------------------------------------------------------------------------------ free-text query

@pytest.fixture(scope="module")
def text_encoder(artifact):
    """The session model's own text encoder, loaded here to compute what a query's answer must be."""
    from distilrec.text import TextEncoder

    if not artifact.encoder_uri:
        pytest.skip("the session's model was trained without text features")
    return TextEncoder(artifact.encoder_uri)


def _popularity(artifact) -> np.ndarray:
    """Interaction counts per trained item, as the serving catalogue counts them (the artifact's histories)."""
    from distilrec.catalog import Catalog

    index = artifact.items.index
    rows = [[index[i] for i in h if i in index] for h in artifact.histories.values()]
    return Catalog(artifact.items.item_ids, artifact.items.titles, artifact.items.attributes,
                   artifact.items.text_emb, rows).popularity


def test_a_query_without_history_ranks_by_popularity_blended_with_the_text_match(client, artifact, text_encoder):
    """Cold start with a query: the answer is the documented blend (distilrec.query): popularity
    (log counts, min-max scaled over the catalogue) weighted ``1 - query_weight``, plus the query's cosine
    similarity to each item's text weighted ``query_weight``; each item says it matches the query."""
    from distilrec.query import minmax01, popularity_base, query_sims

    query = "a haunted house story with ghosts"
    info = client.get("/v1/model").json()
    weight, new_items = info["scorer"]["query_weight"], info["new_items"]
    n = len(artifact.items)
    # Items other tests added (popularity 0) take part in the scaling, and cannot reach the top here.
    base = minmax01(popularity_base(np.append(_popularity(artifact), np.zeros(new_items))))[:n]
    blended = (1 - weight) * base + weight * query_sims(text_encoder.encode([query])[0], artifact.items.text_emb)
    order = [artifact.items.item_ids[r] for r in np.argsort(-blended, kind="stable")]
    excluded = order[:1]

    r = client.post("/v1/recommend", json={"query": query, "k": 6, "exclude": excluded})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["cold_start"] is True and body["degraded"] is False, body
    assert body["model_version"] == artifact.version
    expected = order[1:7]
    assert [it["item_id"] for it in body["items"]] == expected
    for it in body["items"]:
        assert it["score"] == pytest.approx(blended[artifact.items.index[it["item_id"]]], abs=1e-5)
        assert "matches your query" in it["explanation"] and query in it["explanation"], it
    # An unknown user without history is the same cold start.
    anon = client.post("/v1/recommend", json={"user_id": f"q-{uuid.uuid4().hex[:8]}", "query": query, "k": 6,
                                              "exclude": excluded}).json()
    assert [it["item_id"] for it in anon["items"]] == expected and anon["cold_start"] is True
    # Without the query, the same request is the popularity ranking, explained as such.
    plain = client.post("/v1/recommend", json={"k": 6, "exclude": excluded}).json()
    assert all("matches your query" not in it["explanation"] for it in plain["items"])


def test_a_query_with_a_known_user_answers_from_the_model_and_the_query(client, artifact):
    user, seen = list(artifact.histories.items())[3]
    plain = client.post("/v1/recommend", json={"user_id": user, "k": 8}).json()
    r = client.post("/v1/recommend", json={"user_id": user, "k": 8, "query": "a comedy about a road trip"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["cold_start"] is False and body["degraded"] is False, body
    ids = [it["item_id"] for it in body["items"]]
    assert len(ids) == 8 == len(set(ids)) and not set(ids) & set(seen)
    scores = [it["score"] for it in body["items"]]
    assert scores == sorted(scores, reverse=True)
    assert all(it["explanation"] for it in body["items"])
    # The blend's scale (model score min-max scaled, plus a weighted cosine), not the model's raw scores.
    assert all(-1.0 <= s <= 1.0 for s in scores), scores
    assert scores != [it["score"] for it in plain["items"]]


@pytest.mark.parametrize("payload", [{"query": ""}, {"query": "x" * 1001}, {"query": 5}, {"query": "a\x00b"}])
def test_a_bad_query_is_a_json_422(client, payload):
    r = client.post("/v1/recommend", json=payload)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request", r.text


# ---------------------------------------------------------------------------------- oversized bodies

@pytest.mark.parametrize("route", ["/v1/events", "/v1/recommend"])
def test_a_16_mib_body_sent_whole_before_reading_gets_the_json_413(client, serve_url, route):
    """A client that writes the whole body before it reads anything (Python's urllib / http.client with a
    Content-Length) gets the 413 and its JSON, not a reset connection: the ingress reads the body and
    drops it before it answers."""
    body = b'{"events": [' + b'{"user_id": "u", "item_id": "i"},' * (16 * 2**20 // 32) + b'{}]}'
    assert len(body) > 16 * 2**20
    req = urllib.request.Request(serve_url + route, data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(req, timeout=60)
    err = caught.value
    assert err.code == 413
    assert err.headers.get_content_type() == "application/json"
    assert json.loads(err.read())["error"]["code"] == "payload_too_large"
    assert client.post("/v1/recommend", json={"user_id": "u0", "k": 2}).status_code == 200
