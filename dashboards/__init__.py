"""Grafana dashboards as code: typed pieces (:mod:`dashboards.core`) and the dashboards built from them.

``python -m dashboards`` (or ``make dashboards``) writes each dashboard to
``helm/distilrec/dashboards/<name>.json``, which the chart ships as ConfigMaps for Grafana's sidecar;
``python -m dashboards --check`` fails when a committed file differs from what the code renders.
"""

from __future__ import annotations

import json
from pathlib import Path

from dashboards.core import Dashboard
from dashboards.overview import OVERVIEW
from dashboards.training import TRAINING

DASHBOARDS: dict[str, Dashboard] = {"overview": OVERVIEW, "training": TRAINING}
OUT_DIR = Path(__file__).resolve().parents[1] / "helm" / "distilrec" / "dashboards"


def render_json(dashboard: Dashboard) -> str:
    """The file's exact text: sorted keys, 2-space indent, a final newline (stable diffs)."""
    return json.dumps(dashboard.render(), indent=2, sort_keys=True) + "\n"
