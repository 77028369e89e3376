"""Generate edgewatch's Grafana dashboards with grafana-foundation-sdk (Grafana's own dashboards-as-code SDK).

    python deploy/grafana/generate.py           # write deploy/grafana/dashboards/*.json
    python deploy/grafana/generate.py --check   # exit 1 if a committed file differs from what this writes

The JSON files are committed (Grafana's file provisioning loads them, see provisioning/), and
tests/cloud/test_grafana.py checks they equal this script's output and that every query returns
data from a real Prometheus scraping a running agent and processor. Every panel reads the
Prometheus datasource chosen in the ``datasource`` variable; panel layout is a 24-column grid.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from grafana_foundation_sdk.builders import bargauge, dashboard, heatmap, prometheus, stat, table, timeseries
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
    VariableRefresh,
    VariableSort,
)
from grafana_foundation_sdk.models.prometheus import PromQueryFormat
from panels import P, Q, device_rows, fleet_rows, models_rows, stream_rows

OUT = Path(__file__).resolve().parent / "dashboards"
DS = DataSourceRef(type_val="prometheus", uid="${datasource}")


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


def _variables(*names: str) -> list[object]:
    out: list[object] = [dashboard.DatasourceVariable("datasource").label("Prometheus").type("prometheus")]
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


def build(uid: str, title: str, description: str, variables: Sequence[str], rows: Sequence[tuple[str, Sequence[P]]]) -> dict:
    d = (dashboard.Dashboard(title).uid(uid).description(description).tags(["edgewatch"]).editable()
         .time("now-1h", "now").refresh("30s").timezone("browser").tooltip(DashboardCursorSync.CROSSHAIR))
    for v in _variables(*variables):
        d = d.with_variable(v)  # type: ignore[arg-type]
    panel_id = 0
    for row_title, panels in rows:
        panel_id += 1
        d = d.with_row(dashboard.Row(row_title).id(panel_id))
        for p in panels:
            panel_id += 1
            d = d.with_panel(_panel(p, panel_id))  # type: ignore[arg-type]
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
                                       ["site", "instance", "device"], device_rows()),
        "edgewatch-stream.json": build("edgewatch-stream", "edgewatch / Stream processing",
                                       "Kafka path from agents to the processor: forwarding, consumption, lag, incidents, dead letters.",
                                       ["site", "processor"], stream_rows()),
        "edgewatch-models.json": build("edgewatch-models", "edgewatch / Models and updates",
                                       "Which model runs where, how it scores, drift, and model updates.",
                                       ["site", "processor"], models_rows()),
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
