"""Generate config/grafana/streamd.json, the streamd dashboard, with Grafana's own SDK.

    .venv/bin/python config/grafana/generate.py           # rewrite streamd.json
    .venv/bin/python config/grafana/generate.py --check   # exit 1 if streamd.json is stale

grafana-foundation-sdk is a test/dev dependency (pinned in pyproject.toml: the JSON it
writes is compared byte for byte by tests/ops/test_dashboard.py), never a runtime one.

Every panel is declared in PANELS below. A panel that needs a metric the daemon does not
export yet names it in `awaiting`; while that name is in AWAITING_EXPORT the panel is left
out of the JSON. tests/ops/test_dashboard.py scrapes a live daemon and fails once such a
metric is exported, so the panel is switched on (remove the name, regenerate) when the
metric lands, and never shows "No data" before.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model

OUTPUT = Path(__file__).resolve().with_name("streamd.json")
UID = "streamd"

# Metrics the dashboard wants that `streamd run` does not export yet (checked against a live
# /metrics by tests/ops/test_dashboard.py). Remove a name when the daemon exports it, then
# regenerate: its panel appears.
AWAITING_EXPORT: frozenset[str] = frozenset()

# Every query is scoped to the chosen job(s) and instance(s). With the Prometheus Operator
# the PodMonitor in config/kubernetes/components/prometheus-operator sets `instance` to the
# pod's name, so the instance variable picks pods there.
SEL = 'job=~"$job", instance=~"$instance"'
DATASOURCE = model.DataSourceRef(type_val="prometheus", uid="${datasource}")
SPOOL_MAX_BYTES = 1073741824  # spool.max_bytes default; StreamdSpoolNearlyFull fires at 80 %

Kind = Literal["stat", "timeseries"]


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str


@dataclass(frozen=True)
class Panel:
    kind: Kind
    title: str
    description: str
    queries: tuple[Query, ...]
    width: int
    height: int = 8
    unit: str = "short"
    # stat: value -> (text, colour); timeseries: shown as a stepped 0/1 line when set
    mappings: tuple[tuple[int, str, str], ...] = ()
    # (value, colour) steps above a green base; a red base when `red_base`
    thresholds: tuple[tuple[float, str], ...] = ()
    red_base: bool = False
    bars: bool = False
    stepped: bool = False
    show_name: bool = False  # stat: show the series' legend (e.g. the version), not its value
    awaiting: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True)
class Row:
    title: str
    panels: tuple[Panel, ...]


def _q(expr: str, legend: str = "{{instance}}") -> Query:
    return Query(expr, legend)


def _rate(metric: str, by: str = "instance") -> str:
    return f"sum by ({by}) (rate({metric}{{{SEL}}}[$__rate_interval]))"


CONNECTED = ((0, "down", "red"), (1, "connected", "green"))

ROWS: tuple[Row, ...] = (
    Row("Overview", (
        Panel("stat", "Stream", "streamd_stream_connected: 1 while the X stream is up.",
              (_q(f"streamd_stream_connected{{{SEL}}}"),), 4, 4, mappings=CONNECTED),
        Panel("stat", "Role", "streamd_leader: the instance holding the stream "
              "(always leader when ha.mode is off).",
              (_q(f"streamd_leader{{{SEL}}}"),), 4, 4,
              mappings=((0, "standby", "blue"), (1, "leader", "green")),
              awaiting=frozenset({"streamd_leader"})),
        Panel("stat", "Kafka", "streamd_kafka_available: 1 while Kafka acknowledges records.",
              (_q(f"streamd_kafka_available{{{SEL}}}"),), 4, 4,
              mappings=((0, "unavailable", "red"), (1, "acknowledging", "green"))),
        Panel("stat", "Usage cap", "streamd_usage_capped: X refuses the stream (429 "
              "usage-capped) until the project's cap resets.",
              (_q(f"streamd_usage_capped{{{SEL}}}"),), 4, 4,
              mappings=((0, "ok", "green"), (1, "capped", "red"))),
        Panel("stat", "Rules active", "streamd_rules_active: rules on X after the last sync "
              "(X refuses a stream with none).",
              (_q(f"streamd_rules_active{{{SEL}}}"),), 4, 4,
              thresholds=((1, "green"),), red_base=True),
        Panel("stat", "Version", "streamd_build_info.",
              (_q(f"streamd_build_info{{{SEL}}}", "{{version}}"),), 4, 4, show_name=True),
    )),
    Row("Tweets", (
        Panel("timeseries", "Tweets/s: received vs published",
              "Read from X (streamd_tweets_received_total) and acknowledged by Kafka "
              "(streamd_tweets_published_total). Published below received: spooling.",
              (_q(_rate("streamd_tweets_received_total"), "received {{instance}}"),
               _q(_rate("streamd_tweets_published_total"), "published {{instance}}")),
              12, unit="cps"),
        Panel("timeseries", "Publish latency p50 / p99",
              "streamd_publish_latency_seconds: from reading a line to the broker's ack.",
              tuple(
                  _q(f"histogram_quantile({q}, sum by (instance, le) "
                     f"(rate(streamd_publish_latency_seconds_bucket{{{SEL}}}"
                     f"[$__rate_interval])))", f"p{int(q * 100)} {{{{instance}}}}")
                  for q in (0.5, 0.99)
              ), 12, unit="s", thresholds=((5, "red"),)),
        Panel("timeseries", "Dead letters by reason",
              "streamd_tweets_dlq_total: lines sent to the DLQ topic (decode, validate, "
              "oversize).",
              (_q(_rate("streamd_tweets_dlq_total", "instance, reason"),
                  "{{reason}} {{instance}}"),), 8, unit="cps"),
        Panel("timeseries", "Duplicates dropped",
              "streamd_duplicates_dropped_total: tweet ids seen recently (reconnects, "
              "backfill, redundant connections).",
              (_q(_rate("streamd_duplicates_dropped_total")),), 8, unit="cps"),
        Panel("timeseries", "Publish failures by reason",
              "streamd_publish_failures_total: failed attempts; the record is retried or "
              "spooled.",
              (_q(_rate("streamd_publish_failures_total", "instance, reason"),
                  "{{reason}} {{instance}}"),), 8, unit="cps"),
    )),
    Row("Disconnects", (
        Panel("timeseries", "Disconnects by reason",
              "streamd_stream_disconnects_total: every end of a connection and failed "
              "connect, classified (README: Disconnect reasons and backoff).",
              (_q(f"sum by (instance, reason) (increase(streamd_stream_disconnects_total"
                  f"{{{SEL}}}[$__rate_interval])) > 0", "{{reason}} {{instance}}"),),
              12, bars=True),
        Panel("timeseries", "Reconnect delay by reason (mean scheduled)",
              "streamd_reconnect_delay_seconds: the backoff chosen for each reason.",
              (_q(f"sum by (instance, reason) (rate(streamd_reconnect_delay_seconds_sum"
                  f"{{{SEL}}}[$__rate_interval])) / sum by (instance, reason) "
                  f"(rate(streamd_reconnect_delay_seconds_count{{{SEL}}}"
                  f"[$__rate_interval]))", "{{reason}} {{instance}}"),),
              12, unit="s"),
        Panel("timeseries", "Stream gaps by coverage",
              "streamd_gap_seconds_total: seconds no connection was reading, by how they "
              "were covered (redundant, backfill, recovery, none = missed).",
              (_q(f"sum by (instance, covered_by) (increase(streamd_gap_seconds_total"
                  f"{{{SEL}}}[$__rate_interval])) > 0", "{{covered_by}} {{instance}}"),),
              12, unit="s", bars=True),
        Panel("timeseries", "Connections terminated by why",
              "streamd_connections_terminated_total: connections ended through X's "
              "Connections API (own_stale, evict, handover, cli).",
              (_q(f"sum by (instance, why) (increase(streamd_connections_terminated_total"
                  f"{{{SEL}}}[$__rate_interval])) > 0", "{{why}} {{instance}}"),),
              12, bars=True, awaiting=frozenset({"streamd_connections_terminated_total"})),
    )),
    Row("Spool and Kafka", (
        Panel("timeseries", "Spool depth",
              "streamd_spool_messages: records held while Kafka is unavailable.",
              (_q(f"streamd_spool_messages{{{SEL}}}"),), 8),
        Panel("timeseries", "Spool bytes",
              "streamd_spool_bytes; the line is 80 % of the default spool.max_bytes (1 GiB), "
              "where StreamdSpoolNearlyFull fires.",
              (_q(f"streamd_spool_bytes{{{SEL}}}"),), 8, unit="bytes",
              thresholds=((0.8 * SPOOL_MAX_BYTES, "red"),)),
        Panel("timeseries", "Kafka available",
              "streamd_kafka_available: 1 while Kafka acknowledges records.",
              (_q(f"streamd_kafka_available{{{SEL}}}"),), 8, stepped=True),
    )),
    Row("X limits", (
        Panel("timeseries", "Usage capped",
              "streamd_usage_capped: 1 while X reports the usage cap.",
              (_q(f"streamd_usage_capped{{{SEL}}}"),), 12, stepped=True),
        Panel("timeseries", "Rate-limit remaining by endpoint",
              "streamd_x_rate_limit_remaining: the last x-rate-limit-remaining header per "
              "X endpoint (StreamdRateLimitLow fires below 3).",
              (_q(f"streamd_x_rate_limit_remaining{{{SEL}}}", "{{endpoint}} {{instance}}"),),
              12, thresholds=((3, "green"),), red_base=True),
    )),
    Row("Process", (
        Panel("timeseries", "Resident memory",
              "process_resident_memory_bytes (the daemon targets less than 150 MB).",
              (_q(f"process_resident_memory_bytes{{{SEL}}}"),), 12, unit="bytes",
              awaiting=frozenset({"process_resident_memory_bytes"})),
        Panel("timeseries", "CPU",
              "rate(process_cpu_seconds_total): cores in use.",
              (_q(_rate("process_cpu_seconds_total")),), 12, unit="percentunit",
              awaiting=frozenset({"process_cpu_seconds_total"})),
    )),
)


def _thresholds(panel: Panel) -> dash.ThresholdsConfig:
    base = "red" if panel.red_base else "green"
    steps = [model.Threshold(value=None, color=base)]
    steps += [model.Threshold(value=value, color=colour) for value, colour in panel.thresholds]
    return dash.ThresholdsConfig().mode(model.ThresholdsMode.ABSOLUTE).steps(steps)


def _mappings(panel: Panel) -> list[model.ValueMapping]:
    if not panel.mappings:
        return []
    options = {
        str(value): model.ValueMappingResult(text=text, color=colour, index=i)
        for i, (value, text, colour) in enumerate(panel.mappings)
    }
    return [model.ValueMap(options=options)]


def _targets(panel: Panel) -> list[cogbuilder.Builder[variants.Dataquery]]:
    return [
        prometheus.Dataquery()
        .expr(query.expr)
        .legend_format(query.legend)
        .ref_id(chr(ord("A") + i))
        .datasource(DATASOURCE)
        for i, query in enumerate(panel.queries)
    ]


PanelBuilder = TypeVar("PanelBuilder", stat.Panel, timeseries.Panel)


def _common(builder: PanelBuilder, panel: Panel) -> PanelBuilder:
    """What every panel sets, whatever its kind."""
    return (
        builder
        .title(panel.title)
        .description(panel.description)
        .datasource(DATASOURCE)
        .targets(_targets(panel))
        .span(panel.width)
        .height(panel.height)
        .unit(panel.unit)
        .thresholds(_thresholds(panel))
    )


def _stat(panel: Panel) -> stat.Panel:
    builder = (
        _common(stat.Panel(), panel)
        .color_mode(common.BigValueColorMode.BACKGROUND)
        .graph_mode(common.BigValueGraphMode.NONE)
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]))
    )
    if panel.mappings:
        builder = builder.mappings(_mappings(panel))
    if panel.show_name:
        builder = builder.text_mode(common.BigValueTextMode.NAME).color_mode(
            common.BigValueColorMode.NONE)
    return builder


def _timeseries(panel: Panel) -> timeseries.Panel:
    builder = (
        _common(timeseries.Panel(), panel)
        .min(0)
        .fill_opacity(10)
        .legend(
            common_builders.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.LIST)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
        )
        .tooltip(
            common_builders.VizTooltipOptions()
            .mode(common.TooltipDisplayMode.MULTI)
            .sort(common.SortOrder.DESCENDING)
        )
    )
    if panel.thresholds:
        builder = builder.thresholds_style(
            common_builders.GraphThresholdsStyleConfig().mode(
                common.GraphThresholdsStyleMode.DASHED))
    if panel.bars:
        builder = builder.draw_style(common.GraphDrawStyle.BARS).fill_opacity(60)
    if panel.stepped:
        builder = builder.line_interpolation(common.LineInterpolation.STEP_AFTER).max(1)
    return builder


def _variables() -> list[dash.DatasourceVariable | dash.QueryVariable]:
    datasource = (
        dash.DatasourceVariable("datasource")
        .label("Data source")
        .type("prometheus")
    )
    job = (
        dash.QueryVariable("job")
        .label("Job")
        .datasource(DATASOURCE)
        .query("label_values(streamd_build_info, job)")
        .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(model.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
    )
    instance = (
        dash.QueryVariable("instance")
        .label("Instance / pod")
        .datasource(DATASOURCE)
        .query('label_values(streamd_build_info{job=~"$job"}, instance)')
        .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(model.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
    )
    return [datasource, job, instance]


def panels(awaiting: Iterable[str] = AWAITING_EXPORT) -> list[tuple[str, list[Panel]]]:
    """The rows and their panels, without those that need a metric in `awaiting`."""
    missing = frozenset(awaiting)
    out = []
    for row in ROWS:
        shown = [p for p in row.panels if not p.awaiting & missing]
        if shown:
            out.append((row.title, shown))
    return out


def build(awaiting: Iterable[str] = AWAITING_EXPORT) -> model.Dashboard:
    builder = (
        dash.Dashboard("streamd")
        .uid(UID)
        .description("X filtered stream -> Kafka: connection, throughput, disconnects, "
                     "spool, limits. Generated by config/grafana/generate.py.")
        .tags(["streamd", "kafka", "x-api"])
        .editable()
        .refresh("30s")
        .time("now-6h", "now")
        .timezone("browser")
        .tooltip(model.DashboardCursorSync.CROSSHAIR)
        .variables(list(_variables()))
    )
    ids = itertools.count(1)  # Grafana wants a unique id per panel, rows included
    for title, shown in panels(awaiting):
        builder = builder.with_row(dash.Row(title).id(next(ids)))
        for panel in shown:
            built = _stat(panel) if panel.kind == "stat" else _timeseries(panel)
            builder = builder.with_panel(built.id(next(ids)))
    return builder.build()


def render(awaiting: Iterable[str] = AWAITING_EXPORT) -> str:
    return JSONEncoder(sort_keys=True, indent=2).encode(build(awaiting)) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if the committed JSON differs from a fresh render")
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
