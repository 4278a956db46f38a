"""The load generator against a real local HTTP server (stdlib, in a thread): what it counts, what it
measures, its bounds, its SLO search, and that it runs in its own process. No timing claims: the
server's delays are far apart so that the assertions hold on a busy machine."""

from __future__ import annotations

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from distilrec.bench.loadgen import (
    LoadGenerator, Request, arrival_times, geometric_rates, run_plan, run_plan_subprocess, search_slo,
    step_from_dict,
)
from distilrec.stats import percentile


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the Serve proxy

    def do_POST(self):  # noqa: N802
        n = int(self.headers.get("content-length", 0))
        body = json.loads(self.rfile.read(n) or b"{}")
        self.server.seen.append(body)
        path = self.path
        if path.startswith("/slow"):
            time.sleep(0.3)
        if path.startswith("/ramp"):  # slow once more than `limit` requests arrived in the last second
            now = time.monotonic()
            self.server.times.append(now)
            recent = sum(1 for t in self.server.times if t > now - 1.0)
            if recent > self.server.limit:
                time.sleep(1.0)
        status = 503 if path.startswith("/error") else 200
        out = json.dumps({"items": [], "degraded": path.startswith("/degraded")},
                         separators=(",", ":")).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.seen, srv.times, srv.limit = [], [], 1_000_000
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def _plan(url: str, phases: list[dict], **kw) -> dict:
    return {"url": url, "bodies": [{"user_id": "a"}, {"user_id": "b", "history": ["i1"]}], "phases": phases,
            "duration_s": 1.0, "timeout_s": 2.0, **kw}


def test_schedule_helpers():
    assert arrival_times(0, 5) == [] and arrival_times(5, 0) == []
    t = arrival_times(50, 4.0, seed=3)
    assert t == sorted(t) and all(0 <= x < 4.0 for x in t) and 120 < len(t) < 280
    assert t == arrival_times(50, 4.0, seed=3) and t != arrival_times(50, 4.0, seed=4)
    assert arrival_times(10, 1.0, process="uniform") == [i / 10 for i in range(10)]
    with pytest.raises(ValueError):
        arrival_times(1, 1, process="bursty")
    assert geometric_rates(5, 1.5, 20) == [5.0, 7.5, 11.2, 16.9]
    with pytest.raises(ValueError):
        geometric_rates(10, 1.0, 100)
    values = sorted(float(i) for i in range(1, 101))
    assert (percentile(values, 50), percentile(values, 99), percentile(values, 100)) == (50.0, 99.0, 100.0)
    assert percentile([7.0], 99) == 7.0


def test_open_loop_counts_every_request_and_measures_latency(server):
    srv, base = server
    srv.seen.clear()
    res = run_plan(_plan(base + "/fast", [{"kind": "open", "rates": [40]}], arrivals="uniform"))
    step = step_from_dict(res["phases"][0]["steps"][0])
    assert step.sent == 40 and step.ok == 40 and step.errors == {}
    assert len(srv.seen) == 40 and {"user_id": "b", "history": ["i1"]} in srv.seen  # bodies cycled, sent as JSON
    assert 0 < step.p50_ms <= step.p99_ms <= step.max_ms
    assert step.passed(slo_ms=1000) and step.goodput_rps == pytest.approx(40.0)
    assert step.client_cpu >= 0 and res["phases"][0]["steps"][0]["passed"] == step.passed(res["slo_ms"])

    slow = step_from_dict(run_plan(_plan(base + "/slow", [{"kind": "open", "rates": [10]}],
                                        arrivals="uniform"))["phases"][0]["steps"][0])
    assert slow.ok == 10 and slow.p50_ms >= 300  # the server's 0.3 s is in every latency
    assert not slow.passed(slo_ms=50)


def test_errors_by_kind_and_degraded_answers_are_not_successes(server):
    _, base = server
    for path, kind in (("/error", "status_503"), ("/degraded", "degraded")):
        s = run_plan(_plan(base + path, [{"kind": "open", "rates": [10]}], arrivals="uniform"))["phases"][0]["steps"][0]
        assert s["ok"] == 0 and s["errors"] == {kind: 10} and s["p99_ms"] is None and not s["passed"]
    dead = run_plan({**_plan("http://127.0.0.1:9/x", [{"kind": "open", "rates": [5]}], arrivals="uniform")})
    assert dead["phases"][0]["steps"][0]["errors"] == {"connection": 5}


def test_requests_of_any_method_path_and_body_each_get_a_sample(server):
    """A request factory (the tests' use): each request's method, path and body, its number, status and
    kept body in its sample; the bench's error kinds from the same samples."""
    import asyncio

    srv, base = server
    srv.seen.clear()

    def request(i: int) -> Request:
        if i % 2:
            return Request("GET", "/get")  # the handler has no GET: 501 with an HTML body
        return Request.of_json({"n": i}, path="/error" if i == 2 else "/fast")

    async def go():
        async with LoadGenerator(base, request, max_in_flight=None, arrivals="uniform", keep_bodies=True) as g:
            return await g.run_open(20, 0.3)

    load = asyncio.run(go())
    assert load.sent == 6 and [s.i for s in load.samples] == list(range(6))
    assert [s.kind for s in load.samples] == ["ok", "status_501", "status_503", "status_501", "ok", "status_501"]
    assert load.codes() == {200: 2, 501: 3, 503: 1} and len(load.ok()) == 2
    assert load.samples[0].body == {"items": [], "degraded": False} and isinstance(load.samples[1].body, str)
    assert {"n": 0} in srv.seen and {"n": 4} in srv.seen
    assert load.p(100) == max(s.latency_ms for s in load.samples)


def test_without_a_cap_requests_wait_for_a_connection_and_the_wait_is_latency(server):
    """No cap on the requests in flight and a pool of one connection: 4 requests 50 ms apart at a server
    that takes 0.3 s each are all sent and answered, one after the other, the last after about 1.2 s."""
    import asyncio

    _, base = server

    async def go():
        async with LoadGenerator(base + "/slow", [{"user_id": "a"}], max_in_flight=None, connections=1,
                                 timeout_s=10, arrivals="uniform") as g:
            return await g.run_open(20, 0.2)

    load = asyncio.run(go())
    assert load.sent == 4 and load.codes() == {200: 4}
    assert load.samples[-1].latency_ms >= 900


def test_in_flight_cap_and_timeouts_bound_the_run(server):
    _, base = server
    # 20 req/s for 1 s at a server that takes 0.3 s: about 6 in flight; a cap of 2 refuses the rest.
    s = run_plan(_plan(base + "/slow", [{"kind": "open", "rates": [20]}], arrivals="uniform",
                       max_in_flight=2))["phases"][0]["steps"][0]
    assert s["errors"].get("client_cap", 0) > 0 and s["sent"] + s["errors"]["client_cap"] == 20
    # a request timeout shorter than the server's delay: every request is a timeout, the step ends
    t0 = time.monotonic()
    s = run_plan(_plan(base + "/slow", [{"kind": "open", "rates": [10]}], arrivals="uniform",
                       timeout_s=0.1))["phases"][0]["steps"][0]
    assert s["ok"] == 0 and sum(s["errors"].values()) == 10 and set(s["errors"]) <= {"timeout", "unfinished"}
    assert time.monotonic() - t0 < 10
    # the plan's total cap: the second rate does not fit and is skipped, not run
    res = run_plan(_plan(base + "/fast", [{"kind": "open", "rates": [5, 5]}], max_total_s=3.5))
    assert len(res["phases"][0]["steps"]) == 1 and res["phases"][0]["skipped"] == [5]


class _OneAtATime(_Handler):
    protocol_version = "HTTP/1.0"  # one connection per request, served one after the other


def test_open_loop_keeps_sending_so_a_queue_shows_in_the_latency():
    """A server that answers one request at a time in 0.3 s: at 10 req/s the open-loop client keeps
    sending on schedule, the requests queue, and the queueing is in the measured latency (the last of
    10 waits about 2 s); a closed loop with one request in flight only ever sees about 0.3 s. (A
    latency counts from the request's scheduled send time.)"""
    from http.server import HTTPServer

    srv = HTTPServer(("127.0.0.1", 0), _OneAtATime)
    srv.seen, srv.times, srv.limit = [], [], 1_000_000
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        s = run_plan(_plan(base + "/slow", [{"kind": "open", "rates": [10]}], arrivals="uniform",
                           timeout_s=10))["phases"][0]["steps"][0]
        assert s["ok"] == 10 and s["max_ms"] >= 1500 and s["p50_ms"] >= 600
        c = run_plan(_plan(base + "/slow", [{"kind": "closed", "concurrency": [1]}], timeout_s=10))["phases"][0]["steps"][0]
        assert c["mode"] == "closed" and c["ok"] >= 1 and 300 <= c["p50_ms"] < s["max_ms"]
    finally:
        srv.shutdown()


def test_slo_search_finds_the_knee(server):
    """The server answers fast up to 32 requests in the last second and in 1 s beyond: the search
    passes the low rates and stops at the first rate past the knee."""
    import asyncio

    srv, base = server
    srv.times.clear()
    srv.limit = 32

    async def go():
        async with LoadGenerator(base + "/ramp", [{"user_id": "a"}], arrivals="uniform") as g:
            return await search_slo(g, start=5, factor=2, max_rate=80, duration_s=1.5, slo_ms=500,
                                    retry_failed=False)

    try:
        res = asyncio.run(go())
    finally:
        srv.limit = 1_000_000
    rates = [s["rate"] for s in res["steps"]]
    assert rates[:2] == [5.0, 10.0]
    assert res["throughput_at_slo"] in (10.0, 20.0) and res["stopped"].startswith("SLO missed")
    assert not res["steps"][-1]["passed"] and all(s["passed"] for s in res["steps"][:-1])


def test_plan_runs_in_its_own_process(server, tmp_path):
    _, base = server
    res = run_plan_subprocess(_plan(base + "/fast", [{"kind": "warmup", "rates": [5]},
                                                    {"kind": "search", "start": 5, "factor": 2, "max_rate": 10}],
                                    slo_ms=10_000), workdir=tmp_path)
    assert res["pid"] != os.getpid()
    assert res["phases"][1]["throughput_at_slo"] == 10.0 and res["phases"][1]["stopped"] == "max_rate reached"
    assert list(tmp_path.iterdir()) == []  # the plan and result files are cleaned up


def test_low_rates_get_longer_steps(server):
    _, base = server
    res = run_plan(_plan(base + "/fast", [{"kind": "open", "rates": [10], "min_requests": 15}], arrivals="uniform",
                         slo_ms=10_000))
    s = res["phases"][0]["steps"][0]
    assert s["duration_s"] == 1.5 and s["sent"] == 15


def test_closed_loop_throughput_counts_the_time_to_the_last_answer(server):
    """4 requests always in flight for 1 s at 0.3 s each: about 4 rounds of 4, the last round ending
    after the stop; every request sent before the stop is waited for and counted, and the throughput is
    answers over the wall time (so at most 4 / 0.3 ≈ 13.3 req/s). How many rounds each of the 4 senders
    fits into the second depends on the machine's load, so the count need not be a multiple of 4."""
    _, base = server
    s = run_plan(_plan(base + "/slow", [{"kind": "closed", "concurrency": [4]}], timeout_s=10))["phases"][0]["steps"][0]
    assert s["ok"] == s["sent"] and s["ok"] >= 4 and s["errors"] == {} and s["wall_s"] >= 1.0
    assert s["goodput_rps"] == pytest.approx(s["ok"] / s["wall_s"], rel=0.01) and s["goodput_rps"] <= 4 / 0.3
