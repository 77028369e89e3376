"""The SQL of the Incidents dashboard and of the incident annotations; generate.py turns them into Grafana JSON.

Every query reads the processor's PostgreSQL store (cloud/processor/schema.py: ``incidents``,
``events``, ``escalations``) through the PostgreSQL datasource chosen in the ``pgsource`` variable. Times in the
store are unix seconds (``DOUBLE PRECISION``), so the time range comes in through Grafana's
``$__unixEpochFilter``, ``$__unixEpochFrom()``/``$__unixEpochTo()`` and ``$__unixEpochGroupAlias``
macros. ``$kind`` and ``$site`` are multi-value variables, which Grafana writes as quoted lists
(``'incident','drift'``) for a SQL datasource; ``${device:regex}`` is the Device dashboard's
device as a regular expression (``.*`` for all). tests/cloud/test_grafana_incidents.py runs each
query, with these expanded as Grafana does, on a real PostgreSQL holding a processed stream.

The labelling queue is cloud.processor.verdicts.queue's: the escalated windows no one has labelled
yet, the largest disagreement between the edge's and the cloud's normalised scores first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

PG_TYPE = "grafana-postgresql-datasource"  # the PostgreSQL plugin's id (older Grafana: "postgres", kept as an alias)
PICKED = "kind IN ($kind) AND site IN ($site)"
PICKED_I = "i.kind IN ($kind) AND i.site IN ($site)"  # the same on the incidents aliased i
# the device, or the devices of a fleet incident
DEVICE = ("CASE WHEN i.device_id <> '' THEN i.device_id "
          "ELSE array_to_string(ARRAY(SELECT jsonb_array_elements_text(i.device_ids::jsonb)), ', ') END")
# an incident's end for drawing: closed, or its last event while open (never before it opened)
END = "greatest(i.opened_at, coalesce(i.closed_at, i.last_event_at))"
OVERLAPS = f"i.opened_at <= $__unixEpochTo() AND {END} >= $__unixEpochFrom()"
# the channels of an incident's events since it opened: a sensor fault's own channels, otherwise the
# channel with the largest share of each event's score; most frequent first
CHANNELS = """LEFT JOIN LATERAL (
  SELECT string_agg(c.ch, ', ' ORDER BY c.n DESC, c.ch) AS channels FROM (
    SELECT x.ch, count(*) AS n FROM events e
    CROSS JOIN LATERAL (
      SELECT jsonb_array_elements_text(e.payload::jsonb #> '{fault,channels}') AS ch
      UNION ALL
      (SELECT s.key FROM jsonb_each(e.payload::jsonb -> 'channel_scores') s
       WHERE e.payload::jsonb -> 'fault' IS NULL ORDER BY s.value::float8 DESC, s.key LIMIT 1)
    ) x
    WHERE e.device_id = i.device_id AND e.window_end BETWEEN i.opened_at AND i.last_event_at
    GROUP BY x.ch
  ) c
) ch ON true"""


@dataclass(frozen=True)
class S:
    """One SQL panel: kind (stat, table, timeseries, barchart), title, query, format, unit, size."""

    kind: str
    title: str
    sql: str
    fmt: str = "table"  # "table" or "time_series"
    unit: str = "short"
    width: int = 8
    height: int = 8
    description: str = ""


@dataclass(frozen=True)
class Annotation:
    """An annotation query: rows of time, timeend, text and tags."""

    name: str
    sql: str
    color: str


def incidents_rows() -> list[tuple[str, Sequence[S]]]:
    return [
        ("Open now", [
            S("stat", "Open incidents", f"SELECT count(*) AS open FROM incidents WHERE closed_at IS NULL AND {PICKED}",
              width=4, description="Incidents of the chosen kinds and sites not closed yet, whenever they opened"),
            S("barchart", "Open incidents by kind",
              f"SELECT kind, count(*) AS open FROM incidents WHERE closed_at IS NULL AND {PICKED} GROUP BY kind ORDER BY kind",
              width=8),
            S("table", "Opened in the time range, by site and kind",
              "SELECT site, kind, count(*) AS opened, count(*) FILTER (WHERE closed_at IS NULL) AS still_open, "
              "max(max_score) AS max_score FROM incidents "
              f"WHERE $__unixEpochFilter(opened_at) AND {PICKED} GROUP BY site, kind ORDER BY site, kind", width=12),
            S("table", "Open incidents",
              f"SELECT i.kind, i.site, {DEVICE} AS device, i.max_score AS score, "
              "CASE WHEN i.kind = 'peer_outlier' THEN split_part(i.detail, ' outside group ', 1) ELSE ch.channels END "
              "AS channels, i.label, i.dismissed, "
              "to_timestamp(i.opened_at) AS opened, extract(epoch FROM now()) - i.opened_at AS age_s, "
              "i.event_count AS events, i.detail, i.incident_id "
              f"FROM incidents i {CHANNELS} "
              f"WHERE i.closed_at IS NULL AND {PICKED_I} "
              "ORDER BY i.opened_at DESC, i.incident_id LIMIT 500", width=24, height=10,
              description="Score: the largest anomaly score of its events (a peer outlier: its largest robust z; 0 for "
                          "drift and silence). Channels: a sensor fault's own channels, a peer outlier's channels outside its "
                          "group, otherwise the channel with the largest share of each event's score, most frequent first. "
                          "Label: the operator's verdict (edgewatch incidents label). Dismissed: its events the cloud model "
                          "dismissed (escalation). Age: seconds since it opened"),
        ]),
        ("Timeline", [
            S("timeseries", "Incidents opened by kind",
              "SELECT $__unixEpochGroupAlias(opened_at, $__interval), kind AS metric, count(*) AS value FROM incidents "
              f"WHERE $__unixEpochFilter(opened_at) AND {PICKED} GROUP BY 1, 2 ORDER BY 1", fmt="time_series", width=24,
              description="Each incident is also drawn as a region (the Incidents annotation) from its opening to its close"),
            S("table", "Incident timeline",
              "SELECT to_timestamp(i.opened_at) AS opened, to_timestamp(i.closed_at) AS closed, "
              f"{END} - i.opened_at AS duration_s, i.kind, i.site, {DEVICE} AS device, i.event_count AS events, "
              "i.max_score AS score, i.label, i.detail FROM incidents i "
              f"WHERE {OVERLAPS} AND {PICKED_I} "
              "ORDER BY i.opened_at DESC, i.incident_id LIMIT 1000", width=24, height=10,
              description="Every incident open at some time in the range, latest first; duration to its close or, while "
                          "open, to its last event"),
        ]),
        ("Labelling queue", [
            S("stat", "Windows to label", "SELECT count(*) AS waiting FROM escalations WHERE label IS NULL", width=4,
              description="Escalated windows the cloud model re-scored that no one has labelled yet"),
            S("table", "Labelling queue, largest disagreement first",
              "SELECT e.disagreement, e.device_id AS device, to_timestamp(e.window_end) AS window_end, e.edge_ratio AS edge, "
              "e.cloud_ratio AS cloud, e.verdict, e.edge_model, e.cloud_model, e.event_id, e.escalation_id "
              "FROM escalations e WHERE e.label IS NULL ORDER BY e.disagreement DESC, e.escalation_id LIMIT 200",
              width=20, height=10,
              description="Edge: the edge model's score / threshold. Cloud: the cloud model's mean normalised score "
                          "(confirmed at escalation.confirm_ratio). Disagreement: |edge - cloud|. Event id: the edge's event "
                          "when the window fired one. Label with edgewatch incidents label ESCALATION_ID --true-positive or "
                          "--false-positive (edgewatch incidents queue lists the same)"),
        ]),
        ("Retired devices", [
            S("table", "Retired devices",
              "SELECT device_id AS device, to_timestamp(retired_at) AS retired, reason FROM retired_devices "
              "ORDER BY retired_at DESC, device_id LIMIT 1000", width=12, height=8,
              description="Devices retired with edgewatch devices retire: they open no device_silent and are left out of "
                          "their peer group. edgewatch devices unretire brings one back"),
        ]),
    ]


def _annotation_sql(where: str) -> str:
    return (f"SELECT to_timestamp(i.opened_at) AS \"time\", to_timestamp({END}) AS timeend, "
            f"i.kind || ' ' || {DEVICE} || ': ' || i.detail AS text, i.kind || ',' || i.site AS tags "
            f"FROM incidents i WHERE {OVERLAPS} AND {where} ORDER BY i.opened_at")


def incidents_annotations() -> list[Annotation]:
    return [Annotation("Incidents", _annotation_sql(f"{PICKED_I}"), "red")]


def device_annotations() -> list[Annotation]:
    """The Device dashboard's incidents: those of the chosen devices, fleet incidents that name one of them included."""
    one = "'^(${device:regex})$'"
    return [Annotation("Incidents", _annotation_sql(
        f"(i.device_id ~ {one} OR EXISTS (SELECT 1 FROM jsonb_array_elements_text(i.device_ids::jsonb) d WHERE d ~ {one}))"),
        "red")]
