"""The processor against a far-future ``window_end``: dead-lettered with its reason and counted,
never applied, so the partition's watermark stays with the clock and the device's later anomalies
still open incidents. The pipeline on a SQLite store, with an injected clock; no broker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from cloud.processor.backends import open_store
from cloud.processor.config import load_config
from cloud.processor.metrics import ProcessorMetrics
from cloud.processor.pipeline import IncidentPipeline
from cloud.processor.store import Store
from edge.contract import ConfigError, encode_event
from tests.cloud.processor_streams import T0, burst, config, event
from tests.cloud.test_processor_store import Rec

NOW = T0 + 10_000.0  # the processor's clock


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(config(tmp_path / "cloud.toml", bootstrap="127.0.0.1:1", topic="t", group="g",
                          sqlite_path=tmp_path / "s.db").store)
    yield s
    s.close()


def make(store: Store, tmp_path: Path) -> tuple[IncidentPipeline, ProcessorMetrics]:
    cfg = config(tmp_path / "cloud.toml", bootstrap="127.0.0.1:1", topic="t", group="g", sqlite_path=tmp_path / "s.db")
    metrics = ProcessorMetrics(CollectorRegistry())
    return IncidentPipeline(cfg, store, metrics, clock=lambda: NOW), metrics


@pytest.mark.parametrize("fast", [True, False], ids=["fast_decoder", "contract_decoder"])
def test_a_far_future_event_is_dead_lettered_and_the_device_keeps_opening_incidents(store: Store, tmp_path: Path,
                                                                                     fast: bool) -> None:
    pipe, metrics = make(store, tmp_path)
    if not fast:
        pipe.fast.fields = lambda value: None  # type: ignore[method-assign]  # every record through the contract
    stream = [*burst("pump-1", T0, count=3), event("pump-1", 1e12), *burst("pump-1", T0 + 1000, count=3),
              event("bg-000", T0 + 2000)]
    res = pipe.process("t", 0, [Rec(i, encode_event(e)) for i, e in enumerate(stream)])
    assert (res.deadletters, res.stored, res.late_dropped) == (1, len(stream) - 1, 0)
    ((field, reason, offset),) = store.execute("SELECT field, reason, kafka_offset FROM deadletters")
    assert (field, offset) == ("window_end", 3) and "300 s ahead of the processor's clock" in reason
    assert metrics.deadletters.labels(cause="future")._value.get() == 1
    assert store.execute("SELECT watermark FROM partitions WHERE kafka_partition = 0") == [(T0 + 2000,)]
    assert sorted(i.opened_at for i in store.incidents(kind="incident") if i.device_id == "pump-1") == [T0 + 20, T0 + 1020]


def test_an_event_within_the_skew_bound_is_applied(store: Store, tmp_path: Path) -> None:
    pipe, _ = make(store, tmp_path)
    res = pipe.process("t", 0, [Rec(0, encode_event(event("pump-2", NOW + 300))), Rec(1, encode_event(event("pump-2", NOW + 301)))])
    assert (res.stored, res.deadletters) == (1, 1)
    assert store.execute("SELECT watermark FROM partitions WHERE kafka_partition = 0") == [(NOW + 300,)]


def test_max_clock_skew_is_a_checked_key(tmp_path: Path) -> None:
    assert load_config(None, env={}).incidents.max_clock_skew_s == 300.0
    path = tmp_path / "c.toml"
    path.write_text("[incidents]\nmax_clock_skew_s = -1\n")
    with pytest.raises(ConfigError, match="incidents.max_clock_skew_s"):
        load_config(path, env={})
