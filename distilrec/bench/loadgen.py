"""An HTTP load generator for the serving benchmarks, run in its own OS process.

    python -m distilrec.bench.loadgen PLAN.json RESULT.json

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
``max_in_flight`` keep-alive connections.
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
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

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
    if rate <= 0 or duration_s <= 0:
        return []
    if process == "uniform":
        return [i / rate for i in range(int(math.ceil(rate * duration_s - 1e-9)))]
    if process != "poisson":
        raise ValueError(f"unknown arrival process {process!r} (poisson | uniform)")
    rng, t, out = random.Random(seed), 0.0, []
    while True:
        t += rng.expovariate(rate)
        if t >= duration_s:
            return out
        out.append(t)


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile ``q`` (0..100] of ascending values; ``None`` when empty.

    >>> percentile([1.0, 2.0, 3.0, 4.0], 50), percentile([1.0, 2.0, 3.0, 4.0], 99), percentile([], 50)
    (2.0, 4.0, None)
    """
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


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
    """One measured step. Latencies in milliseconds over the successful (2xx, not degraded) answers;
    rates in requests per second; ``client_cpu`` in cores (CPU seconds / wall seconds)."""

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


@dataclass
class _Tally:
    latencies_ms: list[float] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)
    sent: int = 0
    last_done: float = 0.0


class LoadGenerator:
    """Sends JSON bodies to one URL with a fixed pool of keep-alive connections (use inside a running
    event loop: ``async with LoadGenerator(url, bodies) as g: await g.open_loop(50, 5)``)."""

    def __init__(self, url: str, bodies: list[Any], max_in_flight: int = 256, timeout_s: float = 2.0,
                 arrivals: str = "poisson", seed: int = 0):
        if not bodies:
            raise ValueError("need at least one request body")
        self.url, self.max_in_flight, self.timeout_s = url, int(max_in_flight), float(timeout_s)
        self.arrivals, self.seed = arrivals, seed
        self.bodies = [b if isinstance(b, bytes) else json.dumps(b).encode() for b in bodies]
        self._next = 0
        self._session = None

    async def __aenter__(self) -> "LoadGenerator":
        import aiohttp

        connector = aiohttp.TCPConnector(limit=self.max_in_flight, limit_per_host=self.max_in_flight,
                                         force_close=False, enable_cleanup_closed=True)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            headers={"content-type": "application/json"})
        return self

    async def __aexit__(self, *exc) -> None:
        await self._session.close()

    def _body(self) -> bytes:
        b = self.bodies[self._next % len(self.bodies)]
        self._next += 1
        return b

    async def _one(self, body: bytes, t_ref: float, tally: _Tally) -> None:
        """One request; its latency counts from ``t_ref`` (the scheduled send time in open loop)."""
        import aiohttp

        loop = asyncio.get_running_loop()
        try:
            async with self._session.post(self.url, data=body) as r:
                content = await r.read()
                status = r.status
        except asyncio.TimeoutError:
            tally.errors["timeout"] += 1
            return
        except (aiohttp.ClientError, OSError):
            tally.errors["connection"] += 1
            return
        done = loop.time()
        tally.last_done = max(tally.last_done, done)
        if not 200 <= status < 300:
            tally.errors[f"status_{status}"] += 1
        elif b'"degraded":true' in content:
            tally.errors["degraded"] += 1
        else:
            tally.latencies_ms.append((done - t_ref) * 1000.0)

    def _result(self, mode: str, rate: float | None, conc: int | None, duration_s: float, t0: float,
                tally: _Tally, lags_ms: list[float], cpu0: float) -> StepResult:
        loop = asyncio.get_running_loop()
        wall = max(loop.time() - t0, 1e-9)
        lat = sorted(tally.latencies_ms)
        lags = sorted(lags_ms)
        return StepResult(
            mode=mode, rate=rate, concurrency=conc, duration_s=duration_s, wall_s=round(wall, 3),
            sent=tally.sent, ok=len(lat), errors=dict(tally.errors),
            p50_ms=percentile(lat, 50), p95_ms=percentile(lat, 95), p99_ms=percentile(lat, 99),
            max_ms=lat[-1] if lat else None,
            # open loop: answers per scheduled second (compare with the offered rate); closed loop: answers per
            # second from the first send to the last answer (the requests in flight at the stop finish late)
            goodput_rps=len(lat) / (duration_s if mode == "open" else wall),
            send_lag_p99_ms=percentile(lags, 99) or 0.0, client_cpu=(_cpu_s() - cpu0) / wall)

    async def open_loop(self, rate: float, duration_s: float) -> StepResult:
        """Requests at Poisson (or uniform) arrival times at ``rate`` req/s for ``duration_s`` seconds,
        sent whatever the answers do; then at most ``timeout_s`` to drain. ``goodput_rps`` is the
        successful answers over ``duration_s``."""
        loop = asyncio.get_running_loop()
        offsets = arrival_times(rate, duration_s, self.seed + int(rate * 1000), self.arrivals)
        tally, lags, pending = _Tally(), [], set()
        cpu0, t0 = _cpu_s(), loop.time() + 0.005
        for off in offsets:
            due = t0 + off
            delay = due - loop.time()
            await asyncio.sleep(delay if delay > 0 else 0)
            if len(pending) >= self.max_in_flight:
                tally.errors["client_cap"] += 1
                continue
            lags.append(max(0.0, loop.time() - due) * 1000.0)
            task = asyncio.ensure_future(self._one(self._body(), due, tally))
            tally.sent += 1
            pending.add(task)
            task.add_done_callback(pending.discard)
        if pending:
            _, late = await asyncio.wait(set(pending), timeout=max(0.0, t0 + duration_s + self.timeout_s - loop.time()))
            for task in late:
                task.cancel()
                tally.errors["unfinished"] += 1
            if late:
                await asyncio.gather(*late, return_exceptions=True)
        return self._result("open", rate, None, duration_s, t0, tally, lags, cpu0)

    async def closed_loop(self, concurrency: int, duration_s: float) -> StepResult:
        """``concurrency`` requests always in flight for ``duration_s`` seconds (each worker sends the
        next request when its answer arrives); latency from each request's own send time."""
        loop = asyncio.get_running_loop()
        tally = _Tally()
        cpu0, t0 = _cpu_s(), loop.time()
        stop = t0 + duration_s

        async def worker() -> None:
            while loop.time() < stop:
                tally.sent += 1
                await self._one(self._body(), loop.time(), tally)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return self._result("closed", None, concurrency, duration_s, t0, tally, [], cpu0)


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
