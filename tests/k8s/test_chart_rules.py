"""The PrometheusRule the chart renders: `promtool check rules` on its groups, and `promtool test rules`
with tests/k8s/rules_test.yaml (one case that fires each alert and one that does not)."""

from __future__ import annotations

import shutil

import yaml

from k8s_helpers import CHART, of_kind, one, promtool, render, run

ALERTS = {"DistilrecHighP99Latency", "DistilrecHighErrorRate", "DistilrecHighDegradedRate",
          "DistilrecNoModelLoaded", "DistilrecEventWritesFailing", "DistilrecCanaryRolledBack"}
RULES_TEST = CHART.parents[1] / "tests" / "k8s" / "rules_test.yaml"


def _write_rules(tmp_path, values=()):
    rule = one(render(values), "PrometheusRule")
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False))
    return rule, path


def test_rule_has_the_contract_alerts(tmp_path):
    rule, _ = _write_rules(tmp_path)
    names = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert names == ALERTS
    for g in rule["spec"]["groups"]:
        for r in g["rules"]:
            assert r["labels"]["severity"] in ("warning", "critical")
            assert r["annotations"]["summary"] and r["annotations"]["description"]
            assert 'namespace="default",app_kubernetes_io_instance="distilrec"' in r["expr"]


def test_promtool_check_rules(tmp_path):
    _, path = _write_rules(tmp_path)
    out = run([promtool(), "check", "rules", str(path)])
    assert "SUCCESS: 6 rules found" in out.stdout, out.stdout


def test_promtool_check_rules_with_other_thresholds(tmp_path):
    extra = tmp_path / "v.yaml"
    extra.write_text(yaml.safe_dump({"monitoring": {"prometheusRule": {"alerts": {
        "p99LatencyMs": 80, "errorRate": 0.001, "for": "2m", "rateWindow": "10m"}}}}))
    rule, path = _write_rules(tmp_path, (str(extra),))
    run([promtool(), "check", "rules", str(path)])
    expr = {r["alert"]: r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert expr["DistilrecHighP99Latency"].endswith("> 80") and "[10m]" in expr["DistilrecHighErrorRate"]


def test_promtool_unit_tests_fire_and_hold_each_alert(tmp_path):
    _write_rules(tmp_path)
    tests = yaml.safe_load(RULES_TEST.read_text())["tests"]
    fired = {a["alertname"] for t in tests for a in t["alert_rule_test"] if a["exp_alerts"]}
    held = {a["alertname"] for t in tests for a in t["alert_rule_test"] if not a["exp_alerts"]}
    assert fired == ALERTS and held == ALERTS, (fired, held)
    shutil.copy(RULES_TEST, tmp_path / "rules_test.yaml")
    out = run([promtool(), "test", "rules", "rules_test.yaml"], cwd=tmp_path, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def test_no_rule_without_monitoring():
    assert not of_kind(render((str(CHART / "ci" / "monitoring-off-values.yaml"),)), "PrometheusRule")
