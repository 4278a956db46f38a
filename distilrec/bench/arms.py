"""``distilrec bench arms``: an A/B test simulated end to end, its online hit rate against offline HR@10.

    distilrec bench arms --model OUT --output DIR [--dataset movielens:PATH] [--concurrency 8]
    # → DIR/arms.json, arms.md

The artifact under ``--model`` (a pipeline output) is served on a local Ray instance with two arms, 50/50:
``student`` (the distilled student scores in the Ingress) and ``teacher`` (the teacher does). Its
dataset's leave-one-out test users (``distilrec.data.Split``, as ``distilrec.evaluate`` evaluates them)
are replayed, one request each:

- the request carries the user's history up to the held-out item (the split's test history, as item ids:
  the artifact's own history of the user also holds the held-out item, which an answer never repeats),
  under a user id the artifact does not know (``sim-{user}``: the arm is the hash of it); at most the
  last 1,000 items go as ``history`` and up to 1,000 before them as ``exclude`` (the API's limits);
- ``k = 10``; when the answer shows the held-out item the user "clicks" it: ``POST /v1/events`` with the
  answer's ``recommendation_id`` (after every answer's impression is kept).

Then the per-arm impressions and hits at rank ≤ 10 are read from the Prometheus endpoint of the local
Ray instance (its metrics export port, ``ray_distilrec_arm_impressions_total`` and
``ray_distilrec_arm_hits_total``), and each arm's online hit rate, with a Wilson 95 % interval, is set
beside the offline HR@10 of its model: from the pipeline's ``report.json`` (all test users) and
recomputed with ``distilrec.evaluate.model_ranks`` on the arm's own users. The client's own count of
shown held-out items is reported too (it must equal the Prometheus hits).

Why the online and offline figures can differ: offline, every item but the history's is ranked with the
history's timestamps; online, the request's history has no timestamps (the request's time stands in),
retrieval keeps ``candidates`` items before the ranking, and a history over 2,000 items is cut.
"""

from __future__ import annotations

import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

K = 10
ARMS = ("student", "teacher")
MAX_HISTORY = 1000  # the API's limits on a request's history and exclude lists
HIT_RANKS = ("1", "2", "3", "5", "10")  # the rank buckets of hits at rank <= 10


def wilson(hits: int, n: int, z: float = 1.96) -> tuple[float | None, float | None]:
    """The Wilson score interval of a binomial share (95 % by default); ``(None, None)`` when ``n`` is 0.

    >>> [round(x, 4) for x in wilson(6, 100)]
    [0.0278, 0.1248]
    """
    if n <= 0:
        return None, None
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def prometheus_sum(text: str, name: str, **tags: str | tuple[str, ...]) -> float:
    """The sum of the samples of ``name`` in a Prometheus text exposition whose labels match ``tags`` (a
    value or a tuple of accepted values).

    >>> prometheus_sum('a{arm="x",rank="1"} 2.0\\na{arm="x",rank="20"} 5.0\\na{arm="y",rank="1"} 1.0',
    ...                "a", arm="x", rank=("1", "2"))
    2.0
    """
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        labels = dict(part.split("=", 1) for part in line[len(name) + 1:line.rindex("}")].split(",") if "=" in part)
        labels = {k: v.strip('"') for k, v in labels.items()}
        if all(labels.get(k) in ((v,) if isinstance(v, str) else v) for k, v in tags.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def arm_config() -> dict[str, Any]:
    """The Ingress ``user_config`` keys of the two arms."""
    return {"experiment": "bench-arms", "arms": [{"name": "student", "scorer_model": "student", "weight": 1},
                                                 {"name": "teacher", "scorer_model": "teacher", "weight": 1}]}


def requests_of(split, item_ids: list[str]) -> list[dict[str, Any]]:
    """One ``POST /v1/recommend`` body per test user, with the held-out item's id as ``target``."""
    out = []
    for u, (hist, target) in enumerate(zip(split.histories("test"), split.targets("test"))):
        ids = [item_ids[i] for i in np.asarray(hist).tolist()]
        body = {"user_id": f"sim-{u}", "history": ids[-MAX_HISTORY:], "k": K}
        if len(ids) > MAX_HISTORY:
            body["exclude"] = ids[-2 * MAX_HISTORY:-MAX_HISTORY]
        out.append({"user": u, "body": body, "target": item_ids[int(target)], "cut": len(ids) > 2 * MAX_HISTORY})
    return out


def offline_hits(art, split) -> dict[str, np.ndarray]:
    """Per test user, whether each arm's model ranks the held-out item in its top ``K`` offline
    (``distilrec.evaluate.model_ranks``: the whole catalogue but the history, with the history's times)."""
    from distilrec.evaluate import model_ranks

    return {name: model_ranks(getattr(art, name), split, "test") < K for name in ARMS}


def _metrics(port: int) -> str:
    import httpx

    return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text


def run_arms_bench(model: str, output: str, dataset: str | None = None, concurrency: int = 8,
                   command: str = "", metrics_wait_s: float = 90.0) -> dict[str, Any]:
    """Serve ``model`` with the two arms, replay the test users, compare online and offline (module
    docstring). Writes ``OUTPUT/arms.json`` and ``OUTPUT/arms.md``; returns the result. ``dataset``: the
    dataset SPEC the artifact was trained on (default: the as a SPEC, e.g. ``movielens:ml-latest-small``). Raises ``ValueError`` when the dataset's
    items are not the artifact's."""
    import httpx

    from distilrec.artifacts import load_artifact
    from distilrec.bench.report import write_tables
    from distilrec.bench.serve import app_config, deploy_beside_others, delete_app, machine_info
    from distilrec.ports import free_port
    from services.run import local_serve_env
    from training.pipeline import ensure_ray, load_split

    t_start = time.monotonic()
    out = Path(output).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    art = load_artifact(model, with_teacher=True)
    spec = dataset or _dataset_spec(art.manifest)
    ds, split = load_split(spec)
    item_ids = list(art.items.item_ids)
    if [str(i) for i in ds.item_ids] != item_ids:
        raise ValueError(f"the dataset {spec} does not have the artifact's items in the artifact's order")
    report = _report(model)
    offline = offline_hits(art, split)
    jobs = requests_of(split, item_ids)

    port = free_port()
    ensure_ray(1, metrics_export_port=port, env=local_serve_env())
    for f in out.glob("events.db*"):
        f.unlink()
    app = app_config("distilrec", model, f"sqlite://{out / 'events.db'}")
    app = {**app, "name": "bench-arms", "route_prefix": "/bench-arms"}
    for dep in app["deployments"]:
        if dep["name"] == "Ingress":
            dep["user_config"] = {**dep.get("user_config", {}), **arm_config()}
    proxy = {"host": "127.0.0.1", "port": free_port()}
    base = f"http://127.0.0.1:{proxy['port']}/bench-arms"
    print(f"[bench arms] serving {art.version} with arms student / teacher (50/50) at {base}", flush=True)
    deploy_beside_others(app, proxy)
    try:
        with httpx.Client(base_url=base, timeout=60) as client:
            experiment = client.get("/v1/model").json()["experiment"]

            def ask(job: dict[str, Any]) -> dict[str, Any]:
                r = client.post("/v1/recommend", json=job["body"])
                r.raise_for_status()
                body = r.json()
                shown = [it["item_id"] for it in body["items"]]
                return {**job, "arm": body["arm"], "rid": body["recommendation_id"], "degraded": body["degraded"],
                        "shown": shown, "rank": shown.index(job["target"]) + 1 if job["target"] in shown else None}

            t0 = time.monotonic()
            with ThreadPoolExecutor(concurrency) as pool:
                answers = list(pool.map(ask, jobs))
            replay_s = time.monotonic() - t0
            time.sleep(1.0)  # every impression is kept within IMPRESSION_FLUSH_S of its answer
            clicks = [a for a in answers if a["rank"] is not None]

            def click(a: dict[str, Any]) -> dict[str, Any]:
                r = client.post("/v1/events", json={"events": [
                    {"user_id": a["body"]["user_id"], "item_id": a["target"], "recommendation_id": a["rid"]}]})
                r.raise_for_status()
                return r.json()["feedback"]

            with ThreadPoolExecutor(concurrency) as pool:
                feedback = list(pool.map(click, clicks))
        counted = {name: sum(a["arm"] == name for a in answers) for name in ARMS}
        online = _wait_metrics(port, counted, {name: sum(a["arm"] == name for a in clicks) for name in ARMS},
                               metrics_wait_s)
    finally:
        delete_app("bench-arms")
    arms: dict[str, Any] = {}
    for name in ARMS:
        mine = [a for a in answers if a["arm"] == name]
        users = np.array([a["user"] for a in mine], dtype=np.int64)
        n, hits = online[name]["impressions"], online[name]["hits"]
        low, high = wilson(int(hits), int(n))
        off_same = float(offline[name][users].mean()) if len(users) else None
        full = (report.get("models", {}).get(name) or {}).get(f"hr@{K}")
        arms[name] = {
            "users": len(mine), "impressions": int(n), "hits_at_10": int(hits),
            "online_hit_rate": hits / n if n else None, "ci95": [low, high],
            "client_hits": sum(a["rank"] is not None for a in mine),
            "degraded_answers": sum(a["degraded"] for a in mine),
            "mean_hit_rank": _mean([a["rank"] for a in mine if a["rank"] is not None]),
            "offline_hr10_same_users": off_same, "offline_hr10_same_users_hits": int(offline[name][users].sum()),
            "offline_hr10_report": full,
            "same_users_agree": None if off_same is None or low is None else bool(low <= off_same <= high),
            "report_agrees": None if full is None or low is None else bool(low <= full <= high),
            "both_hit": int(sum(1 for a in mine if a["rank"] is not None and offline[name][a["user"]])),
        }
    result = {
        "benchmark": "arms", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "command": command,
        "machine": machine_info(), "model": {"uri": art.uri, "version": art.version}, "dataset": spec,
        "k": K, "experiment": experiment, "users": len(jobs), "cut_histories": sum(j["cut"] for j in jobs),
        "feedback": {key: sum(f[key] for f in feedback) for key in (feedback[0] if feedback else {})},
        "replay_s": round(replay_s, 1), "wall_s": round(time.monotonic() - t_start, 1), "arms": arms,
    }
    write_tables(str(out), "arms", render_arms_markdown(result), result)
    for f in out.glob("events.db*"):
        f.unlink()
    return result


def arms_command(args, command: str) -> int:
    """``distilrec bench arms`` (the CLI's parsed ``args``): run, print the table, 0; 2 with the reason on
    a model or dataset that cannot be read."""
    import sys

    if args.concurrency < 1:
        print(f"distilrec bench arms: --concurrency {args.concurrency}: at least 1", file=sys.stderr)
        return 2
    try:
        result = run_arms_bench(args.model, args.output, args.dataset, args.concurrency, command)
    except (ValueError, FileNotFoundError) as e:
        print(f"distilrec bench arms: {e}", file=sys.stderr)
        return 2
    print(render_arms_markdown(result))
    return 0


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _dataset_spec(manifest: dict[str, Any]) -> str:
    """The manifest's dataset name when it is a SPEC of its own (``movielens:ml-latest-small``)."""
    name = (manifest.get("dataset") or {}).get("name", "")
    if not name or name.startswith("synthetic") and "=" not in name:
        raise ValueError(f"the artifact's dataset is {name!r}: pass --dataset with its SPEC")
    return name


def _report(model: str) -> dict[str, Any]:
    import fsspec

    try:
        with fsspec.open(f"{model.rstrip('/')}/report.json") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _wait_metrics(port: int, answers: dict[str, int], clicks: dict[str, int], timeout_s: float) -> dict[str, Any]:
    """Per arm, the impressions and hits at rank <= 10 on the Prometheus endpoint, once they reach the
    client's counts (Ray exports every few seconds) or after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        text = _metrics(port)
        got = {name: {"impressions": prometheus_sum(text, "ray_distilrec_arm_impressions_total", arm=name),
                      "hits": prometheus_sum(text, "ray_distilrec_arm_hits_total", arm=name, rank=HIT_RANKS)}
               for name in ARMS}
        if all(got[n]["impressions"] >= answers[n] and got[n]["hits"] >= clicks[n] for n in ARMS) \
                or time.monotonic() > deadline:
            return got
        time.sleep(2.0)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.2%}"


def render_arms_markdown(result: dict[str, Any]) -> str:
    """The Markdown table of a :func:`run_arms_bench` result."""
    m = result["machine"]
    lines = [f"# A/B arms: online hit rate against offline HR@{result['k']} ({result['dataset']})", "",
             f"`{result['command']}`" if result["command"] else "", "",
             f"{result['date']}; {m.get('cpu_model', '?')}, nproc {m.get('nproc')}; model {result['model']['version']}; "
             f"{result['users']} test users replayed in {result['replay_s']} s, one request each (k = "
             f"{result['k']}), a click on the held-out item when shown; {result['cut_histories']} histories over "
             f"2,000 items cut. Online figures from Prometheus; 95 % Wilson intervals.", "",
             "| arm | users | impressions | hits @10 | online hit rate [95 %] | offline HR@10, same users | "
             "offline HR@10, all users (report) | hits both online and offline |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, a in result["arms"].items():
        low, high = a["ci95"]
        lines.append(f"| {name} | {a['users']} | {a['impressions']} | {a['hits_at_10']} | {_pct(a['online_hit_rate'])} "
                     f"[{_pct(low)}, {_pct(high)}] | {_pct(a['offline_hr10_same_users'])} "
                     f"({a['offline_hr10_same_users_hits']}) | {_pct(a['offline_hr10_report'])} | {a['both_hit']} |")
    lines.append("")
    return "\n".join(lines)
