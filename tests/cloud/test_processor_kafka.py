"""The processor against the real local Kafka (and PostgreSQL): crash and rebalance, replay,
malformed input at volume, fleet incidents, graceful stop. Every Kafka topic and group is fresh.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from prometheus_client import CollectorRegistry

from cloud.processor.backends import open_postgres, open_sqlite
from cloud.processor.config import ProcessorConfig
from cloud.processor.store import Store
from edge.contract import Alert, AnomalyEvent, decode_alert, encode_event
from localdev.stack import LocalStack
from tests.cloud.processor_streams import T0, background_devices, burst, config, event, fleet_stream, in_thread, write_config
from tests.kafka_util import create_topic
from tests.tools import wait_for

pytestmark = pytest.mark.brokers
REPO = Path(__file__).resolve().parents[2]


def produce(bootstrap: str, topic: str, items: list[tuple[str | None, bytes | None]]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20, batch_size=256 * 1024)
    for key, value in items:
        producer.send(topic, key=key.encode() if key else None, value=value)
    producer.flush(60)
    producer.close()


def events_items(events: list[AnomalyEvent]) -> list[tuple[str | None, bytes | None]]:
    return [(e.device_id, encode_event(e)) for e in events]


def read_all(bootstrap: str, topic: str, expected: int, timeout_s: float = 30.0) -> list[Any]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False,
                             consumer_timeout_ms=2000)
    parts = consumer.partitions_for_topic(topic) or {0}
    consumer.assign([TopicPartition(topic, p) for p in parts])
    out: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while len(out) < expected and time.monotonic() < deadline:
        for recs in consumer.poll(timeout_ms=500).values():
            out.extend(recs)
    # and nothing more than expected arrives
    end = time.monotonic() + 1.0
    while time.monotonic() < end:
        for recs in consumer.poll(timeout_ms=200).values():
            out.extend(recs)
    consumer.close()
    return out


def caught_up(bootstrap: str, group: str, topic: str) -> bool:
    """True when the group's committed offsets reached the end of every partition that holds data."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        ends = consumer.end_offsets(parts)
        return bool(parts) and all(ends[tp] == 0 or (consumer.committed(tp) or 0) >= ends[tp] for tp in parts)
    finally:
        consumer.close()


def dump(store: Store) -> dict[str, list[tuple[Any, ...]]]:
    q = {
        "events": "SELECT event_id, device_id, window_end, score, kafka_partition, kafka_offset, late FROM events ORDER BY event_id",
        "incidents": "SELECT incident_id, kind, site, device_id, device_ids, opened_at, closed_at, last_event_at, event_count, "
                     "max_score, statistic, observed, expected FROM incidents ORDER BY incident_id",
        "alerts": "SELECT alert_id, incident_id, payload FROM alerts ORDER BY alert_id",
        "deadletters": "SELECT topic, kafka_partition, kafka_offset, field, reason FROM deadletters ORDER BY kafka_offset",
        "device_state": "SELECT device_id, state FROM device_state ORDER BY device_id",
    }
    return {k: store.execute(v) for k, v in q.items()}


def run_until(cfg: ProcessorConfig, done: Any, timeout_s: float = 240.0, registry: CollectorRegistry | None = None) -> None:
    thread, stop, errors = in_thread(cfg, registry)
    try:
        wait_for(lambda: bool(done()) or not thread.is_alive(), timeout_s, "the processor to finish the input")
        assert thread.is_alive(), f"processor died: {errors!r}"
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive(), "processor did not stop within 30 s of the stop request"
    assert errors == []


def start_process(cfg_path: Path, log_path: Path, dsn: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "EDGEWATCH_STORE__POSTGRES_DSN": dsn, "PYTHONPATH": str(REPO)}
    with log_path.open("ab") as log:
        return subprocess.Popen([sys.executable, "-m", "cloud.cli", "process", "--config", str(cfg_path)],
                                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)


def assigned(log_path: Path) -> bool:
    return "partitions_assigned partitions=[" in log_path.read_text() and "partitions=[]" not in log_path.read_text().rsplit(
        "partitions_assigned", 1)[-1][:20]


def test_sigkill_mid_stream_then_restart_matches_a_single_process_run_and_replay_changes_nothing(
        kafka_bootstrap: str, unique: str, postgres_dsn: str, tmp_path: Path) -> None:
    topic = f"anomalies.{unique}"
    create_topic(kafka_bootstrap, topic, partitions=4)
    stream = fleet_stream(11, duration_s=2400)
    group = f"proc-{unique}"
    cfg_path = write_config(tmp_path / "pg.toml", bootstrap=kafka_bootstrap, topic=topic, group=group, backend="postgres",
                            dsn="set-by-environment")
    cfg_text = cfg_path.read_text().replace("max_poll_records = 200", "max_poll_records = 10")
    cfg_path.write_text(cfg_text)
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = [start_process(cfg_path, logs[0], postgres_dsn), start_process(cfg_path, logs[1], postgres_dsn)]
    store = open_postgres(postgres_dsn)
    try:
        wait_for(lambda: all(assigned(p) for p in logs) and store_ready(store), 180, "both processors to own partitions")
        # the rest of the stream comes after the kill: however fast the group is, the kill is mid-stream
        items = events_items(stream)
        head = len(items) * 3 // 5
        produce(kafka_bootstrap, topic, items[:head])
        wait_for(lambda: store.count("events") >= len(stream) // 4, 60, "a quarter of the stream to be stored")
        procs[1].kill()  # SIGKILL
        procs[1].wait(10)
        procs[1] = start_process(cfg_path, logs[1], postgres_dsn)
        produce(kafka_bootstrap, topic, items[head:])
        # done: every event stored, offsets committed, and every alert published (the killed process's
        # stored-but-unpublished ones by the orphan sweep of the others)
        wait_for(lambda: store.count("events") == len(stream) and caught_up(kafka_bootstrap, group, topic)
                 and store.unpublished("alerts") == [], 120, "the group to process the whole stream",
                 state=lambda: {"events": (store.count("events"), len(stream)), "caught_up": caught_up(kafka_bootstrap, group, topic),
                          "unpublished_alerts": len(store.unpublished("alerts"))})
        # the restarted process may still be starting when the first one has finished the stream alone
        wait_for(lambda: logs[1].read_text().count("processor_started") >= 2, 60, "the restarted processor to start")
        for p in procs:
            p.send_signal(signal.SIGTERM)
        assert [p.wait(30) for p in procs] == [0, 0], "SIGTERM must drain and exit 0"
        two_process = dump(store)
        assert len(two_process["events"]) == len({e.event_id for e in stream}) == len(stream)
        # every stored alert reached the alerts topic
        published = [decode_alert(r.value) for r in read_all(kafka_bootstrap, f"{topic}.alerts", len(two_process["alerts"]))]
        assert {a.alert_id for a in published} == {r[0] for r in two_process["alerts"]}

        # the same input through one process, another group and store (SQLite)
        single_cfg = config(tmp_path / "single.toml", bootstrap=kafka_bootstrap, topic=topic, group=f"single-{unique}",
                            sqlite_path=tmp_path / "single.db")
        single = open_sqlite(tmp_path / "single.db")
        single.migrate()
        run_until(single_cfg, lambda: single.count("events") == len(stream) and caught_up(kafka_bootstrap, f"single-{unique}", topic))
        one_process = dump(single)
        single.close()
        kinds = {r[1] for r in two_process["incidents"]}
        assert {"incident", "fleet_incident"} <= kinds
        for table in ("events", "incidents", "alerts", "device_state"):
            assert two_process[table] == one_process[table], table

        # replay from offset 0 (a new group on the same store): nothing changes
        replay_cfg = config(tmp_path / "replay.toml", bootstrap=kafka_bootstrap, topic=topic, group=f"replay-{unique}",
                            backend="postgres", dsn=postgres_dsn)
        run_until(replay_cfg, lambda: caught_up(kafka_bootstrap, f"replay-{unique}", topic))
        assert dump(store) == two_process
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        store.close()


def store_ready(store: Store) -> bool:
    try:
        store.count("events")
        return True
    except Exception:  # the processors create the schema; until then the table is missing
        store.conn.rollback() if not store.conn.autocommit else None
        return False


@pytest.mark.parametrize("own_process", [True, False], ids=["store-process", "one-process"])
def test_a_store_that_refuses_writes_loses_nothing_and_the_result_equals_an_undisturbed_run(
        kafka_bootstrap: str, unique: str, tmp_path: Path, own_process: bool) -> None:
    topic = f"anomalies.{unique}"
    create_topic(kafka_bootstrap, topic, partitions=4)
    stream = fleet_stream(7, duration_s=1500)
    items = events_items(stream)
    head = len(items) // 3
    cfg = config(tmp_path / "c.toml", bootstrap=kafka_bootstrap, topic=topic, group=f"g-{unique}", sqlite_path=tmp_path / "s.db",
                 own_process=own_process)
    store = open_sqlite(tmp_path / "s.db")
    store.migrate()
    registry = CollectorRegistry()
    errors_seen = lambda: registry.get_sample_value("edgewatch_processor_store_errors_total") or 0  # noqa: E731
    thread, stop, errors = in_thread(cfg, registry)
    try:
        produce(kafka_bootstrap, topic, items[:head])
        wait_for(lambda: store.count("events") == head, 60, "the head of the stream to be stored")
        # from here on the store refuses every event insert (a real SQLite error, in whichever process writes)
        store.execute("CREATE TRIGGER refuse BEFORE INSERT ON events BEGIN SELECT RAISE(ABORT, 'injected: disk full'); END")
        produce(kafka_bootstrap, topic, items[head:])
        wait_for(lambda: errors_seen() >= 3, 60, "three failed store writes")
        assert store.count("events") == head and thread.is_alive()
        store.execute("DROP TRIGGER refuse")
        wait_for(lambda: store.count("events") == len(stream) and caught_up(kafka_bootstrap, f"g-{unique}", topic)
                 and not store.unpublished("alerts"), 120, "the processor to catch up", state=lambda: store.count("events"))
    finally:
        stop.set()
        thread.join(30)
    assert errors == [] and not thread.is_alive()
    assert registry.get_sample_value("edgewatch_processor_events_processed_total") == len(stream)
    disturbed = dump(store)
    store.close()

    undisturbed = open_sqlite(tmp_path / "ref.db")
    undisturbed.migrate()
    run_until(config(tmp_path / "ref.toml", bootstrap=kafka_bootstrap, topic=topic, group=f"ref-{unique}",
                     sqlite_path=tmp_path / "ref.db"),
              lambda: undisturbed.count("events") == len(stream) and caught_up(kafka_bootstrap, f"ref-{unique}", topic))
    reference = dump(undisturbed)
    undisturbed.close()
    assert {r[1] for r in reference["incidents"]} >= {"incident", "fleet_incident"}
    for table in ("events", "incidents", "alerts", "device_state"):
        assert disturbed[table] == reference[table], table


def test_a_processor_stopped_while_kafka_is_away_stops_cleanly_and_a_rerun_changes_nothing(
        local_stack: LocalStack, unique: str, tmp_path: Path) -> None:
    """Kafka goes away with alerts not yet published and the last commit due: both are logged, the processor stops
    without an error, and the next run re-reads what was not committed, de-duplicates it and publishes the alerts."""
    bootstrap = local_stack.kafka_bootstrap
    topic = f"anomalies.{unique}"
    create_topic(bootstrap, topic, partitions=2)
    stream = fleet_stream(5, partitions=2, duration_s=300)
    produce(bootstrap, topic, events_items(stream))
    cfg = config(tmp_path / "c.toml", bootstrap=bootstrap, topic=topic, group=f"g-{unique}", sqlite_path=tmp_path / "s.db")
    store = open_sqlite(tmp_path / "s.db")
    store.migrate()
    thread, stop, errors = in_thread(cfg)
    try:
        wait_for(lambda: store.count("events") == len(stream), 60, "the stream to be stored")
        local_stack.kafka.stop()
        try:
            stop.set()
            thread.join(60)
        finally:
            local_stack.kafka.start()
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive() and errors == []
    before = dump(store)
    run_until(cfg, lambda: caught_up(bootstrap, f"g-{unique}", topic) and not store.unpublished("alerts"))
    assert dump(store) == before
    published = {decode_alert(r.value).alert_id for r in read_all(bootstrap, cfg.kafka.alerts_topic, len(before["alerts"]))}
    assert published == {row[0] for row in before["alerts"]} != set()  # at least once: a copy sent twice is the same alert
    store.close()


def test_postgresql_connections_that_drop_are_opened_again_and_nothing_is_lost(
        kafka_bootstrap: str, unique: str, postgres_dsn: str, tmp_path: Path) -> None:
    topic = f"anomalies.{unique}"
    create_topic(kafka_bootstrap, topic, partitions=2)
    create_topic(kafka_bootstrap, topic + ".alerts")
    stream = fleet_stream(9, partitions=2, duration_s=1200)
    items = events_items(stream)
    head = len(items) // 2
    cfg = config(tmp_path / "c.toml", bootstrap=kafka_bootstrap, topic=topic, group=f"g-{unique}", backend="postgres",
                 dsn=postgres_dsn)
    store = open_postgres(postgres_dsn)
    registry = CollectorRegistry()
    thread, stop, errors = in_thread(cfg, registry)
    try:
        wait_for(lambda: store_ready(store), 60, "the processor to create the schema")
        produce(kafka_bootstrap, topic, items[:head])
        wait_for(lambda: store.count("events") == head, 60, "the head of the stream to be stored")
        # what a PostgreSQL restart does to the processor's connections (the store side's and the consumer side's)
        # (a client's backend that is already exiting may still be listed: it answers False and is not counted;
        # autovacuum workers are not clients)
        killed = store.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
                               "AND pid <> pg_backend_pid() AND backend_type = 'client backend'")
        assert [ok for (ok,) in killed].count(True) == 2
        produce(kafka_bootstrap, topic, items[head:])
        wait_for(lambda: store.count("events") == len(stream) and caught_up(kafka_bootstrap, f"g-{unique}", topic)
                 and not store.unpublished("alerts"), 120, "the processor to store the rest",
                 state=lambda: (store.count("events"), len(stream), errors))
        assert thread.is_alive()
    finally:
        stop.set()
        thread.join(30)
    assert errors == [] and not thread.is_alive()
    assert (registry.get_sample_value("edgewatch_processor_store_errors_total") or 0) >= 1
    assert registry.get_sample_value("edgewatch_processor_events_processed_total") == len(stream)
    store.close()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the error the test expects
def test_a_store_process_that_dies_stops_the_processor_with_the_reason(kafka_bootstrap: str, unique: str, tmp_path: Path) -> None:
    topic = f"anomalies.{unique}"
    create_topic(kafka_bootstrap, topic, partitions=1)
    cfg = config(tmp_path / "c.toml", bootstrap=kafka_bootstrap, topic=topic, group=f"g-{unique}", sqlite_path=tmp_path / "s.db")
    before = set(multiprocessing.active_children())
    thread, stop, errors = in_thread(cfg)
    try:
        wait_for(lambda: bool(set(multiprocessing.active_children()) - before), 30, "the store process to start")
        (child,) = set(multiprocessing.active_children()) - before
        produce(kafka_bootstrap, topic, events_items(fleet_stream(3, partitions=1, duration_s=300)))
        os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
        thread.join(30)
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive(), "the processor must stop when its store process is gone"
    assert len(errors) == 1 and "the store process exited (code -9)" in str(errors[0])


def test_ten_thousand_malformed_messages_are_dead_lettered_and_valid_ones_stored(
        kafka_bootstrap: str, unique: str, tmp_path: Path) -> None:
    topic = f"anomalies.{unique}"
    create_topic(kafka_bootstrap, topic, partitions=2)
    create_topic(kafka_bootstrap, topic + ".deadletter")
    valid = fleet_stream(2, partitions=2, duration_s=1500)
    good = encode_event(valid[0])
    kinds: list[bytes | None] = [b"not json", b"{", b"[1,2]", b'{"schema":1}', good.replace(b'"score"', b'"scores"'),
                                 good.replace(b'"device_id":"', b'"device_id":"!'), b"\xff\xfe", None]
    bad = [kinds[i % len(kinds)] for i in range(10_000)]
    items: list[tuple[str | None, bytes | None]] = []
    ev_items = events_items(valid)
    for i, value in enumerate(bad):
        items.append((f"k{i % 7}", value))
        if i % 9 == 0 and ev_items:
            items.append(ev_items.pop(0))
    items.extend(ev_items)
    produce(kafka_bootstrap, topic, items)
    cfg = config(tmp_path / "c.toml", bootstrap=kafka_bootstrap, topic=topic, group=f"g-{unique}", sqlite_path=tmp_path / "s.db")
    store = open_sqlite(tmp_path / "s.db")
    store.migrate()
    registry = CollectorRegistry()
    run_until(cfg, lambda: store.count("deadletters") == 10_000 and store.count("events") == len(valid)
              and not store.unpublished("deadletters"), timeout_s=180, registry=registry)
    metric = registry.get_sample_value
    assert sum(metric("edgewatch_processor_deadletters_total", {"cause": c}) or 0 for c in ("json", "contract")) == 10_000
    assert metric("edgewatch_processor_deadletters_published_total") == 10_000
    assert metric("edgewatch_processor_events_processed_total") == len(valid)
    assert metric("edgewatch_processor_events_consumed_total") == 10_000 + len(valid)
    dead = read_all(kafka_bootstrap, topic + ".deadletter", 10_000)
    assert len(dead) == 10_000
    reasons = [dict(r.headers)["edgewatch-reason"].decode() for r in dead]
    assert all("violates rule" in r for r in reasons)
    assert {dict(r.headers)["edgewatch-field"].decode() for r in dead} == {"$", "scores", "device_id"}
    assert sorted((r.value or b"") for r in dead) == sorted((v or b"") for v in bad)
    assert store.count("events") == len(valid)
    store.close()


def test_fleet_incident_opens_when_k_devices_of_a_site_go_anomalous_and_closes_after_quiet(
        kafka_bootstrap: str, unique: str, tmp_path: Path) -> None:
    topic = f"anomalies.{unique}"
    create_topic(kafka_bootstrap, topic, partitions=4)
    create_topic(kafka_bootstrap, topic + ".alerts")
    bg = background_devices(4)
    events = [event(bg[i % len(bg)], T0 + i * 7.0, score=1.1) for i in range(300)]  # keeps every partition's watermark moving
    for d in ("plant-a-pump-01", "plant-a-pump-02", "plant-a-pump-03"):
        events += burst(d, T0 + 500 + 5 * int(d[-1]), count=4)
    for d in ("plant-b-pump-01", "plant-b-pump-02"):  # only two devices: no fleet incident
        events += burst(d, T0 + 500, count=4)
    events.sort(key=lambda e: (e.window_end, e.device_id))
    produce(kafka_bootstrap, topic, events_items(events))
    cfg = config(tmp_path / "c.toml", bootstrap=kafka_bootstrap, topic=topic, group=f"g-{unique}", sqlite_path=tmp_path / "s.db")
    store = open_sqlite(tmp_path / "s.db")
    store.migrate()
    run_until(cfg, lambda: caught_up(kafka_bootstrap, f"g-{unique}", topic) and not store.unpublished("alerts"))
    device = {r.device_id: r for r in store.incidents(kind="incident") if r.site == "plant-a"}
    assert sorted(device) == ["plant-a-pump-01", "plant-a-pump-02", "plant-a-pump-03"]
    assert all(r.closed_at is not None for r in device.values())
    fleets = store.incidents(kind="fleet_incident")
    assert [f.site for f in fleets] == ["plant-a"]
    fleet = fleets[0]
    w, quiet = cfg.fleet.window_s, cfg.fleet.quiet_s
    assert fleet.opened_at == max(r.opened_at for r in device.values())
    assert fleet.closed_at == min(r.closed_at or 0 for r in device.values()) + w + quiet
    alerts = [decode_alert(r.value) for r in read_all(kafka_bootstrap, topic + ".alerts", store.count("alerts"))]
    fleet_alerts: list[Alert] = [a for a in alerts if a.kind == "fleet_incident"]
    assert [(a.action, a.site, a.incident_id) for a in fleet_alerts] == [("open", "plant-a", fleet.incident_id),
                                                                        ("close", "plant-a", fleet.incident_id)]
    assert fleet_alerts[0].device_ids == tuple(sorted(device)) and fleet_alerts[1].closed_at == fleet.closed_at
    device_alerts = [a for a in alerts if a.kind == "incident" and a.site in ("plant-a", "plant-b")]
    assert sorted((a.action, a.device_ids[0]) for a in device_alerts) == sorted(
        (act, d) for d in [*device, "plant-b-pump-01", "plant-b-pump-02"] for act in ("open", "close"))
    store.close()
