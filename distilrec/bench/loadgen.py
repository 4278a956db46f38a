"""The project's one HTTP load driver: the serving benchmarks run it in its own OS process, the
integration and reliability tests in theirs (``tests/reliability_helpers.py``, ``tests/reliability/flood.py``).

    python -m distilrec.bench.loadgen PLAN.json RESULT.json

:class:`LoadGenerator` sends :class:`Request` objects (JSON bodies to one URL, or any method, path, raw
body and headers) and records one :class:`Sample` per request (:class:`LoadResult`); a latency counts
from the request's *scheduled* send time, and every percentile is :func:`distilrec.stats.percentile`
(nearest rank). The benchmarks summarise a step's samples as a :class:`StepResult`; the tests read them.

``PLAN.json`` (see :func:`run_plan`) names the URL, the request bodies (cycled in order) and the phases:

- ``{"kind": "open", "rates": [20, 40], "min_requests": 100}``: **open loop**: requests leave at scheduled
  times (Poisson arrivals at each rate, ``duration_s`` seconds per rate, or longer so that about
  ``min_requests`` are sent) whatever the answers do, and a latency is
  measured from the request's *scheduled* time, so a slow server (or a late client) is not hidden by
  coordinated omission;
- ``{"kind": "search", "start": 5, "factor": 1.25, "max_rate": 2000, "min_requests": 100}``: open-loop steps at geometric
  rates until one misses the SLO (p99 > ``slo_ms`` or any error; a failed step is run once more before
  the search stops, a shared machine is noisy); the throughput at the SLO is the highest rate that passed;
- ``{"kind": "closed", "concurrency": [32]}``: **closed loop**: that many requests always in flight, for
  the throughput at saturation.

Bounds: at most ``max_in_flight`` requests in flight (an arrival beyond it is not sent and counts as a
``client_cap`` error), ``timeout_s`` per request, and ``max_total_s`` for the whole plan (phases that
do not fit are skipped and say so). Requests still unanswered when a step's drain time is over count as
``unfinished``. Errors are counted by kind: ``status_<code>``, ``timeout``, ``connection``,
``degraded`` (a 2xx whose body says ``"degraded":true``: a fallback answered, not the model),
``client_cap``, ``unfinished``.

Each step reports the client's own CPU use (process CPU seconds / wall seconds, 1.0 = one core busy)
and how late it sent requests against the schedule (``send_lag_p99_ms``), so that a saturated client is
seen, never mistaken for a slow server. The client is ``aiohttp`` with one connection pool of
``max_in_flight`` keep-alive connections (``connections`` when there is no cap on the requests in flight).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from distilrec.stats import percentile

SLO_P99_MS = 50.0
# A step whose client used more than this share of one core, or sent late, may be limited by the client.
CLIENT_BUSY_CPU = 0.8
CLIENT_LATE_MS = 5.0


def arrival_times(rate: float, duration_s: float, seed: int = 0, process: str = "poisson") -> list[float]:
    """Send times in seconds from the start of a step, ascending, all ``< duration_s``.

    ``poisson``: exponential gaps with mean ``1/rate`` (seeded); ``uniform``: exactly ``1/rate`` apart.

    >>> arrival_times(4, 1.0, process="uniform")
    [0.0, 0.25, 0.5, 0.75]
    >>> t = arrival_times(100, 10.0, seed=1); 900 < len(t) < 1100 and t == sorted(t)
    True
    """
    return list(_arrivals(rate, duration_s, seed, process))


def _arrivals(rate: float, duration_s: float, seed: int = 0, process: str = "poisson") -> Iterator[float]:
    """:func:`arrival_times`, one at a time."""
    if process not in ("poisson", "uniform"):
        raise ValueError(f"unknown arrival process {process!r} (poisson | uniform)")
    if rate <= 0 or duration_s <= 0:
        return
    if process == "uniform":
        yield from (i / rate for i in range(int(math.ceil(rate * duration_s - 1e-9))))
        return
    rng, t = random.Random(seed), 0.0
    while True:
        t += rng.expovariate(rate)
        if t >= duration_s:
            return
        yield t


def geometric_rates(start: float, factor: float, max_rate: float) -> list[float]:
    """Offered rates ``start, start·factor, …`` up to ``max_rate`` (req/s), rounded to 0.1.

    >>> geometric_rates(10, 2, 100)
    [10.0, 20.0, 40.0, 80.0]
    """
    if start <= 0 or factor <= 1 or max_rate < start:
        raise ValueError(f"need 0 < start <= max_rate and factor > 1, got {start}, {factor}, {max_rate}")
    rates, r = [], float(start)
    while r <= max_rate * (1 + 1e-9):
        rates.append(round(r, 1))
        r *= factor
    return rates


def step_duration(rate: float, duration_s: float, min_requests: int = 0) -> float:
    """Seconds for an open-loop step at ``rate``: ``duration_s``, or longer so that about
    ``min_requests`` requests are sent (a p99 of 20 samples is their maximum).

    >>> step_duration(10, 5, 100), step_duration(100, 5, 100)
    (10.0, 5.0)
    """
    return max(float(duration_s), min_requests / rate if rate > 0 else 0.0)


@dataclass
class StepResult:
    """One measured step. Latencies in milliseconds over the successful (2xx, not degraded) answers,
    percentiles by nearest rank (:func:`distilrec.stats.percentile`); rates in requests per second;
    ``client_cpu`` in cores (CPU seconds / wall seconds)."""

    mode: str                      # "open" | "closed"
    rate: float | None             # offered rate (open loop)
    concurrency: int | None        # requests in flight (closed loop)
    duration_s: float              # scheduled length of the step
    wall_s: float                  # first send to last answer (or cut-off)
    sent: int
    ok: int
    errors: dict[str, int]
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    goodput_rps: float             # successful answers per second (open: of the schedule; closed: of the wall time)
    send_lag_p99_ms: float         # how late requests left against their schedule (open loop)
    client_cpu: float

    @property
    def n_errors(self) -> int:
        return sum(self.errors.values())

    def passed(self, slo_ms: float = SLO_P99_MS) -> bool:
        """Within the SLO: at least one answer, no error of any kind, p99 ≤ ``slo_ms``."""
        return self.ok > 0 and self.n_errors == 0 and self.p99_ms is not None and self.p99_ms <= slo_ms

    @property
    def client_limited(self) -> bool:
        """The client may have been the bottleneck (busy CPU, or it sent late)."""
        return self.client_cpu > CLIENT_BUSY_CPU or self.send_lag_p99_ms > CLIENT_LATE_MS

    def to_dict(self, slo_ms: float = SLO_P99_MS) -> dict[str, Any]:
        return {**asdict(self), "n_errors": self.n_errors, "passed": self.passed(slo_ms),
                "client_limited": self.client_limited}


def step_from_dict(d: dict[str, Any]) -> StepResult:
    """The inverse of :meth:`StepResult.to_dict`."""
    names = StepResult.__dataclass_fields__
    return StepResult(**{k: v for k, v in d.items() if k in names})


def _cpu_s() -> float:
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


JSON_HEADERS = {"content-type": "application/json"}


@dataclass(frozen=True)
class Request:
    """One HTTP request of a load: ``method``, ``path`` (appended to the generator's URL), the raw
    ``body`` (``None``: none) and its ``headers``."""

    method: str = "POST"
    path: str = ""
    body: bytes | None = None
    headers: Mapping[str, str] | None = None

    @classmethod
    def of_json(cls, value: Any, method: str = "POST", path: str = "") -> "Request":
        """``value`` as a JSON body (bytes are sent as they are); ``None``: no body."""
        if value is None:
            return cls(method, path)
        return cls(method, path, value if isinstance(value, bytes) else json.dumps(value).encode(), JSON_HEADERS)


@dataclass
class Sample:
    """One request's outcome. ``t``: its scheduled send time, seconds from the start of the step;
    ``latency_ms``: from that time to the complete answer (or to the error); ``status``: the HTTP
    status, 0 when no answer came (``error`` then says why, starting with its kind: ``timeout``,
    ``connection``, ``client_cap``, ``unfinished``); ``body``: the answer's JSON (its first 500
    characters when it is not JSON), kept for every answer outside 2xx and for all of them when the
    generator keeps bodies; ``degraded``: a 2xx whose body says ``"degraded":true``; ``i``: the
    request's number (the argument its request factory got)."""

    t: float
    latency_ms: float
    status: int
    body: Any = None
    error: str = ""
    retry_after: str = ""  # the Retry-After header
    degraded: bool = False
    i: int = 0

    @property
    def kind(self) -> str:
        """``ok`` (a 2xx from the model), or the error's kind as the benchmarks count it:
        ``status_<code>``, ``degraded``, ``timeout``, ``connection``, ``client_cap``, ``unfinished``."""
        if self.status == 0:
            return self.error.split(":", 1)[0] or "connection"
        if not 200 <= self.status < 300:
            return f"status_{self.status}"
        return "degraded" if self.degraded else "ok"


@dataclass
class LoadResult:
    """The samples of one step, filled while it runs (a caller in another thread can read its progress):
    ``samples`` the requests answered or failed so far (in scheduled order once the step is over),
    ``sent`` the requests started so far, ``t0`` the ``time.monotonic()`` of the step's start (the
    first scheduled send of an open loop), ``duration_s`` from it to the last send, ``wall_s`` to the
    last answer or the cut-off."""

    samples: list[Sample] = field(default_factory=list)
    duration_s: float = 0.0
    t0: float = 0.0
    sent: int = 0
    wall_s: float = 0.0

    def codes(self) -> dict[int, int]:
        """``{HTTP status (0: no answer): count}``."""
        return dict(Counter(s.status for s in self.samples))

    def ok(self) -> list[Sample]:
        """The samples with status 200."""
        return [s for s in self.samples if s.status == 200]

    def p(self, q: float, since: float = 0.0) -> float:
        """:func:`~distilrec.stats.percentile` ``q`` (0..100] of the latencies of every sample, whatever
        its outcome, scheduled at ``since`` seconds or later; NaN when there is none (a bound it is
        compared with fails)."""
        value = percentile([s.latency_ms for s in self.samples if s.t >= since], q)
        return float("nan") if value is None else value

    def rate(self) -> float:
        """Requests answered or failed per second of sending."""
        return len(self.samples) / self.duration_s if self.duration_s else 0.0


def _parsed(content: bytes) -> Any:
    try:
        return json.loads(content)
    except ValueError:
        return content[:500].decode("utf-8", "replace")


class LoadGenerator:
    """Sends requests to one URL with a fixed pool of keep-alive connections (use inside a running
    event loop: ``async with LoadGenerator(url, bodies) as g: await g.open_loop(50, 5)``).

    ``requests``: JSON bodies (values or bytes) POSTed to ``url`` in turn, or a function of the
    request's number that returns its :class:`Request`. ``max_in_flight``: an arrival beyond that many
    requests in flight is not sent (a ``client_cap`` sample); ``None``: no cap, and a request beyond the
    pool's ``connections`` (default ``max_in_flight``, else 512) waits for one, the wait in its latency.
    ``timeout_s`` bounds each request's whole exchange (connection, sending, the complete answer).
    ``keep_bodies``: keep every answer's JSON in its sample (else only those outside 2xx)."""

    def __init__(self, url: str, requests: list[Any] | Callable[[int], Request], max_in_flight: int | None = 256,
                 timeout_s: float = 2.0, arrivals: str = "poisson", seed: int = 0, connections: int | None = None,
                 keep_bodies: bool = False):
        if callable(requests):
            self._request = requests
        else:
            if not requests:
                raise ValueError("need at least one request body")
            fixed = [Request.of_json(b) for b in requests]
            self._request = lambda i: fixed[i % len(fixed)]
        self.url, self.timeout_s = url, float(timeout_s)
        self.max_in_flight = None if max_in_flight is None else int(max_in_flight)
        self.connections = int(connections or self.max_in_flight or 512)
        self.arrivals, self.seed, self.keep_bodies = arrivals, seed, keep_bodies
        self._next = 0
        self._session = None

    async def __aenter__(self) -> "LoadGenerator":
        import aiohttp

        connector = aiohttp.TCPConnector(limit=self.connections, limit_per_host=self.connections,
                                         force_close=False, enable_cleanup_closed=True)
        self._session = aiohttp.ClientSession(connector=connector,
                                              timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        return self

    async def __aexit__(self, *exc) -> None:
        await self._session.close()

    def _take(self) -> tuple[int, Request]:
        i = self._next
        self._next += 1
        return i, self._request(i)

    async def _send(self, i: int, req: Request, sched: float, t: float, result: LoadResult) -> None:
        """Send ``req``; append its :class:`Sample` (scheduled ``t`` s into the step, latency from ``sched``,
        a ``loop.time()``) to ``result``."""
        import aiohttp

        loop = asyncio.get_running_loop()
        status, body, error, retry_after, degraded = 0, None, "", "", False
        try:
            async with self._session.request(req.method, self.url + req.path, data=req.body, headers=req.headers,
                                             allow_redirects=False) as r:
                content = await r.read()
                status, retry_after = r.status, r.headers.get("retry-after", "")
        except asyncio.TimeoutError:
            error = f"timeout: no answer within {self.timeout_s:g} s"
        except (aiohttp.ClientError, OSError) as e:
            error = f"connection: {type(e).__name__}: {e}"
        else:
            ok = 200 <= status < 300
            degraded = ok and b'"degraded":true' in content
            if self.keep_bodies or not ok:
                body = _parsed(content)
        result.samples.append(Sample(t, (loop.time() - sched) * 1000.0, status, body, error, retry_after, degraded, i))

    async def run_open(self, rate: float, duration_s: float, stop: threading.Event | None = None,
                       result: LoadResult | None = None, lags_ms: list[float] | None = None) -> LoadResult:
        """Requests at Poisson (or uniform) arrival times at ``rate`` req/s for ``duration_s`` seconds (or
        until ``stop`` is set), sent whatever the answers do; then at most ``timeout_s`` for the answers,
        after which a request still open is an ``unfinished`` sample. ``result``: the object to fill;
        ``lags_ms``: receives how late each request left against its schedule."""
        loop = asyncio.get_running_loop()
        result = result if result is not None else LoadResult()
        lags = lags_ms if lags_ms is not None else []
        pending: dict[asyncio.Task, tuple[int, float, float]] = {}
        t0 = loop.time() + 0.005
        result.t0 = t0  # the loop's clock is time.monotonic()
        for off in _arrivals(rate, duration_s, self.seed + int(rate * 1000), self.arrivals):
            if stop is not None and stop.is_set():
                break
            due = t0 + off
            delay = due - loop.time()
            await asyncio.sleep(delay if delay > 0 else 0)
            i, req = self._take()
            if self.max_in_flight is not None and len(pending) >= self.max_in_flight:
                result.samples.append(Sample(off, 0.0, 0, error=f"client_cap: {len(pending)} requests in flight",
                                             i=i))
                continue
            lags.append(max(0.0, loop.time() - due) * 1000.0)
            task = asyncio.ensure_future(self._send(i, req, due, off, result))
            result.sent += 1
            pending[task] = (i, due, off)
            task.add_done_callback(lambda done: pending.pop(done, None))
        result.duration_s = loop.time() - t0
        if pending:
            cutoff = max(t0 + duration_s, loop.time()) + self.timeout_s
            _, late = await asyncio.wait(set(pending), timeout=max(0.0, cutoff - loop.time()))
            unanswered = {task: pending[task] for task in late}
            for task in late:
                task.cancel()
            if late:
                await asyncio.gather(*late, return_exceptions=True)
            for task, (i, due, off) in unanswered.items():
                if task.cancelled():
                    result.samples.append(Sample(off, (loop.time() - due) * 1000.0, 0, i=i, error=(
                        f"unfinished: no answer {self.timeout_s:g} s after the last send")))
        result.wall_s = loop.time() - t0
        result.samples.sort(key=lambda s: s.t)
        return result

    async def run_closed(self, concurrency: int, duration_s: float) -> LoadResult:
        """``concurrency`` requests always in flight for ``duration_s`` seconds (each worker sends the
        next request when its answer arrives); a latency counts from the request's own send time."""
        loop = asyncio.get_running_loop()
        result = LoadResult()
        t0 = result.t0 = loop.time()
        stop = t0 + duration_s

        async def worker() -> None:
            while loop.time() < stop:
                i, req = self._take()
                result.sent += 1
                now = loop.time()
                await self._send(i, req, now, now - t0, result)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        result.duration_s = result.wall_s = loop.time() - t0
        result.samples.sort(key=lambda s: s.t)
        return result

    @staticmethod
    def _step(mode: str, rate: float | None, conc: int | None, duration_s: float, load: LoadResult,
              lags_ms: list[float], cpu0: float) -> StepResult:
        """A step's :class:`StepResult` from its samples."""
        wall = max(load.wall_s, 1e-9)
        lat = sorted(s.latency_ms for s in load.samples if s.kind == "ok")
        errors = Counter(s.kind for s in load.samples if s.kind != "ok")
        return StepResult(
            mode=mode, rate=rate, concurrency=conc, duration_s=duration_s, wall_s=round(wall, 3),
            sent=load.sent, ok=len(lat), errors=dict(errors),
            p50_ms=percentile(lat, 50), p95_ms=percentile(lat, 95), p99_ms=percentile(lat, 99),
            max_ms=lat[-1] if lat else None,
            # open loop: answers per scheduled second (compare with the offered rate); closed loop: answers per
            # second from the first send to the last answer (the requests in flight at the stop finish late)
            goodput_rps=len(lat) / (duration_s if mode == "open" else wall),
            send_lag_p99_ms=percentile(lags_ms, 99) or 0.0, client_cpu=(_cpu_s() - cpu0) / wall)

    async def open_loop(self, rate: float, duration_s: float) -> StepResult:
        """:meth:`run_open` summarised: ``goodput_rps`` is the successful answers over ``duration_s``."""
        cpu0, lags = _cpu_s(), []
        load = await self.run_open(rate, duration_s, lags_ms=lags)
        return self._step("open", rate, None, duration_s, load, lags, cpu0)

    async def closed_loop(self, concurrency: int, duration_s: float) -> StepResult:
        """:meth:`run_closed` summarised: ``goodput_rps`` is the successful answers over the wall time."""
        cpu0 = _cpu_s()
        load = await self.run_closed(concurrency, duration_s)
        return self._step("closed", None, concurrency, duration_s, load, [], cpu0)


async def search_slo(gen: LoadGenerator, start: float, factor: float, max_rate: float, duration_s: float,
                     slo_ms: float = SLO_P99_MS, deadline: float | None = None,
                     retry_failed: bool = True, min_requests: int = 0) -> dict[str, Any]:
    """Step the offered rate up geometrically until a step misses the SLO twice in a row (or
    ``max_rate`` or the ``deadline``, a ``time.monotonic()`` value, is reached). Each step lasts
    :func:`step_duration` (``duration_s``, longer at low rates so that ``min_requests`` are sent).

    Returns ``{"throughput_at_slo": req/s (0.0 when even ``start`` failed), "steps": [StepResult
    dicts in order], "stopped": why}``.
    """
    steps: list[dict[str, Any]] = []
    best, stopped = 0.0, "max_rate reached"
    for rate in geometric_rates(start, factor, max_rate):
        d = step_duration(rate, duration_s, min_requests)
        if deadline is not None and time.monotonic() + d + gen.timeout_s > deadline:
            stopped = "time cap reached"
            break
        r = await gen.open_loop(rate, d)
        steps.append(r.to_dict(slo_ms))
        if not r.passed(slo_ms) and retry_failed and \
                (deadline is None or time.monotonic() + d + gen.timeout_s <= deadline):
            r = await gen.open_loop(rate, d)  # once more: one noisy step must not end the search
            steps.append(r.to_dict(slo_ms))
        if not r.passed(slo_ms):
            stopped = f"SLO missed at {rate:g} req/s"
            break
        best = rate
    return {"throughput_at_slo": best, "steps": steps, "stopped": stopped}


async def _run_plan(plan: dict[str, Any]) -> dict[str, Any]:
    t_start = time.monotonic()
    deadline = t_start + float(plan.get("max_total_s", 600))
    slo = float(plan.get("slo_ms", SLO_P99_MS))
    dur = float(plan.get("duration_s", 5))
    out: dict[str, Any] = {"phases": [], "slo_ms": slo}
    async with LoadGenerator(plan["url"], plan["bodies"], plan.get("max_in_flight", 256),
                             plan.get("timeout_s", 2.0), plan.get("arrivals", "poisson"),
                             plan.get("seed", 0)) as gen:
        for phase in plan["phases"]:
            kind = phase["kind"]
            res: dict[str, Any] = {"kind": kind, "steps": []}
            if kind == "search":
                res.update(await search_slo(gen, phase["start"], phase.get("factor", 1.25), phase["max_rate"],
                                            phase.get("duration_s", dur), slo, deadline,
                                            phase.get("retry_failed", True), phase.get("min_requests", 0)))
            elif kind in ("open", "closed", "warmup"):
                levels = phase["concurrency"] if kind == "closed" else phase["rates"]
                for level in levels:
                    d = float(phase.get("duration_s", dur))
                    if kind != "closed":
                        d = step_duration(level, d, phase.get("min_requests", 0))
                    if time.monotonic() + d + gen.timeout_s > deadline:
                        res["skipped"] = res.get("skipped", []) + [level]
                        continue
                    r = await (gen.closed_loop(int(level), d) if kind == "closed" else gen.open_loop(level, d))
                    res["steps"].append(r.to_dict(slo))
            else:
                raise ValueError(f"unknown phase kind {kind!r}")
            out["phases"].append(res)
    out["wall_s"] = time.monotonic() - t_start
    out["client_cpu_s"] = _cpu_s()
    out["pid"] = os.getpid()
    return out


def run_plan(plan: dict[str, Any]) -> dict[str, Any]:
    """Run a plan in this process (blocking). Keys: ``url``, ``bodies`` (JSON values or bytes),
    ``phases`` (see the module docstring), optional ``duration_s`` (5), ``max_in_flight`` (256),
    ``timeout_s`` (2), ``slo_ms`` (50), ``max_total_s`` (600), ``arrivals`` (``poisson``), ``seed`` (0)."""
    return asyncio.run(_run_plan(plan))


def run_plan_subprocess(plan: dict[str, Any], workdir: str | Path | None = None) -> dict[str, Any]:
    """Run a plan in a fresh Python process (``python -m distilrec.bench.loadgen``), so that the client
    shares no interpreter, GIL or event loop with the caller; killed after ``max_total_s`` + 30 s."""
    with tempfile.TemporaryDirectory(dir=workdir) as d:
        plan_path, out_path = Path(d) / "plan.json", Path(d) / "result.json"
        plan_path.write_text(json.dumps(plan))
        limit = float(plan.get("max_total_s", 600)) + 30
        proc = subprocess.run([sys.executable, "-m", "distilrec.bench.loadgen", str(plan_path), str(out_path)],
                              capture_output=True, text=True, timeout=limit)
        if proc.returncode != 0:
            raise RuntimeError(f"load generator failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
        return json.loads(out_path.read_text())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m distilrec.bench.loadgen", description=__doc__.split("\n\n")[0])
    p.add_argument("plan", help="plan JSON (url, bodies, phases, …)")
    p.add_argument("result", help="where the result JSON goes")
    a = p.parse_args(argv)
    plan = json.loads(Path(a.plan).read_text())
    Path(a.result).write_text(json.dumps(run_plan(plan), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
