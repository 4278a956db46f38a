"""``distilrec bench serve``: distilrec against the floor and its alternatives, in one run, behind one proxy.

    distilrec bench serve --model out-final --output bench-out
    # → bench-out/serve.json, serve.md, serve_latency.png

Ray Serve applications run one after the other on the same cluster, behind the same request path
(the local instance's: the fast path by default, ``DISTILREC_REQUEST_PATH=ray-default`` for Ray's own),
loaded by the same client (:mod:`distilrec.bench.loadgen`, in its own process), with the same request
bodies (real ``POST /v1/recommend`` requests for the artifact's users, some with a ``history``):

1. ``distilrec``: the application of ``services/serve_config.yaml`` as shipped (``scorer: inline``:
   the student scores in the ingress, batching on);
2. ``floor``: ``services/floor.py``, one replica with the Ingress's options that answers every request
   with a real distilrec answer captured in step 1 (same bytes), and does nothing else;
3. ``no_batching``: the shipped application with the ingress's ``user_config.max_batch_size: 1``;
4. ``teacher``: the shipped application with ``scorer_model: teacher`` (the teacher in the ingress);
5. ``scorer_deployment``: ``scorer: deployment`` (one handle call to the Scorer deployment, batching on);
6. ``hop_floor``: ``services/floor.py``'s floor with one handle call to a batched deployment that returns
   at once: the floor of any design with a hop, which ``scorer_deployment`` is measured against;
7. ``scorer_deployment_no_batching``: ``scorer: deployment`` with ``max_batch_size: 1`` on the Ingress (one
   request per handle call) and on the Scorer (one call per tensor batch).

Each application's replicas' resident memory (RSS, and PSS, which splits shared pages between the
processes that share them, so that it adds up) is read from ``/proc`` after its warm-up.

Each application gets its own name and route prefix (``bench-<name>``, ``/bench-<name>``) and is
deployed with the applications already on the cluster kept as they are (a declarative deploy replaces
the whole config, so theirs is sent again unchanged), warmed up, measured and deleted. distilrec runs first:
its throughput at the SLO sets the fixed rates that every application is then measured at (¼, ½ and 1
× of it). Per application: an open-loop search for the throughput at the SLO (p99 ≤ 50 ms, no errors),
p50/p99 at the fixed rates, and a closed-loop run at ``concurrency`` requests in flight (the throughput at
saturation, "high load"). Every figure that is compared is a ratio of two figures of the same run.
The event store is a fresh SQLite file under the output folder.
"""

from __future__ import annotations

import json
import os
import platform
import random
import subprocess
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from distilrec.bench.loadgen import SLO_P99_MS, run_plan_subprocess

APPS = ("distilrec", "floor", "no_batching", "teacher", "scorer_deployment", "hop_floor",
        "scorer_deployment_no_batching")
TITLES = {"distilrec": "distilrec (student in the ingress, batching)", "floor": "floor (no-op, fixed body)",
          "no_batching": "distilrec, no batching", "teacher": "teacher in the ingress",
          "scorer_deployment": "scorer: deployment (batching)",
          "hop_floor": "floor with one handle call (fixed body)",
          "scorer_deployment_no_batching": "scorer: deployment, no batching"}
FLOORS = {"floor": "services.floor:build_app", "hop_floor": "services.floor:build_hop_app"}
FIXED_FRACTIONS = (0.25, 0.5, 1.0)


@dataclass
class ServeBenchConfig:
    """Knobs of one ``bench serve`` run; rates in requests/s, times in seconds."""

    model: str
    output: str
    duration_s: float = 5.0        # per measured step (longer at low rates: ``min_requests``)
    min_requests: int = 100        # per open-loop step, so that its p99 is not just its maximum
    warmup_s: float = 5.0          # per application, at ``start_rate``, not recorded
    start_rate: float = 10.0
    factor: float = 1.25           # geometric step of the SLO search
    max_rate: float = 2000.0
    concurrency: int = 32          # closed-loop "high load" run (the scorer's max_batch_size)
    max_in_flight: int = 256
    timeout_s: float = 2.0
    slo_ms: float = SLO_P99_MS
    max_total_s: float = 1800.0    # the whole run, deployments included
    n_bodies: int = 1000
    history_share: float = 0.1     # requests that carry a ``history`` of 1-3 items
    host: str = "127.0.0.1"
    port: int | None = None        # the proxy's port when this run starts Serve (default: a free one)
    apps: tuple[str, ...] = APPS
    seed: int = 0
    fixed_rates: tuple[float, ...] | None = None  # default: FIXED_FRACTIONS × distilrec's throughput at SLO
    retry_failed: bool = True      # run a step that misses the SLO once more before the search stops


def request_bodies(users: list[str], items: list[str], n: int, history_share: float = 0.1,
                   seed: int = 0) -> list[dict[str, Any]]:
    """``n`` ``POST /v1/recommend`` bodies: known users in a seeded random order, ``history_share`` of them
    with a ``history`` of 1-3 catalogue items.

    >>> b = request_bodies(["u1", "u2"], ["i1", "i2", "i3"], 4, history_share=0.5, seed=1)
    >>> len(b), all(x["user_id"] in ("u1", "u2") for x in b), set().union(*(x.get("history", []) for x in b)) <= {"i1", "i2", "i3"}
    (4, True, True)
    """
    if not users or not items:
        raise ValueError("the artifact has no users or no items to build requests from")
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        body: dict[str, Any] = {"user_id": rng.choice(users)}
        if rng.random() < history_share:
            body["history"] = rng.sample(items, min(len(items), rng.randint(1, 3)))
        out.append(body)
    return out


def psi_cpu(field: str) -> float | None:
    """One field of Linux PSI's ``some`` line for the CPU (``avg10``, ``avg60``, ``avg300``: % of the
    window in which some runnable task waited for a CPU; ``total``: microseconds of it since boot); None
    where /proc/pressure is missing."""
    try:
        line = Path("/proc/pressure/cpu").read_text().splitlines()[0]
        return float(dict(kv.split("=") for kv in line.split()[1:])[field])
    except (OSError, KeyError, ValueError, IndexError):
        return None


def cpu_pressure() -> float | None:
    """Linux PSI: the share (%) of the last 60 s in which some runnable task waited for a CPU (None
    where /proc/pressure is missing). Near 0 on an idle machine; the other work on a shared one shows here.
    """
    return psi_cpu("avg60")


def machine_info() -> dict[str, Any]:
    """CPU count and model, memory, load average, Python, the git commit (when in a checkout)."""
    info: dict[str, Any] = {"nproc": os.cpu_count(), "platform": platform.platform(),
                            "python": platform.python_version()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
        mem = Path("/proc/meminfo").read_text().split("\n", 1)[0].split()
        info["mem_gib"] = round(int(mem[1]) / 2**20, 1)
    except OSError:
        pass
    info["loadavg"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    info["cpu_pressure"] = cpu_pressure()
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                        cwd=Path(__file__).resolve().parent, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["commit"] = None
    return info


def app_config(name: str, model: str, event_store: str, floor_body: str | None = None) -> dict[str, Any]:
    """The Serve application config of one variant, from ``services/serve_config.yaml`` as shipped:
    only the name, the route prefix, the model, the event store and the variant's one change differ."""
    from services.run import load_config

    overrides: dict[str, Any] = {}
    app_args: dict[str, Any] = {"event_store": event_store}
    if name == "teacher":
        app_args["scorer_model"] = "teacher"
    if name.startswith("scorer_deployment"):
        app_args["scorer"] = "deployment"
    shipped = load_config(model_uri=model, app_args=app_args)["applications"][0]
    ingress = next(d for d in shipped["deployments"] if d["name"] == "Ingress")
    if name == "no_batching":
        overrides["Ingress"] = {"user_config": {**ingress.get("user_config", {}), "max_batch_size": 1}}
    if name == "scorer_deployment_no_batching":  # the Ingress's batch is one handle call: both at 1
        overrides["Ingress"] = {"user_config": {**ingress.get("user_config", {}), "max_batch_size": 1}}
        overrides["Scorer"] = {"user_config": {"max_batch_size": 1}}
    if overrides:
        shipped = load_config(model_uri=model, app_args=app_args, overrides=overrides)["applications"][0]
    app = {**shipped, "name": f"bench-{name}", "route_prefix": f"/bench-{name}"}
    if name in FLOORS:
        if floor_body is None:
            raise ValueError("the floor needs the body of a real answer")
        floor = {k: v for k, v in ingress.items() if k not in ("name", "user_config")}
        front = "Floor" if name == "floor" else "HopFloor"
        app = {"name": f"bench-{name}", "route_prefix": f"/bench-{name}", "import_path": FLOORS[name],
               "args": {"body": floor_body}, "deployments": [{"name": front, **floor}]}
        if "logging_config" in shipped:
            app["logging_config"] = shipped["logging_config"]
    return app


def _proc_mib(pid: int) -> dict[str, float] | None:
    """RSS and PSS of a process in MiB from ``/proc`` (None when it is gone or unreadable)."""
    try:
        rss = next(int(ln.split()[1]) for ln in Path(f"/proc/{pid}/status").read_text().splitlines()
                   if ln.startswith("VmRSS:"))
        pss = next((int(ln.split()[1]) for ln in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
                    if ln.startswith("Pss:")), None)
    except (OSError, StopIteration, ValueError):
        return None
    return {"rss_mib": round(rss / 1024, 1), "pss_mib": None if pss is None else round(pss / 1024, 1)}


def replica_memory(app: str) -> dict[str, Any]:
    """Resident memory of application ``app``'s replicas on this machine: ``{"replicas": [{"deployment",
    "pid", "rss_mib", "pss_mib"}], "rss_mib": sum, "pss_mib": sum}``. Ray names a replica's process
    ``ray::ServeReplica:{app}:{deployment}``; ``/proc`` is read, so figures exist on Linux only."""
    prefix = f"ray::ServeReplica:{app}:"
    out: list[dict[str, Any]] = []
    for d in Path("/proc").glob("[0-9]*"):
        try:
            argv = (d / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        if argv.startswith(prefix):
            mem = _proc_mib(int(d.name))
            if mem:
                out.append({"deployment": argv[len(prefix):].split()[0], "pid": int(d.name), **mem})
    out.sort(key=lambda r: (r["deployment"], r["pid"]))
    return {"replicas": out, "rss_mib": round(sum(r["rss_mib"] for r in out), 1),
            "pss_mib": round(sum(r["pss_mib"] or 0 for r in out), 1)}


def _serve_client():
    from ray.serve.context import _get_global_client

    return _get_global_client(raise_if_no_controller_running=False)


def deploy_beside_others(app: dict[str, Any], http_options: dict[str, Any], timeout_s: float = 300.0) -> None:
    """Deploy ``app`` and keep every other declaratively deployed application as it is (a declarative
    apply replaces the whole config, so their current configs are sent again unchanged)."""
    from services.run import deploy

    client = _serve_client()
    others = []
    if client is not None:
        for name, details in client.get_serve_details().get("applications", {}).items():
            cfg = details.get("deployed_app_config")
            if name != app["name"] and cfg and details.get("source") != "imperative":
                others.append(cfg)
    deploy({"proxy_location": "EveryNode", "http_options": http_options, "applications": [*others, app]},
           timeout_s=timeout_s)


def delete_app(name: str) -> None:
    from ray import serve

    serve.delete(name, _blocking=True)


def _proxy_options(cfg: ServeBenchConfig) -> dict[str, Any]:
    """The running proxy's host and port, or the ones this run starts Serve with."""
    client = _serve_client()
    if client is not None:
        http = client.get_serve_details().get("http_options") or {}
        if http.get("port"):
            return {"host": http.get("host", cfg.host), "port": int(http["port"])}
    if cfg.port is None:
        from distilrec.ports import free_port

        return {"host": cfg.host, "port": free_port()}
    return {"host": cfg.host, "port": int(cfg.port)}


def _first_answer(url: str, bodies: list[dict[str, Any]], timeout_s: float = 60.0) -> str:
    """A real answer of the application (the floor's body), after it answers 2xx and not degraded."""
    import httpx

    deadline = time.monotonic() + timeout_s
    last = ""
    with httpx.Client(timeout=30) as c:
        while time.monotonic() < deadline:
            r = c.post(url, json=bodies[0])
            last = f"{r.status_code} {r.text[:300]}"
            if r.status_code == 200 and not r.json().get("degraded"):
                return r.text
            time.sleep(1.0)
    raise RuntimeError(f"{url} gave no non-degraded answer in {timeout_s:.0f}s: {last}")


def _plan(url: str, bodies: list[dict[str, Any]], cfg: ServeBenchConfig, phases: list[dict[str, Any]],
          max_total_s: float) -> dict[str, Any]:
    return {"url": url, "bodies": bodies, "phases": phases, "duration_s": cfg.duration_s,
            "max_in_flight": cfg.max_in_flight, "timeout_s": cfg.timeout_s, "slo_ms": cfg.slo_ms,
            "max_total_s": max(1.0, max_total_s), "seed": cfg.seed}


def fixed_rates_for(throughput_at_slo: float, start_rate: float) -> list[float]:
    """The rates every application is measured at: ¼, ½ and 1 × distilrec's throughput at the SLO
    (the start rate when distilrec met the SLO at none).

    >>> fixed_rates_for(100.0, 5.0), fixed_rates_for(0.0, 5.0)
    ([25.0, 50.0, 100.0], [5.0])
    """
    if throughput_at_slo <= 0:
        return [float(start_rate)]
    return sorted({round(f * throughput_at_slo, 1) for f in FIXED_FRACTIONS})


def run_serve_bench(cfg: ServeBenchConfig, command: str = "") -> dict[str, Any]:
    """Run the benchmark, write ``serve.json``, ``serve.md`` and ``serve_latency.png`` under
    ``cfg.output``; return the result. Uses the Ray cluster this process is connected to (or
    ``RAY_ADDRESS``, or a new local one) and its Serve proxy when Serve already runs."""
    import ray

    from distilrec.artifacts import load_artifact
    from distilrec.bench.report import plot_serve_latency, render_serve_markdown, serve_targets
    from training.pipeline import ensure_ray

    t_start = time.monotonic()
    deadline = t_start + cfg.max_total_s
    out = Path(cfg.output).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    unknown = [a for a in cfg.apps if a not in APPS]
    if unknown or "distilrec" not in cfg.apps:
        raise ValueError(f"apps must include distilrec and be among {APPS}, got {list(cfg.apps)}")
    apps = ["distilrec"] + [a for a in APPS if a in cfg.apps and a != "distilrec"]

    art = load_artifact(cfg.model)
    users = sorted(art.histories)
    bodies = request_bodies(users, list(art.items.item_ids), cfg.n_bodies, cfg.history_share, cfg.seed)
    db = out / "events.db"
    for f in out.glob("events.db*"):
        f.unlink()
    event_store = f"sqlite://{db}"

    from services.run import local_serve_env

    ensure_ray(1, env=local_serve_env())
    proxy = _proxy_options(cfg)
    base = f"http://{'127.0.0.1' if proxy['host'] in ('0.0.0.0', '::') else proxy['host']}:{proxy['port']}"
    result: dict[str, Any] = {
        "benchmark": "serve", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command, "machine": machine_info(), "ray_resources": ray.cluster_resources(),
        "model": {"uri": art.uri, "version": art.version, "users": len(users), "items": len(art.items.item_ids)},
        "config": {k: v for k, v in asdict(cfg).items() if k not in ("model", "output")},
        "slo_ms": cfg.slo_ms, "apps": {}, "order": apps,
        # What this process started its local Ray instance with (a cluster in RAY_ADDRESS has its own).
        "ray_serve_env": {k: v for k, v in os.environ.items() if k.startswith(("RAY_SERVE_", "DISTILREC_"))},
    }
    floor_body, fixed = None, list(cfg.fixed_rates) if cfg.fixed_rates else None
    for i, name in enumerate(apps):
        budget = (deadline - time.monotonic()) / (len(apps) - i)
        t_app = time.monotonic()
        app = app_config(name, cfg.model, event_store, floor_body)
        print(f"[bench serve] {name}: deploying {app['name']} at {app['route_prefix']} ...", flush=True)
        url = f"{base}{app['route_prefix']}/v1/recommend"
        try:
            deploy_beside_others(app, proxy)
            answer = _first_answer(url, bodies)
            if name == "distilrec":
                floor_body = answer
                result["body_bytes"] = len(answer.encode())
            deployed_s = time.monotonic() - t_app
            left = budget - deployed_s
            run_plan_subprocess(_plan(url, bodies, cfg, [
                {"kind": "warmup", "rates": [cfg.start_rate], "duration_s": cfg.warmup_s}], left * 0.1), workdir=out)
            memory = replica_memory(app["name"])
            left = budget - (time.monotonic() - t_app)
            search = run_plan_subprocess(_plan(url, bodies, cfg, [
                {"kind": "search", "start": cfg.start_rate, "factor": cfg.factor, "max_rate": cfg.max_rate,
                 "retry_failed": cfg.retry_failed, "min_requests": cfg.min_requests},
            ], left * 0.7), workdir=out)["phases"][0]
            if fixed is None:  # distilrec runs first
                fixed = fixed_rates_for(search["throughput_at_slo"], cfg.start_rate)
                result["fixed_rates"] = fixed
            left = budget - (time.monotonic() - t_app)
            measured = run_plan_subprocess(_plan(url, bodies, cfg, [
                {"kind": "open", "rates": fixed, "min_requests": cfg.min_requests},
                {"kind": "closed", "concurrency": [cfg.concurrency]},
            ], left), workdir=out)
        finally:
            delete_app(app["name"])
        result["apps"][name] = {
            "title": TITLES[name], "app": app["name"], "throughput_at_slo": search["throughput_at_slo"],
            "search": search, "fixed": measured["phases"][0]["steps"],
            "closed": measured["phases"][1]["steps"],
            "skipped": {"fixed": measured["phases"][0].get("skipped", []),
                        "closed": measured["phases"][1].get("skipped", [])},
            "deploy_s": round(deployed_s, 1), "wall_s": round(time.monotonic() - t_app, 1),
            "memory": memory,
        }
        print(f"[bench serve] {name}: throughput at SLO {search['throughput_at_slo']:g} req/s "
              f"({search['stopped']})", flush=True)
    result["fixed_rates"] = fixed
    result["wall_s"] = round(time.monotonic() - t_start, 1)
    result["machine"]["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    result["machine"]["cpu_pressure_end"] = cpu_pressure()
    result["targets"] = serve_targets(result)
    (out / "serve.json").write_text(json.dumps(result, indent=1))
    (out / "serve.md").write_text(render_serve_markdown(result))
    plot_serve_latency(result, out / "serve_latency.png")
    for f in out.glob("events.db*"):
        f.unlink()
    return result
