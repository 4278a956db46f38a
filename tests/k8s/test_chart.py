"""The Helm chart (helm/distilrec), rendered by a real helm with the default values and every ci/*-values.yaml:
lint, strict schema validation of every resource, the serve config against services/serve_config.yaml,
security settings, secrets wiring, and the values schema's refusals."""

from __future__ import annotations

import importlib
import json
import re
import shlex
import shutil

import pytest
import yaml

from k8s_helpers import (CHART, CI_VALUES, FULLNAME, NAMESPACE, RELEASE, ROOT, VALUES_CASES, VALUES_IDS, helm,
                         helm_template, of_kind, one, pod_specs, render, run, values_for)
from k8s_schemas import validate_all

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_ci_values_cover_the_issue_cases():
    names = {p.name for p in CI_VALUES}
    assert {"gpu-values.yaml", "external-redis-values.yaml", "s3-artifacts-values.yaml",
            "monitoring-off-values.yaml"} <= names, names


@pytest.mark.parametrize("values", VALUES_CASES, ids=VALUES_IDS)
def test_helm_lint_strict(values):
    cmd = [helm(), "lint", "--strict", str(CHART), "--namespace", NAMESPACE]
    for v in values:
        cmd += ["-f", v]
    out = run(cmd).stdout
    assert "0 chart(s) failed" in out, out


@pytest.mark.parametrize("values", VALUES_CASES, ids=VALUES_IDS)
def test_every_resource_validates(values):
    """Core kinds with kubernetes-validate --strict, Ray kinds against the KubeRay CRD schemas."""
    docs = render(values)
    counts = validate_all(docs)
    assert counts.get("RayService", 0) == (1 if values_for(values)["serve"]["enabled"] else 0)
    assert "ServiceAccount" in counts


def test_default_install_has_every_component():
    kinds = {d["kind"] for d in render()}
    assert {"RayService", "RayJob", "ConfigMap", "PersistentVolumeClaim", "StatefulSet", "Service", "Secret",
            "ServiceAccount", "NetworkPolicy", "PodMonitor", "PrometheusRule", "Pod", "PodDisruptionBudget"} <= kinds, kinds


# ------------------------------------------------------------------------------------------ serve config

def _serve_config(docs: list[dict]) -> dict:
    return yaml.safe_load(one(docs, "RayService")["spec"]["serveConfigV2"])


def _scorer_options(values: dict) -> dict:
    """The Scorer deployment's options that ``serve.config.scorerDeployment`` stands for (the autoscaling
    delays are services/scorer.py's decorator's, which an autoscaling_config in the serve config replaces)."""
    s = values["serve"]["config"]["scorerDeployment"]
    actor = {"num_cpus": s["numCpus"], **({"num_gpus": s["numGpus"]} if s["numGpus"] else {})}
    return {"health_check_period_s": 2,
            "autoscaling_config": {"min_replicas": s["minReplicas"], "max_replicas": s["maxReplicas"],
                                   "target_ongoing_requests": s["targetOngoingRequests"],
                                   "upscale_delay_s": 10, "downscale_delay_s": 120},
            "max_ongoing_requests": s["maxOngoingRequests"], "ray_actor_options": actor,
            "user_config": {"max_batch_size": s["maxBatchSize"], "batch_wait_timeout_s": s["batchWaitTimeoutS"]}}


def _expected_serve_config(values: dict) -> dict:
    """What services/serve_config.yaml gives through the loader that local runs use (services/run.py),
    with the chart's values as the app args and overrides: with ``serve.config.scorer: deployment`` a
    Scorer entry from ``serve.config.scorerDeployment``, on which ``deployments.Scorer`` replaces options."""
    from services.run import DEFAULT_CONFIG, load_config

    art = values["artifacts"]
    model_uri = (f"{art['pvc']['mountPath'].rstrip('/')}/{art['pvc']['path'].strip('/')}" if art["type"] == "pvc"
                 else art["objectStore"]["uri"])
    store = values["eventStore"]["url"] or f"redis://{FULLNAME}-redis:6379/0"
    cfg = values["serve"]["config"]
    app_args = {"event_store": store, "model_poll_s": cfg["modelPollSeconds"], "scorer": cfg["scorer"],
                **cfg["args"]}
    overrides = dict(cfg["deployments"])
    if cfg["scorer"] == "deployment":
        scorer, given = _scorer_options(values), overrides.get("Scorer", {})
        for option, dropped in (("num_replicas", "autoscaling_config"), ("autoscaling_config", "num_replicas")):
            if option in given:
                scorer.pop(dropped, None)
        overrides["Scorer"] = {**scorer, **given}
    return load_config(DEFAULT_CONFIG, model_uri=model_uri, app_args=app_args, overrides=overrides)


def test_chart_serve_config_is_the_services_file():
    """One source of truth: the chart's files/serve_config.yaml is a symlink to services/serve_config.yaml
    (helm follows it in lint, template and package). A checkout without symlinks fails here."""
    link = CHART / "files" / "serve_config.yaml"
    assert link.is_symlink(), f"{link} must be a symlink to services/serve_config.yaml"
    assert link.resolve() == (ROOT / "services" / "serve_config.yaml").resolve()
    assert link.read_text() == (ROOT / "services" / "serve_config.yaml").read_text()


@pytest.mark.parametrize("values", VALUES_CASES, ids=VALUES_IDS)
def test_serve_config_v2_equals_services_config(values):
    docs = render(values)
    if not of_kind(docs, "RayService"):
        pytest.skip("serve disabled")
    assert _serve_config(docs) == _expected_serve_config(values_for(values))


@pytest.mark.parametrize("values", VALUES_CASES, ids=VALUES_IDS)
def test_serve_config_v2_is_a_valid_serve_config_whose_import_paths_resolve(values):
    """Ray's own schema accepts it, and every import_path names a callable in the code the image installs
    (the Dockerfile copies distilrec/, training/ and services/)."""
    from ray.serve.schema import ServeDeploySchema

    cfg = _serve_config(render(values))
    schema = ServeDeploySchema.model_validate(cfg)
    dockerfile = (ROOT / "Dockerfile").read_text()
    for app in schema.applications:
        module, _, attr = app.import_path.partition(":")
        assert re.search(rf"^COPY\b.*\b{module.split('.')[0]}/", dockerfile, re.M), \
            f"{module} is not copied into the image"
        assert callable(getattr(importlib.import_module(module), attr)), app.import_path


@pytest.mark.parametrize("values", VALUES_CASES, ids=VALUES_IDS)
def test_serve_app_args_are_accepted_by_the_app(values):
    """The rendered args pass AppArgs (services/app.py), the model the Serve app validates them with."""
    from services.app import AppArgs

    if "model_poll_s" not in AppArgs.model_fields:
        pytest.skip("AppArgs has no model_poll_s yet: it arrives with the service stream's branch (CONTRACT.md)")
    args = _serve_config(render(values))["applications"][0]["args"]
    AppArgs.model_validate(args)


def _deployments(docs: list[dict]) -> dict[str, dict]:
    return {d["name"]: d for d in _serve_config(docs)["applications"][0]["deployments"]}


def test_default_scores_inline_with_no_scorer_deployment():
    """The default graph: Ingress (features, in-process scoring, ranking) and TextEncoder, the app arg
    ``scorer: inline``, and exactly the deployments ``services.app.build_app`` builds for those args."""
    from services.app import deployments_of

    cfg = _serve_config(render())
    app = cfg["applications"][0]
    assert app["args"]["scorer"] == "inline"
    assert [d["name"] for d in app["deployments"]] == ["Ingress", "TextEncoder"]
    assert {d["name"] for d in app["deployments"]} == deployments_of(app["args"])


def test_gpu_values_score_on_a_scorer_deployment_with_a_gpu():
    docs = render((str(CHART / "ci" / "gpu-values.yaml"),))
    app = _serve_config(docs)["applications"][0]
    deps = _deployments(docs)
    assert app["args"]["scorer"] == "deployment" and app["args"]["scorer_model"] == "teacher"
    assert set(deps) == {"Ingress", "TextEncoder", "Scorer"}
    scorer = deps["Scorer"]
    assert scorer["ray_actor_options"] == {"num_cpus": 1, "num_gpus": 1}
    assert scorer["user_config"] == {"max_batch_size": 128, "batch_wait_timeout_s": 0.005}
    assert scorer["max_ongoing_requests"] == 256 >= scorer["user_config"]["max_batch_size"]
    assert scorer["autoscaling_config"]["min_replicas"] == 1 and scorer["autoscaling_config"]["max_replicas"] == 2
    assert scorer["health_check_period_s"] == 2
    assert deps["Ingress"] == _deployments(render())["Ingress"]


def test_scorer_deployment_options_and_overrides_on_top():
    """``serve.config.scorerDeployment`` gives the Scorer entry; ``deployments.Scorer`` replaces single
    options on it (a fixed count replaces the autoscaling range), as ``services.run.load_config`` does; a
    CPU scorer asks for no GPU."""
    base = ("serve.config.scorer=deployment",)
    cpu = _deployments([d for d in yaml.safe_load_all(helm_template(sets=base).stdout) if d])["Scorer"]
    assert cpu["ray_actor_options"] == {"num_cpus": 0.5}
    assert cpu["autoscaling_config"]["max_replicas"] > cpu["autoscaling_config"]["min_replicas"]
    assert cpu["user_config"] == {"max_batch_size": 32, "batch_wait_timeout_s": 0}
    sets = base + ("serve.config.scorerDeployment.maxBatchSize=8", "serve.config.deployments.Scorer.num_replicas=3",
                   "serve.config.deployments.Scorer.max_queued_requests=50")
    fixed = _deployments([d for d in yaml.safe_load_all(helm_template(sets=sets).stdout) if d])["Scorer"]
    assert fixed["num_replicas"] == 3 and "autoscaling_config" not in fixed
    assert fixed["max_queued_requests"] == 50 and fixed["user_config"]["max_batch_size"] == 8


def test_deployment_overrides_replace_options():
    sets = ("serve.config.deployments.TextEncoder.max_ongoing_requests=4",
            "serve.config.deployments.TextEncoder.ray_actor_options.num_cpus=1")
    deps = _deployments([d for d in yaml.safe_load_all(helm_template(sets=sets).stdout) if d])
    default = _deployments(render())
    assert deps["TextEncoder"]["max_ongoing_requests"] == 4
    assert deps["TextEncoder"]["ray_actor_options"] == {"num_cpus": 1}
    assert deps["TextEncoder"]["autoscaling_config"] == default["TextEncoder"]["autoscaling_config"]
    assert deps["Ingress"] == default["Ingress"]


def test_an_autoscaling_override_keeps_the_files_policy_as_local_runs_do():
    """The Ingress scales on its CPU (services/autoscaling.py); a values override of its range keeps that
    policy, as ``services.run.load_config`` does; one that names a policy gets it."""
    from services.run import DEFAULT_CONFIG, load_config

    def ingress(sets: tuple[str, ...]) -> dict:
        docs = [d for d in yaml.safe_load_all(helm_template(sets=sets).stdout) if d]
        return next(d for d in _serve_config(docs)["applications"][0]["deployments"] if d["name"] == "Ingress")

    ranged = ingress(("serve.config.deployments.Ingress.autoscaling_config.min_replicas=2",
                      "serve.config.deployments.Ingress.autoscaling_config.max_replicas=8"))
    local = load_config(DEFAULT_CONFIG, overrides={"Ingress": {"autoscaling_config": {"min_replicas": 2,
                                                                                      "max_replicas": 8}}})
    assert ranged["autoscaling_config"] == next(d for d in local["applications"][0]["deployments"]
                                                if d["name"] == "Ingress")["autoscaling_config"]
    assert ranged["autoscaling_config"]["policy"]["policy_function"] == "services.autoscaling:CpuBusyPolicy"
    default = "ray.serve.autoscaling_policy:default_autoscaling_policy"
    own = ingress(("serve.config.deployments.Ingress.autoscaling_config.max_replicas=2",
                   f"serve.config.deployments.Ingress.autoscaling_config.policy.policy_function={default}"))
    assert own["autoscaling_config"] == {"max_replicas": 2, "policy": {"policy_function": default}}


# ----------------------------------------------------------------------------------- training and storage

def _entrypoint_args(job_spec: dict) -> dict:
    argv = shlex.split(job_spec["entrypoint"])
    assert argv[:2] == ["distilrec", "pipeline"], argv
    return dict(zip(argv[2::2], argv[3::2]))


@pytest.mark.parametrize("values", VALUES_CASES, ids=VALUES_IDS)
def test_training_writes_where_the_service_reads(values):
    docs = render(values)
    v = values_for(values)
    jobs = [d["spec"] for d in of_kind(docs, "RayJob")] + [d["spec"]["jobTemplate"] for d in of_kind(docs, "RayCronJob")]
    assert len(jobs) == int(v["training"]["initialJob"]["enabled"]) + int(v["training"]["cron"]["enabled"])
    model_uri = _serve_config(docs)["applications"][0]["args"]["model_uri"]
    for spec in jobs:
        args = _entrypoint_args(spec)
        assert args["--output"] == model_uri
        assert args["--dataset"] == v["training"]["dataset"]
        assert args["--config"] == "/etc/distilrec/pipeline.yaml"
        assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] >= 0
        head = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
        mounts = {m["mountPath"]: m["name"] for m in head["containers"][0]["volumeMounts"]}
        assert mounts["/etc/distilrec"] == "pipeline-config"
    if jobs:
        cm = next(d for d in of_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-pipeline"))
        from distilrec.config import PipelineConfig

        PipelineConfig.model_validate(yaml.safe_load(cm["data"]["pipeline.yaml"]))
    if v["artifacts"]["type"] == "pvc":
        claim = one(docs, "PersistentVolumeClaim")["metadata"]["name"]
        for doc in of_kind(docs, "RayService") + of_kind(docs, "RayJob") + of_kind(docs, "RayCronJob"):
            for where, spec in pod_specs(doc):
                if where == "submitter":
                    continue
                claims = [vol["persistentVolumeClaim"]["claimName"] for vol in spec["volumes"]
                          if "persistentVolumeClaim" in vol]
                assert claims == [claim], (doc["kind"], where)


def test_initial_job_is_a_post_install_hook_and_cron_reuses_its_spec():
    docs = render((str(CHART / "ci" / "s3-artifacts-values.yaml"),))
    job, cron = one(docs, "RayJob"), one(docs, "RayCronJob")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install"
    assert cron["spec"]["schedule"] == "30 2 * * *" and cron["spec"]["timeZone"] == "Europe/Paris"
    assert cron["spec"]["jobTemplate"] == job["spec"]


def test_gpu_values_add_gpu_groups_and_use_gpu():
    docs = render((str(CHART / "ci" / "gpu-values.yaml"),))
    svc = one(docs, "RayService")["spec"]["rayClusterConfig"]
    groups = {g["groupName"]: g for g in svc["workerGroupSpecs"]}
    gpu = groups["gpu"]["template"]["spec"]["containers"][0]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    gpu_digest = values_for((str(CHART / "ci" / "gpu-values.yaml"),))["image"]["gpuDigest"]
    assert gpu["image"] == f"registry.example.com/ml/distilrec@{gpu_digest}"
    assert "cpu" in groups
    job = one(docs, "RayJob")["spec"]["rayClusterSpec"]
    assert [g["groupName"] for g in job["workerGroupSpecs"]] == ["gpu"]
    assert job["workerGroupSpecs"][0]["replicas"] == 2
    cm = next(d for d in of_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-pipeline"))
    cfg = yaml.safe_load(cm["data"]["pipeline.yaml"])
    assert cfg["teacher_train"]["use_gpu"] is True and cfg["distill"]["use_gpu"] is True


def test_autoscaling_and_upgrade_strategy():
    svc = one(render(), "RayService")["spec"]
    assert svc["rayClusterConfig"]["enableInTreeAutoscaling"] is True
    assert svc["upgradeStrategy"] == {"type": "NewCluster"}
    for name, dep in _deployments(render()).items():  # Serve autoscaling on every deployment by default
        assert dep["autoscaling_config"]["max_replicas"] > dep["autoscaling_config"]["min_replicas"], name
    inc = one(render((str(CHART / "ci" / "s3-artifacts-values.yaml"),)), "RayService")["spec"]["upgradeStrategy"]
    assert inc["type"] == "NewClusterWithIncrementalUpgrade" and inc["clusterUpgradeOptions"]["gatewayClassName"]
    off = one(render((str(CHART / "ci" / "monitoring-off-values.yaml"),)), "RayService")["spec"]
    assert off["upgradeStrategy"] == {"type": "None"} and off["rayClusterConfig"]["enableInTreeAutoscaling"] is False


# -------------------------------------------------------------------------------------- secrets and env

def _env(container: dict) -> dict:
    return {e["name"]: e for e in container.get("env", [])}


@pytest.mark.parametrize("values", VALUES_CASES, ids=VALUES_IDS)
def test_serving_pods_get_tokens_and_passwords_from_secrets(values):
    docs = render(values)
    v = values_for(values)
    secrets = {d["metadata"]["name"]: d for d in of_kind(docs, "Secret")}
    for where, spec in pod_specs(one(docs, "RayService")):
        env = _env(spec["containers"][0])
        # The admin token: a file from the admin Secret, named by DISTILREC_ADMIN_TOKEN_FILE (services/security.py).
        assert "DISTILREC_ADMIN_TOKEN" not in env, where
        token_file = env["DISTILREC_ADMIN_TOKEN_FILE"]["value"]
        mount = next(m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "admin-token")
        assert mount["readOnly"] is True and token_file.startswith(mount["mountPath"].rstrip("/") + "/"), where
        admin = next(vol for vol in spec["volumes"] if vol["name"] == "admin-token")["secret"]
        assert admin["secretName"] == (v["adminToken"]["existingSecret"] or f"{FULLNAME}-admin"), where
        assert admin["items"] == [{"key": v["adminToken"]["key"], "path": token_file.rsplit("/", 1)[1]}], where
        if not v["adminToken"]["existingSecret"]:
            assert v["adminToken"]["key"] in secrets[admin["secretName"]]["data"]
        redis_pw = env.get("DISTILREC_REDIS_PASSWORD")
        if v["eventStore"]["url"]:
            assert redis_pw["valueFrom"]["secretKeyRef"] == v["eventStore"]["passwordSecret"]
        else:
            ref = redis_pw["valueFrom"]["secretKeyRef"]
            assert ref["key"] in secrets[ref["name"]]["data"]
            sts = one(docs, "StatefulSet")["spec"]["template"]["spec"]
            auth = next(vol for vol in sts["volumes"] if vol["name"] == "auth")["secret"]
            assert auth["secretName"] == ref["name"] and auth["items"] == [{"key": ref["key"], "path": "password"}]
            assert not [e for e in sts["containers"][0].get("env", []) if "valueFrom" in e]  # no secret in env
        for e in env.values():
            assert "password" not in str(e.get("value", "")).lower()
    for doc in docs:  # no secret value anywhere in plain text
        assert "redis://:" not in json.dumps(doc)


@pytest.mark.parametrize("sets, expected", [
    ((), "haproxy"),
    (("serve.requestPath=fast",), "haproxy"),
    (("serve.requestPath=grpc",), "no-haproxy"),
    (("serve.requestPath=ray-default",), {}),
], ids=["default-fast", "fast", "grpc", "ray-default"])
def test_serving_pods_start_ray_with_the_fast_request_path_by_default(sets, expected, monkeypatch):
    """Every serving Ray container starts with Ray Serve's request-path variables: by default (``fast``)
    the same ones a local ``distilrec serve`` sets (``services.run.serve_env`` with an HAProxy binary),
    ``grpc`` the ones it sets without one, both with frozen heaps; ``ray-default`` none. The training
    pods never get them."""
    from services.run import serve_env

    if expected == "haproxy":
        expected = serve_env(haproxy="haproxy")
    elif expected == "no-haproxy":
        import services.run as run

        monkeypatch.setattr(run, "haproxy_binary", lambda: None)
        expected = serve_env()
    docs = [d for d in yaml.safe_load_all(helm_template(sets=sets).stdout) if d]
    for where, spec in pod_specs(one(docs, "RayService")):
        all_env = _env(spec["containers"][0])
        env = {k: e["value"] for k, e in all_env.items() if k.startswith("RAY_SERVE_")}
        assert env == expected, where
        assert ("DISTILREC_FREEZE_HEAP" in all_env) == bool(expected), where
    for kind in ("RayJob", "RayCronJob"):
        for doc in of_kind(docs, kind):
            for where, spec in pod_specs(doc):
                assert not [k for k in _env(spec["containers"][0]) if k.startswith("RAY_SERVE_")], where


def test_object_store_credentials_come_from_the_existing_secret():
    docs = render((str(CHART / "ci" / "s3-artifacts-values.yaml"),))
    assert not of_kind(docs, "PersistentVolumeClaim")
    for doc in of_kind(docs, "RayService") + of_kind(docs, "RayJob") + of_kind(docs, "RayCronJob"):
        for where, spec in pod_specs(doc):
            if where == "submitter":
                continue
            c = spec["containers"][0]
            assert c["envFrom"] == [{"secretRef": {"name": "distilrec-s3"}}], where
            assert _env(c)["AWS_DEFAULT_REGION"]["value"] == "eu-west-1"
            assert _env(c)["AWS_ENDPOINT_URL"]["value"] == "https://minio.storage.svc:9000"
    wait = one(docs, "RayService")["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["initContainers"][0]
    assert wait["envFrom"] == [{"secretRef": {"name": "distilrec-s3"}}]
    assert wait["command"][-2] == "s3://ml-models/distilrec"


def test_in_chart_redis_keeps_an_append_only_file_on_a_volume():
    sts = one(render(), "StatefulSet")
    c = sts["spec"]["template"]["spec"]["containers"][0]
    cmd = " ".join(c["command"] + c["args"])
    assert "--appendonly yes" in cmd and "--appendfsync always" in cmd and "--dir /data" in cmd
    assert '--requirepass "$(cat /etc/redis-auth/password)"' in cmd
    assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    assert {"name": "data", "mountPath": "/data"} in c["volumeMounts"]


# ------------------------------------------------------------------------------------------- security

@pytest.mark.parametrize("values", VALUES_CASES, ids=VALUES_IDS)
def test_pods_meet_the_restricted_pod_security_profile(values):
    """runAsNonRoot, seccomp RuntimeDefault, no privilege escalation, every capability dropped, read-only
    root filesystem (Ray writes to the /tmp and /dev/shm emptyDirs), no host namespaces or hostPath."""
    checked = 0
    for doc in render(values):
        for where, spec in pod_specs(doc):
            label = f"{doc['kind']}/{doc['metadata']['name']} {where}"
            psc = spec.get("securityContext", {})
            assert psc.get("runAsNonRoot") is True, label
            assert psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", label
            assert not any(spec.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")), label
            assert not any("hostPath" in vol for vol in spec.get("volumes", [])), label
            for c in spec.get("initContainers", []) + spec["containers"]:
                sc = c.get("securityContext", {})
                assert sc.get("allowPrivilegeEscalation") is False, (label, c["name"])
                assert sc.get("capabilities", {}).get("drop") == ["ALL"], (label, c["name"])
                assert sc.get("readOnlyRootFilesystem") is True, (label, c["name"])
                assert not sc.get("privileged"), (label, c["name"])
                assert "limits" in c.get("resources", {}), (label, c["name"])
                checked += 1
            if doc["kind"] in ("RayService", "RayJob", "RayCronJob") and where != "submitter":
                mounts = {m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
                assert {"/tmp", "/dev/shm"} <= mounts, label
    assert checked >= 4


@pytest.mark.parametrize("values", VALUES_CASES, ids=VALUES_IDS)
def test_autoscaler_sidecar_is_restricted_too(values):
    cluster = one(render(values), "RayService")["spec"]["rayClusterConfig"]
    opts = cluster.get("autoscalerOptions")
    assert cluster["enableInTreeAutoscaling"] is values_for(values)["serve"]["autoscaling"]["enabled"]
    if not cluster["enableInTreeAutoscaling"]:
        assert opts is None
        return
    assert opts["securityContext"]["allowPrivilegeEscalation"] is False
    assert opts["securityContext"]["capabilities"]["drop"] == ["ALL"]


def test_network_policy_opens_only_what_is_needed():
    docs = render((str(CHART / "ci" / "external-redis-values.yaml"),))
    pol = one(docs, "NetworkPolicy")["spec"]
    rules = pol["ingress"]
    serve = next(r for r in rules if r.get("ports") == [{"port": 8000, "protocol": "TCP"}])
    assert serve["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "frontend"}}}]
    operator = next(r for r in rules if {"port": 8265, "protocol": "TCP"} in r.get("ports", []))
    assert operator["from"][0]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "kuberay-operator"}
    internal = next(r for r in rules if "ports" not in r)
    assert internal["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/instance"] == RELEASE
    assert len(of_kind(render(), "NetworkPolicy")) == 2  # Ray pods + the in-chart Redis


def test_only_the_autoscaled_head_mounts_a_service_account_token():
    for where, spec in pod_specs(one(render(), "RayService")):
        assert spec["automountServiceAccountToken"] is (where == "head"), where
    for where, spec in pod_specs(one(render(), "RayJob")):  # no autoscaler in training clusters
        assert spec["automountServiceAccountToken"] is False, where
    off = one(render((str(CHART / "ci" / "monitoring-off-values.yaml"),)), "RayService")  # autoscaling off
    assert not any(spec["automountServiceAccountToken"] for _, spec in pod_specs(off))
    assert one(render(), "ServiceAccount")["automountServiceAccountToken"] is False


# ---------------------------------------------------------------------------------- values and schema

def test_values_schema_is_draft7_and_closed():
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert schema["additionalProperties"] is False
    import jsonschema

    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.Draft7Validator(schema).validate(yaml.safe_load((CHART / "values.yaml").read_text()))

    def closed(node, path):
        if node.get("type") == "object" and "properties" in node:
            assert node.get("additionalProperties") is False, f"{path} accepts unknown keys"
            for k, sub in node["properties"].items():
                closed(sub, f"{path}.{k}")
    closed(schema, "values")


def test_every_values_key_has_a_doc_comment():
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented = []
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)([A-Za-z_][\w.-]*):", line)
        if m and not lines[i - 1].strip().startswith("##"):
            undocumented.append(f"line {i + 1}: {line.strip()}")
    assert not undocumented, "keys without a '## ' comment above them:\n" + "\n".join(undocumented)


@pytest.mark.parametrize("sets, message", [
    (("serve.replicas=3",), "Additional property replicas is not allowed"),
    (("serve.upgradeStrategy.type=Rolling",), "serve.upgradeStrategy.type"),
    (("artifacts.type=nfs",), "artifacts.type"),
    (("serve.config.deployments.Scorer.num_gpus=1",), "Additional property num_gpus is not allowed"),
    (("serve.config.scorer=gpu",), "serve.config.scorer"),
    (("serve.requestPath=haproxy",), "serve.requestPath"),
    (("serve.requestPath.haproxy=true",), "serve.requestPath"),
    (("serve.config.scorerDeployment.replicas=2",), "Additional property replicas is not allowed"),
    (("redis.appendfsync=sometimes",), "redis.appendfsync"),
])
def test_schema_rejects_bad_values_with_a_clear_message(sets, message):
    p = helm_template(sets=sets, check=False)
    assert p.returncode != 0
    assert "values don't meet the specifications of the schema" in p.stderr, p.stderr
    assert message in p.stderr, p.stderr


@pytest.mark.parametrize("sets, message", [
    (("serve.config.deployments.Scorer.num_replicas=2",),
     "serve.config.deployments.Scorer: the application has a Scorer deployment only with serve.config.scorer=deployment"),
    (("serve.config.deployments.Ranker.num_replicas=2",),
     "serve.config.deployments.Ranker: no such deployment in services/serve_config.yaml (known: Ingress, TextEncoder)"),
    (("serve.config.scorer=deployment", "serve.config.scorerDeployment.minReplicas=5"),
     "serve.config.scorerDeployment: minReplicas (5) is above maxReplicas (4)"),
    (("eventStore.url=", "redis.enabled=false"), "eventStore.url is empty and redis.enabled is false"),
    (("artifacts.type=objectStore",), "artifacts.objectStore.uri is required"),
])
def test_inconsistent_values_fail_with_a_clear_message(sets, message):
    p = helm_template(sets=sets, check=False)
    assert p.returncode != 0 and message in p.stderr, p.stderr


# ------------------------------------------------------------------------------ monitoring and dashboards

def test_pod_monitors_scrape_the_ray_metrics_ports():
    docs = render()
    mons = {d["metadata"]["name"]: d["spec"] for d in of_kind(docs, "PodMonitor")}
    head, worker = mons[f"{FULLNAME}-ray-head"], mons[f"{FULLNAME}-ray-worker"]
    assert head["selector"]["matchLabels"]["ray.io/node-type"] == "head"
    assert worker["selector"]["matchLabels"]["ray.io/node-type"] == "worker"
    assert {e["port"] for e in head["podMetricsEndpoints"]} == {"metrics", "as-metrics", "dash-metrics"}
    assert [e["port"] for e in worker["podMetricsEndpoints"]] == ["metrics"]
    ports = {}
    for where, spec in pod_specs(one(docs, "RayService")):
        ports[where] = {p["name"]: p["containerPort"] for p in spec["containers"][0]["ports"]}
    assert ports["head"]["metrics"] == 8080 and ports["head"]["as-metrics"] == 44217
    assert ports["worker:cpu"]["metrics"] == 8080 and ports["worker:cpu"]["serve"] == 8000
    targets = {r["targetLabel"] for e in worker["podMetricsEndpoints"] for r in e["relabelings"]}
    assert {"ray_io_cluster", "app_kubernetes_io_instance"} <= targets


def test_monitoring_off_renders_no_operator_resources():
    kinds = {d["kind"] for d in render((str(CHART / "ci" / "monitoring-off-values.yaml"),))}
    assert not kinds & {"PodMonitor", "PrometheusRule", "NetworkPolicy"}
    assert not any(d["kind"] == "ConfigMap" and "grafana_dashboard" in d["metadata"]["labels"]
                   for d in render((str(CHART / "ci" / "monitoring-off-values.yaml"),)))


def test_dashboards_render_one_configmap_per_json_file():
    """The committed dashboards (helm/distilrec/dashboards/*.json, generated by `make dashboards` from
    dashboards/) become one ConfigMap each for Grafana's sidecar, labelled grafana_dashboard: "1", the
    file's JSON unchanged. Each stays far below the 256 KiB that `kubectl apply`'s last-applied
    annotation allows."""
    committed = {p.name: p for p in (CHART / "dashboards").glob("*.json")}
    assert {"overview.json", "training.json"} <= set(committed)
    cms = [d for d in render() if d["kind"] == "ConfigMap" and d["metadata"]["labels"].get("grafana_dashboard") == "1"]
    assert len(cms) == len(committed)
    for name, path in committed.items():
        cm = next(c for c in cms if name in c["data"])
        assert cm["metadata"]["name"] == f"{FULLNAME}-dashboard-{path.stem}"
        assert json.loads(cm["data"][name]) == json.loads(path.read_text())
        assert json.loads(cm["data"][name])["description"].startswith("Generated by dashboards/")
        assert len(json.dumps(cm)) < 256 * 1024 / 2
    validate_all(cms)


# ----------------------------------------------------------------------------------------- helm test

def test_helm_test_pod_calls_healthz_and_recommend():
    pod = next(d for d in of_kind(render(), "Pod") if d["metadata"]["annotations"].get("helm.sh/hook") == "test")
    c = pod["spec"]["containers"][0]
    script = c["command"][-1]
    compile(script, "helm-test", "exec")
    assert '"/healthz"' in script and '"/v1/recommend"' in script
    assert _env(c)["BASE_URL"]["value"] == f"http://{FULLNAME}-serve:8000"
    svc = one(render(), "RayService")["spec"]["serveService"]
    assert svc["metadata"]["name"] == f"{FULLNAME}-serve"
    assert svc["spec"]["ports"][0]["port"] == 8000


def test_notes_give_port_forward_and_curl_commands(tmp_path):
    """NOTES.txt rendered through helm's own template engine (helm install --dry-run needs a cluster, so a
    copy of the chart renders it into a ConfigMap with tpl)."""
    chart = tmp_path / "distilrec"
    shutil.copytree(CHART, chart, symlinks=False)
    shutil.copy(chart / "templates" / "NOTES.txt", chart / "notes.txt")
    (chart / "templates" / "zz-notes.yaml").write_text(
        'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\n'
        'data:\n  notes: {{ tpl (.Files.Get "notes.txt") . | quote }}\n')
    docs = [d for d in yaml.safe_load_all(helm_template(chart=chart).stdout) if d]
    notes = next(d for d in docs if d["metadata"]["name"] == "notes")["data"]["notes"]
    assert f"port-forward svc/{FULLNAME}-serve 8000:8000" in notes
    assert "curl -s localhost:8000/v1/recommend" in notes and "curl -s localhost:8000/healthz" in notes
    assert """-d '{"query": "space opera", "k": 5}'""" in notes
    assert f"get secret {FULLNAME}-admin" in notes
    assert f"helm test {RELEASE}" in notes
    assert "-c ray-head -- distilrec model rollback --model-uri '/artifacts/" in notes


def test_names_are_chart_prefixed_and_short():
    for d in render((str(CHART / "ci" / "s3-artifacts-values.yaml"),)):
        name = d["metadata"]["name"]
        assert name.startswith(FULLNAME), name
        assert len(name) <= 63
        assert d["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE


@pytest.mark.parametrize("values", VALUES_CASES, ids=VALUES_IDS)
def test_worker_groups_are_consistent(values):
    """What the KubeRay operator's own validation refuses: replicas outside min..max, duplicate group names,
    a head or worker without the Ray container first."""
    for doc in render(values):
        if doc["kind"] not in ("RayService", "RayJob", "RayCronJob"):
            continue
        spec = doc["spec"]
        cluster = (spec["rayClusterConfig"] if doc["kind"] == "RayService" else
                   spec["rayClusterSpec"] if doc["kind"] == "RayJob" else spec["jobTemplate"]["rayClusterSpec"])
        groups = cluster["workerGroupSpecs"]
        assert len({g["groupName"] for g in groups}) == len(groups)
        for g in groups:
            assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], (doc["kind"], g["groupName"])
            assert g["template"]["spec"]["containers"][0]["name"] == "ray-worker"
        assert cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["name"] == "ray-head"
        assert all(isinstance(v, str) for v in cluster["headGroupSpec"]["rayStartParams"].values())


def test_packaged_chart_carries_the_serve_config(tmp_path):
    """`helm package` follows the symlink: the .tgz renders the same serveConfigV2 without the repository."""
    run([helm(), "package", str(CHART), "-d", str(tmp_path)])
    tgz = next(tmp_path.glob("distilrec-*.tgz"))
    docs = [d for d in yaml.safe_load_all(helm_template(chart=tgz).stdout) if d]
    assert _serve_config(docs) == _serve_config(render())


def test_wait_for_model_init_container_waits_then_finds_the_model(tmp_path):
    """The head's init container script, run as rendered: it polls while there is no model and exits 0
    once the pipeline's output holds models/LATEST."""
    import subprocess
    import sys
    import time

    import numpy as np
    import pandas as pd
    import torch

    from distilrec.artifacts import ItemTable, write_artifact
    from distilrec.config import StudentConfig
    from distilrec.models import Student

    head = one(render(), "RayService")["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    wait = next(c for c in head["initContainers"] if c["name"] == "wait-for-model")
    assert wait["command"][:2] == ["python", "-c"] and wait["command"][-2] == "/artifacts/distilrec"
    out = tmp_path / "distilrec"
    proc = subprocess.Popen([sys.executable, "-c", wait["command"][2], str(out), "0.2"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        first = proc.stdout.readline()
        assert "waiting for the first model" in first, first
        assert proc.poll() is None
        n, dim = 5, 4
        cfg = StudentConfig(n_items=n, text_dim=dim, d_model=8, max_len=4)  # fields every StudentConfig has
        emb = np.random.default_rng(0).normal(size=(n, dim)).astype(np.float32)
        ids = [f"i{k}" for k in range(n)]
        version_uri = write_artifact(
            str(out), items=ItemTable(ids, ids, ids, emb), student=Student(cfg, text_emb=torch.from_numpy(emb)),
            teacher=None, histories=pd.DataFrame({"user_id": ["u0"], "item_id": ["i1"], "timestamp": [1]}),
            dataset={"name": "toy"}, metrics={}, encoder=None)
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        rest = proc.stdout.read()
        assert proc.returncode == 0, rest
        assert f"found at {out}" in rest and version_uri.rstrip("/").rsplit("/", 1)[-1] in rest
    finally:
        if proc.poll() is None:
            proc.kill()


def test_ray_token_authentication():
    """authOptions.mode token by default (KubeRay generates the token Secret and gives it to Ray's pods);
    when disabled, every Ray container says so explicitly."""
    svc = one(render(), "RayService")["spec"]["rayClusterConfig"]
    assert svc["authOptions"] == {"mode": "token"}
    assert one(render(), "RayJob")["spec"]["rayClusterSpec"]["authOptions"] == {"mode": "token"}
    off = one(render((str(CHART / "ci" / "monitoring-off-values.yaml"),)), "RayService")
    assert off["spec"]["rayClusterConfig"]["authOptions"] == {"mode": "disabled"}
    for where, spec in pod_specs(off):
        assert _env(spec["containers"][0])["RAY_AUTH_MODE"]["value"] == "disabled", where


@pytest.mark.parametrize("values", VALUES_CASES, ids=VALUES_IDS)
def test_core_kinds_validate_on_the_oldest_supported_kubernetes(values):
    """Chart.yaml's kubeVersion floor is honest: core kinds also validate strictly against that version."""
    from k8s_schemas import validate_core

    floor = re.match(r">=\s*(\d+\.\d+)", yaml.safe_load((CHART / "Chart.yaml").read_text())["kubeVersion"]).group(1)
    for doc in render(values):
        if doc["apiVersion"].split("/")[0] not in ("ray.io", "monitoring.coreos.com"):
            validate_core(doc, f"{floor}.0")


def test_in_chart_redis_command_really_runs(tmp_path):
    """The StatefulSet's own command line, run by a real redis-server (Debian's redis-server; /data, the
    mounted password file and the port swapped for temporary files and a free port): the password is
    required, the probe's `redis-cli ping` (authenticated through REDISCLI_AUTH from the file) answers
    PONG, and writes land in the append-only file."""
    import os
    import subprocess
    import time

    from k8s_helpers import tool

    from distilrec.ports import free_port

    server = tool("redis-server", "apt-get install redis-server")
    cli = tool("redis-cli", "apt-get install redis-server")
    c = one(render(), "StatefulSet")["spec"]["template"]["spec"]["containers"][0]
    port = free_port()
    secret_dir = tmp_path / "auth"
    secret_dir.mkdir()
    (secret_dir / "password").write_text("s3cret-pw")
    data = tmp_path / "data"
    data.mkdir()

    def local(script: str) -> str:
        return script.replace("/etc/redis-auth/", f"{secret_dir}/")

    script = local(c["args"][0]).replace("--dir /data", f"--dir {data}").replace("--port 6379", f"--port {port}")
    script = script.replace("exec redis-server", f"exec {server} --bind 127.0.0.1")
    env = {**os.environ, "REDISCLI_AUTH": "s3cret-pw"}
    proc = subprocess.Popen(c["command"] + [script], env={k: v for k, v in env.items() if k != "REDISCLI_AUTH"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        probe = c["readinessProbe"]["exec"]["command"]
        assert probe[:2] == ["sh", "-c"]
        probe = probe[:2] + [local(probe[2]).replace("exec redis-cli", f"exec {cli} -p {port}")]
        for _ in range(100):
            p = subprocess.run(probe, env={k: v for k, v in env.items() if k != "REDISCLI_AUTH"},
                               capture_output=True, text=True)
            if p.stdout.strip() == "PONG":
                break
            time.sleep(0.1)
        assert p.stdout.strip() == "PONG", p.stdout + p.stderr
        anon = {k: v for k, v in env.items() if k != "REDISCLI_AUTH"}
        denied = subprocess.run([cli, "-p", str(port), "set", "k", "v"], env=anon, capture_output=True, text=True)
        assert "NOAUTH" in denied.stdout + denied.stderr
        ok = subprocess.run([cli, "-p", str(port), "set", "k", "v"], env=env, capture_output=True, text=True)
        assert ok.stdout.strip() == "OK"
        info = subprocess.run([cli, "-p", str(port), "config", "get", "appendfsync"], env=env, capture_output=True,
                              text=True).stdout.split()
        assert info == ["appendfsync", "always"]
        aof = [f for f in data.rglob("*.aof") if f.stat().st_size > 0]
        assert aof and any(b"k" in f.read_bytes() for f in aof), list(data.rglob("*"))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
