"""config/prometheus-alerts.yml: promtool accepts it, every alert has a promtool unit test that
fires on a triggering series and stays silent on a healthy one, and every metric and label
the rules use is exported by a running daemon."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from opstools import ALERTS, run_promtool
from promql_names import Exposition, all_problems, analyse

from streamd.reasons import Reason

ALERT_TESTS = Path(__file__).resolve().parent / "alerts"
REASONS = {reason.value for reason in Reason}
DURATION = re.compile(r"^\d+[smhd]$")

Rule = dict[str, Any]


def _document() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(ALERTS.read_text())
    return document


def _rules() -> list[Rule]:
    document = _document()
    assert set(document) == {"groups"}
    rules: list[Rule] = []
    for group in document["groups"]:
        assert set(group) <= {"name", "interval", "rules"}
        rules.extend(group["rules"])
    return rules


def _test_files() -> dict[str, Path]:
    return {p.name.removesuffix(".test.yml"): p for p in sorted(ALERT_TESTS.glob("*.test.yml"))}


def test_rules_are_well_formed() -> None:
    rules = _rules()
    assert len(rules) >= 7
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}
        assert isinstance(rule["expr"], str)
        assert rule["expr"].strip()
        if "for" in rule:
            assert DURATION.match(rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]


def test_promtool_check_rules() -> None:
    result = run_promtool(["check", "rules", str(ALERTS)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in result.stdout


def test_reason_labels_are_real_reasons() -> None:
    for rule in _rules():
        for values in re.findall(r'reason\s*[!=]~?\s*"([^"]*)"', rule["expr"]):
            for value in values.split("|"):
                assert value in REASONS, f"{rule['alert']}: unknown reason {value!r}"


def test_every_alert_has_a_firing_and_a_silent_unit_test() -> None:
    """One promtool test file per alert (tests/ops/alerts/<alert>.test.yml), about that
    alert only, with at least one evaluation where it fires and one where it is silent."""
    alerts = {r["alert"] for r in _rules()}
    files = _test_files()
    assert set(files) == alerts, (
        f"no test file for {sorted(alerts - set(files))}; "
        f"test files for unknown alerts: {sorted(set(files) - alerts)}"
    )
    for alert, path in files.items():
        document = yaml.safe_load(path.read_text())
        assert document["rule_files"] == ["../../../config/prometheus-alerts.yml"], path.name
        checks = [check for case in document["tests"] for check in case["alert_rule_test"]]
        assert {c["alertname"] for c in checks} == {alert}, path.name
        assert any(c["exp_alerts"] for c in checks), f"{path.name}: never expects a firing"
        assert any(not c["exp_alerts"] for c in checks), f"{path.name}: never expects silence"


def _promtool_test(files: list[Path]) -> dict[str, bool]:
    """`promtool test rules` over `files`: file name -> passed."""
    result = run_promtool(["test", "rules", *map(str, files)], merge=True)
    outcome: dict[str, bool] = {}
    current = ""
    for line in result.stdout.splitlines():
        if line.startswith("Unit Testing:"):
            current = Path(line.split(":", 1)[1].strip()).name
        elif line.strip() == "SUCCESS" and current:
            outcome[current] = True
        elif line.strip().startswith("FAILED") and current:
            outcome[current] = False
    assert set(outcome) == {f.name for f in files}, result.stdout
    assert result.returncode == (0 if all(outcome.values()) else 1), result.stdout
    return outcome


def test_alert_unit_tests_pass() -> None:
    files = list(_test_files().values())
    result = run_promtool(["test", "rules", *map(str, files)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(files)


@pytest.mark.parametrize(
    ("mutation", "expr"),
    [("never fires", "absent(vector(1))"), ("always fires", "vector(1)")],
)
def test_alert_unit_tests_catch_a_broken_rule(tmp_path: Path, mutation: str, expr: str) -> None:
    """Each test file fails when its alert's expression is replaced by one that never (or
    always, at once) fires: the firing and the silent checks are not vacuous."""
    document = copy.deepcopy(_document())
    for group in document["groups"]:
        for rule in group["rules"]:
            rule["expr"] = expr
            rule.pop("for", None)
    rules_file = tmp_path / "mutated-alerts.yml"
    rules_file.write_text(yaml.safe_dump(document))
    mutated: list[Path] = []
    for path in _test_files().values():
        test = yaml.safe_load(path.read_text())
        test["rule_files"] = [str(rules_file)]
        target = tmp_path / path.name
        target.write_text(yaml.safe_dump(test))
        mutated.append(target)
    outcome = _promtool_test(mutated)
    passed = sorted(name for name, ok in outcome.items() if ok)
    assert not passed, f"still pass when every alert {mutation}: {passed}"


@pytest.mark.broker
def test_alert_metrics_and_labels_are_exported(live_metrics: str) -> None:
    exposition = Exposition.parse(live_metrics)
    exprs = [(r["alert"], r["expr"]) for r in _rules()]
    assert not all_problems(exprs, exposition)
    used = set().union(*(analyse(e).names for _, e in exprs))
    # Stream down, usage cap, disconnects, spool, DLQ, no tweets, Kafka.
    assert {
        "streamd_stream_connected",
        "streamd_usage_capped",
        "streamd_stream_disconnects_total",
        "streamd_spool_bytes",
        "streamd_tweets_dlq_total",
        "streamd_tweets_published_total",
        "streamd_tweets_received_total",
    } <= used


# -- the PromQL reader the checks above rely on ------------------------------------------

EXPOSITION = Exposition.parse("""\
# HELP a_total a
# TYPE a_total counter
a_total{reason="x"} 1.0
# HELP g a gauge
# TYPE g gauge
g{endpoint="stream"} 1.0
# HELP h_seconds a histogram
# TYPE h_seconds histogram
h_seconds_bucket{le="1.0"} 1.0
h_seconds_bucket{le="+Inf"} 1.0
h_seconds_count 1.0
h_seconds_sum 0.5
""")


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("rate(streamd_tweets_received_total[5m]) > 0", {"streamd_tweets_received_total"}),
        (
            'sum by (job, le) (rate(foo_bucket{reason="x"}[1m])) and on (job) bar == 1',
            {"foo_bucket", "bar"},
        ),
        ("absent(streamd_stream_connected)", {"streamd_stream_connected"}),
        ('sum(rate(a_total{job=~"$job"}[$__rate_interval])) by (reason)', {"a_total"}),
        ('{__name__="up", job="x"} offset 5m', {"up"}),
        ("a * on (x) group_left b", {"a", "b"}),
        ("streamd_spool_bytes > 0.8 * 1073741824", {"streamd_spool_bytes"}),
    ],
)
def test_series_name_extraction(expr: str, expected: set[str]) -> None:
    assert analyse(expr).names == expected


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        ("rate(a_total[5m])", None),
        ('histogram_quantile(0.9, sum by (le) (rate(h_seconds_bucket{job="j"}[5m])))', None),
        ("sum by (instance, reason) (rate(a_total[5m]))", None),
        ("g{endpoint=\"stream\"} < 3 and on (job, instance) rate(a_total[1m]) > 0", None),
        ("h_seconds > 1", "h_seconds is not exported"),
        ("a > 1", "a is not exported"),
        ('a_total{kind="x"}', "a_total has no label 'kind'"),
        ("sum by (endpoint) (rate(a_total[5m]))", "by (endpoint)"),
        ("rate(g[5m])", "rate() over g, a gauge"),
        ("sum without (reason) (a_total) / ignoring (endpoint) g", "ignoring (endpoint)"),
    ],
)
def test_problems_are_found(expr: str, problem: str | None) -> None:
    found = all_problems([("e", expr)], EXPOSITION)
    if problem is None:
        assert not found
    else:
        assert len(found) == 1
        assert problem in found[0]
