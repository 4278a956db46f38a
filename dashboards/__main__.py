"""Render the dashboards to JSON.

    python -m dashboards            # writes helm/distilrec/dashboards/<name>.json
    python -m dashboards --check    # exits 1 when a committed file differs from the code
"""

from __future__ import annotations

import argparse
import sys

from dashboards import DASHBOARDS, OUT_DIR, render_json


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dashboards", description=__doc__.splitlines()[1])
    ap.add_argument("--check", action="store_true", help="compare with the committed files, write nothing")
    ap.add_argument("--out", default=str(OUT_DIR), help="output folder (default: the chart's dashboards/)")
    args = ap.parse_args(argv)
    from pathlib import Path

    out = Path(args.out)
    stale = []
    for name, dash in DASHBOARDS.items():
        path, text = out / f"{name}.json", render_json(dash)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
            continue
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path}")
    if stale:
        print("stale (run `make dashboards`): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
