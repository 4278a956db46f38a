"""Every dashboard query and every alert rule, evaluated by a real Prometheus against the session's
real Serve application and Ray Train runs.

Prometheus (``prometheus`` fixture, tests/integration/prom_server.py) scrapes the session's Ray metrics
port every second from before the pipeline trains, with the labels the chart's PodMonitors add, and
loads the chart's PrometheusRule as rendered by ``helm template``. The test then

1. checks the Training dashboard against the series the pipeline's Ray Train workers exported while
   they trained (their gauges exist only while a worker lives, so these queries are evaluated over the
   training time range, as Grafana's range queries do);
2. sends a known number of recommendations, events, one new item and two model swaps (healthy load),
   and checks that Prometheus counts exactly what was sent; sends feedback on one answer (a hit, and an
   unknown recommendation id); checks that every alert expression returns data
   without its threshold and nothing with it (no alert is pending or firing), and that the rules load
   and evaluate without error (DistilrecNoModelLoaded is checked more than 30 s after the last model
   swap: Ray drops a gauge that is not set again within ~20 s, so the replicas must keep setting it);
3. then makes the service degrade on purpose (a scorer deadline of 1 µs; a locked event store) so
   that the counters that exist only from their first increment exist too, deploys a ``scorer:
   deployment`` application beside the session's (the Scorer deployment's panel has data only then)
   and sends it a few requests, gives the session's application a canary and a shadow arm (the arms
   row's canary and shadow panels) and sends it a few requests too, and checks that every query of
   every panel returns data, every
   dashboard variable has values and every metric name a panel or an alert uses is one Prometheus has.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import sqlite3
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cluster_fixtures import IDLE_SCRAPE_S, SCORER_MODE_PREFIX, scorer_mode_config
from prom_server import IN_CI, NAMESPACE, RELEASE
from reliability_helpers import wait_ready
from test_arms_http import _with_ingress_config

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RECOMMENDS, EVENT_POSTS, EVENTS_PER_POST, CONCURRENCY = 200, 12, 3, 2
# The latency histogram's bucket bound below the p99 alert's threshold (250 ms by default).
BUCKET_BELOW_P99_THRESHOLD_S = 0.2
# A canary that stays running (no decision within the test) and a shadow arm: the arms row's last panels.
ROLLOUT = {"experiment": "obs", "arms": [{"name": "control"}, {"name": "cand", "weight": 0},
                                         {"name": "teach", "scorer_model": "teacher", "shadow": True}],
           "canary": {"arm": "cand", "start_weight": 0.5, "interval_s": 600}}


@pytest.fixture(scope="module")
def prom(prometheus):
    """The session's Prometheus, scraping every second while this module reads it."""
    if isinstance(prometheus, str):
        if IN_CI:
            pytest.fail(prometheus + "; CI must install it")
        pytest.skip(prometheus)
    prometheus.set_scrape_interval(1)
    yield prometheus
    prometheus.set_scrape_interval(IDLE_SCRAPE_S)


def _dashboards() -> dict[str, dict]:
    from dashboards import DASHBOARDS

    return {name: d.render() for name, d in DASHBOARDS.items()}


def _concrete(expr: str, window_s: int) -> str:
    """A panel's expression as Grafana sends it: variables replaced ("All" for the run)."""
    return (expr.replace("$__rate_interval", f"{window_s}s").replace("$__interval", "1s")
            .replace("$namespace", NAMESPACE).replace("$release", RELEASE).replace("$stage", ".*"))


def _rendered_rules() -> list[dict]:
    """The chart's PrometheusRule rules, rendered by a real helm (tests/k8s/k8s_helpers.py)."""
    sys.path.insert(0, str(ROOT / "tests" / "k8s"))
    try:
        from k8s_helpers import one, render
    finally:
        sys.path.pop(0)
    rule = one(render(), "PrometheusRule")
    return [r for g in rule["spec"]["groups"] for r in g["rules"]]


_THRESHOLD = re.compile(r"^(?P<expr>.*\S)\s*(?P<op>>=|<=|>|<|==|!=)\s*(?P<value>[-+0-9.eE]+)\s*$", re.S)


def _split_threshold(expr: str) -> tuple[str, str]:
    m = _THRESHOLD.match(expr.strip())
    assert m, f"no threshold comparison at the end of {expr!r}"
    return m["expr"], f"{m['op']} {m['value']}"


def _wait(prom, what: str, ok, timeout_s: float = 60.0, every: float = 1.0):
    deadline = time.monotonic() + timeout_s
    while True:
        got = ok()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"Prometheus did not see {what} within {timeout_s:.0f}s")
        time.sleep(every)


def _settled(prom, *exprs: str, quiet_s: float = 12.0, timeout_s: float = 90.0) -> list[float]:
    """The values of ``exprs`` once none has changed for ``quiet_s`` (Ray's processes export their
    metrics to the node's port every ~10 s); 0 for no data."""
    deadline = time.monotonic() + timeout_s
    last, since = [prom.value(e) for e in exprs], time.monotonic()
    while time.monotonic() - since < quiet_s:
        assert time.monotonic() < deadline, f"{exprs} did not settle"
        time.sleep(1.0)
        now = [prom.value(e) for e in exprs]
        if now != last:
            last, since = now, time.monotonic()
    return [v or 0.0 for v in last]


def _check_training(prom) -> None:
    dash = _dashboards()["training"]
    end = time.time()
    for panel in dash["panels"]:
        for t in panel.get("targets", []):
            res = prom.query_range(_concrete(t["expr"], 60), prom.started, end)
            assert res, f"training panel {panel['title']!r}: no data over the session for {t['expr']}"
    stages = {s["metric"]["stage"] for s in prom.query_range(
        f'ray_distilrec_train_val_ndcg{{namespace="{NAMESPACE}"}}', prom.started, end)}
    assert {"teacher", "student"} <= stages, stages
    ranks = {s["metric"]["rank"] for s in prom.query_range(
        'ray_distilrec_train_samples_per_second{stage="teacher"}', prom.started, end)}
    assert ranks == {"0", "1"}, ranks  # every one of the 2 Ray Train workers reports its throughput
    for s in prom.query_range("ray_distilrec_train_val_ndcg", prom.started, end):
        assert all(0.0 <= float(v) <= 1.0 for _, v in s["values"])


def _copy_version(pipeline_output: Path, src: str, name: str) -> None:
    models = pipeline_output / "models"
    shutil.copytree(models / src, models / name)
    manifest = json.loads((models / name / "manifest.json").read_text())
    manifest["version"] = name
    (models / name / "manifest.json").write_text(json.dumps(manifest))


def _set_latest(pipeline_output: Path, version: str) -> None:
    tmp = pipeline_output / "models" / "LATEST.tmp"
    tmp.write_text(version)
    tmp.replace(pipeline_output / "models" / "LATEST")


def _reload(client, admin, version: str) -> None:
    r = client.post("/v1/model/reload", headers=admin, timeout=180)
    assert r.status_code == 200 and r.json()["version"] == version, r.text


def test_dashboards_and_alerts_against_a_real_prometheus(prom, client, artifact, admin, pipeline_output,
                                                        serve_config, event_store_path):
    from services.run import deploy

    t_start = time.time()
    _check_training(prom)

    rules = _rendered_rules()
    (prom.rules_dir / "distilrec.yaml").write_text(json.dumps({"groups": [{"name": "distilrec", "rules": rules}]}))
    prom.reload()
    _wait(prom, "the chart's rules loaded", lambda: len(prom.rules()) == len(rules), 30)

    # ------------------------------------------------------------------ healthy load, counted
    original = artifact.version
    _copy_version(pipeline_output, original, original + "-obs")
    try:
        _set_latest(pipeline_output, original + "-obs")
        _reload(client, admin, original + "-obs")
    finally:
        _set_latest(pipeline_output, original)
    _reload(client, admin, original)
    r = client.post("/v1/items", headers=admin,
                    json={"items": [{"item_id": f"obs-{uuid.uuid4().hex[:8]}", "title": "Observed Comet Saga"}]})
    assert r.status_code == 200 and r.json()["added"] == 1, r.text

    users, items = list(artifact.histories), artifact.items.item_ids
    for u in users[:5]:  # the replicas' first requests after the swaps
        assert client.post("/v1/recommend", json={"user_id": u, "k": 5}).status_code == 200

    rec_200 = 'sum(ray_distilrec_requests_total{route="/v1/recommend",code="200"})'
    stored = "sum(ray_distilrec_events_stored_total)"
    rec_before, stored_before = _settled(prom, rec_200, stored)
    t_healthy = time.time()
    latencies: list[tuple[float, int]] = []  # (seconds as the client saw them, i)

    def recommend(i: int, payload: dict) -> None:
        t0 = time.perf_counter()
        r = client.post("/v1/recommend", json=payload)
        latencies.append((round(time.perf_counter() - t0, 3), i))
        assert r.status_code == 200 and not r.json()["degraded"], r.text

    for i in range(EVENT_POSTS):  # an event, then the recommendation that reflects it (event-to-effect)
        user = f"obs-{uuid.uuid4().hex[:8]}"
        events = [{"user_id": user, "item_id": items[(i + j) % len(items)]} for j in range(EVENTS_PER_POST)]
        r = client.post("/v1/events", json={"events": events})
        assert r.status_code == 200 and r.json()["stored"] == EVENTS_PER_POST, r.text
        recommend(i, {"user_id": user, "k": 5})
    # The rest concurrently (the scorer batches them); every 4th a user with no history (cold start).
    payloads = [(i, {"user_id": f"obs-cold-{uuid.uuid4().hex[:8]}" if i % 4 == 0 else users[i % len(users)],
                     "k": 5}) for i in range(EVENT_POSTS, RECOMMENDS)]
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        list(pool.map(lambda a: recommend(*a), payloads))

    sent_events = EVENT_POSTS * EVENTS_PER_POST
    _wait(prom, f"{RECOMMENDS} recommendations and {sent_events} events",
          lambda: (prom.value(rec_200) or 0) - rec_before >= RECOMMENDS
          and (prom.value(stored) or 0) - stored_before >= sent_events, 60)
    rec_after, stored_after = _settled(prom, rec_200, stored)
    assert (rec_after - rec_before, stored_after - stored_before) == (RECOMMENDS, sent_events)
    # Feedback on an answer (the overview's arms row): a hit at rank 1, and an id no answer had.
    body = client.post("/v1/recommend", json={"user_id": users[0], "k": 5}).json()
    time.sleep(1.0)  # its impression is written about 0.1 s after the answer
    shown = body["items"][0]["item_id"]
    r = client.post("/v1/events", json={"events": [
        {"user_id": users[0], "item_id": shown, "recommendation_id": body["recommendation_id"]},
        {"user_id": users[0], "item_id": shown, "recommendation_id": "obs-no-such-answer"}]})
    assert r.status_code == 200 and r.json()["feedback"]["hits"] == 1, r.text

    # Alerts under this load: each expression has data without its threshold and none with it, over a
    # window that holds this test's load only (earlier tests broke things on purpose).
    window = int(time.time() - t_healthy) + 2
    for rule in rules:
        base, threshold = _split_threshold(rule["expr"])
        base = re.sub(r"\[\d+[smh]\]", f"[{window}s]", base)
        assert prom.query(base), f"{rule['alert']}: no data for {base}"
        values = [float(s["value"][1]) for s in prom.query(base)]
        slow = [lat for lat, _ in latencies if lat > BUCKET_BELOW_P99_THRESHOLD_S]
        if rule["alert"] == "DistilrecHighP99Latency" and len(slow) > 0.01 * len(latencies):
            # More than 1% of these requests took over 200 ms as the client saw them (a busy machine):
            # the condition may then hold, as it should. Prometheus's p99 is still checked to be there.
            print(f"p99 alert not checked: {len(slow)} of {len(latencies)} recommendations over 200 ms; "
                  f"p99 in Prometheus {values}")
            continue
        assert not prom.query(f"{base} {threshold}"), (
            f"{rule['alert']} would fire: {values} {threshold}; slowest recommendations (s, i): "
            f"{sorted(latencies, reverse=True)[:5]}")
    for rule in prom.rules():
        assert rule["health"] == "ok" and not rule.get("lastError"), rule
    assert not prom.query('ALERTS{alertstate="firing"}'), prom.query("ALERTS")

    # ------------------------------------------------------------------ faults on purpose
    knobs = copy.deepcopy(serve_config)
    for dep in knobs["applications"][0]["deployments"]:
        if dep["name"] == "Ingress":
            dep["user_config"] = {"deadline_ms": {**dep["user_config"]["deadline_ms"], "score": 0.001}}
    deploy(knobs)
    try:
        _wait(prom, "a degraded answer", lambda: client.post(
            "/v1/recommend", json={"user_id": users[0], "k": 5}).json()["degraded"], 60, 0.5)
    finally:
        deploy(serve_config)
    _wait(prom, "undegraded answers again", lambda: not client.post(
        "/v1/recommend", json={"user_id": users[0], "k": 5}).json()["degraded"], 60, 0.5)
    blocker = sqlite3.connect(event_store_path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another writer holds the lock beyond the store's 2 s timeout
    try:
        r = client.post("/v1/events", json={"events": [{"user_id": "obs-locked", "item_id": items[0]}]})
        assert r.status_code == 503, r.text
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    _wait(prom, "the degraded and write-error counters", lambda: prom.query(
        'ray_distilrec_degraded_total{reason="scorer_timeout"}') and prom.query(
        'ray_distilrec_event_store_errors_total{op="write"}'), 60)

    # ------------------------------------------------------------------ scorer: deployment beside
    # The Scorer deployment's panel (and the "info" stage) has data only with scorer: deployment: such an
    # application runs beside the session's for the rest of the test and answers a few requests.
    deploy(scorer_mode_config(_with_ingress_config(serve_config, ROLLOUT), str(pipeline_output)))
    try:
        wait_ready(client, path=f"{SCORER_MODE_PREFIX}/readyz")
        for u in users[:20]:  # the session's application, with the canary and the shadow arm
            r = client.post("/v1/recommend", json={"user_id": u, "k": 5})
            assert r.status_code == 200 and r.json()["arm"] in ("control", "cand"), r.text
        _wait(prom, "the canary's and the shadow arm's series", lambda: prom.query(
            'ray_distilrec_canary_weight{arm="cand"}') and prom.query(
            'ray_distilrec_shadow_overlap_count{arm="teach"}'), 60)
        for u in users[:20]:
            r = client.post(f"{SCORER_MODE_PREFIX}/v1/recommend", json={"user_id": u, "k": 5})
            assert r.status_code == 200 and not r.json()["degraded"], r.text
        assert client.get(f"{SCORER_MODE_PREFIX}/v1/model").json()["scorer"]["mode"] == "deployment"
        scorer_series = [f'ray_serve_{m}{{deployment="Scorer"}}' for m in (
            "deployment_replica_healthy", "replica_processing_queries", "deployment_queued_queries")]
        _wait(prom, "the Scorer deployment's series", lambda: all(prom.query(q) for q in scorer_series), 60)
        time.sleep(2)  # two more scrapes: rate() needs two samples
        _check_every_panel(prom, rules, t_start)
    finally:
        deploy(serve_config)  # the declarative config without it: the application is deleted


def _check_every_panel(prom, rules: list[dict], t_start: float) -> None:
    """Every query of every panel (but the training dashboard's, checked over the training) returns data
    over the test's window, every dashboard variable has values, and every metric name a panel or an
    alert uses is one Prometheus has."""
    window = int(time.time() - t_start) + 2
    names = prom.metric_names()
    used = set()
    for name, dash in _dashboards().items():
        for panel in dash["panels"]:
            for t in panel.get("targets", []):
                used |= set(re.findall(r"\bray_[a-z0-9_]+", t["expr"]))
                if name == "training":
                    continue  # evaluated over the training time range above
                expr = _concrete(t["expr"], window)
                assert prom.query(expr), f"{name} / {panel['title']!r}: no data for {expr}"
        for var in dash["templating"]["list"]:
            if var["type"] != "query":
                continue
            m = re.fullmatch(r"label_values\((?P<match>.+),\s*(?P<label>\w+)\)", var["query"]["query"])
            assert m, var["query"]
            assert prom.label_values(m["label"], _concrete(m["match"], window)), f"{name}: ${var['name']} is empty"
    for rule in rules:
        used |= set(re.findall(r"\bray_[a-z0-9_]+", rule["expr"]))
    assert used - names == set(), f"metric names Prometheus never saw: {sorted(used - names)}"
