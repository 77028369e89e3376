"""Which offsets the processor may commit, and where it must read again.

A poll's offsets are noted when the store side has stored it, unless a rebalance came between the
poll and that answer: its partitions may have moved, and their new owner re-reads them (the store
de-duplicates). Only offsets of partitions still assigned are committed. One asynchronous commit is
in flight at a time: offsets noted meanwhile go with the next one, and one refused, or unanswered for
``lost_after_s``, is sent again. (A commit per poll piled up on the coordinator connection with small
polls, ``NodeNotReadyError: max_in_flight``, and a refused last commit was never sent again.) A poll
the store side did not store marks each of its partitions to be rewound to its first record.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable, Mapping

from kafka import TopicPartition
from kafka.structs import OffsetAndMetadata

COMMIT_LOST_S = 60.0  # an async commit unanswered this long is taken as lost, and sent again

Polled = dict[TopicPartition, tuple[int, int]]  # a poll sent to the store side: first and next offset per partition


class OffsetBook:
    """The consumer side's offsets: noted, owned, forgotten, committed; see the module docstring."""

    def __init__(self, *, lost_after_s: float = COMMIT_LOST_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.lost_after_s = lost_after_s
        self.clock = clock
        self.epoch = 0  # rebalances so far; a poll carries the epoch it was made in
        self._noted: dict[TopicPartition, OffsetAndMetadata] = {}  # the next offset after each partition's last stored poll
        self._due = False  # offsets noted since the last commit that was sent (or that failed)
        self._sent_at: float | None = None  # when the async commit in flight was sent
        self._rewind: dict[TopicPartition, int] = {}  # first offsets of polls the store side did not store

    def rebalanced(self, revoked: Iterable[TopicPartition] = ()) -> None:
        """Partitions were assigned or revoked: polls in flight are no longer noted, and revoked partitions'
        offsets are dropped (a later owner commits them; ours would be stale if the partition came back)."""
        self.epoch += 1
        for tp in revoked:
            self._noted.pop(tp, None)

    def stored(self, poll: Polled, epoch: int) -> None:
        """The store side stored ``poll``, made in ``epoch``: note its offsets, unless a rebalance came since."""
        if epoch == self.epoch:
            self._noted.update({tp: OffsetAndMetadata(end, "", -1) for tp, (_, end) in poll.items()})
            self._due = True

    def owned(self, assigned: Collection[TopicPartition]) -> dict[TopicPartition, OffsetAndMetadata]:
        """The noted offsets of partitions in ``assigned``."""
        return {tp: o for tp, o in self._noted.items() if tp in assigned}

    def next_commit(self, assigned: Callable[[], Collection[TopicPartition]]) -> dict[TopicPartition, OffsetAndMetadata]:
        """The offsets to commit now of the partitions ``assigned()`` names (asked only then; empty: nothing due,
        or a commit in flight not yet taken as lost). Non-empty offsets count as sent: :meth:`committed` must follow."""
        sent = self._sent_at
        if not self._due or (sent is not None and self.clock() - sent < self.lost_after_s):
            return {}
        self._due = False
        offsets = self.owned(assigned())
        if offsets:
            self._sent_at = self.clock()
        return offsets

    def committed(self, error: Exception | None) -> None:
        """The answer to the commit in flight: ``error`` when the broker refused it (sent again next time)."""
        if error is not None:
            self._due = True
        self._sent_at = None

    def not_stored(self, poll: Polled) -> None:
        """The store side did not store ``poll``: its partitions are to be read again from its first records."""
        for tp, (first, _) in poll.items():
            self._rewind[tp] = min(first, self._rewind.get(tp, first))

    @property
    def rewind_due(self) -> bool:
        return bool(self._rewind)

    def take_rewind(self) -> Mapping[TopicPartition, int]:
        """The first offset to read again per partition, once (then forgotten)."""
        rewind, self._rewind = self._rewind, {}
        return rewind
