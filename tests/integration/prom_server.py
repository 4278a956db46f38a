"""A real Prometheus server for the integration tests (Debian package ``prometheus``).

:class:`PrometheusServer` writes a config that scrapes one Ray metrics port every second, with the
labels the chart's PodMonitors (and the Prometheus Operator) put on every series of a release
(``namespace``, ``app_kubernetes_io_instance``), so the chart's alert selectors and the dashboards'
variables match as they do in a cluster. Rule files dropped into ``rules_dir`` load on :meth:`reload`.

A scrape is not free: late in a test session Ray's metrics endpoint is about 3 MB (7,800 lines), and
its dashboard agent, which runs at a higher priority than the Serve replicas (Ray starts workers at
nice 15), used 0.48 of a core with a scrape every second and 0.11 with one every 15 s. So the session scrapes every
second only while something reads the figures (the pipeline's training, the observability tests) and
at the chart's interval, 15 s, otherwise (:meth:`set_scrape_interval`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from distilrec.ports import free_port

NAMESPACE, RELEASE = "default", "distilrec"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


class PrometheusServer:
    """``prometheus`` scraping ``127.0.0.1:<metrics_port>`` every second, storage in ``workdir``."""

    def __init__(self, binary: str, metrics_port: int, workdir: Path):
        self.workdir, self.rules_dir = workdir, workdir / "rules"
        self.rules_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.scrape_interval_s = 1
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(self.rules_dir / "*.yaml")],
            "scrape_configs": [{
                "job_name": "ray", "metrics_path": "/metrics",
                "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"],
                                    "labels": {"namespace": NAMESPACE, "app_kubernetes_io_instance": RELEASE}}],
            }],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        self.log = open(workdir / "prometheus.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [binary, f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--web.enable-lifecycle", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT)
        self.started = time.time()
        self.http = httpx.Client(base_url=self.url, timeout=30)
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited {self.proc.returncode}: {self.logs()}")
            try:
                if self.http.get("/-/ready").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"prometheus not ready after 60 s: {self.logs()}")
            time.sleep(0.2)

    def logs(self) -> str:
        return (self.workdir / "prometheus.log").read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        self.http.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()

    # ------------------------------------------------------------------------------------ HTTP API

    def _api(self, path: str, **params: Any) -> Any:
        r = self.http.get(f"/api/v1/{path}", params=params)
        body = r.json()
        if r.status_code != 200 or body.get("status") != "success":
            raise AssertionError(f"{path} {params}: HTTP {r.status_code} {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        """``/api/v1/query``: the instant vector (a scalar comes back as one sample without labels)."""
        data = self._api("query", query=expr, **({"time": at} if at is not None else {}))
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def query_range(self, expr: str, start: float, end: float, step: float = 1.0) -> list[dict]:
        return self._api("query_range", query=expr, start=start, end=end, step=step)["result"]

    def value(self, expr: str) -> float | None:
        """The single value of ``expr`` now, None when it has no result."""
        res = self.query(expr)
        assert len(res) <= 1, f"{expr}: {len(res)} series"
        return float(res[0]["value"][1]) if res else None

    def metric_names(self) -> set[str]:
        return set(self._api("label/__name__/values", start=self.started - 60, end=time.time() + 60))

    def label_values(self, label: str, match: str) -> list[str]:
        return self._api(f"label/{label}/values", **{"match[]": match}, start=self.started - 60,
                         end=time.time() + 60)

    def reload(self) -> None:
        r = self.http.post("/-/reload")
        assert r.status_code == 200, r.text

    def set_scrape_interval(self, seconds: int) -> None:
        """Scrape every ``seconds`` from now on (the config rewritten and reloaded; rules are still
        evaluated every second)."""
        if seconds == self.scrape_interval_s:
            return
        path = self.workdir / "prometheus.yml"
        config = yaml.safe_load(path.read_text())
        config["global"].update(scrape_interval=f"{seconds}s", scrape_timeout=f"{min(seconds, 10)}s")
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.reload()
        self.scrape_interval_s = seconds

    def rules(self) -> list[dict]:
        return [r for g in self._api("rules")["groups"] for r in g["rules"]]


def start_or_reason(metrics_port: int, workdir: Path) -> PrometheusServer | str:
    """A started server, or why there is none (the binary is missing): the tests that need it skip
    locally and fail in CI."""
    binary = shutil.which("prometheus")
    if binary is None:
        return "the prometheus binary is not installed (apt-get install prometheus; .ci/run installs it)"
    return PrometheusServer(binary, metrics_port, workdir)
