"""Generate prometheusrule.yaml (beside this file) from config/prometheus-alerts.yml.

    .venv/bin/python config/kubernetes/components/prometheus-operator/generate.py
    .venv/bin/python config/kubernetes/components/prometheus-operator/generate.py --check

The alert rules have one source, config/prometheus-alerts.yml (a plain Prometheus rule file,
checked and unit-tested by promtool in tests/ops/test_alerts.py). The PrometheusRule carries
the same `groups`, comments included: the rule file's text from `groups:` on, indented under
`spec:`. tests/ops/test_kubernetes.py fails when this file is stale.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
ALERTS = HERE.parents[2] / "prometheus-alerts.yml"
OUTPUT = HERE / "prometheusrule.yaml"

HEADER = """\
# GENERATED from config/prometheus-alerts.yml by generate.py beside this file: do not edit
# here. Edit the rule file, then run
#   .venv/bin/python config/kubernetes/components/prometheus-operator/generate.py
# A Prometheus managed by the operator loads the PrometheusRules its spec.ruleSelector and
# ruleNamespaceSelector pick (kube-prometheus-stack's default selector wants the label
# `release: <its release name>`: add it with a kustomize `labels` entry or a patch).
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: streamd
spec:
"""


def render(alerts: str | None = None) -> str:
    text = ALERTS.read_text() if alerts is None else alerts
    start = text.index("\ngroups:") + 1 if not text.startswith("groups:") else 0
    return HEADER + textwrap.indent(text[start:], "  ", lambda line: bool(line.strip()))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="PrometheusRule from prometheus-alerts.yml")
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not OUTPUT.exists() or OUTPUT.read_text() != text:
            print(f"{OUTPUT} is stale: run {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
