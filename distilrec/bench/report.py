"""Markdown tables, target verdicts and PNG plots of the benchmarks (no Ray, no cluster).

    render_serve_markdown(json.load(open("bench-out/serve.json")))
    plot_serve_latency(result, "bench-out/serve_latency.png")
    render_train_markdown(json.load(open("bench-out/train.json")))
    render_quality_markdown(json.load(open("out/report.json")))

A target verdict is ``met`` / ``missed`` / ``not measured`` (a figure the run could not produce, e.g. a
throughput of zero in the denominator), never silently dropped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distilrec.evaluate import comparison_lines, time_line

# The serving benchmark's targets.
FLOOR_SHARE = 0.5          # distilrec's throughput at SLO ≥ 50 % of the no-op floor's
HOP_FLOOR_SHARE = 0.7      # scorer: deployment's throughput at SLO ≥ 70 % of the one-handle-call floor's
BATCHING_GAIN = 1.5        # batching on ≥ 1.5 × off at saturation, in both modes
HALF_LOAD_P99_MS = 25.0    # p99 ≤ 25 ms at half of distilrec's throughput at SLO


def write_tables(output: str, stem: str, table: str, result: dict[str, Any] | None = None) -> None:
    """``OUTPUT/STEM.md`` holding ``table``, and ``OUTPUT/STEM.json`` holding ``result`` when given, in a
    local folder or under an fsspec URI (made if missing)."""
    import json

    import fsspec

    fs, root = fsspec.core.url_to_fs(output)
    fs.makedirs(root, exist_ok=True)
    base = output.rstrip("/")
    if result is not None:
        with fsspec.open(f"{base}/{stem}.json", "w") as f:
            json.dump(result, f, indent=2)
    with fsspec.open(f"{base}/{stem}.md", "w") as f:
        f.write(table)


def _fmt(x: float | None, nd: int = 1) -> str:
    return "-" if x is None else f"{x:,.{nd}f}"


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b <= 0 else a / b


def _step_at(steps: list[dict[str, Any]], rate: float) -> dict[str, Any] | None:
    return next((s for s in steps if s.get("rate") is not None and abs(s["rate"] - rate) < 1e-6), None)


def _verdict(value: float | None, threshold: float, higher_is_better: bool = True) -> str:
    if value is None:
        return "not measured"
    ok = value >= threshold if higher_is_better else value <= threshold
    return "met" if ok else "missed"


def serve_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The serving targets from a ``bench serve`` result: each ``{"target", "value", "threshold",
    "measured", "verdict"}``; ``value`` is the ratio (or ms) compared with ``threshold``. Targets whose
    applications were not run are left out; the teacher's ratio is a figure without a threshold."""
    apps = result["apps"]

    def slo(name: str) -> float | None:
        return apps[name]["throughput_at_slo"] if name in apps else None

    def closed(name: str) -> float | None:
        steps = apps.get(name, {}).get("closed") or []
        return steps[0]["goodput_rps"] if steps else None

    def share(target: str, a: str, b: str, threshold: float | None) -> dict[str, Any]:
        x, y = slo(a), slo(b)
        r = _ratio(x, y)
        return {"target": target, "threshold": threshold, "value": r,
                "measured": f"{_fmt(x)} / {_fmt(y)} req/s = {_fmt(r, 2)} ×",
                "verdict": "figure" if threshold is None else _verdict(r, threshold)}

    out = []
    if "floor" in apps:
        out.append(share("distilrec throughput at SLO ≥ 0.5 × the no-op floor's", "distilrec", "floor", FLOOR_SHARE))
    if "scorer_deployment" in apps and "hop_floor" in apps:
        out.append(share("scorer: deployment throughput at SLO ≥ 0.7 × the one-handle-call floor's",
                         "scorer_deployment", "hop_floor", HOP_FLOOR_SHARE))
    conc = result["config"]["concurrency"]
    for on, off, mode in (("distilrec", "no_batching", "inline"),
                          ("scorer_deployment", "scorer_deployment_no_batching", "scorer: deployment")):
        if on not in apps or off not in apps:
            continue
        c_on, c_off = closed(on), closed(off)
        r = _ratio(c_on, c_off)
        out.append({"target": f"batching on ≥ 1.5 × off at saturation ({mode}; {conc} in flight, closed loop)",
                    "threshold": BATCHING_GAIN, "value": r,
                    "measured": f"{_fmt(c_on)} / {_fmt(c_off)} req/s = {_fmt(r, 2)} × (at the SLO: {_fmt(slo(on))} / "
                                f"{_fmt(slo(off))} req/s = {_fmt(_ratio(slo(on), slo(off)), 2)} ×)",
                    "verdict": _verdict(r, BATCHING_GAIN)})
    d = slo("distilrec")
    half = round(0.5 * d, 1) if d else None
    step = _step_at(apps["distilrec"]["fixed"], half) if half else None
    p99 = step["p99_ms"] if step else None
    measured = "-" if step is None else (f"p99 {_fmt(step['p99_ms'])} ms at {half:g} req/s" +
                                         (f", {step['n_errors']} errors" if step["n_errors"] else ""))
    verdict = _verdict(p99, HALF_LOAD_P99_MS, higher_is_better=False)
    if step and step["n_errors"]:  # the answers that came are no proof when others failed
        verdict = "missed"
    out.append({"target": "p99 ≤ 25 ms at half of distilrec's throughput at SLO", "threshold": HALF_LOAD_P99_MS,
                "value": p99, "measured": measured, "verdict": verdict})
    if "teacher" in apps:
        out.append(share("student in the ingress over the teacher in the ingress (throughput at SLO)",
                         "distilrec", "teacher", None))
    return out


def _errors(steps: list[dict[str, Any]]) -> str:
    total: dict[str, int] = {}
    for s in steps:
        for k, v in s["errors"].items():
            total[k] = total.get(k, 0) + v
    return ", ".join(f"{k} {v}" for k, v in sorted(total.items())) or "0"


def _pressure(m: dict[str, Any]) -> str:
    """", CPU pressure 66 % → 12 %" (Linux PSI ``some avg60`` at the start and the end), or ""."""
    a, b = m.get("cpu_pressure"), m.get("cpu_pressure_end")
    if a is None:
        return ""
    return f", CPU pressure (share of time a task waited for a CPU) {a:.0f} %" + ("" if b is None else f" → {b:.0f} %")


def render_serve_markdown(result: dict[str, Any]) -> str:
    """The ``serve.md`` of a ``bench serve`` result: one row per application, the fixed-rate table, the
    targets with met / missed, and the client's own load."""
    m = result["machine"]
    lines = [f"Serving benchmark, {result['date']}: model {result['model']['version']} "
             f"({result['model']['users']:,} users, {result['model']['items']:,} items), answer body "
             f"{result.get('body_bytes', 0):,} bytes; {m.get('nproc')} CPUs ({m.get('cpu_model', '?')}), "
             f"load average {', '.join(f'{x:.1f}' for x in (m.get('loadavg') or []))} at the start"
             f"{_pressure(m)}; "
             f"SLO p99 ≤ {result['slo_ms']:g} ms and no errors; {result['config']['duration_s']:g} s per step.",
             ""]
    if result.get("command"):
        lines += [f"Command: `{result['command']}`", ""]
    if result.get("ray_serve_env") is not None:
        env = result["ray_serve_env"]
        lines += ["Ray Serve request path (environment of the local Ray instance): "
                  + (", ".join(f"`{k}={v}`" for k, v in sorted(env.items())) or "Ray's defaults") + ".", ""]
    conc = result["config"]["concurrency"]
    lines += [f"| application | throughput at SLO (req/s) | closed loop, {conc} in flight: req/s | p50 / p99 ms | "
              "errors (all steps) | client CPU (max, cores) |", "| --- | --- | --- | --- | --- | --- |"]
    for name in result["order"]:
        a = result["apps"].get(name)
        if a is None:
            continue
        steps = a["search"]["steps"] + a["fixed"] + a["closed"]
        c = a["closed"][0] if a["closed"] else None
        cpu = max((s["client_cpu"] for s in steps), default=0.0)
        lines.append(f"| {a['title']} | {a['throughput_at_slo']:g} | {_fmt(c['goodput_rps']) if c else '-'} | "
                     f"{_fmt(c['p50_ms']) if c else '-'} / {_fmt(c['p99_ms']) if c else '-'} | {_errors(steps)} | "
                     f"{cpu:.2f} |")
    mem = [(result["apps"][n]["title"], result["apps"][n].get("memory")) for n in result["order"]
           if n in result["apps"] and result["apps"][n].get("memory") and n not in ("floor", "hop_floor")]
    if mem:
        lines += ["", "Replicas' resident memory after warm-up (MiB; PSS splits shared pages, so it adds up):", "",
                  "| application | replicas: RSS / PSS | sum RSS / PSS |", "| --- | --- | --- |"]
        for title, m in mem:
            each = ", ".join(f"{r['deployment']} {r['rss_mib']:,.0f} / {r['pss_mib'] or 0:,.0f}" for r in m["replicas"])
            lines.append(f"| {title} | {each or '-'} | {m['rss_mib']:,.0f} / {m['pss_mib']:,.0f} |")
    fixed = result.get("fixed_rates") or []
    if fixed:
        lines += ["", "p50 / p99 latency in ms at fixed offered rates (open loop, Poisson arrivals; "
                      "errors in brackets):", "",
                  "| application | " + " | ".join(f"{r:g} req/s" for r in fixed) + " |",
                  "| --- |" + " --- |" * len(fixed)]
        for name in result["order"]:
            a = result["apps"].get(name)
            if a is None:
                continue
            cells = []
            for r in fixed:
                s = _step_at(a["fixed"], r)
                if s is None:
                    cells.append("skipped")
                else:
                    cells.append(f"{_fmt(s['p50_ms'])} / {_fmt(s['p99_ms'])}" +
                                 (f" ({s['n_errors']})" if s["n_errors"] else ""))
            lines.append(f"| {a['title']} | " + " | ".join(cells) + " |")
    lines += ["", "| target | measured | verdict |", "| --- | --- | --- |"]
    for t in result.get("targets") or serve_targets(result):
        lines.append(f"| {t['target']} | {t['measured']} | {t['verdict']} |")
    limited = [(name, s) for name in result["order"] if name in result["apps"]
               for s in (result["apps"][name]["search"]["steps"] + result["apps"][name]["fixed"]
                         + result["apps"][name]["closed"]) if s.get("client_limited")]
    lines.append("")
    if limited:
        def why(s: dict[str, Any]) -> str:
            busy = "busy" if s["client_cpu"] > 0.8 else "starved"
            return f"{busy}; CPU {s['client_cpu']:.2f}, {s['send_lag_p99_ms']:.0f} ms late"

        lines.append("Steps where the client was busy (over 0.8 of a core) or starved (its own CPU nearly idle, yet "
                     "sending over 5 ms late at p99: the machine gave it no CPU in time), so that their latency "
                     "includes the client's own delay: " + "; ".join(
                         f"{n} at {'%g req/s' % s['rate'] if s['rate'] else '%d in flight' % s['concurrency']} "
                         f"({why(s)})" for n, s in limited[:12]) + ("; …" if len(limited) > 12 else "") + ".")
    else:
        lines.append("The client never used more than 0.8 of a core nor sent more than 5 ms late at p99.")
    return "\n".join(lines) + "\n"


def plot_serve_latency(result: dict[str, Any], path: str | Path) -> str:
    """p99 (solid) and p50 (dashed) latency against the offered rate, one colour per application: the
    lines join the SLO search's steps (the last try at each rate), squares are the fixed-rate steps,
    triangles the closed-loop run placed at the rate it achieved (its saturation point), × marks a step
    with errors; filled markers p99, hollow p50; the SLO as a dotted line."""
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    from distilrec.plots import _save, plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for i, name in enumerate(result["order"]):
        a = result["apps"].get(name)
        if a is None:
            continue
        color = f"C{i}"
        by_rate = {s["rate"]: s for s in a["search"]["steps"] if s["rate"] and s["p99_ms"] is not None}
        steps = [by_rate[r] for r in sorted(by_rate)]
        if steps:
            rates = [s["rate"] for s in steps]
            ax.plot(rates, [s["p99_ms"] for s in steps], "-o", ms=3, color=color, label=f"{a['title']} p99")
            ax.plot(rates, [s["p50_ms"] for s in steps], "--", color=color, alpha=0.7, label=f"{a['title']} p50")
        fixed = [s for s in a["fixed"] if s["rate"] and s["p99_ms"] is not None]
        ax.scatter([s["rate"] for s in fixed], [s["p99_ms"] for s in fixed], marker="s", s=25, color=color)
        ax.scatter([s["rate"] for s in fixed], [s["p50_ms"] for s in fixed], marker="s", s=25, color=color,
                   facecolors="none")
        closed = [s for s in a["closed"] if s["p99_ms"] is not None and s["goodput_rps"] > 0]
        ax.scatter([s["goodput_rps"] for s in closed], [s["p99_ms"] for s in closed], marker="^", s=45, color=color)
        ax.scatter([s["goodput_rps"] for s in closed], [s["p50_ms"] for s in closed], marker="^", s=45, color=color,
                   facecolors="none")
        bad = [s for s in steps + fixed if s["n_errors"]]
        ax.scatter([s["rate"] for s in bad], [s["p99_ms"] for s in bad], marker="x", s=60, color="black")
    ax.axhline(result["slo_ms"], color="grey", linestyle=":", linewidth=1)
    ax.annotate(f"SLO p99 {result['slo_ms']:g} ms", (0.01, result["slo_ms"]), xycoords=("axes fraction", "data"),
                textcoords="offset points", xytext=(0, 3), color="grey")
    ax.set_xscale("log")
    ax.set_yscale("log")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(ScalarFormatter())
        axis.set_minor_formatter(NullFormatter())
    ax.set(title="latency vs load (lines: SLO search; squares: fixed rates; triangles: closed loop at its\n"
                 "achieved rate; filled p99, hollow p50; ×: errors)",
           xlabel="offered rate, or achieved rate for the closed loop (req/s)", ylabel="latency (ms)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.15))
    fig.tight_layout()
    return _save(fig, path)


def render_train_markdown(result: dict[str, Any]) -> str:
    """The ``train.md`` of a ``bench train`` result: samples/s per worker count, and the speed-up."""
    m = result["machine"]
    lines = [f"Teacher training throughput, {result['date']}: dataset {result['dataset']['name']} "
             f"({result['dataset']['train_users']:,} training users), {result['device']}, "
             f"{m.get('nproc')} CPUs ({m.get('cpu_model', '?')}){_pressure(m)}; a sample is one user's "
             f"history; median over epochs "
             f"{result['measured_epochs']} of {result['epochs']} (the first is warm-up), validation excluded.", ""]
    if result.get("command"):
        lines += [f"Command: `{result['command']}`", ""]
    lines += ["| Ray Train workers | samples/s (all workers) | samples/s per worker | epoch s | threads per worker |",
              "| --- | --- | --- | --- | --- |"]
    for r in result["runs"]:
        lines.append(f"| {r['workers']} | {r['samples_per_s']:,.0f} | {r['samples_per_s_per_worker']:,.0f} | "
                     f"{r['epoch_s']:.2f} | {r['threads_per_worker']} |")
    if len(result["runs"]) >= 2:
        a, b = result["runs"][0], result["runs"][-1]
        lines += ["", f"{b['workers']} workers against {a['workers']}: "
                      f"{b['samples_per_s'] / max(a['samples_per_s'], 1e-9):.2f} × the samples/s."]
    if result.get("gpu_note"):
        lines += ["", result["gpu_note"]]
    return "\n".join(lines) + "\n"


QUALITY_NAMES = {"popularity": "popularity", "ease": "EASE", "teacher": "teacher",
                 "student": "student (distilled)", "student_no_distill": "student without the teacher"}


def render_quality_markdown(report: dict[str, Any]) -> str:
    """Quality against cost from a pipeline ``report.json``: NDCG@10, HR@10, params, MACs per candidate,
    scoring ms for 1,000 candidates (p50 / p99), each model's NDCG@10 as a share of the teacher's, the
    report's paired comparisons with their intervals (:func:`distilrec.evaluate.comparison_lines`), and
    the run's time (:func:`distilrec.evaluate.time_line`) when the report has it."""
    ds = report["dataset"]
    models = report["models"]
    teacher = models.get("teacher", {}).get("ndcg@10")
    lines = [f"Dataset {ds['name']}: {ds['users']:,} users, {ds['items']:,} items, "
             f"{ds['interactions']:,} interactions.", "",
             "| model | NDCG@10 | HR@10 | × teacher NDCG | params | MACs / candidate | ms / 1000 p50 | p99 |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]

    def num(v: Any, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    for key, m in models.items():
        lines.append(f"| {QUALITY_NAMES.get(key, key)} | {m['ndcg@10']:.4f} | {m['hr@10']:.4f} | "
                     f"{num(_ratio(m['ndcg@10'], teacher), '.2f')} | {num(m.get('params'), ',')} | "
                     f"{num(m.get('macs_per_candidate'), ',.0f')} | {num(m.get('score_ms_p50_1000'), '.3f')} | "
                     f"{num(m.get('score_ms_p99_1000'), '.3f')} |")
    paired = comparison_lines(report)
    if paired:
        lines += ["", "Paired comparisons on the same test users (a resample draws users, both models alike):", "",
                  *(f"- {line}" for line in paired)]
    if report.get("run"):
        lines += ["", f"The pipeline's {time_line(report['run'])}."]
    return "\n".join(lines) + "\n"
