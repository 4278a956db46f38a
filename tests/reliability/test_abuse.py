"""Abuse: hostile input gets a clear JSON 4xx and does not break the good requests beside it.

1. Good recommendations alone, open loop at ``GOOD_RPS``: their p99.
2. The same good load again while a flood of bad requests runs beside it at ``BAD_RPS`` (bodies over the
   1 MiB limit, JSON nested 100,000 deep, ``k`` = 10^9, 1 MB strings, wrong and missing admin tokens,
   broken JSON, wrong methods, unknown routes) from a process of its own. Every bad request gets its 4xx
   with a JSON ``error.code``, every good one a 200, and the replicas are the same ones afterwards
   (``test_good_requests_succeed_beside_a_flood_of_bad_ones``, in CI).
3. The good p99 under the flood stays within the SLO (50 ms) or, on a machine where even the unloaded
   p99 is over it, within 2 × the unloaded p99 (a flood may cost some latency, not an outage):
   ``test_good_requests_keep_their_latency_under_a_flood_of_bad_ones``, marked ``slo`` and left out of
   the default run like the soak's SLO check, because on 2 vCPUs shared by the service, the client and
   the attacker it fails (``docs/reliability.md``); ``pytest -m slo`` runs it.

The two conditions alternate in ``ROUNDS`` windows each; ``DISTILREC_ABUSE_S`` sets each condition's
total time (CI: 12 s)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flood import bad_requests
from reliability_helpers import SLO_P99_MS, open_loop, record, replica_actors

from distilrec.stats import percentile

pytestmark = pytest.mark.integration

SECONDS = float(os.environ.get("DISTILREC_ABUSE_S", "12"))  # per condition, over ROUNDS windows
ROUNDS = 4
GOOD_RPS, BAD_RPS = 20.0, 40.0
FLOOD = Path(__file__).with_name("flood.py")  # the attacker: a process of its own


def test_each_hostile_request_gets_its_json_4xx(client):
    for name, route, headers, body, status, code in bad_requests("i1"):
        method, path = route.split(" ", 1)
        r = client.request(method, path, headers=headers, content=body)
        assert r.status_code == status, (name, r.status_code, r.text[:300])
        assert r.json()["error"]["code"] == code, (name, r.text[:300])
        assert "Traceback" not in r.text


def _alone_and_flooded(serve_url, artifact, tmp_path) -> dict:
    """Good load alone and beside the flood, in alternating windows (``ROUNDS`` of each), so that
    whatever else the machine does weighs on both alike; the figures are recorded."""
    users = list(artifact.histories)
    before = replica_actors()

    def good(i):
        return ("POST", "/v1/recommend", {"user_id": users[i % len(users)], "k": 10})

    asyncio.run(open_loop(serve_url, GOOD_RPS, 3, good))  # warm-up
    item = artifact.items.item_ids[0]
    bad = bad_requests(item)
    alone, flooded, flood = [], [], []
    window = SECONDS / ROUNDS
    for n in range(ROUNDS):
        alone += asyncio.run(open_loop(serve_url, GOOD_RPS, window, good)).samples
        out = tmp_path / f"flood-{n}.json"
        proc = subprocess.Popen([sys.executable, str(FLOOD), serve_url, str(BAD_RPS), str(window), item, str(out)])
        try:
            time.sleep(0.3)  # the flood process's start-up (imports) is not flood
            flooded += asyncio.run(open_loop(serve_url, GOOD_RPS, window, good)).samples
        finally:
            assert proc.wait(timeout=180) == 0
        flood += [tuple(x) for x in json.loads(out.read_text())]
    p99_alone = percentile([s.latency_ms for s in alone], 99)
    p99_flood = percentile([s.latency_ms for s in flooded], 99)
    expected = {name: (status, code) for name, _, _, _, status, code in bad}
    wrong = [(n, s, c) for n, s, c in flood if (s, c) != expected[n]]
    codes_alone, codes_flood = _codes(alone), _codes(flooded)
    record("abuse", seconds=SECONDS, rounds=ROUNDS, good_rps=GOOD_RPS, bad_rps=BAD_RPS, bad_sent=len(flood),
           good_p50_alone_ms=percentile([s.latency_ms for s in alone], 50), good_p99_alone_ms=p99_alone,
           good_p50_flood_ms=percentile([s.latency_ms for s in flooded], 50), good_p99_flood_ms=p99_flood,
           good_codes_alone=codes_alone, good_codes_flood=codes_flood, bad_wrong=len(wrong))
    return {"before": before, "alone": alone, "flooded": flooded, "flood": flood, "wrong": wrong,
            "p99_alone": p99_alone, "p99_flood": p99_flood}


def test_good_requests_succeed_beside_a_flood_of_bad_ones(serve_url, artifact, tmp_path):
    r = _alone_and_flooded(serve_url, artifact, tmp_path)
    assert not r["wrong"], r["wrong"][:10]
    assert len(r["flood"]) >= 0.9 * BAD_RPS * (SECONDS - 0.3 * ROUNDS)
    codes_alone, codes_flood = _codes(r["alone"]), _codes(r["flooded"])
    assert codes_alone == {200: len(r["alone"])} and codes_flood == {200: len(r["flooded"])}, \
        (codes_alone, codes_flood, [s.body for s in r["flooded"] if s.status != 200][:3])
    assert replica_actors() == r["before"]


@pytest.mark.slo
def test_good_requests_keep_their_latency_under_a_flood_of_bad_ones(serve_url, artifact, tmp_path):
    r = _alone_and_flooded(serve_url, artifact, tmp_path)
    bound = max(SLO_P99_MS, 2 * r["p99_alone"])
    assert r["p99_flood"] <= bound, f"good p99 {r['p99_flood']:.1f} ms under the flood, {r['p99_alone']:.1f} ms alone"


def _codes(samples) -> dict[int, int]:
    out: dict[int, int] = {}
    for s in samples:
        out[s.status] = out.get(s.status, 0) + 1
    return out
