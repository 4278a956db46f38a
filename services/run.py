"""Deploy ``services/serve_config.yaml`` on a Ray cluster, the way ``serve run CONFIG`` and KubeRay do.

The config file is validated as Ray's ``ServeDeploySchema`` and applied through the Serve controller,
so a local run exercises exactly the config that the chart's RayService carries in ``serveConfigV2``.
Only what the caller names is overridden: the model URI, the HTTP address, application ``args``
(``app_args``, e.g. ``{"event_store": "sqlite:///data/events.db"}``) and deployment options.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import yaml

DEFAULT_CONFIG = Path(__file__).with_name("serve_config.yaml")
APP_NAME = "distilrec"


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
            override = (overrides or {}).get(dep["name"], {})
            # A fixed replica count and autoscaling exclude each other: the one given replaces the other.
            for given, dropped in (("num_replicas", "autoscaling_config"), ("autoscaling_config", "num_replicas")):
                if given in override:
                    dep.pop(dropped, None)
            dep.update(override)
    return cfg


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
