"""Incident kinds (issue 16 item 2-4): sensor_fault incidents, [alerts] routes, peer outliers and silent devices.

Units with an injected clock (event time) for the robust peer statistic and the silence logic; on the real
brokers with a store: a slowly drifting device among its peers becomes peer_outlier (no peer incident over the
fault-free stretch before), a device silent past the threshold opens then closes device_silent, a retired one
does not, sensor_fault events make a sensor_fault incident (not an incident), and routes send a kind to its own
topic with its labels.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from cloud.fleetwatch import state as fstate
from cloud.fleetwatch.peers import PeerScorer, PeerState, robust_z
from cloud.fleetwatch.silence import SilenceWatch
from cloud.fleetwatch.watch import run_fleetwatch
from cloud.processor.backends import open_sqlite, open_store
from cloud.processor.config import PeersSection, SilenceSection
from cloud.processor.routes import AlertRoutes, parse_routes
from edge.contract import AnomalyEvent, ConfigError, ContractError, decode_alert, encode_alert, encode_event
from edge.contract.event import SensorFault
from edge.contract.samples import encode_telemetry, telemetry_from_window
from edge.contract.update import AgentInfo, ModelStatus, encode_status
from tests.cloud.processor_streams import SHA, T0, config, event, in_thread, write_config
from tests.kafka_util import create_topic
from tests.tools import wait_for

CHANNELS = ("temp", "vibration")
GROUP = [f"plant-a-pump-{i:02d}" for i in range(7)]
DRIFTER, SILENT, RETIRED = GROUP[5], GROUP[3], GROUP[6]
DRIFT_START_S = 3600.0
DRIFT_PER_S = 0.1 / 60  # temp rises 0.1 per minute from DRIFT_START_S
PEERS = PeersSection(enabled=True, group_by="site", span_s=600.0, tick_s=60.0, z_limit=5.0, min_duration_s=600.0,
                     min_group_size=5)


def site_of(device: str) -> str:
    return "-".join(device.split("-")[:2])


def window(device: str, t: float, rng: random.Random, offset: float, drift: float = 0.0) -> tuple[list[float], list[list[float]]]:
    """Ten readings per window ending at ``t``: temp ~ 20 + the device's offset (+ drift), vibration ~ 1."""
    ts = [t - 9 + i for i in range(10)]
    return ts, [[20.0 + offset + drift + rng.gauss(0, 0.3), 1.0 + offset / 10 + rng.gauss(0, 0.05)] for _ in ts]


def fleet_windows(hours: float, *, drifting: bool, seed: int = 3) -> list[tuple[float, str, list[float], list[list[float]]]]:
    """One window a minute per device of GROUP; ``DRIFTER`` drifts from ``DRIFT_START_S`` if ``drifting``."""
    rng = random.Random(seed)
    offsets = {d: rng.gauss(0, 0.5) for d in GROUP}
    out = []
    for k in range(int(hours * 60)):
        t = T0 + 60.0 * (k + 1)
        for d in GROUP:
            drift = max(0.0, t - T0 - DRIFT_START_S) * DRIFT_PER_S if drifting and d == DRIFTER else 0.0
            ts, values = window(d, t, rng, offsets[d], drift)
            out.append((t, d, ts, values))
    return out


# -- units ---------------------------------------------------------------------------------------------------------

def test_robust_z_is_median_and_scaled_mad_with_a_floor() -> None:
    z = robust_z({"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0, "e": 100.0}, 1e-6)
    assert z["c"] == 0.0  # the median
    assert z["b"] == pytest.approx(-1 / 1.4826) and z["e"] == pytest.approx(97 / 1.4826)  # MAD = 1: one outlier moves nothing
    same = robust_z({d: 5.0 for d in "abcde"} | {"f": 5.001}, 1e-3)
    assert same["f"] == pytest.approx(1.0)  # identical peers: the floor, not a division by zero


def run_peers(windows: list[tuple[float, str, list[float], list[list[float]]]], section: PeersSection = PEERS,
              retired: tuple[str, ...] = ()) -> tuple[list[Any], dict[str, PeerState]]:
    """Feed windows in time order and tick every tick_s of event time as the watch does; the incident rows."""
    scorer = PeerScorer(section, lambda device, agent: site_of(device))
    states: dict[str, PeerState] = {}
    rows: list[Any] = []
    tick = T0
    for t, d, ts, values in windows:
        while tick + section.tick_s <= t - 20.0:
            tick += section.tick_s
            res = scorer.tick(states, tick, retired)
            rows.extend(res.changes.incidents.values())
        scorer.add_window(states, d, "agent-a", CHANNELS, ts, values)
    return rows, states


def test_a_slowly_drifting_device_becomes_a_peer_outlier_and_the_fault_free_fleet_raises_nothing() -> None:
    quiet, _ = run_peers(fleet_windows(3.0, drifting=False))
    assert quiet == []  # three fault-free hours of seven devices: no peer incident
    rows, states = run_peers(fleet_windows(3.0, drifting=True))
    opened = {r.incident_id: r for r in rows}
    assert {r.device_id for r in opened.values()} == {DRIFTER}
    first = min(opened.values(), key=lambda r: r.opened_at)
    # outside by |z| > 5 about 25 min after the drift starts (2.5 of temp over offsets of sd 0.5), then 10 min to open
    assert T0 + DRIFT_START_S + PEERS.min_duration_s <= first.opened_at <= T0 + DRIFT_START_S + 3600
    assert first.kind == "peer_outlier" and "temp" in first.detail and first.site == "plant-a"
    assert states[DRIFTER]["open"] is not None


def test_a_peer_outlier_closes_when_the_device_is_back_and_small_groups_are_skipped() -> None:
    windows = fleet_windows(2.5, drifting=True)
    back = [(t, d, ts, [[v[0] - max(0.0, t - T0 - DRIFT_START_S) * DRIFT_PER_S, v[1]] for v in values])
            if d == DRIFTER and t > T0 + 2 * 3600 else (t, d, ts, values) for t, d, ts, values in windows]
    rows, states = run_peers(back)
    closed = [r for r in rows if r.closed_at is not None]
    assert closed and closed[-1].device_id == DRIFTER and closed[-1].closed_at > T0 + 2 * 3600
    assert states[DRIFTER]["open"] is None
    small = PeersSection(**{**PEERS.__dict__, "min_group_size": 8})
    scorer = PeerScorer(small, lambda device, agent: site_of(device))
    _, states = run_peers(windows, small)
    res = scorer.tick(states, T0 + 2.4 * 3600)
    assert res.skipped == {"plant-a": 7} and res.compared == 0 and not res.changes.incidents


def test_a_retired_device_is_left_out_of_its_group() -> None:
    rows, states = run_peers(fleet_windows(3.0, drifting=True), retired=(DRIFTER,))
    assert rows == [] and states[DRIFTER]["open"] is None


def test_silence_opens_past_the_limit_closes_when_readings_resume_and_ignores_old_reports() -> None:
    watch = SilenceWatch(SilenceSection(enabled=True, silent_after_periods=3, default_period_s=10.0), site_of)
    states: dict[str, Any] = {}
    d = "plant-a-pump-01"
    assert not watch.on_report(states, "agent-a", T0 + 60, {d: T0 + 59}, 10.0).changes.alerts
    res = watch.on_report(states, "agent-a", T0 + 120, {d: T0 + 60}, 10.0)  # 60 s > 3 x 10 s
    (row,) = res.changes.incidents.values()
    assert row.kind == "device_silent" and row.opened_at == T0 + 90 and row.closed_at is None
    assert [a.action for a in res.changes.alerts] == ["open"]
    again = watch.on_report(states, "agent-a", T0 + 120, {d: T0 + 60}, 10.0)  # read twice: nothing
    assert not again.changes.incidents and not again.changes.alerts
    still = watch.on_report(states, "agent-a", T0 + 180, {d: T0 + 60}, 10.0)
    assert [r.incident_id for r in still.changes.incidents.values()] == [row.incident_id] and not still.changes.alerts
    done = watch.on_report(states, "agent-a", T0 + 240, {d: T0 + 235}, 10.0)
    (closed,) = done.changes.incidents.values()
    assert closed.incident_id == row.incident_id and closed.closed_at == T0 + 235
    assert [a.action for a in done.changes.alerts] == ["close"]
    retired = watch.on_report(states, "agent-a", T0 + 400, {d: T0 + 235}, 10.0, retired={d})
    assert not retired.changes.alerts  # a retired device never opens one


def test_routes_name_the_bad_key_and_send_a_kind_to_its_topic_with_labels() -> None:
    for bad, where in ((["topic=a", "topic=b"], "alerts.routes.sensor_fault"), (["oops"], "alerts.routes.sensor_fault"),
                       (["topic=bad topic"], "alerts.routes.sensor_fault")):
        with pytest.raises(ConfigError, match=where.replace(".", r"\.")):
            parse_routes({"sensor_fault": tuple(bad)}, "cloud.toml")
    with pytest.raises(ConfigError, match="alerts.routes.no_such_kind"):
        parse_routes({"no_such_kind": ("topic=x",)}, "cloud.toml")
    routes = AlertRoutes(parse_routes({"peer_outlier": ("topic=ops.peers", "team=ops")}, "cloud.toml"), "alerts")
    from cloud.fleetwatch.silence import _alert
    from cloud.processor.store import IncidentRow

    row = IncidentRow("0" * 32, "device_silent", "plant-a", "d", ("d",), T0, None, T0, 0, 0.0)
    payload = encode_alert(_alert(row, "open")).decode()
    assert routes.route(payload) == ("alerts", payload)
    topic, routed = routes.route(payload.replace('"device_silent"', '"peer_outlier"'))
    assert topic == "ops.peers" and decode_alert(routed).labels == {"team": "ops"}


def test_a_group_key_that_can_never_match_is_a_config_error_at_start_up(tmp_path: Path) -> None:
    base = dict(bootstrap="127.0.0.1:9092", topic="t", group="g", sqlite_path=tmp_path / "s.db")
    with pytest.raises(ConfigError, match=r"peers\.pattern = '\^pump-\\\\d\+\$' has no capture group"):
        config(tmp_path / "a.toml", **base, extra='[peers]\nenabled = true\ngroup_by = "regex"\npattern = "^pump-\\\\d+$"')
    with pytest.raises(ConfigError, match="peers.group_by = 'site' can never match"):
        write = write_config(tmp_path / "b.toml", **base, extra='[peers]\nenabled = true')  # type: ignore[arg-type]
        write.write_text(write.read_text().replace("prefix_parts = 2", "prefix_parts = 0"))
        from cloud.processor.config import load_config

        load_config(write, env={})
    ok = config(tmp_path / "c.toml", **base, extra='[peers]\nenabled = true\ngroup_by = "regex"\npattern = "^(\\\\w+)-\\\\d+$"')
    assert ok.peers.pattern == "^(\\w+)-\\d+$"


# -- on the real brokers -------------------------------------------------------------------------------------------

def produce(bootstrap: str, items: list[tuple[str, str, bytes]]) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20)
    for topic, key, value in items:
        producer.send(topic, key=key.encode(), value=value)
    producer.flush(60)
    producer.close()


def read_topic(bootstrap: str, topic: str, expected: int, timeout_s: float = 30.0) -> list[bytes]:
    from tests.kafka_util import consume

    return consume(bootstrap, topic, f"reader-{topic}", expected, timeout_s)


def report(t: float, last_seen: dict[str, float]) -> bytes:
    info = AgentInfo(agent_version="0", onnxruntime="1.20", max_opset=21, arch="x86_64", mem_total_bytes=1 << 30,
                     mem_available_bytes=1 << 29, disk_free_bytes=1 << 30, devices=len(last_seen), group="pumps",
                     last_seen=last_seen)
    return encode_status(ModelStatus(agent_id="agent-a", action="report", model_name="pump", model_version="1.0", reason="",
                                     at=t, live_version="1.0", agent=info))


@pytest.mark.brokers
def test_peer_outlier_silent_and_retired_devices_through_kafka_and_the_store(kafka_bootstrap: str, unique: str,
                                                                             tmp_path: Path) -> None:
    topic = f"fk.{unique}"
    for name in (f"{topic}.telemetry", f"{topic}.status", f"{topic}.alerts", f"{topic}.peers"):
        create_topic(kafka_bootstrap, name)
    cfg = config(tmp_path / "cloud.toml", bootstrap=kafka_bootstrap, topic=topic, group=f"g-{unique}",
                 sqlite_path=tmp_path / "s.db", extra=f"""
[rollout]
status_topic = "{topic}.status"

[alerts]
routes = {{ peer_outlier = ["topic={topic}.peers", "team=reliability"] }}

[peers]
enabled = true
span_s = 600.0
tick_s = 60.0
z_limit = 5.0
min_duration_s = 600.0
min_group_size = 5

[silence]
enabled = true
silent_after_periods = 3
default_period_s = 60.0
""")
    store = open_store(cfg.store)
    assert fstate.retire(store, RETIRED, time.time(), "decommissioned")
    windows = fleet_windows(2.5, drifting=True)
    # SILENT and RETIRED send nothing from 90 to 95 min: 5 periods of 60 s, 3 past the threshold of 3
    gap = (T0 + 90 * 60, T0 + 95 * 60)
    items = [(f"{topic}.telemetry", d, encode_telemetry(telemetry_from_window(
        device_id=d, agent_id="agent-a", reason="sampled", channels=CHANNELS, ts=ts, values=values, score=0.5, threshold=1.0,
        anomalous=False, model_sha256=SHA))) for t, d, ts, values in windows if not (d in (SILENT, RETIRED) and gap[0] < t <= gap[1])]
    for k in range(1, int(2.5 * 60) + 1):
        t = T0 + 60.0 * k
        seen = {d: (gap[0] if d in (SILENT, RETIRED) and gap[0] < t <= gap[1] else t) for d in GROUP}
        items.append((f"{topic}.status", "agent-a", report(t + 1, seen)))
    produce(kafka_bootstrap, items)
    stop, registry = threading.Event(), CollectorRegistry()
    thread = threading.Thread(target=run_fleetwatch, args=(cfg, stop, registry), daemon=True)
    thread.start()
    try:
        def done() -> bool:
            kinds = [(r.kind, r.device_id, r.closed_at is None) for r in store.incidents()]
            return ("device_silent", SILENT, False) in kinds and any(k == "peer_outlier" for k, _, _ in kinds)
        wait_for(done, 90, "a closed device_silent and a peer_outlier", state=lambda: store.incidents())
        routed = read_topic(kafka_bootstrap, f"{topic}.peers", 1)
        plain = read_topic(kafka_bootstrap, f"{topic}.alerts", 2)
    finally:
        stop.set()
        thread.join(30)
    rows = store.incidents()
    peers = [r for r in rows if r.kind == "peer_outlier"]
    assert {r.device_id for r in peers} == {DRIFTER}
    assert min(r.opened_at for r in peers) >= T0 + DRIFT_START_S  # nothing over the fault-free first hour
    assert min(r.opened_at for r in peers) <= T0 + DRIFT_START_S + 3600
    (silent,) = [r for r in rows if r.kind == "device_silent"]
    assert silent.device_id == SILENT and silent.opened_at == gap[0] + 180 and silent.closed_at is not None
    assert not [r for r in rows if r.device_id == RETIRED]
    alerts = [decode_alert(v) for v in routed]
    assert {a.kind for a in alerts} == {"peer_outlier"} and alerts[0].labels == {"team": "reliability"}
    assert {(a.kind, a.action) for a in map(decode_alert, plain)} == {("device_silent", "open"), ("device_silent", "close")}
    opened = registry.get_sample_value("edgewatch_processor_incidents_opened_total", {"kind": "device_silent"})
    assert opened == 1.0
    assert store.execute("SELECT COUNT(*) FROM agent_reports")[0][0] == 1  # the reports kept as the rollout thread keeps them
    store.close()


def fault(device: str, t: float, check: str = "stuck") -> AnomalyEvent:
    e = event(device, t)
    return AnomalyEvent(device_id=e.device_id, agent_id=e.agent_id, window_start=e.window_start, window_end=e.window_end,
                        score=e.score, threshold=e.threshold, channel_scores=e.channel_scores, model_name=e.model_name,
                        model_version=e.model_version, model_sha256=e.model_sha256, detected_at=e.detected_at,
                        kind="sensor_fault", fault=SensorFault(check=check, channels=("pressure",), detail="flat"))  # type: ignore[arg-type]


@pytest.mark.brokers
def test_sensor_fault_events_make_a_sensor_fault_incident_routed_to_its_own_topic(kafka_bootstrap: str, unique: str,
                                                                                tmp_path: Path) -> None:
    topic = f"sf.{unique}"
    for name in (topic, f"{topic}.alerts", f"{topic}.maintenance"):
        create_topic(kafka_bootstrap, name)
    cfg = config(tmp_path / "cloud.toml", bootstrap=kafka_bootstrap, topic=topic, group=f"g-{unique}",
                 sqlite_path=tmp_path / "s.db",
                 extra=f'[alerts]\nroutes = {{ sensor_fault = ["topic={topic}.maintenance", "team=maintenance"] }}')
    faulty, sick, clock = "plant-a-pump-01", "plant-a-pump-02", "bg-001"
    events = [fault(faulty, T0 + 10 * i, "stuck" if i < 3 else "range") for i in range(6)]
    events = sorted(events + [event(sick, T0 + 10 * i + 1, 3.0) for i in range(4)], key=lambda e: e.window_end)
    events += [event(clock, T0 + 600 + i, 1.5) for i in range(2)]  # moves the watermark past every quiet period
    produce(kafka_bootstrap, [(topic, e.device_id, encode_event(e)) for e in events])
    registry = CollectorRegistry()
    thread, stop, errors = in_thread(cfg, registry)
    try:
        routed = read_topic(kafka_bootstrap, f"{topic}.maintenance", 2, 60)
        plain = read_topic(kafka_bootstrap, f"{topic}.alerts", 2, 60)
    finally:
        stop.set()
        thread.join(30)
    assert not errors
    store = open_sqlite(Path(cfg.store.sqlite_path))
    rows = {(r.kind, r.device_id): r for r in store.incidents()}
    store.close()
    assert set(rows) == {("sensor_fault", faulty), ("incident", sick)}
    sf = rows["sensor_fault", faulty]
    assert sf.event_count == 6 and sf.statistic == "range,stuck" and "stuck(pressure)" in sf.detail and sf.closed_at is not None
    alerts = [decode_alert(v) for v in routed]
    assert [(a.kind, a.action) for a in alerts] == [("sensor_fault", "open"), ("sensor_fault", "close")]
    assert all(a.labels == {"team": "maintenance"} for a in alerts)
    assert {decode_alert(v).kind for v in plain} == {"incident"}
    assert registry.get_sample_value("edgewatch_processor_incidents_opened_total", {"kind": "sensor_fault"}) == 1.0


def telemetry_records(topic: str, windows: list[tuple[float, str, list[float], list[list[float]]]]) -> list[tuple[str, bytes | None]]:
    return [(topic, encode_telemetry(telemetry_from_window(
        device_id=d, agent_id="agent-a", reason="sampled", channels=CHANNELS, ts=ts, values=values, score=0.5, threshold=1.0,
        anomalous=False, model_sha256=SHA))) for _, d, ts, values in windows]


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_the_fleet_watch_continues_from_the_store_after_a_restart_and_replays_change_nothing(
        tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    from cloud.fleetwatch.watch import FleetWatch, FleetWatchMetrics

    server = request.getfixturevalue("postgres_server") if backend == "postgres" else None

    def run(db: str, cut: int) -> list[tuple[Any, ...]]:
        dsn = server.create_database(f"fk_{db}_{tmp_path.name[-8:].lower()}") if server is not None else ""
        cfg = config(tmp_path / f"{db}.toml", bootstrap="127.0.0.1:9092", topic="t", group="g", sqlite_path=tmp_path / f"{db}.db",
                     backend=backend, dsn=dsn,
                     extra='[peers]\nenabled = true\ntick_s = 60.0\nspan_s = 600.0\nmin_duration_s = 600.0\nz_limit = 5.0')
        records = telemetry_records("t.telemetry", fleet_windows(2.5, drifting=True))
        store = open_store(cfg.store)
        for part in (records[:cut], records[cut - 70:]):  # the second watch re-reads 70 records (at-least-once)
            watch = FleetWatch(cfg, store, FleetWatchMetrics(CollectorRegistry()))
            for i in range(0, len(part), 100):
                watch.apply(part[i:i + 100])
        rows = store.execute("SELECT incident_id, kind, device_id, opened_at, closed_at, event_count FROM incidents ORDER BY 1")
        store.close()
        return rows

    once, restarted = run("once", 70), run("restarted", 500)
    assert once and once == restarted and {r[2] for r in once} == {DRIFTER}


def test_devices_retire_and_unretire_are_stored(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cloud.cli import main

    path = write_config(tmp_path / "cloud.toml", bootstrap="127.0.0.1:9092", topic="t", group="g", sqlite_path=tmp_path / "s.db")
    assert main(["devices", "retire", "pump-07", "--config", str(path)]) == 2  # no store yet: refused, none created
    open_store(config(path, bootstrap="127.0.0.1:9092", topic="t", group="g", sqlite_path=tmp_path / "s.db").store).close()
    assert main(["devices", "retire", "pump-07", "--reason", "scrapped", "--config", str(path)]) == 0
    assert main(["devices", "retired", "--config", str(path)]) == 0
    assert "pump-07" in capsys.readouterr().out
    assert main(["devices", "unretire", "pump-07", "--config", str(path)]) == 0
    assert main(["devices", "unretire", "pump-07", "--config", str(path)]) == 1


def test_the_fast_window_path_agrees_with_the_contract_or_declines() -> None:
    import orjson

    from cloud.fleetwatch.fastwindow import FastWindows, means_of
    from edge.contract.samples import decode_telemetry

    fast = FastWindows()
    (payload,) = [v for _, v in telemetry_records("t", fleet_windows(1 / 60, drifting=False))[:1]]
    got, want = fast.window_means(payload), means_of(decode_telemetry(payload))
    assert got is not None and want is not None
    assert got[:4] == want[:4] and got.means == pytest.approx(want.means, rel=1e-12)
    doc = orjson.loads(payload)
    for bad in ({"values": [[True, 1.0]] * len(doc["ts"])}, {"device_id": "no spaces"}, {"ts": doc["ts"][:-1]},
                {"score": float("inf")}, {"extra": 1}, {"schema": True}, {"channels": []}):
        broken = orjson.dumps({**doc, **bad}) if "inf" not in repr(bad) else payload.replace(b'"score":0.5', b'"score":1e999')
        assert fast.window_means(broken) is None
        with pytest.raises(ContractError):
            decode_telemetry(broken)


def test_a_group_key_that_matches_no_device_is_reported_after_the_grace(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from cloud.fleetwatch.watch import FleetWatch, FleetWatchMetrics

    cfg = config(tmp_path / "c.toml", bootstrap="127.0.0.1:9092", topic="t", group="g", sqlite_path=tmp_path / "s.db",
                 extra='[peers]\nenabled = true\ngroup_by = "regex"\npattern = "^(turbine)-\\\\d+$"\nstartup_grace_s = 0.0')
    registry = CollectorRegistry()
    store = open_store(cfg.store)
    watch = FleetWatch(cfg, store, FleetWatchMetrics(registry))
    watch.apply(telemetry_records("t.telemetry", fleet_windows(0.2, drifting=False)))
    assert registry.get_sample_value("edgewatch_processor_peer_group_key_unmatched") == 1.0
    assert registry.get_sample_value("edgewatch_processor_peer_devices_ungrouped") == len(GROUP)
    assert "peers_group_key_matches_no_device group_by=regex" in caplog.text
    FleetWatch(cfg, store, FleetWatchMetrics(CollectorRegistry()))  # and at start-up, over the devices stored
    assert caplog.text.count("peers_group_key_matches_no_device") == 2 and "at start-up" in caplog.text
    store.close()


def test_fifty_devices_in_five_groups_a_fault_free_hour_raises_nothing_and_one_drifter_is_found(tmp_path: Path) -> None:
    """The acceptance fleet through the fleet watch (store included, without Kafka): groups by a device-id pattern."""
    from cloud.fleetwatch.watch import FleetWatch, FleetWatchMetrics

    kinds = ["pump", "fan", "compressor", "mixer", "valve"]
    devices = [f"{k}-{i:02d}" for k in kinds for i in range(10)]
    drifter = "fan-07"
    rng = random.Random(5)
    base = {k: rng.uniform(10, 80) for k in kinds}
    offsets = {d: rng.gauss(0, 0.5) for d in devices}
    cfg = config(tmp_path / "c.toml", bootstrap="127.0.0.1:9092", topic="t", group="g", sqlite_path=tmp_path / "s.db",
                 extra='[peers]\nenabled = true\ngroup_by = "regex"\npattern = "^([a-z]+)-\\\\d+$"\n'
                       '[silence]\nenabled = true\nsilent_after_periods = 3\ndefault_period_s = 60.0')
    store = open_store(cfg.store)
    watch = FleetWatch(cfg, store, FleetWatchMetrics(CollectorRegistry()))
    for k in range(1, 2 * 60 + 1):  # two hours, a window a minute per device, a report a minute
        t = T0 + 60.0 * k
        windows = []
        for d in devices:
            drift = max(0.0, t - T0 - 3600) * DRIFT_PER_S if d == drifter else 0.0
            ts, values = window(d, t, rng, base[d.split("-")[0]] - 20 + offsets[d], drift)
            windows.append((t, d, ts, values))
        records = telemetry_records(cfg.kafka.telemetry_topic, windows)
        records.append((cfg.rollout.status_topic, report(t + 1, {d: t for d in devices})))
        watch.apply(records)
    rows = store.incidents()
    store.close()
    assert [(r.kind, r.device_id) for r in rows] == [("peer_outlier", drifter)]
    assert T0 + 3600 + 600 <= rows[0].opened_at <= T0 + 7200 and rows[0].site == "fan"
