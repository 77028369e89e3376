"""The forwarder against the real Kafka: drains the outbox in order, deletes only acked rows,
drops a row Kafka can never take; plus the backoff policy."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from edge.config import load_config
from edge.forwarder import Backoff, Forwarder
from edge.metrics import AgentMetrics
from edge.outbox import Outbox, Record
from tests.edge.agent_util import TopicReader
from tests.kafka_util import create_topic


def test_backoff_is_capped_exponential_with_jitter() -> None:
    b = Backoff(0.5, 8.0, random.Random(1))
    delays = [b.next_delay() for _ in range(12)]
    assert all(0.5 <= d <= 8.0 for d in delays)
    assert max(delays[:2]) <= 1.0 and max(delays[6:]) > 2.0
    b.reset()
    assert b.next_delay() == 0.5


@pytest.mark.brokers
def test_drains_in_order_and_drops_only_an_oversized_row(kafka_bootstrap: str, unique: str, tmp_path: Path) -> None:
    topics = {k: f"test.{unique}.{k}" for k in ("anomaly", "telemetry")}
    for t in topics.values():
        create_topic(kafka_bootstrap, t)
    cfg = load_config(None, env={"EDGEWATCH_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap, "EDGEWATCH_KAFKA__BATCH_ROWS": "64",
                                 "EDGEWATCH_AGENT__ID": f"a-{unique}"})
    box = Outbox(tmp_path / "o.sqlite", max_bytes=8 << 20)
    rows = [Record("anomaly" if i % 3 else "telemetry", topics["anomaly" if i % 3 else "telemetry"], b"dev", f"m{i}".encode())
            for i in range(300)]
    rows.insert(150, Record("telemetry", topics["telemetry"], b"dev", b"x" * (2 << 20)))  # > max_request_size (1 MiB)
    box.append(rows)
    metrics = AgentMetrics(CollectorRegistry())
    fwd = Forwarder(box, cfg.kafka, metrics)
    sent = 0
    for _ in range(20):
        sent += fwd.drain_once()
        if box.rows == 0:
            break
    assert box.rows == 0 and sent == 300
    assert metrics.registry.get_sample_value("edgewatch_agent_outbox_shed_rows_total", {"kind": "telemetry"}) == 1
    assert metrics.registry.get_sample_value("edgewatch_agent_forwarded_messages_total", {"kind": "anomaly"}) == 200
    fwd._close_producer()
    for kind, topic in topics.items():
        reader = TopicReader(kafka_bootstrap, topic, f"g-{unique}-{kind}")
        try:
            want = [r.value for r in rows if r.topic == topic and len(r.value) < 1 << 20]
            count = len(want)
            assert reader.poll_until(lambda v: len(v) >= count, 60, f"{kind} rows") == want  # noqa: B023
        finally:
            reader.close()
