"""The processor's offset book (no broker: delivery itself is covered against the real Kafka in
test_processor_kafka.py).

One commit in flight at a time: offsets stored while it is in flight go with the next one, and a refused one
is sent again after the next poll. Sending a commit per poll instead piled them up on the coordinator
connection with small polls (``NodeNotReadyError: max_in_flight``), and a refused last commit was never
sent again, so the group's committed offsets could stay behind what the store holds.
"""

from __future__ import annotations

from kafka import TopicPartition
from kafka.errors import NodeNotReadyError

from cloud.processor.offsets import OffsetBook, Polled
from tests.tools import ManualClock

T0, T1 = TopicPartition("t", 0), TopicPartition("t", 1)


def poll(**ends: int) -> Polled:
    """A poll that read partition ``p0``/``p1`` up to (not including) the given offset, from 0."""
    return {TopicPartition("t", int(name[1:])): (0, end) for name, end in ends.items()}


def offsets(sent: dict[TopicPartition, object]) -> dict[TopicPartition, int]:
    return {tp: o.offset for tp, o in sent.items()}  # type: ignore[attr-defined]  # OffsetAndMetadata


def test_one_commit_in_flight_later_offsets_follow_and_a_refused_one_is_sent_again() -> None:
    book, both = OffsetBook(), {T0, T1}
    assert book.next_commit(lambda: both) == {}  # nothing stored yet
    book.stored(poll(p0=10), book.epoch)
    assert offsets(book.next_commit(lambda: both)) == {T0: 10}
    book.stored(poll(p0=20, p1=5), book.epoch)  # the first is unanswered: nothing more is sent
    book.stored(poll(p1=7), book.epoch)
    assert book.next_commit(lambda: both) == {}

    book.committed(NodeNotReadyError("max_in_flight"))  # refused: all noted offsets go with the next
    assert offsets(book.next_commit(lambda: both)) == {T0: 20, T1: 7}
    book.committed(None)  # acknowledged: nothing is due
    assert book.next_commit(lambda: both) == {}

    book.stored(poll(p0=21, p1=9), book.epoch)
    assert offsets(book.next_commit(lambda: {T1})) == {T1: 9}  # partition 0 went to another member: only what is still ours
    assert offsets(book.owned({T0})) == {T0: 21}


def test_a_rebalance_drops_revoked_offsets_and_the_polls_made_before_it() -> None:
    book, both = OffsetBook(), {T0, T1}
    book.stored(poll(p0=10, p1=10), book.epoch)
    in_flight = book.epoch  # a poll made now, answered after the rebalance
    book.rebalanced(revoked=[T0])
    book.stored(poll(p0=30, p1=30), in_flight)  # its partitions may have moved: not noted
    assert offsets(book.next_commit(lambda: both)) == {T1: 10}  # and the revoked partition's old offset is not ours
    book.committed(None)
    book.stored(poll(p0=40), book.epoch)  # partition 0 came back: a poll made after the rebalance counts
    assert offsets(book.next_commit(lambda: both)) == {T0: 40, T1: 10}


def test_a_commit_never_answered_is_sent_again_after_lost_after_s() -> None:
    clock = ManualClock()
    book = OffsetBook(lost_after_s=60.0, clock=clock)
    book.stored(poll(p1=11), book.epoch)
    assert offsets(book.next_commit(lambda: {T1})) == {T1: 11}
    book.stored(poll(p1=12), book.epoch)
    clock.now = 59.0
    assert book.next_commit(lambda: {T1}) == {}
    clock.now = 60.0
    assert offsets(book.next_commit(lambda: {T1})) == {T1: 12}


def test_polls_not_stored_rewind_each_partition_to_its_first_record_once() -> None:
    book = OffsetBook()
    assert not book.rewind_due
    book.not_stored({T0: (100, 150), T1: (7, 9)})
    book.not_stored({T0: (150, 170)})  # a later poll of the same partition: the earlier first record wins
    assert book.rewind_due
    assert dict(book.take_rewind()) == {T0: 100, T1: 7}
    assert not book.rewind_due and dict(book.take_rewind()) == {}
    assert book.next_commit(lambda: {T0, T1}) == {}  # nothing of them was noted
