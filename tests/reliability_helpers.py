"""Helpers of the Serve tests (tests/integration and tests/reliability): an open-loop load driver, the
live Serve replicas and their processes, and the figures the tests print (collected by ``pytest -s`` /
the CI log, copied into docs/reliability.md).

The load driver is the benchmarks' (:class:`distilrec.bench.loadgen.LoadGenerator`), open loop with
uniform arrivals: request ``i`` is sent at ``t0 + i / rate`` whether or not earlier ones have been
answered, and its latency counts from that scheduled time, so a server that falls behind shows it in the
latency (no coordinated omission); every percentile is :func:`distilrec.stats.percentile` (nearest
rank). Here it runs in the pytest process, whose heap (Ray, torch, pandas, schemathesis and every
earlier test) is large: one full garbage collection of it holds the GIL for over 100 ms on 2 vCPUs, which
the driver would count as the service's latency. So :func:`open_loop` takes the heap that exists when it
starts out of the collector's view (``gc.freeze``, as the replicas do) and records its own collection
pauses (``LoadResult.client_gc_ms``)."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import httpx

from distilrec.bench import loadgen
from distilrec.bench.loadgen import SLO_P99_MS, LoadGenerator, Request, Sample  # noqa: F401 - the tests' names

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# Connections of the driver's pool; requests beyond them wait for one (no cap on the requests in flight).
CONNECTIONS = 512


@dataclass
class LoadResult(loadgen.LoadResult):
    """:class:`distilrec.bench.loadgen.LoadResult` with the driver's own collections of the oldest
    generation (``client_gc_ms``, milliseconds each)."""

    client_gc_ms: list[float] = field(default_factory=list)


async def open_loop(base_url: str, rate: float, duration_s: float,
                    request: Callable[[int], tuple[str, str, Any]], keep_body: bool = False,
                    timeout_s: float = 30.0, stop: threading.Event | None = None,
                    result: LoadResult | None = None) -> LoadResult:
    """Send ``request(i) -> (method, path, json)`` at ``rate`` per second for ``duration_s`` (or until
    ``stop`` is set); return one :class:`Sample` per request, with its parsed body when ``keep_body``
    (always for a status other than 2xx). ``timeout_s`` bounds each request's whole exchange, so the
    driver ends at most ``timeout_s`` after its last send, and a request left unanswered is a status-0
    sample, not a hang. ``result``: the object to fill (a caller in another thread can read its
    progress)."""
    result = result if result is not None else LoadResult()
    gc.collect()
    gc.freeze()  # not unfrozen: the pytest process's heap only grows, and other drivers may be running
    started: list[float] = []

    def on_gc(phase: str, info: dict) -> None:
        if info["generation"] == 2:
            if phase == "start":
                started.append(time.perf_counter())
            elif started:
                result.client_gc_ms.append((time.perf_counter() - started.pop()) * 1000)

    def as_request(i: int) -> Request:
        method, path, body = request(i)
        return Request.of_json(body, method, path)

    gc.callbacks.append(on_gc)
    try:
        async with LoadGenerator(base_url, as_request, max_in_flight=None, connections=CONNECTIONS,
                                 timeout_s=timeout_s, arrivals="uniform", keep_bodies=keep_body) as driver:
            await driver.run_open(rate, duration_s, stop=stop, result=result)
    finally:
        gc.callbacks.remove(on_gc)
    return result


def run_load_in_thread(*args, **kwargs) -> tuple[threading.Thread, dict]:
    """:func:`open_loop` in a background thread; ``out["result"]`` holds the result once joined: read it
    with :func:`load_result`, which says what was still in flight if the driver did not finish."""
    progress = LoadResult()
    out: dict = {"progress": progress}

    def target() -> None:
        try:
            out["result"] = asyncio.run(open_loop(*args, **kwargs, result=progress))
        except BaseException as e:  # noqa: BLE001 - re-raised by the test
            out["error"] = e

    th = threading.Thread(target=target, daemon=True)
    th.start()
    return th, out


def load_result(out: dict) -> LoadResult:
    """The joined driver's result; its error re-raised; or a failure that says how many requests were still
    unanswered when the test stopped waiting (a bare ``KeyError: 'result'`` said nothing)."""
    if "error" in out:
        raise out["error"]
    if "result" not in out:
        p: LoadResult = out["progress"]
        raise AssertionError(f"the load driver had not finished: {p.sent - len(p.samples)} of {p.sent} requests "
                             f"were still unanswered; answered so far: {p.codes()}")
    return out["result"]


def recommend_request(users: list[str], k: int = 10) -> Callable[[int], tuple[str, str, Any]]:
    return lambda i: ("POST", "/v1/recommend", {"user_id": users[i % len(users)], "k": k})


def live_actors() -> list:
    """Ray's state API on the session's own cluster (named by its GCS address: other Ray instances may run
    on the same machine, and auto-discovery then refuses to pick one)."""
    import ray
    from ray.util.state import list_actors

    return list_actors(address=ray.get_runtime_context().gcs_address, filters=[("state", "=", "ALIVE")],
                       limit=10_000, raise_on_missing_output=False)


# Seconds between two looks at the live actors while a test waits for a replica to go or come. One look
# through Ray's state API cost the dashboard and the GCS (both above the replicas' priority) about 60 ms
# of CPU with 300 actors in the session's history: every 0.2 s it took CPU from the restarts under test.
ACTOR_POLL_S = 1.0


def replica_actors(app: str = "distilrec") -> dict[str, list[dict]]:
    """``{deployment: [{"name", "actor_id", "pid", "node_id"}]}`` of the live replicas of ``app``, from
    Ray's state API (actor class ``ServeReplica:{app}:{deployment}``). Not free: poll every
    ``ACTOR_POLL_S``."""
    out: dict[str, list[dict]] = {}
    prefix = f"ServeReplica:{app}:"
    for a in live_actors():
        cls = a.class_name or ""
        if cls.startswith(prefix):
            out.setdefault(cls[len(prefix):], []).append(
                {"name": a.name, "actor_id": a.actor_id, "pid": a.pid, "node_id": a.node_id})
    return {k: sorted(v, key=lambda a: a["actor_id"]) for k, v in sorted(out.items())}


def wait_replaced(old: list[dict], deployment: str, app: str = "distilrec", timeout_s: float = 120.0) -> float:
    """Wait until none of ``old`` (``replica_actors`` entries) serves ``deployment`` any more (a rolling
    replacement ended); the ``time.monotonic()`` when it did."""
    gone = {o["actor_id"] for o in old}
    deadline = time.monotonic() + timeout_s
    while any(a["actor_id"] in gone for a in replica_actors(app).get(deployment, [])):
        assert time.monotonic() < deadline, f"the old {deployment} replicas were not stopped"
        time.sleep(ACTOR_POLL_S)
    return time.monotonic()


def kill_and_wait(pid: int, timeout_s: float = 10.0) -> tuple[float, float]:
    """SIGKILL ``pid`` and wait until its process is gone (no longer in ``/proc``, or a zombie: the kernel
    has closed its sockets by then); ``(time.monotonic() of the kill, of the end)``. Between the two the
    kernel tears the process down (tens of ms for a replica's heap) while its listening socket still
    accepts connections that nothing will answer."""
    import signal

    t_kill = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    while time.monotonic() - t_kill < timeout_s:
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            break
        if state in ("Z", "X"):
            break
        time.sleep(0.001)
    return t_kill, time.monotonic()


# How long after a killed Ingress replica's process is gone a request may still be routed to it: HAProxy
# learns of the loss from Serve (which hears of the actor's death from Ray) and from its own connection
# errors. Measured: failures up to 0.15 s after the process was gone (a dropped connection, no answer).
LOSS_WINDOW_S = 1.0


def lost_to_a_kill(load: LoadResult, t_kill: float, t_dead: float) -> set[int]:
    """The samples (their ``id()``) that a killed Ingress replica may have cost (``t_kill`` / ``t_dead`` from
    :func:`kill_and_wait`): not answered before the kill, and sent before its process had been gone for
    ``LOSS_WINDOW_S``. Any other request must get its answer."""
    kill_t, end_t = t_kill - load.t0, t_dead - load.t0 + LOSS_WINDOW_S
    return {id(s) for s in load.samples if s.t <= end_t and s.t + s.latency_ms / 1000 >= kill_t}


@dataclass
class AfterKill:
    """A load across the kill of a dependency whose loss degrades answers (a Scorer, the TextEncoder):
    ``kill_t`` on the load's time axis, the degraded 200s after it, ``recovered_s`` from the kill to the
    last of them, and ``tail``: the samples after that last degraded answer."""

    kill_t: float
    degraded: list
    recovered_s: float
    tail: list

    @classmethod
    def of(cls, load: LoadResult, t_kill: float) -> "AfterKill":
        kill_t = t_kill - load.t0
        after = [s for s in load.samples if s.t >= kill_t]
        degraded = [s for s in after if s.status == 200 and s.body["degraded"]]
        last = max((s.t for s in degraded), default=kill_t)
        return cls(kill_t, degraded, last - kill_t, [s for s in after if s.t > last])

    def figures(self, load: LoadResult) -> dict:
        """What ``record`` keeps of it."""
        return {"requests": len(load.samples), "codes": load.codes(), "degraded": len(self.degraded),
                "full_again_after_s": self.recovered_s, "p99_ms": load.p(99),
                "p99_after_kill_ms": load.p(99, since=self.kill_t)}


def rss_mib(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


def wait_ready(client: httpx.Client, timeout_s: float = 90.0, path: str = "/readyz") -> float:
    """Seconds until ``path`` answers 200."""
    t0 = time.monotonic()
    while True:
        try:
            if client.get(path, timeout=10).status_code == 200:
                return time.monotonic() - t0
        except httpx.HTTPError:
            pass
        if time.monotonic() - t0 > timeout_s:
            raise AssertionError(f"{path} not ready after {timeout_s:.0f}s")
        time.sleep(0.5)


def wait_app_running(app: str = "distilrec", timeout_s: float = 90.0) -> float:
    """Seconds until Serve reports ``app`` RUNNING again (every deployment HEALTHY at its target)."""
    from ray import serve

    t0 = time.monotonic()
    while True:
        s = serve.status().applications.get(app)
        if s is not None and s.status == "RUNNING":
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout_s:
            raise AssertionError(f"Serve application {app!r} not RUNNING after {timeout_s:.0f}s: {s}")
        time.sleep(0.5)


def record(name: str, **figures) -> None:
    """Print the test's figures as one JSON line (``RELIABILITY {...}``) and append it to
    ``$DISTILREC_RELIABILITY_OUT`` when set (the long runs write docs/reliability.md's figures there)."""
    line = json.dumps({"test": name, **figures}, default=lambda x: round(x, 2) if isinstance(x, float) else str(x))
    print(f"RELIABILITY {line}", flush=True)
    path = os.environ.get("DISTILREC_RELIABILITY_OUT")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")
