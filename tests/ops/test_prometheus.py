"""A real Prometheus (Debian's `prometheus` package, beside promtool) scrapes a real daemon's
/metrics (the `live_metrics` scrape, served as captured) the way the Prometheus Operator would
with the PodMonitor in config/kubernetes/components/prometheus-operator (its relabelings and
metricRelabelings, the operator's target labels; 200 ms scrapes instead of 30 s), and loads
config/prometheus-alerts.yml:

- the PodMonitor's relabelings do what they say (instance = pod name; the X `endpoint` label
  survives the operator's endpoint="metrics" target label);
- every dashboard query and variable runs without error and the variables list the pod;
- every alert rule evaluates without error, and none is pending or firing on a healthy daemon.
"""

from __future__ import annotations

import http.server
import json
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from opstools import ALERTS, KUSTOMIZE_ROOT, kustomize_with_component, one
from prometheus_client.parser import text_string_to_metric_families
from test_dashboard import DASHBOARD, _queries, _variable_queries

from streamd.dev.broker import free_port

pytestmark = pytest.mark.broker

NAMESPACE, POD = "default", "streamd-0"
JOB = f"{NAMESPACE}/streamd"  # the operator's job label for PodMonitor default/streamd
SNAKE = {"sourceLabels": "source_labels", "targetLabel": "target_label"}


def _relabel(configs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """PodMonitor relabelings (camelCase) as Prometheus relabel_configs."""
    return [{SNAKE.get(k, k): v for k, v in c.items()} for c in configs]


@dataclass
class Prometheus:
    url: str

    def get(self, path: str, **params: Any) -> Any:
        response = httpx.get(f"{self.url}{path}", params=params, timeout=10)
        body = response.json()
        assert body["status"] == "success", (path, params, body)
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.get("/api/v1/query", query=expr)
        result: list[dict[str, Any]] = data["result"]
        return result


class _Exposition(http.server.BaseHTTPRequestHandler):
    text = ""

    def do_GET(self) -> None:
        body = self.text.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def prometheus(live_metrics: str, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[Prometheus]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is not installed: `apt-get install --no-install-recommends "
                    "prometheus` (Debian; .ci/run does it)", pytrace=False)
    tmp = tmp_path_factory.mktemp("prometheus")
    handler = type("Exposition", (_Exposition,), {"text": live_metrics})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    docs = kustomize_with_component(KUSTOMIZE_ROOT / "components" / "prometheus-operator", tmp)
    endpoint = one(docs, "PodMonitor")["spec"]["podMetricsEndpoints"][0]
    config = {
        "global": {"scrape_interval": "200ms", "scrape_timeout": "150ms",
                   "evaluation_interval": "200ms"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [{
            "job_name": f"podMonitor/{JOB}/0",
            "honor_labels": False,
            "metrics_path": endpoint["path"],
            # What the operator's service discovery and own relabelings give a pod's target.
            "static_configs": [{
                "targets": [f"127.0.0.1:{server.server_address[1]}"],
                "labels": {"job": JOB, "namespace": NAMESPACE, "pod": POD,
                           "container": "streamd", "endpoint": endpoint["port"],
                           "__meta_kubernetes_pod_name": POD},
            }],
            "relabel_configs": _relabel(endpoint.get("relabelings", [])),
            "metric_relabel_configs": _relabel(endpoint.get("metricRelabelings", [])),
        }],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (tmp / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [binary, f"--config.file={tmp / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        prom = Prometheus(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 30
        while not _settled(prom):
            assert proc.poll() is None, (tmp / "prometheus.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (tmp / "prometheus.log").read_text()[-3000:]
            time.sleep(0.2)
        time.sleep(0.5)  # a few more rule evaluations, all of them over scraped data
        yield prom
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
        server.shutdown()
        server.server_close()


def _settled(prom: Prometheus) -> bool:
    """Ready, three scrapes in, and every rule evaluated at least once."""
    try:
        scrapes = prom.query("count_over_time(up[1m])")
        groups = prom.get("/api/v1/rules")["groups"]
    except (httpx.HTTPError, AssertionError, json.JSONDecodeError):
        return False  # not up yet
    if not scrapes or float(scrapes[0]["value"][1]) < 3 or not groups:
        return False
    return all(r["health"] != "unknown" for g in groups for r in g["rules"])


def test_scraped_labels_as_the_operator_would(prometheus: Prometheus, live_metrics: str
                                             ) -> None:
    (up,) = prometheus.query("up")
    assert up["value"][1] == "1"
    assert up["metric"]["instance"] == POD  # relabelings: instance = the pod's name
    assert up["metric"]["job"] == JOB
    assert up["metric"]["endpoint"] == "metrics"  # the operator's target label
    exported = {
        sample.labels["endpoint"] for family in text_string_to_metric_families(live_metrics)
        for sample in family.samples if sample.name == "streamd_x_rate_limit_remaining"
    }
    assert "stream" in exported
    limits = prometheus.query("streamd_x_rate_limit_remaining")
    # metricRelabelings: the X endpoint (stream, rules_get, ...), not the port's name
    assert {series["metric"]["endpoint"] for series in limits} == exported
    for series in limits:
        assert "exported_endpoint" not in series["metric"]
        assert series["metric"]["instance"] == POD
    assert not prometheus.query('{exported_endpoint!=""}')


def test_dashboard_queries_run(prometheus: Prometheus) -> None:
    dashboard = json.loads(Path(DASHBOARD).read_text())
    for variable, selector, label in _variable_queries(dashboard):
        values = prometheus.get(f"/api/v1/label/{label}/values", **{"match[]": selector.replace(
            '"$job"', '".+"')})
        assert values == [{"job": JOB, "instance": POD}[label]], variable
    answered = 0
    for where, expr in _queries(dashboard):
        grafana = (expr.replace("$__rate_interval", "1m")
                   .replace('"$job"', f'"{re.escape(JOB)}"')
                   .replace('"$instance"', f'"{POD}"'))
        result = prometheus.query(grafana)  # asserts the query succeeded
        answered += bool(result)
        assert all(s["metric"].get("instance", POD) == POD for s in result), where
    # Most panels have data at once (the rest: increases and ratios of what did not move).
    assert answered >= len(_queries(dashboard)) // 2


def test_alert_rules_evaluate_and_stay_silent_on_a_healthy_daemon(
    prometheus: Prometheus,
) -> None:
    groups = prometheus.get("/api/v1/rules")["groups"]
    rules = [r for g in groups for r in g["rules"]]
    expected = [r["alert"] for g in yaml.safe_load(ALERTS.read_text())["groups"]
                for r in g["rules"]]
    assert [r["name"] for r in rules] == expected
    for rule in rules:
        assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))
        assert rule["state"] == "inactive", (rule["name"], rule["alerts"])
    assert not prometheus.query("ALERTS")
