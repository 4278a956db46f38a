"""Small typed pieces that render Grafana dashboard JSON (schema version 39).

A :class:`Dashboard` holds :class:`Row` objects; a row holds :class:`Panel` objects; a panel holds
PromQL :class:`Target` objects. :meth:`Dashboard.render` lays the panels out on Grafana's 24-column
grid (rows in order, each panel ``width`` x ``height`` cells, wrapping to the next line), numbers every
panel and row with a unique id, and points every panel at the ``${datasource}`` template variable
(type ``prometheus``), so the same JSON works with any Prometheus data source a Grafana has.

Expressions may use Grafana's variables: ``$__rate_interval`` and the dashboard's own template
variables (``$namespace``, ``$release``; :data:`SEL` is the label selector built from them).

>>> d = Dashboard("t", "Example", "", rows=[Row("Is it fast?", [Panel("Requests/s", [Target("sum(rate(x[5m]))")])])])
>>> js = d.render()
>>> js["schemaVersion"], [p["type"] for p in js["panels"]], js["panels"][1]["datasource"]["uid"]
(39, ['row', 'timeseries'], '${datasource}')
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 39
GRID_WIDTH = 24
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

# The series of one release: the Prometheus Operator adds `namespace` to every scraped series and the
# chart's PodMonitors add `app_kubernetes_io_instance` (the release). "All" matches anything, also series
# scraped without those labels (a Prometheus pointed at `ray start --metrics-export-port` directly).
SEL = 'namespace=~"$namespace",app_kubernetes_io_instance=~"$release"'


@dataclass(frozen=True)
class Target:
    """One PromQL query of a panel. ``legend``: Grafana's legend format (``{{label}}``)."""

    expr: str
    legend: str = ""
    instant: bool = False
    format: str = "time_series"  # or "heatmap" (buckets) / "table"

    def render(self, ref_id: str) -> dict[str, Any]:
        return {"refId": ref_id, "datasource": dict(DATASOURCE), "expr": self.expr,
                "legendFormat": self.legend or "__auto", "range": not self.instant, "instant": self.instant,
                "format": self.format, "editorMode": "code"}


@dataclass(frozen=True)
class Panel:
    """A panel: ``kind`` is a Grafana panel type (timeseries, stat, heatmap, table, bargauge); ``unit``
    a Grafana unit id (reqps, ms, s, percentunit, short, …)."""

    title: str
    targets: list[Target]
    description: str = ""
    kind: str = "timeseries"
    unit: str = "short"
    width: int = 8
    height: int = 8
    decimals: int | None = None
    stack: bool = False
    min: float | None = None
    max: float | None = None
    thresholds: list[tuple[float, str]] = field(default_factory=list)  # (from value, colour) after green
    points: bool = False  # one point per sample, joined across gaps (per-epoch gauges)

    def render(self, panel_id: int, x: int, y: int) -> dict[str, Any]:
        defaults: dict[str, Any] = {"unit": self.unit, "thresholds": {"mode": "absolute", "steps": [
            {"color": "green", "value": None}] + [{"color": c, "value": v} for v, c in self.thresholds]}}
        if self.decimals is not None:
            defaults["decimals"] = self.decimals
        if self.min is not None:
            defaults["min"] = self.min
        if self.max is not None:
            defaults["max"] = self.max
        options: dict[str, Any] = {}
        if self.kind == "timeseries":
            defaults["custom"] = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10 if self.stack else 0,
                                  "showPoints": "always" if self.points else "never", "spanNulls": self.points,
                                  "stacking": {"mode": "normal" if self.stack else "none", "group": "A"}}
            options = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                       "tooltip": {"mode": "multi", "sort": "desc"}}
        elif self.kind == "stat":
            options = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                       "colorMode": "value", "graphMode": "none", "textMode": "auto", "justifyMode": "auto"}
        elif self.kind == "heatmap":
            options = {"calculate": False, "yAxis": {"unit": self.unit}, "color": {"scheme": "Oranges", "mode": "scheme"},
                       "cellGap": 1, "tooltip": {"show": True, "yHistogram": True}}
        elif self.kind == "table":
            options = {"showHeader": True}
        return {
            "id": panel_id, "type": self.kind, "title": self.title, "description": self.description,
            "datasource": dict(DATASOURCE),
            "gridPos": {"h": self.height, "w": self.width, "x": x, "y": y},
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": options,
            "targets": [t.render(chr(ord("A") + i)) for i, t in enumerate(self.targets)],
        }


@dataclass(frozen=True)
class Row:
    """A row of panels under a title that names the question they answer."""

    title: str
    panels: list[Panel]


@dataclass(frozen=True)
class Variable:
    """A query template variable over label values (``label_values(metric, label)``), with "All"."""

    name: str
    label: str
    query: str

    def render(self) -> dict[str, Any]:
        return {"name": self.name, "label": self.label, "type": "query", "datasource": dict(DATASOURCE),
                "query": {"query": self.query, "refId": f"{self.name}-query"}, "definition": self.query,
                "refresh": 2, "includeAll": True, "allValue": ".*", "multi": False, "sort": 1,
                "current": {"selected": True, "text": "All", "value": "$__all"}, "hide": 0}


@dataclass(frozen=True)
class Dashboard:
    """A whole dashboard. ``uid`` is stable (links keep working across re-imports)."""

    uid: str
    title: str
    description: str
    rows: list[Row]
    variables: list[Variable] = field(default_factory=list)
    tags: tuple[str, ...] = ("distilrec",)
    refresh: str = "30s"
    time_from: str = "now-3h"

    def panels(self) -> list[Panel]:
        return [p for r in self.rows for p in r.panels]

    def render(self) -> dict[str, Any]:
        """The dashboard as Grafana's JSON model (a dict; ``json.dumps`` it)."""
        panels: list[dict[str, Any]] = []
        next_id, y = 1, 0
        for row in self.rows:
            panels.append({"id": next_id, "type": "row", "title": row.title, "collapsed": False,
                           "gridPos": {"h": 1, "w": GRID_WIDTH, "x": 0, "y": y}, "panels": []})
            next_id, y = next_id + 1, y + 1
            x, line_h = 0, 0
            for p in row.panels:
                if p.width > GRID_WIDTH:
                    raise ValueError(f"panel {p.title!r} is wider than the grid ({p.width} > {GRID_WIDTH})")
                if x + p.width > GRID_WIDTH:
                    x, y, line_h = 0, y + line_h, 0
                panels.append(p.render(next_id, x, y))
                next_id, x, line_h = next_id + 1, x + p.width, max(line_h, p.height)
            y += line_h
        datasource = {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
                      "current": {}, "hide": 0, "refresh": 1, "regex": "", "includeAll": False, "multi": False}
        return {
            "uid": self.uid, "title": self.title, "description": self.description, "tags": list(self.tags),
            "schemaVersion": SCHEMA_VERSION, "version": 1, "editable": True, "graphTooltip": 1,
            "timezone": "browser", "refresh": self.refresh, "time": {"from": self.time_from, "to": "now"},
            "timepicker": {}, "fiscalYearStartMonth": 0, "liveNow": False, "links": [],
            "annotations": {"list": [{"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                                      "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
                                      "name": "Annotations & Alerts", "type": "dashboard"}]},
            "templating": {"list": [datasource] + [v.render() for v in self.variables]},
            "panels": panels,
        }


def expressions(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """``(panel title, expr)`` of every query of a rendered dashboard, variables' queries excluded."""
    return [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p.get("targets", [])]
