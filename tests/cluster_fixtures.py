"""One local Ray cluster, one trained artifact and one Serve application per test session.

A pytest plugin (``tests/conftest.py`` registers it with ``pytest_plugins``) shared by
``tests/integration`` and ``tests/reliability``: both use the same session objects, never a second
Ray instance. The artifact comes from the real pipeline (Ray Train with 2 DDP workers) on a small
synthetic dataset; the application is deployed from ``services/serve_config.yaml`` exactly as
``distilrec serve`` does, behind Ray Serve's real HTTP proxy.
"""

from __future__ import annotations

import copy
import json
import os
import re
import sys
from pathlib import Path

import pytest

from distilrec.ports import free_port
from reliability_helpers import IN_CI

DATASET = "synthetic:users=300,items=60,seed=3"
INTEGRATION_DIR = Path(__file__).resolve().parent / "integration"
# Prometheus scrapes every second while figures are read (the pipeline's training, test_observability),
# and at the chart's interval otherwise: a scrape every second cost 0.48 of a core, 0.11 at 15 s (prom_server.py).
IDLE_SCRAPE_S = 15

# The order in which the reliability suite's Serve tests run (after every other Serve test): the ones
# that only send requests first, then the ones that break something on purpose and repair it.
RELIABILITY_ORDER = ("test_fuzz.py", "test_abuse.py", "test_soak.py", "test_model_swap.py",
                     "test_replica_loss.py", "test_event_store_loss.py", "test_graceful_shutdown.py")


def pipeline_config():
    """The session pipeline's training configuration (also what the training-fault test trains)."""
    from distilrec.config import DistillConfig, PipelineConfig, TrainConfig

    return PipelineConfig(
        encoder="tiny",
        teacher_train=TrainConfig(epochs=8, patience=3, lr=3e-3, batch_size=32),
        distill=DistillConfig(epochs=10, patience=3, lr=5e-3, batch_size=32),
        student_without_teacher=False,
    )


def with_replicas(serve_config: dict, deployment: str, app_index: int = 0, **policy) -> dict:
    """A copy of ``serve_config`` whose ``deployment`` (in application ``app_index``) gets its replicas
    from ``policy`` alone: ``num_replicas=n`` for a fixed number, or ``autoscaling_config={...}`` (which
    keeps the deployment's autoscaling ``policy`` unless it names one, as ``services.run.load_config``
    does)."""
    from services.run import keep_autoscaling_policy

    cfg = copy.deepcopy(serve_config)
    for dep in cfg["applications"][app_index]["deployments"]:
        if dep["name"] == deployment:
            keep_autoscaling_policy(dep, policy)
            dep.pop("num_replicas", None)
            dep.pop("autoscaling_config", None)
            dep.update(policy)
    return cfg


def fixed_replicas(serve_config: dict, deployment: str, n: int, app_index: int = 0) -> dict:
    """A copy of ``serve_config`` whose ``deployment`` runs exactly ``n`` replicas, written as the
    autoscaling range ``n..n`` (the deployment's policy kept) and not as ``num_replicas``: Ray Serve
    2.60 hashes the list of an application's autoscaling deployments and their policies into the
    application's code version
    (``deploy_utils.get_app_code_version``), so switching one deployment between ``autoscaling_config``
    and ``num_replicas`` restarts every deployment of the application (a minute of replica start-ups on
    a 2-vCPU machine), where a range is a lightweight update of that deployment alone."""
    return with_replicas(serve_config, deployment, app_index,
                         autoscaling_config={"min_replicas": n, "max_replicas": n, "initial_replicas": n})


SCORER_MODE_APP, SCORER_MODE_PREFIX = "scorer-mode", "/scorer-mode"


def scorer_mode_config(serve_config: dict, model_uri: str, scorers: int = 1, scorer: dict | None = None,
                       ingress_user_config: dict | None = None) -> dict:
    """The session's config plus a ``scorer: deployment`` application, ``SCORER_MODE_APP`` on route
    ``SCORER_MODE_PREFIX``: the serve config file loaded again with that app arg (``services.run.load_config``
    adds the Scorer's entry), the session's event store, model polling and admin token, the model at
    ``model_uri``, ``scorers`` Scorer replicas (an autoscaling range ``n..n``: changing it is a lightweight
    update, see :func:`fixed_replicas`), and ``scorer`` (Scorer options) / ``ingress_user_config`` on top.
    Deploying the session's config alone afterwards deletes the application."""
    from services.run import load_config

    session = serve_config["applications"][0]
    http = serve_config["http_options"]
    args = {"scorer": "deployment", "event_store": session["args"]["event_store"],
            "model_poll_s": session["args"]["model_poll_s"]}
    options = {"autoscaling_config": {"min_replicas": scorers, "max_replicas": scorers,
                                      "initial_replicas": scorers}, **(scorer or {})}
    cfg = load_config(model_uri=model_uri, host=http["host"], port=http["port"], app_args=args,
                      overrides={"Scorer": options})
    app = cfg["applications"][0]
    assert {d["name"] for d in app["deployments"]} == {"Ingress", "Scorer", "TextEncoder"}, app["deployments"]
    app.update(name=SCORER_MODE_APP, route_prefix=SCORER_MODE_PREFIX,
               runtime_env=copy.deepcopy(session["runtime_env"]))
    if ingress_user_config:
        for dep in app["deployments"]:
            if dep["name"] == "Ingress":
                dep["user_config"] = {**dep.get("user_config", {}), **ingress_user_config}
    both = copy.deepcopy(serve_config)
    both["applications"].append(app)
    return both


def _order(item) -> tuple:
    """Sort key: tests without the Serve app first (the local cluster has ``num_workers + 1`` logical
    CPUs and the app's replicas hold 0.75 of them (Ingress 0.5, TextEncoder 0.25) from their deployment to
    the end of the session, so training tests must run before it is deployed); then the integration
    suite's Serve tests; then the Prometheus test (test_observability.py: its alert checks see no fault
    injected by another test); then the reliability suite's Serve tests, whose deliberate faults (killed
    replicas, a stopped Redis, restarts) come last and are repaired by each test before the next."""
    serve = "serve_url" in getattr(item, "fixturenames", ())
    reliability = item.path.parent.name == "reliability"
    observability = item.path.name == "test_observability.py"
    rank = RELIABILITY_ORDER.index(item.path.name) if item.path.name in RELIABILITY_ORDER else len(RELIABILITY_ORDER)
    if not serve:
        return (0, 0)
    if reliability:
        return (3, rank)
    return (2, 0) if observability else (1, 0)


def pytest_collection_modifyitems(session, config, items):
    """Run the tests in the order of :func:`_order` (a stable sort: otherwise in file order)."""
    items.sort(key=_order)


def _warnings(path: Path, pattern: str, last: int) -> list[str]:
    """The last ``last`` lines of a log file that match ``pattern``, without Ray's colour codes."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    hits = [re.sub(r"\x1b\[[0-9;]*m", "", ln).strip() for ln in lines if re.search(pattern, ln)]
    return [ln[:240] for ln in hits[-last:]]


def cluster_diagnosis() -> str:
    """A dozen lines on the session's Ray cluster for a failing Serve test: Serve's proxies and
    applications, the Serve actors that died (a dead ``ProxyActor`` is a proxy the controller killed and
    replaced, the HTTP port closed meanwhile), the machine's memory and load, and the last warnings of
    the Serve controller and the raylet (failed health checks, workers killed for memory). A CI log shows
    only the tail of a run and the cluster is gone afterwards, so this is taken when the test fails."""
    import psutil
    import ray
    from ray import serve
    from ray.util.state import list_actors

    out = []
    mem = psutil.virtual_memory()
    out.append(f"machine: memory {mem.percent:.0f}% used ({mem.available / 2**30:.1f} GiB free), "
               f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    try:
        status = serve.status()
        out.append(f"proxies: { {node[:8]: _value(p) for node, p in status.proxies.items()} }")
        for name, app in status.applications.items():
            sick = {d: f"{_value(s.status)} {s.message[:120]}" for d, s in app.deployments.items()
                    if _value(s.status) != "HEALTHY"}
            out.append(f"app {name}: {_value(app.status)}" + (f" {sick}" if sick else ""))
    except Exception as e:  # noqa: BLE001 - a diagnosis must not raise
        out.append(f"serve.status() failed: {type(e).__name__}: {e}")
    try:
        gcs = ray.get_runtime_context().gcs_address
        actors = list_actors(address=gcs, detail=True, limit=10_000, raise_on_missing_output=False)
        serve_actors = [a for a in actors if (a.class_name or "").startswith(("ServeReplica:", "ProxyActor",
                                                                              "ServeController"))]
        for kind in ("ProxyActor", "ServeController"):
            mine = [a for a in serve_actors if a.class_name == kind]
            restarts = sum(a.num_restarts or 0 for a in mine)
            out.append(f"{kind}: {sum(a.state == 'ALIVE' for a in mine)} alive, "
                       f"{sum(a.state == 'DEAD' for a in mine)} dead, {restarts} restarts")
        # A dead proxy or controller first: those are never stopped on purpose.
        dead = sorted((a for a in serve_actors if a.state == "DEAD"),
                      key=lambda a: a.class_name.startswith("ServeReplica:"))
        out.append(f"dead Serve actors: {len(dead)} (replicas that Serve stopped or a test killed on purpose)")
        for a in dead[:4]:
            cause = json.dumps(a.death_cause or {})[:200]
            out.append(f"  {a.class_name} pid {a.pid}: {cause}")
    except Exception as e:  # noqa: BLE001
        out.append(f"Ray's state API failed: {type(e).__name__}: {e}")
    try:
        logs = Path(ray._private.worker._global_node.get_logs_dir_path())
        controller = sorted((logs / "serve").glob("controller_[0-9]*.log"), key=lambda p: p.stat().st_mtime)
        for path in controller[-1:]:
            out += [f"  {path.name}: {ln}" for ln in _warnings(path, r"WARNING|ERROR", 6)]
        memory_kills = r"(?i)low on memory|kill\w* .*memory"  # Ray's memory monitor killing workers
        out += [f"  raylet.out: {ln}" for ln in _warnings(logs / "raylet.out", memory_kills, 3)]
    except Exception as e:  # noqa: BLE001
        out.append(f"Ray's logs not read: {type(e).__name__}: {e}")
    return "\n".join(out)


def _value(status) -> str:
    """An enum's value (``HEALTHY``), not its repr."""
    return str(getattr(status, "value", status))


_DIAGNOSES: list[tuple[str, str]] = []


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A Serve test that fails gets :func:`cluster_diagnosis` in its report, and again at the end of the
    run (just above the short summary, the part of a CI log that is kept)."""
    report = yield
    if report.failed and "serve_url" in getattr(item, "fixturenames", ()):
        import ray

        if ray.is_initialized():
            text = cluster_diagnosis()
            report.sections.append(("Ray cluster at the failure", text))
            _DIAGNOSES.append((item.nodeid, text))
    return report


def pytest_terminal_summary(terminalreporter):
    for nodeid, text in _DIAGNOSES:
        terminalreporter.write_sep("-", f"Ray cluster when {nodeid} failed")
        terminalreporter.write_line(text)


@pytest.fixture(scope="session")
def metrics_port() -> int:
    return free_port()


S3_BUCKET = "distilrec-test"


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 endpoint for the session: moto's S3 server on a free local port, with the bucket
    ``S3_BUCKET``. Its URL and credentials go into this process's environment before the Ray cluster
    starts, as the chart's ``artifacts.type: objectStore`` puts them into every Ray pod
    (``AWS_ENDPOINT_URL`` and the keys), so that the driver (s3fs) and Ray Train's workers (pyarrow's S3)
    reach it. Set outright, not by default: the tests must never write to a user's own endpoint."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as e:  # moto is in the dev extra
        if IN_CI:
            pytest.fail(f"moto is missing in CI ({e}); `pip install -e .[dev]` installs it")
        yield f"no S3 endpoint: {e} (pip install -e '.[dev]')"
        return
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "distilrec-test",
           "AWS_SECRET_ACCESS_KEY": "distilrec-test", "AWS_DEFAULT_REGION": "us-east-1"}
    os.environ.update(env)
    import boto3

    boto3.client("s3").create_bucket(Bucket=S3_BUCKET)
    yield env
    server.stop()


# With the fast request path an Ingress replica that Serve stops keeps taking connections for at least
# RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S (Ray's default: 30 s, for an external load balancer such
# as an ALB to deregister it) before it finishes its requests in flight and exits. The session's only
# balancer is Serve's own HAProxy, which Serve reconfigures at once and which retries a refused
# connection on another replica, so the session's cluster drains for 5 s: 30 s cost every Ingress stop of
# the suite (each roll, downscale, application deletion and the final shutdown) 25 s more, minutes in all.
# A shorter drain is no easier on the graceful-shutdown tests: HAProxy has less time to stop routing.
LOCAL_DRAIN_ENV = {"RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "5"}


@pytest.fixture(scope="session")
def ray_cluster(metrics_port, s3_endpoint):
    import ray

    from services.run import clean_stale_haproxy, local_serve_env
    from training.pipeline import ensure_ray

    s3_env = s3_endpoint if isinstance(s3_endpoint, dict) else {}
    if not os.environ.get("RAY_ADDRESS"):
        clean_stale_haproxy()  # HAProxy processes a killed earlier session left behind (the ports here are free ones)
    ensure_ray(2, metrics_export_port=metrics_port, env={**local_serve_env(), **LOCAL_DRAIN_ENV, **s3_env})
    yield ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="session")
def prometheus(metrics_port, tmp_path_factory):
    """A real Prometheus scraping the session's Ray metrics port (tests/integration/prom_server.py),
    started before the pipeline trains: Ray Train workers export their per-epoch gauges only while they
    live. Every second until the pipeline is done, then every ``IDLE_SCRAPE_S`` except while
    test_observability runs. Without the binary this is the reason string (test_observability skips, or
    fails in CI); nothing else depends on it."""
    if str(INTEGRATION_DIR) not in sys.path:  # tests/integration/prom_server.py, also for tests/reliability alone
        sys.path.insert(0, str(INTEGRATION_DIR))
    from prom_server import start_or_reason

    server = start_or_reason(metrics_port, tmp_path_factory.mktemp("prometheus"))
    yield server
    if not isinstance(server, str):
        server.stop()


@pytest.fixture(scope="session")
def pipeline_output(ray_cluster, prometheus, tmp_path_factory):
    from training.pipeline import run_pipeline

    out = tmp_path_factory.mktemp("pipeline")
    report = run_pipeline(DATASET, str(out), pipeline_config())
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(report))
    if not isinstance(prometheus, str):  # the training's figures are in; the chart's interval until read again
        prometheus.set_scrape_interval(IDLE_SCRAPE_S)
    return out


@pytest.fixture(scope="session")
def event_store_path(tmp_path_factory) -> Path:
    """The SQLite file of the session's event store (under pytest's tmp dir, never /tmp/distilrec)."""
    return tmp_path_factory.mktemp("events") / "events.db"


ADMIN_TOKEN = "test-admin-token"


@pytest.fixture(scope="session")
def admin() -> dict[str, str]:
    """Headers of an admin request (the session's app has ``DISTILREC_ADMIN_TOKEN`` set)."""
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(scope="session")
def serve_config(pipeline_output, event_store_path) -> dict:
    """``services/serve_config.yaml`` with the session's model, HTTP port and event store.
    The store's busy timeout is short so that the test of a locked store answers in seconds; replicas
    look for a new model version every 3 s; admin endpoints need the session's token."""
    from services.run import load_config

    cfg = load_config(model_uri=str(pipeline_output), host="127.0.0.1", port=free_port(),
                      app_args={"event_store": f"sqlite://{event_store_path}?timeout=2", "model_poll_s": 3})
    for app in cfg["applications"]:
        app["runtime_env"] = {"env_vars": {"DISTILREC_ADMIN_TOKEN": ADMIN_TOKEN}}
    return cfg


@pytest.fixture(scope="session")
def serve_url(serve_config):
    from services.run import deploy

    deploy(serve_config)
    http = serve_config["http_options"]
    return f"http://{http['host']}:{http['port']}"


@pytest.fixture(scope="session")
def client(serve_url):
    """An HTTP client for the session's Serve application."""
    import httpx

    with httpx.Client(base_url=serve_url, timeout=60) as c:
        yield c


@pytest.fixture(scope="session")
def artifact(pipeline_output):
    """The artifact the session's application serves."""
    from distilrec.artifacts import load_artifact

    return load_artifact(str(pipeline_output))
