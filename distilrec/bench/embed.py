"""``distilrec bench embed``: item text embeddings in one process against Ray Data batch inference, items/s
per CPU core side by side on the same synthetic titles.

    distilrec bench embed --output bench-out --items 20000 --encoder minilm --concurrency 2
    # → bench-out/embed.json, embed.md

The texts are the synthetic generator's item texts (``"{title}. genres: {topic}"``, the catalogue of
``synthetic:items=N``). Each repeat embeds them once in this process (:func:`training.embeddings.embed_in_process`:
torch's intra-op threads, one per core) and once per ``--concurrency`` value as Ray Data batch inference
(:func:`training.embeddings.embed_texts_ray`: that many actors of one CPU each, or one GPU each where the
cluster has GPUs), without the cache, in turns, so that a busier stretch of a shared machine falls on both
paths; the table gives each path's median over the repeats. A Ray path's seconds include Ray Data's start-up
and each actor's model loading (its ``first batch`` column: the time until the first batch came back; the
next column is the rate per core of the items after it).
Its embeddings are checked against the in-process ones (largest absolute difference). Without
``RAY_ADDRESS`` a local Ray instance with one logical CPU per core is started (and stopped).
"""

from __future__ import annotations

import os
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from distilrec.bench.report import _pressure, write_tables


def synthetic_texts(items: int, seed: int = 0) -> list[str]:
    """The item texts of the synthetic generator's catalogue of ``items`` items, as the dataset reader
    builds them from its Parquet form's title and genres (:func:`distilrec.data.tables.item_texts`)."""
    import pandas as pd

    from distilrec.data.synthetic import _catalogue
    from distilrec.data.tables import item_texts

    cat = _catalogue(items, np.random.default_rng(seed))
    texts = item_texts(pd.Series(np.arange(items).astype(str)), pd.Series(cat["title"]),
                       {"genres": pd.Series(cat["genres"])})
    return [text for _, text in texts.values()]


def resolve_bench_encoder(encoder: str, texts: list[str], workdir: Path) -> str:
    """``tiny``: a tiny random-weight BERT built over ``texts`` in ``workdir`` (32 wide, as the pipeline's);
    ``minilm``: all-MiniLM-L6-v2 (offline package or hub id); anything else: a folder or a hub id."""
    from distilrec.text import build_tiny_encoder, resolve_encoder

    if encoder == "tiny":
        return build_tiny_encoder(workdir / "encoder", texts)
    return resolve_encoder(encoder)


def run_embed_bench(items: int, encoder: str, output: str, concurrency: tuple[int, ...] = (2,),
                    batch_size: int = 256, repeats: int = 1, seed: int = 0, command: str = "") -> dict[str, Any]:
    """Run the benchmark, write ``embed.json`` and ``embed.md`` into ``output``; return the result."""
    import ray

    from distilrec.bench.serve import cpu_pressure, machine_info
    from distilrec.text import encoder_dim
    from training.embeddings import embed_in_process, embed_texts_ray

    texts = synthetic_texts(items, seed)
    work = Path(output) / "work"
    enc = resolve_bench_encoder(encoder, texts, work)
    encoder_dim(enc)  # an encoder that cannot be loaded is refused before Ray starts
    info = machine_info()
    own = not ray.is_initialized() and not os.environ.get("RAY_ADDRESS")
    if own:
        ray.init(num_cpus=os.cpu_count())
    elif not ray.is_initialized():
        ray.init()
    info["ray_cluster"] = {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")}
    runs: list[dict[str, Any]] = []
    try:
        for r in range(repeats):
            pressure = cpu_pressure()
            ref, fig = embed_in_process(texts, enc, cache_dir=None, progress=False)
            runs.append({"repeat": r, "concurrency": None, **fig.as_dict(), "cpu_pressure": [pressure, cpu_pressure()]})
            for c in concurrency:
                pressure = cpu_pressure()
                emb, fig = embed_texts_ray(texts, enc, cache_dir=None, batch_size=batch_size, concurrency=c)
                runs.append({"repeat": r, "concurrency": c, **fig.as_dict(), "cpu_pressure": [pressure, cpu_pressure()],
                             "max_abs_diff": float(np.abs(emb - ref).max()) if len(texts) else 0.0})
    finally:
        if own:
            ray.shutdown()
    info["cpu_pressure_end"] = cpu_pressure()
    result = {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "machine": info, "command": command,
              "items": items, "encoder": {"name": encoder, "path": enc, "dim": encoder_dim(enc)},
              "batch_size": batch_size, "repeats": repeats, "runs": runs, "summary": summarise(runs)}
    write_tables(output, "embed", render_embed_markdown(result), result)
    return result


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per path (in process, then each concurrency): the medians of its repeats."""
    rows = []
    for c in dict.fromkeys(r["concurrency"] for r in runs):
        mine = [r for r in runs if r["concurrency"] == c]

        def med(key: str, mine: list[dict[str, Any]] = mine) -> float | None:
            vals = [r[key] for r in mine if r.get(key) is not None]
            return round(statistics.median(vals), 2) if vals else None

        rows.append({"path": mine[0]["path"], "concurrency": c, "repeats": len(mine), "actors": mine[0]["actors"],
                     "cpus": mine[0]["cpus"], "gpus": mine[0]["gpus"], "seconds": med("seconds"),
                     "first_batch_s": med("first_batch_s"), "items_per_s": med("items_per_s"),
                     "items_per_s_per_cpu": med("items_per_s_per_cpu"), "items_per_s_per_gpu": med("items_per_s_per_gpu"),
                     "after_first_items_per_s_per_cpu": med("after_first_items_per_s_per_cpu"),
                     "max_abs_diff": max((r["max_abs_diff"] for r in mine if "max_abs_diff" in r), default=None)})
    return rows


def render_embed_markdown(result: dict[str, Any]) -> str:
    """``embed.md``: one row per path, with the command, the machine and the date."""
    m = result["machine"]
    lines = [(f"Item text embeddings, {result['date']}: {m.get('nproc')} CPUs ({m.get('cpu_model', '?')}){_pressure(m)}; "
              f"{result['items']:,} synthetic item texts, encoder {result['encoder']['name']} "
              f"({result['encoder']['dim']} wide), Ray Data batches of {result['batch_size']}, "
              f"median of {result['repeats']} repeat(s), the paths in turns."), "",
             f"`{result['command']}`", "",
             ("| path | actors | CPUs | GPUs | seconds | first batch s | items/s | items/s per CPU core "
              "| after the first batch, per core | items/s per GPU | max abs diff |"),
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]

    def f(x: float | None, nd: int = 1) -> str:
        return "-" if x is None else f"{x:,.{nd}f}"

    for row in result["summary"]:
        name = "in process (torch threads)" if row["path"] == "in_process" else f"Ray Data, concurrency {row['concurrency']}"
        diff = "-" if row["max_abs_diff"] is None else f"{row['max_abs_diff']:.1e}"
        lines.append(f"| {name} | {row['actors'] or '-'} | {row['cpus']:g} | {row['gpus']} | {f(row['seconds'])} | "
                     f"{f(row['first_batch_s'])} | {f(row['items_per_s'])} | {f(row['items_per_s_per_cpu'])} | "
                     f"{f(row['after_first_items_per_s_per_cpu'])} | "
                     f"{f(row['items_per_s_per_gpu'])} | {diff} |")
    return "\n".join(lines) + "\n"


def embed_command(args, command: str) -> int:
    """``distilrec bench embed``'s arguments checked, the benchmark run, its table printed; 2 for bad
    arguments or an encoder that cannot be loaded."""
    import sys

    from distilrec.text import EncoderLoadError

    try:
        conc = tuple(int(c) for c in str(args.concurrency).split(","))
    except ValueError:
        conc = ()
    if not conc or min(conc) < 1:
        print(f"distilrec bench embed: --concurrency {args.concurrency!r}: comma-separated positive integers",
              file=sys.stderr)
        return 2
    for name, value in (("--items", args.items), ("--batch-size", args.batch_size), ("--repeats", args.repeats)):
        if value < 1:
            print(f"distilrec bench embed: {name} {value}: must be at least 1", file=sys.stderr)
            return 2
    t0 = time.perf_counter()
    try:
        result = run_embed_bench(args.items, args.encoder, args.output, conc, args.batch_size, args.repeats,
                                 command=command)
    except EncoderLoadError as e:
        print(f"distilrec bench embed: --encoder {args.encoder!r}: {e}", file=sys.stderr)
        return 2
    print(render_embed_markdown(result))
    print(f"{time.perf_counter() - t0:.0f} s; {args.output}/embed.json, {args.output}/embed.md")
    return 0
