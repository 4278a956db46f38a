"""What an operator expects of the chart beyond valid manifests: monitoring that installs on a cluster without
the Prometheus Operator, PodMonitor / PrometheusRule checked against the operator's CRDs, the KubeRay CRDs' CEL
rules, disruption budgets, a namespace on every resource, image digests, a high uid."""

from __future__ import annotations

import copy

import pytest
import yaml

from k8s_helpers import (CHART, FULLNAME, MONITORING_API, RAY_KINDS, VALUES_CASES, VALUES_IDS, helm_template,
                         of_kind, one, pod_specs, render, values_for)
from k8s_schemas import cel_rules, crd_schema, crd_validator, validate_all, validate_operator, validate_ray

OPERATOR = {"PodMonitor", "ServiceMonitor", "PrometheusRule"}


def _docs(**kw) -> list[dict]:
    return [d for d in yaml.safe_load_all(helm_template(**kw).stdout) if d]


# ------------------------------------------------------------------------- monitoring without the operator

def test_operator_resources_only_where_the_cluster_has_the_api():
    """`helm install` on a cluster without monitoring.coreos.com/v1 must not send a PodMonitor ("no matches
    for kind"): without the API nothing of the operator's is rendered, with it every one is, and
    monitoring.forceOperatorResources renders them without asking."""
    with_api = {d["kind"] for d in render(api_versions=(MONITORING_API,))}
    without = render(api_versions=())
    assert {"PodMonitor", "PrometheusRule"} <= with_api
    assert not {d["kind"] for d in without} & OPERATOR
    assert with_api - OPERATOR == {d["kind"] for d in without}  # nothing else depends on it
    forced = _docs(api_versions=(), sets=("monitoring.forceOperatorResources=true",))
    assert {d["metadata"]["name"] for d in forced if d["kind"] in OPERATOR} == \
        {d["metadata"]["name"] for d in render() if d["kind"] in OPERATOR}
    off = _docs(sets=("monitoring.podMonitors.enabled=false", "monitoring.prometheusRule.enabled=false"))
    assert not {d["kind"] for d in off} & OPERATOR


@pytest.mark.parametrize("values", VALUES_CASES, ids=VALUES_IDS)
def test_operator_resources_validate_against_the_operator_crds(values):
    docs = [d for d in render(values) if d["kind"] in OPERATOR]
    if values_for(values)["monitoring"]["podMonitors"]["enabled"]:
        assert len(of_kind(docs, "PodMonitor")) == 2
    for doc in docs:
        validate_operator(doc)


def test_the_operator_crd_check_refuses_what_the_api_server_would():
    mon = one([d for d in render() if d["metadata"]["name"].endswith("-ray-head")], "PodMonitor")
    for path, value in ((("spec", "podMetricsEndpoints", 0, "intervall"), "15s"),  # unknown field
                        (("spec", "podMetricsEndpoints", 0, "interval"), "15 seconds")):  # not a duration
        bad = copy.deepcopy(mon)
        node = bad
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = value
        with pytest.raises(AssertionError, match="does not match the monitoring.coreos.com v1 CRD schema"):
            validate_operator(bad)
    rule = one(render(), "PrometheusRule")
    bad = copy.deepcopy(rule)
    bad["spec"]["groups"][0]["rules"][0]["for"] = "five minutes"
    with pytest.raises(AssertionError, match="for"):
        validate_operator(bad)


# ------------------------------------------------------------------------------------------- CEL rules

def test_every_cel_rule_of_the_kuberay_crds_is_found():
    """The places with x-kubernetes-validations in the KubeRay v1.7.0 CRDs, as the API server has them."""
    places = {kind: len(cel_rules(crd_schema(kind))) for kind in RAY_KINDS}
    assert places == {"RayCluster": 2, "RayJob": 5, "RayCronJob": 5, "RayService": 3}, places


@pytest.mark.parametrize("kind, field, value, message", [
    ("RayJob", ("spec", "managedBy"), "someone-else", "the managedBy field value must be either"),
    ("RayJob", ("spec", "deletionStrategy"), {"onSuccess": {"policy": "DeleteCluster"}},
     "deletionStrategy requires either BOTH onSuccess and onFailure"),
    ("RayService", ("spec", "rayClusterConfig", "managedBy"), "someone-else", "the managedBy field value"),
    ("RayCronJob", ("spec", "jobTemplate", "deletionStrategy"),
     {"deletionRules": [{"policy": "DeleteCluster", "condition": {"jobStatus": "SUCCEEDED",
                                                                  "jobDeploymentStatus": "Failed"}}]},
     "JobStatus and JobDeploymentStatus cannot be used together"),
])
def test_a_render_that_breaks_a_cel_rule_fails(kind, field, value, message):
    """A render changed to break one rule passes the JSON schema (CEL is what refuses it) and fails the check."""
    docs = render((str(CHART / "ci" / "s3-artifacts-values.yaml"),))  # it has a RayJob, a RayCronJob, a RayService
    doc = one(docs, kind)
    validate_ray(doc)
    node = doc
    for k in field[:-1]:
        node = node[k]
    node[field[-1]] = value
    assert not list(crd_validator(kind).iter_errors(doc)), "the JSON schema alone should accept it"
    with pytest.raises(AssertionError, match=message):
        validate_ray(doc)
    with pytest.raises(AssertionError, match="breaks the ray.io v1 CRD's validation rules"):
        validate_all([doc])


# -------------------------------------------------------------------------------- disruption budgets

def _matches(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector["matchLabels"].items())


@pytest.mark.parametrize("values", VALUES_CASES, ids=VALUES_IDS)
def test_each_serving_worker_group_and_the_redis_pod_have_a_disruption_budget(values):
    """One budget per serving worker group, whose selector picks that group's pods (the template's labels plus
    those KubeRay adds: ray.io/group, ray.io/node-type) and no pod of another group, the head or the training
    clusters; one for the in-chart Redis."""
    docs = render(values)
    v = values_for(values)
    pdbs = {d["metadata"]["name"]: d["spec"] for d in of_kind(docs, "PodDisruptionBudget")}
    pods = []  # (what, labels as KubeRay sets them on the pod)
    for doc in of_kind(docs, "RayService") + of_kind(docs, "RayJob") + of_kind(docs, "RayCronJob"):
        cluster = (doc["spec"].get("rayClusterConfig") or doc["spec"].get("rayClusterSpec")
                   or doc["spec"]["jobTemplate"]["rayClusterSpec"])
        head = cluster["headGroupSpec"]["template"]["metadata"]["labels"]
        pods.append((f"{doc['kind']} head", {**head, "ray.io/node-type": "head", "ray.io/group": "headgroup"}))
        for g in cluster["workerGroupSpecs"]:
            labels = {**g["template"]["metadata"]["labels"], "ray.io/node-type": "worker",
                      "ray.io/group": g["groupName"]}
            pods.append((f"{doc['kind']} worker:{g['groupName']}", labels))
    groups = [g["groupName"] for g in one(docs, "RayService")["spec"]["rayClusterConfig"]["workerGroupSpecs"]]
    for group in groups:
        spec = pdbs.pop(f"{FULLNAME}-serve-{group}")
        assert spec["maxUnavailable"] == 1 and "minAvailable" not in spec
        assert spec["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
        assert [w for w, labels in pods if _matches(spec["selector"], labels)] == [f"RayService worker:{group}"]
    if v["redis"]["enabled"] and not v["eventStore"]["url"]:
        spec = pdbs.pop(f"{FULLNAME}-redis")
        sts = one(docs, "StatefulSet")["spec"]
        assert spec["selector"] == sts["selector"] and _matches(spec["selector"], sts["template"]["metadata"]["labels"])
        assert spec["maxUnavailable"] == 1
    assert not pdbs, pdbs


def test_disruption_budgets_can_be_tuned_or_turned_off():
    tuned = _docs(sets=("serve.podDisruptionBudget.minAvailable=50%", "redis.podDisruptionBudget.maxUnavailable=0"))
    serve = next(d["spec"] for d in of_kind(tuned, "PodDisruptionBudget") if d["metadata"]["name"].endswith("-serve-cpu"))
    assert serve["minAvailable"] == "50%" and "maxUnavailable" not in serve
    redis = next(d["spec"] for d in of_kind(tuned, "PodDisruptionBudget") if d["metadata"]["name"].endswith("-redis"))
    assert redis["maxUnavailable"] == 0
    validate_all(of_kind(tuned, "PodDisruptionBudget"))
    off = _docs(sets=("serve.podDisruptionBudget.enabled=false", "redis.podDisruptionBudget.enabled=false"))
    assert not of_kind(off, "PodDisruptionBudget")
    bad = helm_template(sets=("serve.podDisruptionBudget.maxUnavailable=some",), check=False)
    assert bad.returncode != 0 and "serve.podDisruptionBudget.maxUnavailable" in bad.stderr


# ------------------------------------------------------------------------------- namespace, images, uid

@pytest.mark.parametrize("values", VALUES_CASES, ids=VALUES_IDS)
def test_every_resource_names_its_namespace(values):
    """Every kind the chart renders is namespaced, and each carries metadata.namespace (the release's), so
    that `helm template | kubectl apply -f -` lands in the same namespace as `helm install -n`."""
    docs = _docs(values=values, namespace="team-a")
    assert docs
    for d in docs:
        assert d["metadata"].get("namespace") == "team-a", (d["kind"], d["metadata"]["name"])


def _images(docs: list[dict]) -> set[str]:
    out = set()
    for d in docs:
        for _, spec in pod_specs(d):
            out |= {c["image"] for c in spec.get("initContainers", []) + spec["containers"]}
    return out


def test_image_digests_pin_every_container():
    digest, gpu, redis = "sha256:" + "a" * 64, "sha256:" + "b" * 64, "sha256:" + "c" * 64
    docs = _docs(sets=(f"image.digest={digest}", f"image.gpuDigest={gpu}", f"redis.image.digest={redis}",
                       "serve.gpuWorkers.enabled=true", "training.gpu.enabled=true"))
    assert _images(docs) == {f"distilrec@{digest}", f"distilrec@{gpu}", f"redis@{redis}"}
    assert _images(render()) == {"distilrec:0.1.0", "redis:7.4.2-alpine"}  # tags by default
    bad = helm_template(sets=("image.digest=latest",), check=False)
    assert bad.returncode != 0 and "image.digest" in bad.stderr


@pytest.mark.parametrize("values", VALUES_CASES, ids=VALUES_IDS)
def test_every_pod_runs_with_a_uid_of_10000_or_more(values):
    for d in render(values):
        for where, spec in pod_specs(d):
            uids = [spec.get("securityContext", {}).get("runAsUser")]
            uids += [c.get("securityContext", {}).get("runAsUser") for c in spec.get("initContainers", []) + spec["containers"]]
            assert uids[0] is not None and all(u is None or u >= 10000 for u in uids), (d["kind"], where, uids)


def test_training_pods_never_see_the_admin_token():
    for kind in ("RayJob", "RayCronJob"):
        for doc in of_kind(render((str(CHART / "ci" / "s3-artifacts-values.yaml"),)), kind):
            for where, spec in pod_specs(doc):
                assert not [v for v in spec.get("volumes", []) if v["name"] == "admin-token"], where
                for c in spec["containers"]:
                    assert not [e for e in c.get("env", []) if e["name"].startswith("DISTILREC_ADMIN_TOKEN")], where
