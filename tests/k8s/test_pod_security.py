"""Every pod the chart (every ``ci/*-values.yaml``) and the plain manifests (every overlay) create meets the
Kubernetes Pod Security Standard "restricted" (tests/k8s/pod_security.py checks it control by control),
and the checker itself refuses pods that break each control.

Where Ray cannot comply is what KubeRay adds to the pods at run time and the chart does not render: the
autoscaler sidecar takes the chart's ``securityContext`` through ``autoscalerOptions.securityContext``
(checked below), but its pod-level fields come from the head pod, which is checked."""

from __future__ import annotations

import copy

import pytest

from k8s_helpers import KUSTOMIZE_OVERLAYS, VALUES_CASES, VALUES_IDS, kustomize_build, pod_specs, render
from pod_security import restricted_violations


def _all_pods(docs: list[dict]) -> list[tuple[str, dict]]:
    out = []
    for doc in docs:
        for where, spec in pod_specs(doc):
            out.append((f"{doc['kind']}/{doc['metadata']['name']} {where}", spec))
        opts = (doc.get("spec", {}).get("rayClusterConfig") or {}).get("autoscalerOptions")
        if opts:  # KubeRay's autoscaler sidecar runs in the head pod with this container securityContext
            head = doc["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
            sidecar = {"name": "autoscaler", "securityContext": opts.get("securityContext") or {}}
            out.append((f"{doc['kind']}/{doc['metadata']['name']} autoscaler sidecar",
                        {"securityContext": head.get("securityContext"), "containers": [sidecar]}))
    return out


@pytest.mark.parametrize("values", VALUES_CASES, ids=VALUES_IDS)
def test_chart_pods_are_restricted(values):
    pods = _all_pods(render(values))
    assert len(pods) >= 4  # serve head + workers, training head + workers, Redis, helm test, …
    bad = {where: v for where, spec in pods if (v := restricted_violations(spec))}
    assert not bad, bad


@pytest.mark.parametrize("overlay", KUSTOMIZE_OVERLAYS)
def test_manifest_pods_are_restricted(overlay):
    pods = _all_pods(kustomize_build(overlay))
    assert len(pods) >= 4
    bad = {where: v for where, spec in pods if (v := restricted_violations(spec))}
    assert not bad, bad


GOOD = {
    "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
    "containers": [{"name": "c", "securityContext": {"allowPrivilegeEscalation": False,
                                                     "capabilities": {"drop": ["ALL"]}}}],
    "volumes": [{"name": "tmp", "emptyDir": {}}, {"name": "s", "secret": {"secretName": "x"}}],
}


def _with(path: str, value) -> dict:
    spec = copy.deepcopy(GOOD)
    node = spec
    keys = path.split(".")
    for k in keys[:-1]:
        node = node[int(k)] if isinstance(node, list) else node.setdefault(k, {})
    if isinstance(node, list):
        node[int(keys[-1])] = value
    else:
        node[keys[-1]] = value
    return spec


@pytest.mark.parametrize("path,value", [
    ("hostNetwork", True), ("hostPID", True), ("hostIPC", True),
    ("volumes.0", {"name": "h", "hostPath": {"path": "/var/run"}}),
    ("volumes.1", {"name": "n", "nfs": {"server": "x", "path": "/"}}),
    ("securityContext.runAsNonRoot", False), ("securityContext.runAsUser", 0),
    ("securityContext.seccompProfile", {"type": "Unconfined"}), ("securityContext.seccompProfile", None),
    ("securityContext.sysctls", [{"name": "kernel.msgmax", "value": "1"}]),
    ("containers.0.securityContext.privileged", True),
    ("containers.0.securityContext.allowPrivilegeEscalation", True),
    ("containers.0.securityContext.runAsNonRoot", False),
    ("containers.0.securityContext.runAsUser", 0),
    ("containers.0.securityContext.seccompProfile", {"type": "Unconfined"}),
    ("containers.0.securityContext.capabilities", {"drop": ["NET_RAW"]}),
    ("containers.0.securityContext.capabilities", {"drop": ["ALL"], "add": ["SYS_ADMIN"]}),
    ("containers.0.securityContext.procMount", "Unmasked"),
    ("containers.0.securityContext.seLinuxOptions", {"type": "spc_t"}),
    ("containers.0.ports", [{"containerPort": 80, "hostPort": 80}]),
])
def test_the_checker_refuses_each_control(path, value):
    assert restricted_violations(GOOD) == []
    assert restricted_violations(_with(path, value)), (path, value)


def test_the_checker_allows_what_restricted_allows():
    ok = _with("containers.0.securityContext.capabilities", {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]})
    ok["securityContext"]["seccompProfile"] = {"type": "Localhost", "localhostProfile": "ray.json"}
    ok["volumes"].append({"name": "pvc", "persistentVolumeClaim": {"claimName": "models"}})
    assert restricted_violations(ok) == []
    # Container-level settings may replace the pod's.
    moved = copy.deepcopy(GOOD)
    moved["securityContext"] = {}
    moved["containers"][0]["securityContext"].update(runAsNonRoot=True, seccompProfile={"type": "RuntimeDefault"})
    assert restricted_violations(moved) == []
