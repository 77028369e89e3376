"""The intake queue's bounds: messages and payload bytes, each overflow policy counted."""

from __future__ import annotations

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
