"""checkov (PyPI; its own virtualenv under .tools/, `make tools`) over the chart's default render and every
ci/*-values.yaml render, in one run over a folder that holds them all: every finding is either fixed or
listed, with its reason, in tests/k8s/checkov_skips.yaml; a listed skip that no render needs fails too."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from k8s_helpers import VALUES_CASES, VALUES_IDS, checkov, helm_template, run

SKIPS = Path(__file__).with_name("checkov_skips.yaml")
NAMESPACE = "distilrec"  # checkov refuses the default namespace (CKV_K8S_21)


def _findings(tmp_path: Path) -> list[dict]:
    for values, name in zip(VALUES_CASES, VALUES_IDS):
        out = helm_template(values=values, namespace=NAMESPACE).stdout
        (tmp_path / (name if name.endswith(".yaml") else f"{name}.yaml")).write_text(out)
    p = run([checkov(), "-d", str(tmp_path), "--framework", "kubernetes", "-o", "json", "--quiet",
             "--skip-download"], check=False)
    assert p.returncode in (0, 1), p.stderr[-3000:]  # 1: findings
    reports = json.loads(p.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    assert [r["check_type"] for r in reports] == ["kubernetes"], [r.get("check_type") for r in reports]
    summary = reports[0]["summary"]
    assert summary["parsing_errors"] == 0 and summary["resource_count"] >= 40, summary
    return reports[0]["results"]["failed_checks"]


def test_checkov_finds_nothing_but_the_listed_skips(tmp_path):
    skips = yaml.safe_load(SKIPS.read_text())
    allowed = {(s["check"], r): s for s in skips for r in s["resources"]}
    for s in skips:
        assert s["reason"].strip(), s
    failed = _findings(tmp_path)
    unexplained = sorted({f"{f['check_id']} {f['resource']} ({f['file_path'].lstrip('/')}): {f['check_name']}"
                          for f in failed if (f["check_id"], f["resource"]) not in allowed})
    assert not unexplained, "checkov findings to fix or to list in checkov_skips.yaml:\n" + "\n".join(unexplained)
    used = {(f["check_id"], f["resource"]) for f in failed}
    stale = sorted(f"{c} {r}" for c, r in allowed if (c, r) not in used)
    assert not stale, "skips that no render needs any more (remove them): " + ", ".join(stale)
    # The digest option works: the render that pins every image has no CKV_K8S_43 finding.
    assert not [f for f in failed if f["check_id"] == "CKV_K8S_43" and f["file_path"].endswith("/gpu-values.yaml")]
