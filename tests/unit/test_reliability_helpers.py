"""The reliability tests' load driver (tests/reliability_helpers.py, the benchmarks' LoadGenerator in the
pytest process) against a local server that answers slowly: its ``timeout_s`` bounds each request's whole
exchange, and a driver that has not finished is reported with what it still waits on."""

from __future__ import annotations

import asyncio
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from reliability_helpers import LoadResult, Sample, load_result, open_loop

BODY = b'{"items": [], "degraded": false}'


class _Trickle(BaseHTTPRequestHandler):
    """Answers 200 but sends its body one byte every 0.1 s (about 3 s in all): no single read waits long,
    so only a bound on the whole exchange ends the request early."""
    protocol_version = "HTTP/1.1"

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(BODY)))
        self.end_headers()
        try:
            for b in BODY:
                self.wfile.write(bytes([b]))
                self.wfile.flush()
                time.sleep(0.1)
        except (BrokenPipeError, ConnectionResetError):  # the driver gave up on it, as it should
            pass

    def log_message(self, *args):
        pass


@pytest.fixture
def trickle():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Trickle)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def test_timeout_bounds_each_whole_request_not_each_read(trickle):
    t0 = time.monotonic()
    res = asyncio.run(open_loop(trickle, 10.0, 0.5, lambda i: ("POST", "/", {"i": i}), timeout_s=0.5))
    took = time.monotonic() - t0
    assert res.sent == 5 and len(res.samples) == 5
    assert all(s.status == 0 and s.error == "timeout: no answer within 0.5 s" for s in res.samples), res.samples
    assert took < 2.5, f"the driver waited {took:.1f} s for bodies that take about 3 s"


def test_load_result_says_what_an_unfinished_driver_still_waits_on():
    progress = LoadResult(samples=[Sample(0.0, 5.0, 200), Sample(0.1, 5.0, 503)], sent=7)
    with pytest.raises(AssertionError, match=r"5 of 7 requests were still unanswered; answered so far: "
                                             r"\{200: 1, 503: 1\}"):
        load_result({"progress": progress})
    with pytest.raises(ValueError, match="boom"):
        load_result({"progress": progress, "error": ValueError("boom")})
    assert load_result({"progress": progress, "result": progress}) is progress
