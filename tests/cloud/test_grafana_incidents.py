"""The Incidents dashboard and the Device dashboard's incident annotations (deploy/grafana/sqlpanels.py):
every SQL query of the committed JSON runs on a real PostgreSQL holding a processed stream and returns
the rows the store says it should.

The store is filled by the real processor code: an event stream (tests/cloud/processor_streams.py),
sensor faults included, through :class:`IncidentPipeline` in batches, then the fleet correlator up to
the stream's final time, the fleet watch's peer scorer and silence watch (cloud.fleetwatch), cloud
verdicts on escalated windows of some of its events (cloud.processor.verdicts), and operator
labels, as ``edgewatch process`` and ``edgewatch incidents label`` would.

Queries are sent as Grafana sends them: template variables interpolated the way Grafana formats
them for a SQL datasource (a multi-value variable as a quoted list, ``:regex`` as an escaped
regular expression), then the PostgreSQL datasource's macros expanded as its backend does
(pkg/tsdb/grafana-postgresql-datasource/macros.go and sqleng's ``$__interval`` and
``$__unixEpochFrom()``/``To()``).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from prometheus_client import CollectorRegistry

from cloud.fleetwatch import state as fstate
from cloud.fleetwatch.peers import PeerScorer
from cloud.fleetwatch.silence import SilenceWatch
from cloud.processor.backends import open_postgres
from cloud.processor.config import PeersSection, SilenceSection
from cloud.processor.fleet import FleetCorrelator
from cloud.processor.metrics import ProcessorMetrics
from cloud.processor.pipeline import IncidentPipeline
from cloud.processor.store import IncidentRow, Store
from cloud.processor.verdicts import ESCALATION_COLUMNS, label_escalation, store_verdicts
from edge.contract import AnomalyEvent, SensorFault, encode_event
from tests.cloud.processor_streams import T0, config, event, fleet_stream
from tests.cloud.test_grafana import GRAFANA, committed, load_generator

TOPIC = "g.anomalies"
ALL = None  # a variable set to All
Vars = Mapping[str, Sequence[str] | None]


# --- Grafana's interpolation, then its PostgreSQL macros ------------------------------------------

def _escape_regex(value: str) -> str:
    """@grafana/data's escapeRegex (what the ``:regex`` format applies to each value)."""
    return re.sub(r"[\\^$*+?.()|\[\]{}/]", lambda m: "\\" + m.group(0), value)


def interpolate(sql: str, variables: Vars, options: Mapping[str, Sequence[str]], all_values: Mapping[str, str]) -> str:
    """Template variables as Grafana's frontend writes them into a SQL datasource's query: a multi-value
    variable quoted and comma-separated (All: every option, or the variable's custom all value raw);
    ``${name:regex}``: one value escaped, several as ``(a|b)``, All as the custom all value."""

    def values(name: str) -> Sequence[str] | str:
        chosen = variables[name]
        if chosen is ALL:
            return all_values[name] if name in all_values else options[name]
        return chosen

    def regex(m: re.Match[str]) -> str:
        v = values(m.group(1))
        if isinstance(v, str):
            return v
        return _escape_regex(v[0]) if len(v) == 1 else "(" + "|".join(map(_escape_regex, v)) + ")"

    def quoted(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name not in variables:
            return m.group(0)
        v = values(name)
        return v if isinstance(v, str) else ",".join("'" + x.replace("'", "''") + "'" for x in v)

    sql = re.sub(r"\$\{(\w+):regex\}", regex, sql)
    return re.sub(r"\$\{(\w+)\}|\$(?!__)(\w+)", quoted, sql)


def _seconds(interval: str) -> int:
    m = re.fullmatch(r"(\d+)(s|m|h|d)", interval.strip("'"))
    assert m, f"interval {interval!r}"
    return int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def expand_macros(sql: str, start: int, end: int, interval: str) -> str:
    """The PostgreSQL datasource's backend: sqleng's replacements, then macros.go's macros (no TimescaleDB)."""
    sql = (sql.replace("$__interval_ms", str(_seconds(interval) * 1000)).replace("$__interval", interval)
           .replace("$__unixEpochFrom()", str(start)).replace("$__unixEpochTo()", str(end)))
    iso = {t: "'" + datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ") + "'" for t in (start, end)}  # RFC 3339

    def macro(m: re.Match[str]) -> str:
        name, args = m.group(1), [a.strip() for a in m.group(2).split(",")]
        if name == "__time":
            return f'{args[0]} AS "time"'
        if name == "__timeEpoch":
            return f'extract(epoch from {args[0]}) as "time"'
        if name == "__timeFilter":
            return f"{args[0]} BETWEEN {iso[start]} AND {iso[end]}"
        if name in ("__timeFrom", "__timeTo"):
            return iso[start if name == "__timeFrom" else end]
        if name in ("__timeGroup", "__timeGroupAlias"):
            s = _seconds(args[1])
            return f"floor(extract(epoch from {args[0]})/{s})*{s}" + (' AS "time"' if name.endswith("Alias") else "")
        if name == "__unixEpochFilter":
            return f"{args[0]} >= {start} AND {args[0]} <= {end}"
        if name in ("__unixEpochGroup", "__unixEpochGroupAlias"):
            s = _seconds(args[1])
            return f"floor(({args[0]})/{s})*{s}" + (' AS "time"' if name.endswith("Alias") else "")
        raise AssertionError(f"unknown macro {m.group(0)}")

    return re.sub(r"\$([_a-zA-Z0-9]+)\(([^\)]*)\)", macro, sql)


# --- the committed dashboards' SQL ----------------------------------------------------------------

def sql_targets(dash: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(panel title, or "annotation NAME", raw SQL) of every PostgreSQL query of a dashboard."""
    for a in dash.get("annotations", {}).get("list", []):
        if "rawSql" in a.get("target", {}):
            yield f"annotation {a['name']}", a["target"]["rawSql"]
    for panel in dash["panels"]:
        for t in panel.get("targets", []):
            if "rawSql" in t:
                yield panel["title"], t["rawSql"]


def variable_queries(dash: dict[str, Any]) -> dict[str, str]:
    return {v["name"]: v["query"] for v in dash["templating"]["list"]
            if v["type"] == "query" and v.get("datasource", {}).get("uid") == "${pgsource}"}


# --- a processed stream in PostgreSQL ---------------------------------------------------------------

@pytest.fixture
def store(postgres_dsn: str, tmp_path: Path) -> Iterator[Store]:
    s = open_postgres(postgres_dsn)
    s.migrate()
    cfg = config(tmp_path / "cloud.toml", bootstrap="127.0.0.1:1", topic=TOPIC, group="g", sqlite_path=tmp_path / "unused.db")
    now = T0 + 86_400
    pipe = IncidentPipeline(cfg, s, ProcessorMetrics(CollectorRegistry()), clock=lambda: now)
    events = fleet_stream(11, partitions=1, duration_s=2400) + [sensor_fault(SENSOR_DEVICE, T0 + 2300 + 10 * k) for k in range(3)]
    stream = [encode_event(e) for e in sorted(events, key=lambda e: (e.window_end, e.device_id))]
    records = list(enumerate(stream))  # (offset, value), as the consumer hands them over
    for i in range(0, len(records), 150):
        pipe.process(TOPIC, 0, records[i:i + 150])
    (watermark,) = s.partition_watermarks(TOPIC).values()
    assert watermark is not None
    FleetCorrelator(cfg.fleet, TOPIC).evaluate(s, watermark - cfg.incidents.allowed_lateness_s, now)
    watched(s, cfg.fleet.site_of, now)
    closed = [r for r in s.incidents(kind="incident") if r.closed_at is not None]
    assert s.label_incident(closed[0].incident_id, "true_positive", now)
    # escalated windows of the first events of open incidents (and one that fired no event), with the cloud's verdict
    held = [r for r in s.incidents(kind="incident") if r.closed_at is None][:3]
    windows = [(r.device_id, e["event_id"], e["window_end"]) for r in held
               for e in s.events_between(r.device_id, r.opened_at - cfg.incidents.window_s, r.last_event_at)[:2]]
    windows.append((held[0].device_id, "", held[0].opened_at + 1.0))
    rows = [{"escalation_id": f"esc-{k:02d}", "device_id": device, "agent_id": f"agent-{device}", "event_id": event_id,
             "window_end": end, "edge_model": "pump 1.0", "edge_ratio": 1.05, "cloud_model": "big 1.0",
             "cloud_ratio": 0.2 * k, "verdict": "dismissed" if k % 2 else "confirmed", "disagreement": abs(1.05 - 0.2 * k),
             "payload": "{}", "scored_at": now} for k, (device, event_id, end) in enumerate(windows)]
    with s.transaction():
        store_verdicts(s, [[r[c] for c in ESCALATION_COLUMNS] for r in rows], cfg.incidents.window_s)
    assert label_escalation(s, "esc-03", "false_positive", now)
    for k, device in enumerate(RETIRED):
        assert fstate.retire(s, device, now - 3600.0 * k, f"scrapped {k}")
    yield s
    s.close()


SENSOR_DEVICE = "plant-c-pump-09"
RETIRED = ["plant-a-pump-98", "plant-a-pump-99"]
PEERS = [f"plant-b-pump-{i:02d}" for i in range(10, 16)]  # a group of six; the last one's current leaves it
SILENT = "plant-b-pump-10"


def watched(store: Store, site_of: Any, now: float) -> None:
    """peer_outlier and device_silent incidents from the fleet watch's own code, written as its thread writes them."""
    section = PeersSection(enabled=True, span_s=300.0, tick_s=60.0, z_limit=5.0, min_duration_s=300.0, min_group_size=5)
    scorer, states = PeerScorer(section, lambda device, agent: site_of(device)), dict[str, Any]()
    rows: dict[str, IncidentRow] = {}
    for k in range(1, 40):
        t = T0 + 60.0 * k
        for n, d in enumerate(PEERS):
            current = 15.0 + 0.01 * n + (0.05 * max(0, k - 10) if d == PEERS[-1] else 0.0)
            scorer.add_means(states, d, "agent-b", t - 1.0, ("vibration", "current"), (2.0 + 0.01 * n, current))
        rows.update(scorer.tick(states, t).changes.incidents)
    silence, seen = SilenceWatch(SilenceSection(enabled=True, silent_after_periods=10.0), site_of), dict[str, Any]()
    for at, last in ((T0 + 1000.0, T0 + 999.0), (T0 + 1100.0, T0 + 1010.0), (T0 + 1200.0, T0 + 1199.0)):
        rows.update(silence.on_report(seen, "agent-b", at, {SILENT: last}, 1.0).changes.incidents)
    with store.transaction():
        store.upsert_incidents(rows.values(), now)


def sensor_fault(device: str, t: float) -> AnomalyEvent:
    """An agent's sensor_fault event: stuck then out of range, both on pressure."""
    e = event(device, t)
    check = "stuck" if t < T0 + 2310 else "range"
    return AnomalyEvent(device_id=e.device_id, agent_id=e.agent_id, window_start=e.window_start, window_end=e.window_end,
                        score=e.score, threshold=e.threshold, channel_scores=e.channel_scores, model_name=e.model_name,
                        model_version=e.model_version, model_sha256=e.model_sha256, detected_at=e.detected_at,
                        kind="sensor_fault", fault=SensorFault(check=check, channels=("pressure",), detail="flat"))


def run(dsn: str, sql: str) -> list[dict[str, Any]]:
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(sql.encode())
        names = [d.name for d in cur.description or ()]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def ms(t: datetime | float) -> float:
    """A time to the millisecond (to_timestamp keeps microseconds of a double; Grafana shows milliseconds)."""
    return round(t.timestamp() if isinstance(t, datetime) else t, 3)


def device_text(r: IncidentRow) -> str:
    return r.device_id or ", ".join(r.device_ids)


def end_of(r: IncidentRow) -> float:
    return max(r.opened_at, r.closed_at if r.closed_at is not None else r.last_event_at)


def test_every_incident_query_returns_what_the_store_holds(store: Store, postgres_dsn: str) -> None:
    rows = store.incidents(limit=100_000)
    kinds = sorted({r.kind for r in rows})
    sites = sorted({r.site for r in rows})
    assert set(kinds) == {"incident", "fleet_incident", "drift", "sensor_fault", "peer_outlier", "device_silent"}, kinds
    assert any(r.closed_at is None for r in rows) and any(r.closed_at is not None for r in rows)
    dashes = committed()
    incidents, device = dashes["edgewatch-incidents.json"], dashes["edgewatch-device.json"]

    # the variables' own queries list the kinds and sites
    queries = variable_queries(incidents)
    assert set(queries) == {"kind", "site"}
    options = {name: [r[next(iter(r))] for r in run(postgres_dsn, q)] for name, q in queries.items()}
    assert options == {"kind": kinds, "site": sites}

    start, end = int(T0) - 60, int(T0) + 3000
    in_range = [r for r in rows if start <= r.opened_at <= end]
    overlapping = [r for r in rows if r.opened_at <= end and end_of(r) >= start]
    open_rows = sorted((r for r in rows if r.closed_at is None), key=lambda r: (-r.opened_at, r.incident_id))
    dismissed = dict(store.execute("SELECT incident_id, dismissed FROM incidents"))
    assert any(dismissed.values())  # the cloud dismissed some events of open incidents
    queue = store.execute("SELECT escalation_id, device_id, event_id, window_end, edge_ratio, cloud_ratio, verdict, disagreement "
                          "FROM escalations WHERE label IS NULL ORDER BY disagreement DESC, escalation_id")

    def query(sql: str, chosen: Vars, *, lo: int = start, hi: int = end, interval: str = "1m") -> list[dict[str, Any]]:
        text = expand_macros(interpolate(sql, chosen, options, {"device": ".*"}), lo, hi, interval)
        assert not re.search(r"\$[\w{]", text), text  # nothing left for Grafana to fill in
        return run(postgres_dsn, text)

    every: Vars = {"kind": ALL, "site": ALL}
    checked: set[str] = set()
    for title, sql in sql_targets(incidents):
        got = query(sql, every)
        checked.add(title)
        if title == "Open incidents" and "incident_id" not in sql:  # the stat
            assert got == [{"open": len(open_rows)}]
            only = query(sql, {"kind": ["incident"], "site": ALL})
            assert only == [{"open": sum(r.kind == "incident" for r in open_rows)}]
            checked.add("stat")
        elif title == "Open incidents by kind":
            assert {g["kind"]: g["open"] for g in got} == dict(Counter(r.kind for r in open_rows))
        elif title == "Opened in the time range, by site and kind":
            want = Counter((r.site, r.kind) for r in in_range)
            assert {(g["site"], g["kind"]): g["opened"] for g in got} == dict(want)
            assert sum(g["still_open"] for g in got) == sum(r.closed_at is None for r in in_range)
            narrow = query(sql, {"kind": ALL, "site": [sites[-1]]}, lo=int(T0), hi=int(T0) + 600)
            assert {(g["site"], g["kind"]): g["opened"] for g in narrow} == dict(Counter(
                (r.site, r.kind) for r in rows if r.site == sites[-1] and T0 <= r.opened_at <= T0 + 600))
        elif title == "Open incidents":
            assert [g["incident_id"] for g in got] == [r.incident_id for r in open_rows]
            for g, r in zip(got, open_rows, strict=True):
                assert (g["kind"], g["site"], g["device"], g["score"], g["events"], g["detail"], g["dismissed"]) == (
                    r.kind, r.site, device_text(r), r.max_score, r.event_count, r.detail, dismissed[r.incident_id])
                assert g["opened"].timestamp() == pytest.approx(r.opened_at) and g["age_s"] > 0
                # every process event of the stream puts most of its score on vibration; a sensor fault names its own
                # channel (pressure), a peer outlier the channels outside its group; no channels for the others
                if r.kind != "drift":
                    assert g["channels"] == {"incident": "vibration", "sensor_fault": "pressure", "peer_outlier": "current"}.get(
                        r.kind), g
            assert SENSOR_DEVICE in [g["device"] for g in got if g["kind"] == "sensor_fault"]
            assert [g["device"] for g in got if g["kind"] == "peer_outlier"] == [PEERS[-1]]  # still outside its group
            assert query(sql, {"kind": ["fleet_incident"], "site": ALL}) == [g for g in got if g["kind"] == "fleet_incident"]
        elif title == "Incidents opened by kind":
            assert all(g["time"] % 60 == 0 for g in got)
            totals: Counter[str] = Counter()
            for g in got:
                totals[g["metric"]] += g["value"]
            assert totals == Counter(r.kind for r in in_range)
            hourly = query(sql, every, interval="1h")
            assert all(g["time"] % 3600 == 0 for g in hourly) and sum(g["value"] for g in hourly) == len(in_range)
        elif title == "Incident timeline":
            assert [g["kind"] for g in got] and {(g["kind"], g["device"], ms(g["opened"])) for g in got} == {
                (r.kind, device_text(r), ms(r.opened_at)) for r in overlapping}
            (silent,) = [g for g in got if g["kind"] == "device_silent"]
            assert silent["device"] == SILENT and silent["closed"] is not None  # silent, then readings again
            labelled = [g for g in got if g["label"] is not None]
            assert [g["label"] for g in labelled] == ["true_positive"]
            assert all(g["duration_s"] >= 0 for g in got)
            closed = {(r.kind, device_text(r), ms(r.opened_at)): r.closed_at for r in overlapping}
            assert all(closed[(g["kind"], g["device"], ms(g["opened"]))] == (None if g["closed"] is None else pytest.approx(
                g["closed"].timestamp(), abs=1e-3)) for g in got)
        elif title == "annotation Incidents":
            assert sorted((ms(g["time"]), ms(g["timeend"])) for g in got) == sorted(
                (ms(r.opened_at), ms(end_of(r))) for r in overlapping)
            assert all(g["tags"].split(",") in ([g["text"].split()[0], s] for s in sites) for g in got)
        elif title == "Windows to label":
            assert got == [{"waiting": len(queue)}] and len(queue) >= 4
        elif title == "Labelling queue, largest disagreement first":
            assert [g["escalation_id"] for g in got] == [q[0] for q in queue]
            assert [(g["device"], g["event_id"], ms(g["window_end"]), g["edge"], g["cloud"], g["verdict"], g["disagreement"])
                    for g in got] == [(q[1], q[2], ms(q[3]), q[4], q[5], q[6], q[7]) for q in queue]
            assert "esc-03" not in [g["escalation_id"] for g in got] and "" in [g["event_id"] for g in got]
        elif title == "Retired devices":
            assert [(g["device"], ms(g["retired"]), g["reason"]) for g in got] == [
                (d, ms(at), why) for d, (at, why) in sorted(fstate.retired(store).items(), key=lambda kv: (-kv[1][0], kv[0]))]
            assert [g["device"] for g in got] == RETIRED
        else:
            pytest.fail(f"no expectation for the Incidents panel {title!r}: add one here")
    assert checked == {"stat", "Open incidents", "Open incidents by kind", "Opened in the time range, by site and kind",
                       "Incidents opened by kind", "Incident timeline", "annotation Incidents", "Windows to label",
                       "Labelling queue, largest disagreement first", "Retired devices"}

    # the Device dashboard: its incidents as annotations, for every device or the chosen ones
    (anno,) = [sql for title, sql in sql_targets(device)]
    assert [title for title, _ in sql_targets(device)] == ["annotation Incidents"]
    everything = query(anno, {"device": ALL})
    assert len(everything) == len(overlapping)
    one = next(r.device_id for r in rows if r.kind == "incident" and any(r.device_id in f.device_ids for f in rows
                                                                            if f.kind == "fleet_incident"))
    mine = [r for r in overlapping if one in r.device_ids]
    got = query(anno, {"device": [one]})
    assert sorted((ms(g["time"]), g["text"].split()[0]) for g in got) == sorted((ms(r.opened_at), r.kind) for r in mine)
    assert {g["text"].split()[0] for g in got} == {"incident", "fleet_incident"}  # its own, and the fleet's that name it
    other = sorted({r.device_id for r in rows if r.device_id and r.device_id != one})[0]
    both = query(anno, {"device": [one, other]})
    assert len(both) == len([r for r in overlapping if one in r.device_ids or other in r.device_ids])
    assert query(anno, {"device": ["no-such-device"]}) == []


def test_interpolation_is_grafanas() -> None:
    """Spot checks of the helpers against Grafana's documented output."""
    assert interpolate("k IN ($kind) AND s IN (${site})", {"kind": ["a", "o'k"], "site": ALL}, {"site": ["x", "y"]}, {}) == \
        "k IN ('a','o''k') AND s IN ('x','y')"
    assert interpolate("'^(${device:regex})$'", {"device": ["pump.1", "b"]}, {}, {}) == "'^((pump\\.1|b))$'"
    assert interpolate("'^(${device:regex})$'", {"device": ALL}, {}, {"device": ".*"}) == "'^(.*)$'"
    assert expand_macros("$__unixEpochFilter(t) $__unixEpochGroupAlias(t, $__interval) $__timeFilter(c)", 10, 20, "5m") == \
        "t >= 10 AND t <= 20 floor((t)/300)*300 AS \"time\" c BETWEEN '1970-01-01T00:00:10Z' AND '1970-01-01T00:00:20Z'"


def test_generated_files_are_up_to_date_and_the_datasource_comes_from_the_environment() -> None:
    gen = load_generator()
    built = gen.dashboards()
    for name in ("edgewatch-incidents.json", "edgewatch-device.json"):
        assert gen.render(built[name]) == (GRAFANA / "dashboards" / name).read_text(), f"{name}: run python deploy/grafana/generate.py"
    sources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "edgewatch.yml").read_text())["datasources"]
    (pg,) = [s for s in sources if s["type"] == "grafana-postgresql-datasource"]
    assert pg["uid"] == "edgewatch-postgres"
    settings = [pg["url"], pg["user"], pg["jsonData"]["database"], pg["jsonData"]["sslmode"], pg["secureJsonData"]["password"]]
    assert all(re.fullmatch(r"(\$\{EDGEWATCH_GRAFANA_PG_[A-Z]+\}:?)+", s) for s in settings), settings
    # every SQL panel and annotation reads the PostgreSQL datasource variable
    for name, dash in committed().items():
        for panel in dash["panels"]:
            for t in panel.get("targets", []):
                if "rawSql" in t:
                    assert panel["datasource"] == t["datasource"] == {"type": "grafana-postgresql-datasource", "uid": "${pgsource}"}
        variables = {v["name"] for v in dash["templating"]["list"]}
        if list(sql_targets(dash)):
            assert "pgsource" in variables, name
        for title, sql in [*sql_targets(dash), *(("variable " + k, q) for k, q in variable_queries(dash).items())]:
            used = {v for v in re.findall(r"\$\{?(\w+)", sql) if not v.startswith("__")}
            assert used <= variables, f"{name} / {title}: uses undefined variables {used - variables}"
