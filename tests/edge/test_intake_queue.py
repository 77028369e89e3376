"""The intake queue: its bounds (messages and payload bytes, each overflow policy counted), the
wait for room before a drop, and the rounds it hands the worker (linger, byte budget)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from edge.config import load_config
from edge.contract import ConfigError
from edge.intake import IntakeQueue, Message


def msg(i: int, size: int) -> Message:
    return Message(f"t/{i}", bytes(size), float(i))


def test_byte_bound_drop_oldest_evicts_until_the_new_message_fits() -> None:
    q = IntakeQueue(100, "drop_oldest", max_bytes=1000)
    assert [q.put(msg(i, 300)) for i in range(3)] == [0, 0, 0] and q.bytes == 900
    assert q.put(msg(3, 600)) == 2            # 900 + 600 > 1000: the two oldest go
    assert [m.topic for m in q.get_batch(10, 0)] == ["t/2", "t/3"]
    assert q.dropped == 2 and q.bytes == 0 and len(q) == 0


def test_byte_bound_drop_newest_refuses_and_keeps_the_queue() -> None:
    q = IntakeQueue(100, "drop_newest", max_bytes=1000)
    q.put(msg(0, 800))
    assert q.put(msg(1, 300)) == 1
    assert q.put(msg(2, 200)) == 0            # exactly 1000 fits
    assert [m.topic for m in q.get_batch(1, 0)] == ["t/0"] and q.bytes == 200
    assert q.dropped == 1


def test_a_message_alone_is_taken_whatever_its_size() -> None:
    q = IntakeQueue(100, "drop_oldest", max_bytes=10)
    q.put(msg(0, 5))
    assert q.put(msg(1, 50)) == 1             # evicts the first, then fits alone
    assert len(q) == 1 and q.bytes == 50


def test_message_bound_still_applies() -> None:
    q = IntakeQueue(2, "drop_oldest", max_bytes=1 << 20)
    assert [q.put(msg(i, 1)) for i in range(4)] == [0, 0, 1, 1]
    assert [m.topic for m in q.get_batch(10, 0)] == ["t/2", "t/3"] and q.dropped == 2


def test_config_key_and_its_check() -> None:
    assert load_config(None, env={"EDGEWATCH_AGENT__QUEUE_MAX_BYTES": "4096"}).agent.queue_max_bytes == 4096
    with pytest.raises(ConfigError, match="agent.queue_max_bytes"):
        load_config(None, env={"EDGEWATCH_AGENT__QUEUE_MAX_BYTES": "0"})
    with pytest.raises(ConfigError, match="agent.queue_wait_s"):
        load_config(None, env={"EDGEWATCH_AGENT__QUEUE_WAIT_S": "-1"})
    with pytest.raises(ConfigError, match="agent.batch_linger_s"):  # longer than the tick it shortens
        load_config(None, env={"EDGEWATCH_AGENT__BATCH_LINGER_S": "0.1"})


def later(seconds: float, action: Callable[[], object]) -> threading.Thread:
    """Run ``action`` on a thread of its own after ``seconds`` (the other side of the queue)."""

    def run() -> None:
        time.sleep(seconds)
        action()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_messages_arriving_within_the_linger_share_a_round() -> None:
    q = IntakeQueue(100, "drop_oldest", max_bytes=1 << 20)
    q.put(msg(0, 10))
    later(0.05, lambda: q.put(msg(1, 10)))
    assert [m.topic for m in q.get_batch(10, 0, linger_s=2.0)] == ["t/0", "t/1"]


def test_a_full_round_is_taken_without_waiting_out_the_linger() -> None:
    q = IntakeQueue(100, "drop_oldest", max_bytes=1 << 20)
    q.put(msg(0, 10))
    later(0.05, lambda: [q.put(msg(i, 10)) for i in (1, 2)])
    started = time.monotonic()
    assert len(q.get_batch(3, 0, linger_s=30.0)) == 3
    assert time.monotonic() - started < 15.0


def test_a_round_stops_at_its_byte_budget_but_always_takes_one() -> None:
    q = IntakeQueue(100, "drop_oldest", max_bytes=1 << 20)
    for i in range(4):
        q.put(msg(i, 300))
    assert [m.topic for m in q.get_batch(10, 0, max_bytes=700)] == ["t/0", "t/1"]
    assert [m.topic for m in q.get_batch(10, 0, max_bytes=100)] == ["t/2"]
    assert q.bytes == 300


def test_a_full_queue_holds_paho_until_the_worker_makes_room_and_drops_nothing() -> None:
    q = IntakeQueue(2, "drop_oldest", max_bytes=1 << 20, wait_s=30.0)
    q.put(msg(0, 1))
    q.put(msg(1, 1))
    taker = later(0.05, lambda: q.get_batch(1, 0))
    started = time.monotonic()
    assert q.put(msg(2, 1)) == 0                    # waited for the worker, then fitted
    assert time.monotonic() - started < 15.0
    taker.join()
    assert [m.topic for m in q.get_batch(10, 0)] == ["t/1", "t/2"] and q.dropped == 0


def test_a_full_queue_drops_by_its_policy_once_the_wait_is_over() -> None:
    q = IntakeQueue(1, "drop_oldest", max_bytes=1 << 20, wait_s=0.05)
    q.put(msg(0, 1))
    assert q.put(msg(1, 1)) == 1 and q.dropped == 1
    assert [m.topic for m in q.get_batch(10, 0)] == ["t/1"]


def test_a_waiting_put_ends_the_worker_s_linger() -> None:
    q = IntakeQueue(2, "drop_oldest", max_bytes=1 << 20, wait_s=30.0)
    q.put(msg(0, 1))
    q.put(msg(1, 1))
    putter = later(0.05, lambda: q.put(msg(2, 1)))
    started = time.monotonic()
    assert len(q.get_batch(10, 0, linger_s=30.0)) == 2
    assert time.monotonic() - started < 15.0
    putter.join()
    assert [m.topic for m in q.get_batch(10, 0)] == ["t/2"] and q.dropped == 0
