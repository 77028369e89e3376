"""How the processor schedules its asynchronous offset commits (no broker: the consumer here only records the
commits it is asked to send; delivery itself is covered against the real Kafka in test_processor_kafka.py).

One commit in flight at a time: offsets stored while it is in flight go with the next one, and a refused one
is sent again after the next poll. Sending a commit per poll instead piled them up on the coordinator
connection with small polls (``NodeNotReadyError: max_in_flight``), and a refused last commit was never
sent again, so the group's committed offsets could stay behind what the store holds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kafka import TopicPartition
from kafka.errors import NodeNotReadyError
from kafka.structs import OffsetAndMetadata

from cloud.processor import consumer as consumer_module
from cloud.processor.backends import open_sqlite
from cloud.processor.consumer import Processor
from tests.cloud.processor_streams import config

T0, T1 = TopicPartition("t", 0), TopicPartition("t", 1)


class RecordingConsumer:
    def __init__(self, assigned: set[TopicPartition]) -> None:
        self.assigned = assigned
        self.sent: list[tuple[dict[TopicPartition, int], Any]] = []

    def assignment(self) -> set[TopicPartition]:
        return self.assigned

    def commit_async(self, offsets: dict[TopicPartition, OffsetAndMetadata], callback: Any) -> None:
        self.sent.append(({tp: o.offset for tp, o in offsets.items()}, callback))


def stored(processor: Processor, consumer: RecordingConsumer, offsets: dict[TopicPartition, int]) -> None:
    """A poll whose records were stored up to ``offsets`` (none: a poll without records)."""
    processor._commit_async(consumer, {tp: OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()})  # type: ignore[arg-type]


def test_one_commit_in_flight_later_offsets_follow_and_a_refused_one_is_sent_again(tmp_path: Path, monkeypatch: Any) -> None:
    store = open_sqlite(tmp_path / "p.db")
    processor = Processor(config(tmp_path / "p.toml", bootstrap="127.0.0.1:9", topic="t", group="g",
                                 sqlite_path=tmp_path / "p.db"), store)
    consumer = RecordingConsumer({T0, T1})
    try:
        stored(processor, consumer, {T0: 10})
        assert [o for o, _ in consumer.sent] == [{T0: 10}]
        stored(processor, consumer, {T0: 20, T1: 5})  # the first is unanswered: nothing more is sent
        stored(processor, consumer, {T1: 7})
        assert len(consumer.sent) == 1

        consumer.sent[0][1]({T0: None}, NodeNotReadyError("max_in_flight"))  # refused
        stored(processor, consumer, {})  # the next poll, with no new records
        assert [o for o, _ in consumer.sent][1:] == [{T0: 20, T1: 7}]

        consumer.sent[1][1]({T0: None, T1: None}, None)  # acknowledged: nothing is due
        stored(processor, consumer, {})
        assert len(consumer.sent) == 2

        consumer.assigned = {T1}  # partition 0 went to another member: only what is still ours
        stored(processor, consumer, {T1: 9})
        assert [o for o, _ in consumer.sent][2:] == [{T1: 9}]

        # a partition revoked and assigned again (within one poll): its old offset is not ours to commit
        consumer.sent[2][1]({T1: None}, None)
        consumer_module._Rebalance(processor).on_partitions_revoked([T0, T1])
        consumer.assigned = {T0, T1}
        stored(processor, consumer, {T1: 10})
        assert [o for o, _ in consumer.sent][3:] == [{T1: 10}]

        # an answer that never comes: after COMMIT_LOST_S the commit is sent again
        stored(processor, consumer, {T1: 11})
        assert len(consumer.sent) == 4
        monkeypatch.setattr(consumer_module, "COMMIT_LOST_S", 0.0)
        stored(processor, consumer, {})
        assert [o for o, _ in consumer.sent][4:] == [{T1: 11}]
    finally:
        store.close()
