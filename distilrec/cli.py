"""The ``distilrec`` command: the only module that knows the training and serving apps.

    distilrec demo                                     # whole path on synthetic data, offline
    distilrec pipeline --dataset synthetic --output out
    distilrec serve --model out [--host 127.0.0.1] [--port 8000]

``training`` and ``services`` are imported inside the commands, so ``import distilrec`` stays free
of Ray.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import sys
import time
from pathlib import Path

from distilrec.config import DistillConfig, PipelineConfig, TrainConfig

# Small enough to finish in minutes on 2 CPU cores, large enough to show the ranking.
DEMO_DATASET = "synthetic:users=1000,items=300,seed=0"
DEMO_CONFIG = PipelineConfig(
    encoder="tiny",
    teacher_train=TrainConfig(epochs=15, patience=3, lr=2e-3),
    distill=DistillConfig(epochs=25, patience=4, lr=5e-3),
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _print(title: str, payload) -> None:
    from rich.console import Console

    console = Console()
    console.print(f"[bold cyan]{title}[/]")
    console.print_json(json.dumps(payload))


def read_metrics(port: int, names: tuple[str, ...], timeout_s: float = 45.0) -> list[str]:
    """Poll the Ray metrics endpoint until every metric in ``names`` is exported; return its lines."""
    import httpx

    deadline = time.monotonic() + timeout_s
    lines: list[str] = []
    while time.monotonic() < deadline:
        try:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        except httpx.HTTPError:
            text = ""
        lines = [ln for ln in text.splitlines() if ln.startswith(names)]
        if all(any(ln.startswith(n) for ln in lines) for n in names):
            return lines
        time.sleep(1.0)
    missing = [n for n in names if not any(ln.startswith(n) for ln in lines)]
    raise RuntimeError(f"metrics not exported on port {port} after {timeout_s:.0f}s: {missing}")


_NOISE_LABELS = re.compile(r'(Component|NodeAddress|SessionName|Version|WorkerId|otel_scope_\w+|replica|'
                           r'application)="[^"]*",?')


def _short_metric_line(line: str) -> str:
    """A Prometheus sample without Ray's per-process labels, for printing."""
    return _NOISE_LABELS.sub("", line).replace(",}", "}").replace("{}", "")


def demo(output: str) -> int:
    import httpx
    import ray
    from ray import serve

    from services.run import deploy, load_config
    from training.pipeline import ensure_ray, run_pipeline

    metrics_port, http_port = free_port(), free_port()
    ensure_ray(2, metrics_export_port=metrics_port)
    try:
        report = run_pipeline(DEMO_DATASET, output, DEMO_CONFIG)
        print(f"\nstarting the Serve application from services/serve_config.yaml on 127.0.0.1:{http_port} ...")
        events_db = Path(output) / "events.db"  # a fresh event store for every demo run
        for f in events_db.parent.glob("events.db*"):
            f.unlink()
        serve_cfg = load_config(model_uri=output, host="127.0.0.1", port=http_port,
                                app_args={"event_store": f"sqlite://{events_db}"})
        for app in serve_cfg["applications"]:  # keep the demo's output readable: no per-request logs
            app["logging_config"] = {"log_level": "WARNING"}
        deploy(serve_cfg)
        base = f"http://127.0.0.1:{http_port}"
        with httpx.Client(base_url=base, timeout=30) as c:
            _print("GET /readyz", c.get("/readyz").json())
            model = c.get("/v1/model").json()
            _print("GET /v1/model (version)", {"version": model["version"], "created_at": model["created_at"]})
            for body in (
                {"user_id": "u0", "k": 5},
                {"user_id": "u1", "history": ["i10", "i11"], "k": 5, "exclude": ["i12"]},
                {"user_id": "a-new-user", "k": 3},
                {"user_id": "u0", "k": 0},
            ):
                r = c.post("/v1/recommend", json=body)
                _print(f"POST /v1/recommend {json.dumps(body)} -> {r.status_code}", r.json())
            # A live event: the user watches the top recommendation; the next answer reflects it.
            before = c.post("/v1/recommend", json={"user_id": "u0", "k": 3}).json()["items"]
            event = {"events": [{"user_id": "u0", "item_id": before[0]["item_id"]}]}
            r = c.post("/v1/events", json=event)
            _print(f"POST /v1/events {json.dumps(event)} -> {r.status_code}", r.json())
            after = c.post("/v1/recommend", json={"user_id": "u0", "k": 3}).json()["items"]
            _print("POST /v1/recommend {\"user_id\": \"u0\", \"k\": 3} before -> after the event",
                   {"before": [i["item_id"] for i in before], "after": [i["item_id"] for i in after]})
        names = ("ray_distilrec_requests_total", "ray_distilrec_stage_latency_ms_count",
                 "ray_distilrec_scorer_batch_size_count")
        lines = read_metrics(metrics_port, names)
        print(f"\nPrometheus metrics on http://127.0.0.1:{metrics_port}/metrics (excerpt):")
        for ln in lines:
            print("  " + _short_metric_line(ln))
        t, s = report["models"]["teacher"], report["models"]["student"]
        print(f"\nteacher NDCG@10 {t['ndcg@10']:.4f}, student {s['ndcg@10']:.4f}, "
              f"popularity {report['models']['popularity']['ndcg@10']:.4f}; artifacts in {output}")
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0


def serve_cmd(model: str, host: str, port: int, config: str | None, metrics_port: int | None,
              event_store: str | None) -> int:
    import ray

    from distilrec.artifacts import ArtifactError, read_manifest
    from services.run import DEFAULT_CONFIG, deploy, load_config
    from training.pipeline import ensure_ray

    from distilrec.stores import UnsupportedStoreError, parse_store_uri, redact

    try:
        manifest = read_manifest(model)
    except ArtifactError as e:
        print(f"distilrec serve: --model {model!r}: {e}", file=sys.stderr)
        return 2
    if event_store:
        try:
            parse_store_uri(event_store)
        except UnsupportedStoreError as e:
            print(f"distilrec serve: --event-store {redact(event_store)!r}: {e}", file=sys.stderr)
            return 2
    ensure_ray(1, metrics_export_port=metrics_port)
    try:
        deploy(load_config(config or DEFAULT_CONFIG, model_uri=model, host=host, port=port,
                           app_args={"event_store": event_store} if event_store else None))
    except (RuntimeError, ValueError) as e:
        print(f"distilrec serve: the application did not start: {e}", file=sys.stderr)
        from ray import serve

        serve.shutdown()
        ray.shutdown()
        return 1
    print(f"serving model {manifest['version']} on http://{host}:{port} (OpenAPI at /docs); Ctrl-C stops")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        from ray import serve

        serve.shutdown()
        ray.shutdown()
    return 0


def bench_cost(model: str, output: str, runs: int) -> int:
    """``distilrec bench cost``: the cost columns of the report, measured again on an idle moment."""
    import fsspec

    from distilrec.artifacts import ArtifactError, load_artifact
    from distilrec.evaluate import BATCH, scoring_costs

    if runs < 20:
        print(f"distilrec bench cost: --runs {runs}: at least 20 runs are needed for a p99", file=sys.stderr)
        return 2
    try:
        art = load_artifact(model, with_teacher=True)
    except ArtifactError as e:
        print(f"distilrec bench cost: --model {model!r}: {e}", file=sys.stderr)
        return 2
    costs = scoring_costs({"teacher": art.teacher, "student": art.student}, runs=runs)
    t, s = costs["teacher"], costs["student"]
    result = {"artifact": art.uri, "version": art.version, "runs": runs, "batch": BATCH, "models": costs,
              "teacher_over_student": {"macs": t["macs_per_candidate"] / s["macs_per_candidate"],
                                       "ms_p50": t["score_ms_p50_1000"] / s["score_ms_p50_1000"],
                                       "ms_p99": t["score_ms_p99_1000"] / s["score_ms_p99_1000"],
                                       "ms_batched": t["score_ms_per_request_batched"]
                                       / s["score_ms_per_request_batched"]}}
    rows = [f"| model | params | MACs / candidate | ms / 1000 p50 | p99 | ms / 1000 in a batch of {BATCH} |",
            "| --- | --- | --- | --- | --- | --- |"]
    rows += [f"| {name} | {c['params']:,} | {c['macs_per_candidate']:,.0f} | {c['score_ms_p50_1000']:.3f} | "
             f"{c['score_ms_p99_1000']:.3f} | {c['score_ms_per_request_batched']:.3f} |" for name, c in costs.items()]
    r = result["teacher_over_student"]
    rows.append(f"\nteacher / student: {r['macs']:.1f}× the MACs; one request alone: {r['ms_p50']:.2f}× the p50 time, "
                f"{r['ms_p99']:.2f}× the p99 time ({runs} runs each, in turns, one thread); in a batch of {BATCH}: "
                f"{r['ms_batched']:.2f}× the time per request")
    table = "\n".join(rows) + "\n"
    fs, root = fsspec.core.url_to_fs(output)
    fs.makedirs(root, exist_ok=True)
    with fsspec.open(f"{output.rstrip('/')}/cost.json", "w") as f:
        json.dump(result, f, indent=2)
    with fsspec.open(f"{output.rstrip('/')}/cost.md", "w") as f:
        f.write(table)
    print(table)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="distilrec", description="Teacher → student recommender on Ray.")
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="the whole path on synthetic data, offline, then a few HTTP requests")
    d.add_argument("--output", default="demo-out", help="where the artifacts go (default: ./demo-out)")
    pl = sub.add_parser("pipeline", help="teacher → distillation → evaluation → artifact")
    pl.add_argument("--dataset", required=True,
                    help="synthetic[:users=..,items=..,seed=..] | movielens:PATH_OR_NAME[,skip_bad_rows=1] | "
                         "files:interactions=PATH[,items=PATH][,skip_bad_rows=1]")
    pl.add_argument("--output", required=True, help="output folder (report.json, models/)")
    pl.add_argument("--config", help="PipelineConfig YAML (encoder, teacher, student, teacher_train, distill)")
    pl.add_argument("--resume", action="store_true", help="continue the latest run in --output from its checkpoints")
    s = sub.add_parser("serve", help="serve a trained model over HTTP on a local Ray instance")
    s.add_argument("--model", required=True, help="pipeline output folder, artifact version folder, or URI")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--config", help="serve config YAML (default: services/serve_config.yaml)")
    s.add_argument("--metrics-port", type=int, default=8080, help="Ray metrics export port (Prometheus text)")
    s.add_argument("--event-store", help="event store URI, e.g. sqlite:///var/lib/distilrec/events.db or "
                                         "redis://host:6379/0 (default: the serve config's)")
    b = sub.add_parser("bench", help="benchmarks that write JSON and a Markdown table")
    bsub = b.add_subparsers(dest="bench", required=True)
    bc = bsub.add_parser("cost", help="parameters, MACs per candidate and the time to score 1,000 candidates on "
                                      "one CPU thread, teacher and student of an artifact timed in turns")
    bc.add_argument("--model", required=True, help="pipeline output folder, artifact version folder, or URI")
    bc.add_argument("--output", required=True, help="folder for cost.json and cost.md")
    bc.add_argument("--runs", type=int, default=500, help="timed runs per model (default 500)")
    args = p.parse_args(argv)

    if args.cmd == "bench":
        return bench_cost(args.model, args.output, args.runs)
    if args.cmd == "demo":
        return demo(str(Path(args.output).resolve()))
    if args.cmd == "pipeline":
        from training.pipeline import load_config, run_pipeline

        try:
            cfg = load_config(args.config)
        except (OSError, ValueError) as e:
            print(f"distilrec pipeline: --config {args.config!r}: {e}", file=sys.stderr)
            return 2
        try:
            run_pipeline(args.dataset, args.output, cfg, resume=args.resume)
        except (ValueError, FileNotFoundError) as e:
            print(f"distilrec pipeline: --dataset {args.dataset!r}: {e}", file=sys.stderr)
            return 2
        return 0
    return serve_cmd(args.model, args.host, args.port, args.config, args.metrics_port, args.event_store)


if __name__ == "__main__":
    sys.exit(main())
