"""A flood of hostile requests, in a process of its own (an attacker is another client: its JSON encoding
and socket writes must not share the measuring client's interpreter lock).

    python tests/reliability/flood.py BASE_URL RATE SECONDS ITEM_ID OUT.json

sends the requests of :func:`bad_requests` in turn at RATE per second (open loop, the project's load driver
:class:`distilrec.bench.loadgen.LoadGenerator`) for SECONDS and writes ``[[name, status, error code], ...]``
to OUT.json."""

from __future__ import annotations

import asyncio
import json
import sys

from distilrec.bench.loadgen import LoadGenerator, Request, Sample


def bad_requests(item: str) -> list[tuple[str, str, dict, bytes | None, int, str]]:
    """(name, method + path, headers, raw body, expected status, expected error.code)."""
    j = {"content-type": "application/json"}
    big = b'{"user_id": "' + b"u" * (2 << 20) + b'"}'
    deep = b"[" * 100_000 + b"]" * 100_000
    deep_obj = b'{"user_id": "u", "filters": ' + b'{"a": ' * 50_000 + b"1" + b"}" * 50_000 + b"}"
    long_str = json.dumps({"user_id": "u" * 1_000_000}).encode()  # just under 1 MiB
    long_hist = json.dumps({"history": ["x" * 1000] * 1000}).encode()
    return [
        ("oversized body", "POST /v1/recommend", j, big, 413, "payload_too_large"),
        ("oversized events", "POST /v1/events", j, b'{"events": [' + b'{"user_id": "u", "item_id": "i"},' * 40_000
         + b'{"user_id": "u", "item_id": "i"}]}', 413, "payload_too_large"),
        ("deep JSON array", "POST /v1/recommend", j, deep, 400, "invalid_request"),  # the parser refuses it
        ("deep JSON object", "POST /v1/events", j, deep_obj, 400, "invalid_request"),
        ("k = 10^9", "POST /v1/recommend", j, json.dumps({"user_id": "u", "k": 10**9}).encode(), 422, "invalid_request"),
        ("k = 2^80", "POST /v1/recommend", j, json.dumps({"user_id": "u", "k": 2**80}).encode(), 422, "invalid_request"),
        ("1 MB user id", "POST /v1/recommend", j, long_str, 422, "invalid_request"),
        ("1 MB of history", "POST /v1/recommend", j, long_hist, 422, "invalid_request"),
        ("1 MB item text", "POST /v1/items", {**j, "authorization": "Bearer wrong"},
         json.dumps({"items": [{"item_id": "n", "title": "t", "text": "x" * 1_000_000}]}).encode(), 401, "unauthorized"),
        ("no token", "POST /v1/model/reload", {}, None, 401, "unauthorized"),
        ("wrong token", "POST /v1/model/reload", {"authorization": "Bearer guess"}, None, 401, "unauthorized"),
        ("basic auth", "POST /v1/items", {**j, "authorization": "Basic YWRtaW46YWRtaW4="},
         json.dumps({"items": [{"item_id": "n", "title": "t"}]}).encode(), 401, "unauthorized"),
        ("broken JSON", "POST /v1/events", j, b'{"events": [{"user_id": ', 422, "invalid_request"),
        ("not UTF-8", "POST /v1/recommend", j, b"\xff\xfe\xfa", 400, "invalid_request"),
        ("NaN", "POST /v1/recommend", j, b'{"user_id": "u", "diversity": NaN}', 422, "invalid_request"),
        ("wrong method", "DELETE /v1/recommend", {}, None, 405, "method_not_allowed"),
        ("unknown route", "GET /admin/../../etc/passwd", {}, None, 404, "not_found"),
        ("unknown item", "POST /v1/events", j,
         json.dumps({"events": [{"user_id": "u", "item_id": "no-such-item"}]}).encode(), 422, "unknown_item"),
    ]


async def flood(base_url: str, rate: float, seconds: float, bad: list) -> list[tuple[str, int, str]]:
    """Send ``bad``'s requests in turn, open loop at ``rate`` per second for ``seconds``, with the
    project's load driver; ``[(name, status (0: no answer), error.code or what came instead)]``."""
    def request(i: int) -> Request:
        _, route, headers, body, _, _ = bad[i % len(bad)]
        method, path = route.split(" ", 1)
        return Request(method, path, body, headers)

    async with LoadGenerator(base_url, request, max_in_flight=None, connections=256, timeout_s=60,
                             arrivals="uniform") as driver:
        load = await driver.run_open(rate, seconds)
    return [(bad[s.i % len(bad)][0], s.status, _code(s)) for s in load.samples]


def _code(s: Sample) -> str:
    """The answer's ``error.code``; what came instead when there is none."""
    if s.status == 0:
        return s.error
    try:
        return s.body["error"]["code"]
    except (KeyError, TypeError):
        return f"not JSON: {str(s.body)[:80]!r}"


def main(argv: list[str]) -> None:
    base_url, rate, seconds, item, out = argv
    result = asyncio.run(flood(base_url, float(rate), float(seconds), bad_requests(item)))
    with open(out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1:])
