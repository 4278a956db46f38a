"""The benchmark reports: target verdicts from a serve result (met, missed, not measured; the teacher
that meets the SLO at no rate), the Markdown tables, the plots, the quality table from a report.json,
and the CLI's checks of its arguments."""

from __future__ import annotations

import json

import pytest

from distilrec.bench.report import (
    plot_serve_latency, render_quality_markdown, render_serve_markdown, render_train_markdown, serve_targets,
)
from distilrec.bench.serve import app_config, fixed_rates_for, request_bodies
from distilrec.bench.train import measured_epochs, summarize_history
from distilrec.cli import main


def _step(rate=None, p50=5.0, p99=9.0, errors=None, goodput=10.0, conc=None, cpu=0.1, lag=0.5):
    errors = errors or {}
    return {"mode": "closed" if conc else "open", "rate": rate, "concurrency": conc, "duration_s": 5.0,
            "wall_s": 5.0, "sent": 10, "ok": 10, "errors": errors, "n_errors": sum(errors.values()),
            "p50_ms": p50, "p95_ms": p99, "p99_ms": p99, "max_ms": p99, "goodput_rps": goodput,
            "send_lag_p99_ms": lag, "client_cpu": cpu, "passed": not errors and p99 <= 50,
            "client_limited": cpu > 0.8 or lag > 5}


def _app(name, slo, closed, fixed_p99=None, fixed=(25.0, 50.0, 100.0), errors_at=None):
    steps = [_step(r, p99=(fixed_p99 or {}).get(r, 9.0), errors={"timeout": 2} if r == errors_at else None)
             for r in fixed]
    return {"title": name, "throughput_at_slo": slo,
            "search": {"throughput_at_slo": slo, "stopped": "x", "steps": [_step(5.0), _step(10.0, p99=60.0)]},
            "fixed": steps, "closed": [_step(conc=32, goodput=closed)]}


def _result(**apps):
    return {"date": "2026-11-25T04:00:00+00:00", "command": "distilrec bench serve --model m --output o",
            "machine": {"nproc": 2, "cpu_model": "AMD EPYC", "loadavg": [1.0, 1.0, 1.0]},
            "model": {"version": "v1", "users": 610, "items": 9724}, "body_bytes": 1686,
            "config": {"duration_s": 5.0, "concurrency": 32, "start_rate": 5.0}, "slo_ms": 50.0,
            "order": ["distilrec", "floor", "no_batching", "teacher", "scorer_deployment", "hop_floor",
                      "scorer_deployment_no_batching"], "fixed_rates": [25.0, 50.0, 100.0],
            "apps": apps}


def _all_apps(half_p99=20.0, errors_at=None):
    return dict(distilrec=_app("distilrec", 100.0, 300.0, fixed_p99={50.0: half_p99}, errors_at=errors_at),
                floor=_app("floor", 150.0, 900.0), no_batching=_app("no batching", 80.0, 150.0),
                teacher=_app("teacher", 30.0, 90.0), scorer_deployment=_app("deployment", 60.0, 200.0),
                hop_floor=_app("hop floor", 100.0, 400.0),
                scorer_deployment_no_batching=_app("deployment nb", 50.0, 160.0))


def test_serve_targets_met_and_missed():
    t = serve_targets(_result(**_all_apps()))
    names = [x["target"].split(" ")[0] for x in t]
    assert names == ["distilrec", "scorer:", "batching", "batching", "p99", "student"]
    assert [x["verdict"] for x in t] == ["met", "missed", "met", "missed", "met", "figure"]
    assert t[0]["value"] == pytest.approx(100 / 150) and t[1]["value"] == pytest.approx(60 / 100)
    assert t[2]["value"] == pytest.approx(300 / 150) and t[3]["value"] == pytest.approx(200 / 160)
    assert t[4]["value"] == 20.0 and t[5]["value"] == pytest.approx(100 / 30)
    assert "at the SLO: 100.0 / 80.0" in t[2]["measured"]
    assert serve_targets(_result(**_all_apps(half_p99=30.0)))[4]["verdict"] == "missed"
    # errors at half load: the p99 of the answers that came is no proof, the target is missed
    t = serve_targets(_result(**_all_apps(errors_at=50.0)))
    assert t[4]["verdict"] == "missed" and "2 errors" in t[4]["measured"]


def test_targets_of_apps_not_run_are_left_out_and_a_zero_floor_is_not_measured():
    t = serve_targets(_result(distilrec=_app("distilrec", 20.0, 100.0), floor=_app("floor", 0.0, 0.0)))
    # 20 / 0: no ratio; no fixed step at half of 20 req/s: no p99 at half load
    assert [x["verdict"] for x in t] == ["not measured", "not measured"]


def test_serve_markdown_and_plot(tmp_path):
    res = _result(**{**_all_apps(), "teacher": _app("teacher-served", 30.0, 90.0, errors_at=100.0)})
    res["apps"]["floor"]["closed"][0].update(client_cpu=0.95, client_limited=True)
    res["apps"]["distilrec"]["memory"] = {"replicas": [{"deployment": "Ingress", "pid": 1, "rss_mib": 700.0,
                                                        "pss_mib": 500.0}], "rss_mib": 700.0, "pss_mib": 500.0}
    res["targets"] = serve_targets(res)
    md = render_serve_markdown(res)
    assert "Command: `distilrec bench serve --model m --output o`" in md
    assert "| distilrec | 100 | 300.0 |" in md
    assert "| teacher-served | 5.0 / 9.0 | 5.0 / 9.0 | 5.0 / 9.0 (2) |" in md
    assert "| p99 ≤ 25 ms at half of distilrec's throughput at SLO | p99 20.0 ms at 50 req/s | met |" in md
    assert "| distilrec | Ingress 700 / 500 | 700 / 500 |" in md
    assert "timeout 2" in md and "floor at 32 in flight (busy; CPU 0.95" in md
    path = plot_serve_latency(res, tmp_path / "p.png")
    assert open(path, "rb").read()[:4] == b"\x89PNG"


def test_fixed_rates_bodies_and_epochs():
    assert fixed_rates_for(40.0, 5.0) == [10.0, 20.0, 40.0]
    b = request_bodies([f"u{i}" for i in range(50)], ["a", "b", "c", "d"], 400, history_share=0.25, seed=0)
    with_hist = [x for x in b if "history" in x]
    assert 50 < len(with_hist) < 150 and all(1 <= len(x["history"]) <= 3 for x in with_hist)
    assert b == request_bodies([f"u{i}" for i in range(50)], ["a", "b", "c", "d"], 400, history_share=0.25, seed=0)
    with pytest.raises(ValueError):
        request_bodies([], ["a"], 3)
    assert measured_epochs(4) == [1, 2, 3]
    hist = [{"epoch": 0, "samples_per_s": 10.0, "epoch_s": 9.0}, {"epoch": 1, "samples_per_s": 30.0, "epoch_s": 3.0},
            {"epoch": 2, "samples_per_s": 50.0, "epoch_s": 2.0}]
    s = summarize_history(hist, workers=2, epochs=3)
    assert s["samples_per_s_per_worker"] == 40.0 and s["samples_per_s"] == 80.0 and s["epoch_s"] == 2.5


def test_train_markdown():
    res = {"date": "d", "command": "distilrec bench train --output o", "machine": {"nproc": 2, "cpu_model": "X"},
           "device": "CPU", "dataset": {"name": "synthetic", "train_users": 2000}, "epochs": 3,
           "measured_epochs": [2, 3], "gpu_note": "GPU: not measured: no GPU.",
           "runs": [{"workers": 1, "samples_per_s": 100.0, "samples_per_s_per_worker": 100.0, "epoch_s": 20.0,
                     "threads_per_worker": 2},
                    {"workers": 2, "samples_per_s": 150.0, "samples_per_s_per_worker": 75.0, "epoch_s": 13.3,
                     "threads_per_worker": 1}]}
    md = render_train_markdown(res)
    assert "| 2 | 150 | 75 | 13.30 | 1 |" in md and "1.50 × the samples/s" in md and "GPU: not measured" in md


def test_app_configs_are_the_shipped_one_with_one_change():
    from services.run import load_config

    shipped = load_config(model_uri="/m", app_args={"event_store": "sqlite:///tmp/e.db"})["applications"][0]
    d = app_config("distilrec", "/m", "sqlite:///tmp/e.db")
    assert d["route_prefix"] == "/bench-distilrec" and d["deployments"] == shipped["deployments"]
    assert d["args"] == shipped["args"] and d["import_path"] == shipped["import_path"]
    t = app_config("teacher", "/m", "sqlite:///tmp/e.db")
    assert t["args"] == {**shipped["args"], "scorer_model": "teacher"} and t["deployments"] == shipped["deployments"]
    nb = app_config("no_batching", "/m", "sqlite:///tmp/e.db")
    ingress, ref = ({d["name"]: d for d in x["deployments"]}["Ingress"] for x in (nb, shipped))
    assert ingress["user_config"] == {**ref["user_config"], "max_batch_size": 1}
    assert {k: v for k, v in ingress.items() if k != "user_config"} == {k: v for k, v in ref.items() if k != "user_config"}
    dep = app_config("scorer_deployment", "/m", "sqlite:///tmp/e.db")
    assert dep["args"] == {**shipped["args"], "scorer": "deployment"}
    dnb = app_config("scorer_deployment_no_batching", "/m", "sqlite:///tmp/e.db")
    assert {d["name"]: d for d in dnb["deployments"]}["Scorer"]["user_config"] == {"max_batch_size": 1}
    assert "Scorer" not in {d["name"] for d in d["deployments"]}
    hop = app_config("hop_floor", "/m", "sqlite:///tmp/e.db", floor_body='{"items": []}')
    assert hop["import_path"] == "services.floor:build_hop_app" and hop["deployments"][0]["name"] == "HopFloor"
    f = app_config("floor", "/m", "sqlite:///tmp/e.db", floor_body='{"items": []}')
    assert f["import_path"] == "services.floor:build_app" and f["args"] == {"body": '{"items": []}'}
    ingress = {d["name"]: d for d in shipped["deployments"]}["Ingress"]
    assert f["deployments"][0]["ray_actor_options"] == ingress["ray_actor_options"]
    with pytest.raises(ValueError):
        app_config("floor", "/m", "sqlite:///tmp/e.db")


def test_quality_table_and_cli(tmp_path, capsys):
    report = {"dataset": {"name": "ml", "users": 610, "items": 9724, "interactions": 100836},
              "models": {"popularity": {"ndcg@10": 0.0194, "hr@10": 0.0426},
                         "teacher": {"ndcg@10": 0.0636, "hr@10": 0.1197, "params": 761408,
                                     "macs_per_candidate": 16719, "score_ms_p50_1000": 1.5, "score_ms_p99_1000": 5.8},
                         "student": {"ndcg@10": 0.0642, "hr@10": 0.1148, "params": 701824,
                                     "macs_per_candidate": 521, "score_ms_p50_1000": 0.5, "score_ms_p99_1000": 2.7}},
              "comparisons": {"student / teacher": {"a": "student", "b": "teacher", "ratio": 1.0094, "low": 0.9312,
                                                    "high": 1.0921, "level": 0.95, "users": 610, "resamples": 2000}}}
    md = render_quality_markdown(report)
    assert ("- student / teacher: 1.01 × NDCG@10 (95% paired bootstrap interval 0.93 to 1.09, 610 users)"
            in md)
    assert "| student (distilled) | 0.0642 | 0.1148 | 1.01 | 701,824 | 521 | 0.500 | 2.700 |" in md
    assert "| popularity | 0.0194 | 0.0426 | 0.31 | - | - | - | - |" in md
    assert "time:" not in md  # a report from before the pipeline timed its stages
    report["run"] = {"wall_s": 919.1, "stage_s": {"teacher": 286.0, "student": 364.4}}
    md = render_quality_markdown(report)
    assert md.endswith("The pipeline's time: 15.3 min in all: teacher 4.8 min, student 6.1 min.\n")
    (tmp_path / "report.json").write_text(json.dumps(report))
    assert main(["bench", "quality", "--report", str(tmp_path), "--output", str(tmp_path / "q")]) == 0
    assert (tmp_path / "q" / "quality.md").read_text() == md
    assert (tmp_path / "q" / "quality_cost.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["bench", "quality", "--report", str(tmp_path / "nope"), "--output", str(tmp_path / "q")]) == 2
    assert "--report" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["serve", "--model", "M", "--output", "o", "--apps", "distilrec,bogus"], "unknown ['bogus']"),
    (["serve", "--model", "M", "--output", "o", "--step-factor", "1"], "--step-factor > 1"),
    (["serve", "--model", "M", "--output", "o", "--duration-per-step", "0.1"], "--duration-per-step 0.1"),
    (["serve", "--model", "/no/such/artifact", "--output", "o"], "--model '/no/such/artifact'"),
    (["train", "--output", "o", "--workers", "1,x"], "--workers '1,x'"),
    (["train", "--output", "o", "--epochs", "0"], "--epochs 0"),
    (["paths", "--output", "o", "--variants", "grpc,fast"], "--variants 'grpc,fast'"),
    (["paths", "--output", "o", "--model", "/no/such/artifact"], "--model '/no/such/artifact'"),
    (["paths", "--output", "o", "--requests", "0"], "--requests 0"),
])
def test_cli_names_the_bad_value(args, message, capsys):
    assert main(["bench", *args]) == 2
    assert message in capsys.readouterr().err


def test_request_path_variants_and_their_table():
    from distilrec.bench.paths import render_markdown, variant_env
    from services.run import THROUGHPUT_OPTIMIZED_ENV

    assert variant_env("ray-defaults") == {}
    assert variant_env("haproxy") == THROUGHPUT_OPTIMIZED_ENV  # what local runs get by default (DISTILREC_REQUEST_PATH=fast)
    assert variant_env("grpc")["RAY_SERVE_ENABLE_DIRECT_INGRESS"] == "0"
    with pytest.raises(ValueError, match="'fast'"):
        variant_env("fast")

    def stats(p50: float) -> dict:
        return {"n": 10, "p50_ms": p50, "p99_ms": p50 * 2, "mean_ms": p50}

    result = {"machine": {"nproc": 2, "cpu_model": "X", "commit": "abc"}, "requests": 10, "warmup": 2,
              "variants": {v: {"env": variant_env(v), "loadavg_before": 1.0,
                               "results": {"bare, 3 handle calls": stats(p50)}}
                           for v, p50 in (("ray-defaults", 12.0), ("grpc", 9.0), ("haproxy", 4.0))}}
    md = render_markdown(result)
    assert "| bare, 3 handle calls | 12.00 / 24.00 | 9.00 / 18.00 | 4.00 / 8.00 | 0.75 × | 0.33 × |" in md
    assert "`RAY_SERVE_ENABLE_HA_PROXY=1`" in md and "ray-defaults: none" in md
