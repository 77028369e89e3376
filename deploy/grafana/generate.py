"""Generate edgewatch's Grafana dashboards with grafana-foundation-sdk (Grafana's own dashboards-as-code SDK).

    python deploy/grafana/generate.py           # write deploy/grafana/dashboards/*.json
    python deploy/grafana/generate.py --check   # exit 1 if a committed file differs from what this writes

The JSON files are committed (Grafana's file provisioning loads them, see provisioning/), and
tests/cloud/test_grafana.py checks they equal this script's output and that every query returns
data from a real Prometheus scraping a running agent and processor. Every panel reads the
Prometheus datasource chosen in the ``datasource`` variable; panel layout is a 24-column grid.
The Incidents dashboard and the Device dashboard's incident annotations read the processor's
PostgreSQL store instead (sqlpanels.py, the ``pgsource`` variable); tests/cloud/test_grafana_incidents.py
runs each of their queries on a real PostgreSQL.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from grafana_foundation_sdk.builders import barchart, bargauge, dashboard, heatmap, prometheus, stat, table, timeseries
from grafana_foundation_sdk.builders.common import (
    GraphThresholdsStyleConfig,
    ReduceDataOptions,
    StackingConfig,
    VizLegendOptions,
)
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import (
    BigValueColorMode,
    BigValueGraphMode,
    BigValueTextMode,
    GraphDrawStyle,
    GraphTresholdsStyleMode,
    LegendDisplayMode,
    LegendPlacement,
    StackingMode,
)
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DataSourceRef,
    Threshold,
    ThresholdsMode,
    VariableOption,
    VariableRefresh,
    VariableSort,
)
from grafana_foundation_sdk.models.prometheus import PromQueryFormat
from panels import P, Q, device_rows, fleet_rows, models_rows, stream_rows
from sqlpanels import PG_TYPE, Annotation, S, device_annotations, incidents_annotations, incidents_rows

OUT = Path(__file__).resolve().parent / "dashboards"
DS = DataSourceRef(type_val="prometheus", uid="${datasource}")
PG = DataSourceRef(type_val=PG_TYPE, uid="${pgsource}")


class SqlQuery:
    """A PostgreSQL datasource query (the SDK has no SQL query type): raw SQL, written as Grafana's code editor saves it."""

    def __init__(self, sql: str, ref: str, fmt: str = "table") -> None:
        self.sql, self.ref, self.fmt = sql, ref, fmt

    def build(self) -> SqlQuery:
        return self

    def to_json(self) -> dict[str, object]:
        return {"datasource": PG, "editorMode": "code", "format": self.fmt, "rawQuery": True, "rawSql": self.sql,
                "refId": self.ref}


def _target(q: Q, ref: str) -> prometheus.Dataquery:
    t = prometheus.Dataquery().expr(q.expr).ref_id(ref).datasource(DS)
    if q.legend:
        t = t.legend_format(q.legend)
    if q.fmt:
        t = t.format(PromQueryFormat(q.fmt))
    return t.instant() if q.instant or q.fmt == "table" else t.range()


def _panel(p: P, panel_id: int) -> object:
    steps = [Threshold(value=v, color=c) for v, c in p.thresholds]
    builder: object
    if p.kind == "stat":
        builder = (stat.Panel().graph_mode(BigValueGraphMode.AREA).color_mode(BigValueColorMode.VALUE)
                   .text_mode(BigValueTextMode.NAME if p.show_name else BigValueTextMode.AUTO)
                   .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]).values(False)))
    elif p.kind == "timeseries":
        builder = (timeseries.Panel().fill_opacity(10).line_width(1)
                   .legend(VizLegendOptions().show_legend(True).display_mode(LegendDisplayMode.LIST)
                           .placement(LegendPlacement.BOTTOM).calcs([])))
        if p.stack:
            builder = builder.stacking(StackingConfig().mode(StackingMode.NORMAL))
        if p.threshold_lines:
            builder = builder.thresholds_style(GraphThresholdsStyleConfig().mode(GraphTresholdsStyleMode.DASHED))
    elif p.kind == "table":
        builder = table.Panel()
    elif p.kind == "heatmap":
        builder = heatmap.Panel().calculate(False)
    elif p.kind == "bargauge":
        builder = bargauge.Panel().reduce_options(ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    else:
        raise ValueError(f"unknown panel kind {p.kind!r}")
    b = (builder.id(panel_id).title(p.title).datasource(DS).unit(p.unit).span(p.width).height(p.height)  # type: ignore[attr-defined]
         .thresholds(dashboard.ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps(steps)))
    if p.description:
        b = b.description(p.description)
    if p.decimals is not None:
        b = b.decimals(p.decimals)
    for i, q in enumerate(p.queries):
        b = b.with_target(_target(q, chr(ord("A") + i)))
    return b


def _sql_panel(s: S, panel_id: int) -> object:
    builder: object
    if s.kind == "stat":
        builder = (stat.Panel().graph_mode(BigValueGraphMode.NONE).color_mode(BigValueColorMode.VALUE)
                   .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]).values(False)))
    elif s.kind == "table":
        builder = table.Panel()
    elif s.kind == "barchart":
        builder = barchart.Panel().x_field("kind")
    elif s.kind == "timeseries":
        builder = (timeseries.Panel().draw_style(GraphDrawStyle.BARS).fill_opacity(60).line_width(1)
                   .stacking(StackingConfig().mode(StackingMode.NORMAL))
                   .legend(VizLegendOptions().show_legend(True).display_mode(LegendDisplayMode.LIST)
                           .placement(LegendPlacement.BOTTOM).calcs([])))
    else:
        raise ValueError(f"unknown panel kind {s.kind!r}")
    b = (builder.id(panel_id).title(s.title).datasource(PG).unit(s.unit).span(s.width).height(s.height)  # type: ignore[attr-defined]
         .with_target(SqlQuery(s.sql, "A", s.fmt)))
    return b.description(s.description) if s.description else b


def _annotation(a: Annotation) -> object:
    return (dashboard.AnnotationQuery().name(a.name).datasource(PG).enable(True).hide(False).icon_color(a.color)
            .target(SqlQuery(a.sql, "Anno")))  # type: ignore[arg-type]


def _sql_variables(*names: str) -> list[object]:
    """The PostgreSQL datasource variable and the given SQL query variables (multi-value, all by default)."""
    out: list[object] = [dashboard.DatasourceVariable("pgsource").label("PostgreSQL").type(PG_TYPE)]
    queries = {"kind": ("Kind", "SELECT DISTINCT kind FROM incidents ORDER BY 1"),
               "site": ("Site", "SELECT DISTINCT site FROM incidents ORDER BY 1")}
    for name in names:
        label, query = queries[name]
        out.append(dashboard.QueryVariable(name).label(label).datasource(PG).query(query)
                   .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED).sort(VariableSort.ALPHABETICAL_ASC)
                   .include_all(True).multi(True).current(VariableOption(selected=True, text=["All"], value=["$__all"])))
    return out


def _variables(*names: str) -> list[object]:
    out: list[object] = [dashboard.DatasourceVariable("datasource").label("Prometheus").type("prometheus")] if names else []
    queries = {
        "site": ("Site", 'label_values(up{job="edgewatch-agent"}, site)'),
        "instance": ("Agent", 'label_values(up{job="edgewatch-agent", site=~"$site"}, instance)'),
        "processor": ("Processor", 'label_values(up{job="edgewatch-processor"}, instance)'),
        "device": ("Device", 'label_values(edgewatch_agent_device_threshold{job="edgewatch-agent", instance=~"$instance"}, '
                             'device_id)'),
    }
    for name in names:
        label, query = queries[name]
        v = (dashboard.QueryVariable(name).label(label).datasource(DS).query(query)
             .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED).sort(VariableSort.ALPHABETICAL_ASC))
        v = v.include_all(True).all_value(".*").multi(True) if name in ("site", "processor", "device") else v
        out.append(v)
    return out


def build(uid: str, title: str, description: str, variables: Sequence[str], rows: Sequence[tuple[str, Sequence[P | S]]], *,
          sql_variables: Sequence[str] | None = None, annotations: Sequence[Annotation] = ()) -> dict:
    """One dashboard; ``sql_variables`` (None: no PostgreSQL datasource variable) are the SQL query variables."""
    d = (dashboard.Dashboard(title).uid(uid).description(description).tags(["edgewatch"]).editable()
         .time("now-1h", "now").refresh("30s").timezone("browser").tooltip(DashboardCursorSync.CROSSHAIR))
    for v in _variables(*variables) + ([] if sql_variables is None else _sql_variables(*sql_variables)):
        d = d.with_variable(v)  # type: ignore[arg-type]
    for a in annotations:
        d = d.annotation(_annotation(a))  # type: ignore[arg-type]
    panel_id = 0
    for row_title, panels in rows:
        panel_id += 1
        d = d.with_row(dashboard.Row(row_title).id(panel_id))
        for p in panels:
            panel_id += 1
            d = d.with_panel(_sql_panel(p, panel_id) if isinstance(p, S) else _panel(p, panel_id))  # type: ignore[arg-type]
    data: dict = json.loads(JSONEncoder(sort_keys=True).encode(d.build()))
    return data


def dashboards() -> dict[str, dict]:
    """Every dashboard by file name."""
    return {
        "edgewatch-fleet.json": build("edgewatch-fleet", "edgewatch / Fleet overview",
                                      "Every agent of the fleet: who is up, what flows, where anomalies come from.",
                                      ["site"], fleet_rows()),
        "edgewatch-device.json": build("edgewatch-device", "edgewatch / Device",
                                       "One agent (device): intake, windows, inference, decisions, outbox and forwarding.",
                                       ["site", "instance", "device"], device_rows(), sql_variables=(),
                                       annotations=device_annotations()),
        "edgewatch-stream.json": build("edgewatch-stream", "edgewatch / Stream processing",
                                       "Kafka path from agents to the processor: forwarding, consumption, lag, incidents, dead letters.",
                                       ["site", "processor"], stream_rows()),
        "edgewatch-models.json": build("edgewatch-models", "edgewatch / Models and updates",
                                       "Which model runs where, how it scores, drift, and model updates.",
                                       ["site", "processor"], models_rows()),
        "edgewatch-incidents.json": build("edgewatch-incidents", "edgewatch / Incidents",
                                          "The processor's incidents from its PostgreSQL store: open now, by kind, site and "
                                          "device, and their timeline.", [], incidents_rows(), sql_variables=("kind", "site"),
                                          annotations=incidents_annotations()),
    }


def render(data: dict) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed files instead of writing")
    parser.add_argument("--out", type=Path, default=OUT, help="output folder")
    args = parser.parse_args(argv)
    stale = []
    for name, data in dashboards().items():
        path = args.out / name
        text = render(data)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print(f"stale: {', '.join(stale)}; run python deploy/grafana/generate.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
