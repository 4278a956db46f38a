"""``distilrec bench paths``: what Ray Serve's request path costs, with Ray's defaults and with the
fast-path options (``services.run.serve_env``: the default of every local Ray instance distilrec starts).

    distilrec bench paths --output bench-out [--model out-final]
    # → bench-out/paths.json, paths.md

Ray Serve reads its request-path options from the environment when Ray's processes start, so each
variant runs in a process of its own that starts its own local Ray instance:

- ``ray-defaults``: no ``RAY_SERVE_*`` variable (Serve's Python proxy; handle calls as Ray actor tasks);
- ``grpc``: ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1`` with Serve's Python proxy kept
  (``RAY_SERVE_ENABLE_DIRECT_INGRESS=0``): direct gRPC between replicas;
- ``haproxy``: the default fast path (``services.run.THROUGHPUT_OPTIMIZED_ENV``): the above plus HAProxy
  in front of Ingress replicas that take HTTP themselves.

In each, one client sends requests one after the other (so that the figures are the path's own cost,
not a queue) to a bare application whose ingress makes 0, 1 or 3 handle calls to a deployment that
returns at once, and, with ``--model``, to the real distilrec application as shipped (``POST
/v1/recommend`` for the artifact's users and without a user, ``GET /healthz``: no handle call on any of
them). The report gives p50 and p99 per variant, each variant's p50 as a ratio of Ray's defaults', and
a known user's p50 as a ratio of the bare application's with no handle call (the no-op floor). The variants
run one after the other, not interleaved (each needs its own Ray instance), so a machine that is busier
during one of them shows in its figures: the report carries the load average before each.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from distilrec.stats import percentile

VARIANTS = ("ray-defaults", "grpc", "haproxy")
HOPS = (0, 1, 3)
NO_OP = "bare, 0 handle calls"
KNOWN_USER = "distilrec recommend, known user (0)"


def variant_env(name: str) -> dict[str, str]:
    """The ``RAY_SERVE_*`` variables of a variant (Ray's defaults: none)."""
    from services.run import THROUGHPUT_OPTIMIZED_ENV

    if name == "ray-defaults":
        return {}
    if name == "grpc":
        return {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_DIRECT_INGRESS": "0"}
    if name == "haproxy":
        return dict(THROUGHPUT_OPTIMIZED_ENV)  # the fast path (free HAProxy side ports: see run_paths)
    raise ValueError(f"unknown request-path variant {name!r}; expected one of {', '.join(VARIANTS)}")


def _stats(ms: list[float]) -> dict[str, float]:
    """Count, nearest-rank p50 and p99 (:func:`distilrec.stats.percentile`) and mean of ``ms``."""
    return {"n": len(ms), "p50_ms": round(percentile(ms, 50), 3), "p99_ms": round(percentile(ms, 99), 3),
            "mean_ms": round(float(np.mean(ms)), 3)}


def _time(client, n: int, warmup: int, send) -> dict[str, float]:
    """Send ``warmup + n`` requests one after the other; the stats of the last ``n``. ``send(i)`` returns
    the response, which must be a 200."""
    ms = []
    for i in range(warmup + n):
        t0 = time.perf_counter()
        r = send(i)
        dt = (time.perf_counter() - t0) * 1000
        if r.status_code != 200:
            raise RuntimeError(f"{r.request.method} {r.request.url} answered {r.status_code}: {r.text[:300]}")
        if i >= warmup:
            ms.append(dt)
    return _stats(ms)


def _bare_apps(serve) -> dict[int, Any]:
    """Applications whose ingress makes ``hops`` handle calls in a row to a deployment that returns at
    once (defined here, pickled by value, so that the replicas need nothing importable)."""
    from starlette.requests import Request

    @serve.deployment(ray_actor_options={"num_cpus": 0.1})
    class Echo:
        async def echo(self, x: int) -> dict:
            return {"x": x}

    @serve.deployment(ray_actor_options={"num_cpus": 0.1})
    class Relay:
        def __init__(self, echo, hops: int):
            self.echo, self.hops = echo, hops

        async def __call__(self, request: Request) -> dict:
            out: dict = {}
            for i in range(self.hops):
                out = await self.echo.echo.remote(i)
            return out

    return {hops: Relay.bind(Echo.bind(), hops) for hops in HOPS}


def run_variant(name: str, requests: int, warmup: int, model: str | None) -> dict[str, Any]:
    """Start a local Ray instance with the variant's environment (this process's ``RAY_SERVE_*`` must
    already be the variant's), measure, shut down."""
    import httpx
    import ray
    from ray import serve

    from distilrec.ports import free_port
    from services.run import deploy, load_config

    port = free_port()
    ray.init(address="local", num_cpus=max(os.cpu_count() or 1, 4), include_dashboard=False, log_to_driver=False)
    results: dict[str, Any] = {}
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        for hops, app in _bare_apps(serve).items():
            serve.run(app, name=f"paths-{hops}", route_prefix=f"/paths-{hops}")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
            for hops in HOPS:
                results[f"bare, {hops} handle calls"] = _time(c, requests, warmup,
                                                              lambda i, h=hops: c.get(f"/paths-{h}"))
            for hops in HOPS:
                serve.delete(f"paths-{hops}")
            if model:
                from distilrec.artifacts import load_artifact

                users = sorted(load_artifact(model).histories)
                with tempfile.TemporaryDirectory() as tmp:
                    cfg = load_config(model_uri=model, host="127.0.0.1", port=port,
                                      app_args={"event_store": f"sqlite://{tmp}/events.db", "model_poll_s": 0})
                    deploy(cfg)
                    results["distilrec GET /healthz (0)"] = _time(c, requests, warmup, lambda i: c.get("/healthz"))
                    results["distilrec recommend, no user (0)"] = _time(
                        c, requests, warmup, lambda i: c.post("/v1/recommend", json={"k": 10}))
                    results[KNOWN_USER] = _time(
                        c, requests, warmup,
                        lambda i: c.post("/v1/recommend", json={"user_id": users[i % len(users)], "k": 10}))
    finally:
        serve.shutdown()
        ray.shutdown()
    return results


def run_paths(output: str, model: str | None = None, requests: int = 300, warmup: int = 50,
              variants: tuple[str, ...] = VARIANTS, timeout_s: float = 600.0) -> dict[str, Any]:
    """Run every variant in a child process; write ``paths.json`` and ``paths.md`` under ``output``."""
    from distilrec.bench.serve import machine_info
    from services.run import serve_env

    for v in variants:
        variant_env(v)  # refuse an unknown name before anything runs
    out = Path(output).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"benchmark": "paths", "machine": machine_info(), "requests": requests,
                              "warmup": warmup, "model": model, "variants": {}}
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_SERVE_") and k != "RAY_ADDRESS"}
    for v in variants:
        env = {**base_env, **variant_env(v)}
        if v == "haproxy":  # HAProxy's metrics and stats listeners on free ports, beside any other local Ray
            env.update({k: x for k, x in serve_env(haproxy="haproxy", local=True).items() if "_PORT" in k})
        child_out = out / f"paths-{v}.json"
        cmd = [sys.executable, "-m", "distilrec.bench.paths", "--child", v, "--out", str(child_out),
               "--requests", str(requests), "--warmup", str(warmup)] + (["--model", model] if model else [])
        print(f"[bench paths] {v}: {' '.join(f'{k}={x}' for k, x in variant_env(v).items()) or 'Ray defaults'} ...",
              flush=True)
        load = os.getloadavg()[0]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
        if proc.returncode != 0 or not child_out.exists():
            raise RuntimeError(f"bench paths: variant {v} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        result["variants"][v] = {"env": variant_env(v), "loadavg_before": round(load, 2),
                                 "results": json.loads(child_out.read_text())}
        child_out.unlink()
    (out / "paths.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "paths.md").write_text(render_markdown(result))
    return result


def render_markdown(result: dict[str, Any]) -> str:
    """One row per measurement: p50 / p99 per variant, and each variant's p50 over Ray's defaults'."""
    variants = list(result["variants"])
    m = result["machine"]
    lines = [f"Request path benchmark: {m.get('nproc')} CPUs ({m.get('cpu_model', '?')}), commit "
             f"{m.get('commit', '?')}; {result['requests']} requests one after the other per row after "
             f"{result['warmup']} of warm-up; load average before each variant: "
             + ", ".join(f"{v} {result['variants'][v]['loadavg_before']}" for v in variants) + ".", "",
             "| request (handle calls) | " + " | ".join(f"{v}: p50 / p99 ms" for v in variants)
             + (" | " + " | ".join(f"p50 {v} / ray-defaults" for v in variants if v != "ray-defaults")
                if "ray-defaults" in variants else "") + " |",
             "| --- |" + " --- |" * (len(variants) + (len(variants) - 1 if "ray-defaults" in variants else 0))]
    rows = list(result["variants"][variants[0]]["results"])
    for row in rows:
        cells = []
        for v in variants:
            s = result["variants"][v]["results"].get(row)
            cells.append(f"{s['p50_ms']:.2f} / {s['p99_ms']:.2f}" if s else "-")
        if "ray-defaults" in variants:
            base = result["variants"]["ray-defaults"]["results"].get(row)
            for v in variants:
                if v == "ray-defaults":
                    continue
                s = result["variants"][v]["results"].get(row)
                cells.append(f"{s['p50_ms'] / base['p50_ms']:.2f} ×" if s and base else "-")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    ratios = []
    for v in variants:
        r = result["variants"][v]["results"]
        if KNOWN_USER in r and NO_OP in r:
            ratios.append(f"{v} {r[KNOWN_USER]['p50_ms']:.2f} / {r[NO_OP]['p50_ms']:.2f} ms = "
                          f"{r[KNOWN_USER]['p50_ms'] / r[NO_OP]['p50_ms']:.2f} ×")
    if ratios:
        lines += ["", "A known user's p50 over the no-op floor's (bare, 0 handle calls), one request at a time: "
                  + "; ".join(ratios) + "."]
    lines += ["", "Variables per variant: " + "; ".join(
        f"{v}: " + (", ".join(f"`{k}={x}`" for k, x in result["variants"][v]["env"].items()) or "none")
        for v in variants) + "."]
    return "\n".join(lines) + "\n"


def _child_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="one variant of distilrec bench paths (run by run_paths)")
    p.add_argument("--child", required=True, choices=VARIANTS)
    p.add_argument("--out", required=True)
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--model")
    a = p.parse_args(argv)
    Path(a.out).write_text(json.dumps(run_variant(a.child, a.requests, a.warmup, a.model), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(_child_main())
