"""The store and the batch pipeline on both backends (SQLite file, real PostgreSQL): schema migration,
de-duplication, replay leaves the store unchanged, state reload across processes, labels.

Records here are plain objects with ``offset`` and ``value``: this checks what a batch does to
the store; delivery through Kafka is tested in ``test_processor_kafka.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from prometheus_client import CollectorRegistry

from cloud.processor import schema
from cloud.processor.backends import open_sqlite
from cloud.processor.metrics import ProcessorMetrics
from cloud.processor.pipeline import IncidentPipeline
from cloud.processor.store import Store
from edge.contract import encode_event
from tests.cloud.processor_streams import T0, config, fleet_stream

TOPIC = "t.anomalies"


class Rec(NamedTuple):
    offset: int
    value: bytes | None


def pipeline(store: Store, tmp_path: Path) -> IncidentPipeline:
    cfg = config(tmp_path / "cloud.toml", bootstrap="127.0.0.1:1", topic=TOPIC, group="g", sqlite_path=tmp_path / "unused.db")
    return IncidentPipeline(cfg, store, ProcessorMetrics(CollectorRegistry()), clock=lambda: T0 + 86_400)  # no event ahead of it


def dump(store: Store) -> dict[str, list[tuple[Any, ...]]]:
    """Every table, without the columns that record when a row was written."""
    q = {
        "events": "SELECT event_id, device_id, window_end, score, kafka_partition, kafka_offset, late FROM events ORDER BY event_id",
        "incidents": "SELECT incident_id, kind, site, device_ids, opened_at, closed_at, event_count, max_score, statistic "
                     "FROM incidents ORDER BY incident_id",
        "alerts": "SELECT alert_id, payload FROM alerts ORDER BY alert_id",
        "deadletters": "SELECT topic, kafka_partition, kafka_offset, field, reason FROM deadletters ORDER BY kafka_offset",
        "device_state": "SELECT device_id, state FROM device_state ORDER BY device_id",
        "partitions": "SELECT topic, kafka_partition, watermark, next_offset FROM partitions ORDER BY kafka_partition",
    }
    return {k: store.execute(v) for k, v in q.items()}


def records(payloads: list[bytes | None], start: int = 0) -> list[Rec]:
    return [Rec(start + i, p) for i, p in enumerate(payloads)]


def test_migrate_is_idempotent(store: Store) -> None:
    assert store.migrate() == len(schema.MIGRATIONS) >= 5
    assert store.migrate() == len(schema.MIGRATIONS)
    assert store.count("events") == 0


def test_a_store_of_schema_1_is_upgraded_with_its_rows(empty_store: Store, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    events = fleet_stream(3, duration_s=600)
    with monkeypatch.context() as m:  # the store as the first release left it, with its rows
        m.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:1])
        assert empty_store.migrate() == 1
        with empty_store.transaction():
            empty_store.executemany(
                "INSERT INTO events (event_id, device_id, agent_id, window_start, window_end, score, threshold, payload, "
                "model_name, model_version, model_sha256, detected_at, topic, kafka_partition, kafka_offset, late, ingested_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(e.event_id, e.device_id, e.agent_id, e.window_start, e.window_end, e.score, e.threshold, encode_event(e).decode(),
                  e.model_name, e.model_version, e.model_sha256, e.detected_at, TOPIC, 0, i, 0, T0) for i, e in enumerate(events)])
    before = dump(empty_store)
    assert before["events"] and empty_store.migrate() == len(schema.MIGRATIONS)
    assert dump(empty_store) == before
    e = events[0]
    (got,) = [g for g in empty_store.events_between(e.device_id, e.window_end, e.window_end) if g["event_id"] == e.event_id]
    assert (got["agent_id"], got["threshold"], got["model_sha256"], got["kafka_offset"]) == (e.agent_id, e.threshold, e.model_sha256, 0)
    if empty_store.dialect == "postgres":
        collations = empty_store.execute("SELECT column_name, collation_name FROM information_schema.columns "
                                         "WHERE table_name = 'events' AND column_name IN ('event_id', 'device_id')")
        assert sorted(collations) == [("device_id", "C"), ("event_id", "C")]


def test_batches_store_each_event_once_and_replay_changes_nothing(store: Store, tmp_path: Path) -> None:
    stream = [encode_event(e) for e in fleet_stream(7, partitions=1, duration_s=1200)]
    recs = records(stream)
    pipe = pipeline(store, tmp_path)
    for i in range(0, len(recs), 97):
        pipe.process(TOPIC, 0, recs[i:i + 97])
    first = dump(store)
    assert len(first["events"]) == len(stream)
    assert any(r[1] == "fleet_incident" for r in first["incidents"]) is False  # fleet runs in the consumer loop
    assert {r[1] for r in first["incidents"]} >= {"incident"}
    # replay from offset 0 in other batch sizes, and the same events produced again at new offsets
    for i in range(0, len(recs), 250):
        res = pipe.process(TOPIC, 0, recs[i:i + 250])
        assert res.stored == 0 and res.duplicates == len(recs[i:i + 250])
    again = pipe.process(TOPIC, 0, records(stream[:300], start=len(stream)))
    assert again.duplicates == 300
    after = dump(store)
    after["partitions"] = first["partitions"]  # next_offset moved on; nothing else may change
    assert after == first


def test_state_survives_a_process_change_mid_stream(store: Store, tmp_path: Path) -> None:
    stream = records([encode_event(e) for e in fleet_stream(3, partitions=1, duration_s=1200)])
    one = pipeline(store, tmp_path)
    half = len(stream) // 2
    one.process(TOPIC, 0, stream[:half])
    reference_store = open_sqlite(tmp_path / "reference.db")
    reference_store.migrate()
    ref = pipeline(reference_store, tmp_path)
    for i in range(0, len(stream), 50):
        ref.process(TOPIC, 0, stream[i:i + 50])
    # a second process takes over (re-reading some records), then the first comes back with stale memory
    two = pipeline(store, tmp_path)
    two.process(TOPIC, 0, stream[half - 40:half + 100])
    one.process(TOPIC, 0, stream[half + 100:])
    got, want = dump(store), dump(reference_store)
    for table in ("events", "incidents", "alerts", "device_state"):
        assert got[table] == want[table], table
    reference_store.close()


def test_malformed_records_are_dead_lettered_with_the_field(store: Store, tmp_path: Path) -> None:
    good = [encode_event(e) for e in fleet_stream(1, partitions=1, duration_s=100)]
    huge = json.loads(good[2])
    huge["score"] = 10**400  # an integer too large for a double
    bad: list[bytes | None] = [b"{", b"[]", None, good[0].replace(b'"score"', b'"scor"'), good[1].replace(b'"schema":1', b'"schema":9'),
                               json.dumps(huge).encode()]
    res = pipeline(store, tmp_path).process(TOPIC, 0, records(bad + list(good[3:])))
    assert res.deadletters == 6 and res.stored == len(good) - 3
    rows = dump(store)["deadletters"]
    assert [r[3] for r in rows] == ["$", "$", "$", "scor", "schema", "score"]
    assert all("violates rule" in r[4] for r in rows)


def test_a_decoder_failure_other_than_contract_error_is_dead_lettered_too(store: Store, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import cloud.processor.pipeline as pipeline_module

    def broken(payload: bytes) -> None:
        raise OverflowError("decoder bug")

    monkeypatch.setattr(pipeline_module, "decode_event", broken)  # reached only when the fast path declines
    good = [encode_event(e) for e in fleet_stream(1, partitions=1, duration_s=100)]
    res = pipeline(store, tmp_path).process(TOPIC, 0, records([b"{}", *good]))
    assert res.deadletters == 1 and res.stored == len(good)
    assert "decoder error OverflowError('decoder bug')" in dump(store)["deadletters"][0][4]


def test_labels_are_stored_and_never_overwritten_by_the_processor(store: Store, tmp_path: Path) -> None:
    stream = records([encode_event(e) for e in fleet_stream(5, partitions=1, duration_s=1200)])
    pipe = pipeline(store, tmp_path)
    pipe.process(TOPIC, 0, stream[: len(stream) // 2])
    incident = store.incidents(kind="incident")[0]
    assert store.label_incident(incident.incident_id, "true_positive", T0)
    assert not store.label_incident("0" * 32, "false_positive", T0)
    pipe.process(TOPIC, 0, stream[len(stream) // 2:])
    after = store.incident(incident.incident_id)
    assert after is not None and after.label == "true_positive" and after.labelled_at == T0
    with pytest.raises(ValueError):
        store.label_incident(incident.incident_id, "maybe", T0)


def test_idle_advance_closes_incidents_of_a_silent_partition(store: Store, tmp_path: Path) -> None:
    from tests.cloud.processor_streams import burst

    pipe = pipeline(store, tmp_path)
    pipe.process(TOPIC, 0, records([encode_event(e) for e in burst("plant-a-pump-01", T0, count=5, gap_s=10)]))
    assert len(pipe.advance_idle(TOPIC, 0, T0 + 60)) == 1  # final passes the open time (T0 + 20): opens, nothing closes yet
    (inc,) = store.incidents(kind="incident")
    assert inc.closed_at is None and inc.opened_at == T0 + 20
    assert pipe.advance_idle(TOPIC, 0, T0 + 50) == []  # never backwards
    other = pipeline(store, tmp_path)  # another process, state from the store
    assert len(other.advance_idle(TOPIC, 0, T0 + 40 + 120 + 20)) == 1
    (inc,) = store.incidents(kind="incident")
    assert inc.closed_at == T0 + 40 + 120 and inc.event_count == 5


def test_fleet_evaluated_in_steps_equals_one_evaluation_at_the_end(store: Store, tmp_path: Path) -> None:
    from cloud.processor.config import FleetSection
    from cloud.processor.fleet import FleetCorrelator
    from cloud.processor.store import IncidentRow

    def device(d: str, o: float, c: float | None) -> IncidentRow:
        return IncidentRow(f"{d}-{o:.0f}".ljust(32, "0")[:32], "incident", "north", d, (d,), o, c, o, 3, 2.0)

    rows = [device("a", 100, 200), device("b", 150, 300), device("c", 180, 260), device("a", 900, 1000),
            device("b", 920, None), device("c", 950, 990), device("d", 2000, 2100)]
    section = FleetSection(min_devices=3, window_s=50, quiet_s=100)
    reference = open_sqlite(tmp_path / "ref.db")
    reference.migrate()
    with reference.transaction():
        reference.upsert_incidents(rows, T0)
    FleetCorrelator(section, TOPIC).evaluate(reference, 5000, T0)
    with store.transaction():
        store.upsert_incidents(rows, T0)
    for final in (150, 181, 300, 351, 930, 951, 1200, 5000):
        FleetCorrelator(section, TOPIC).evaluate(store, final, T0)  # a new process each time: progress is in the store
    want, got = dump(reference), dump(store)
    fleets = [r for r in got["incidents"] if r[1] == "fleet_incident"]
    assert sorted((r[4], r[5]) for r in fleets) == [(180.0, 350.0), (950.0, 1140.0)]  # c stops counting at 990 + 50
    assert got["incidents"] == want["incidents"] and got["alerts"] == want["alerts"]
    reference.close()


def test_a_poll_in_one_transaction_equals_its_partitions_one_by_one(store: Store, tmp_path: Path) -> None:
    from tests.cloud.processor_streams import partition_of

    by_part: dict[int, list[bytes]] = {p: [] for p in range(3)}
    for e in fleet_stream(11, partitions=3, duration_s=1200):
        by_part[partition_of(e.device_id, 3)].append(encode_event(e))
    parts = {p: records(v) for p, v in by_part.items()}
    reference_store = open_sqlite(tmp_path / "reference.db")
    reference_store.migrate()
    ref = pipeline(reference_store, tmp_path)
    pipe = pipeline(store, tmp_path)
    for i in range(0, max(len(v) for v in parts.values()), 60):
        polled = [(TOPIC, p, v[i:i + 60]) for p, v in sorted(parts.items(), reverse=True) if v[i:i + 60]]
        got = pipe.process_many(polled)
        want = [ref.process(t, p, recs) for t, p, recs in polled]
        assert [(r.stored, r.duplicates, r.alerts) for r in got] == [(r.stored, r.duplicates, r.alerts) for r in want]
    # a poll where one partition replays stored events among new ones: rolled back, redone with the lookup
    replay = records(by_part[1][:30] + [encode_event(e) for e in fleet_stream(12, partitions=3, duration_s=60)][:5], start=10_000)
    (res,) = pipe.process_many([(TOPIC, 1, replay)])
    (ref_res,) = ref.process_many([(TOPIC, 1, replay)])
    assert (res.stored, res.duplicates) == (ref_res.stored, ref_res.duplicates) and res.duplicates >= 30
    got_rows, want_rows = dump(store), dump(reference_store)
    for table in ("events", "incidents", "alerts", "device_state", "partitions"):
        assert got_rows[table] == want_rows[table], table
    reference_store.close()


def test_an_event_in_two_partitions_of_one_poll_is_stored_once(store: Store, tmp_path: Path) -> None:
    payloads = [encode_event(e) for e in fleet_stream(13, partitions=1, duration_s=300)]
    res = pipeline(store, tmp_path).process_many([(TOPIC, 0, records(payloads)), (TOPIC, 1, records(payloads[:10]))])
    assert [(r.stored, r.duplicates) for r in res] == [(len(payloads), 0), (0, 10)]
    assert store.count("events") == len(payloads)
