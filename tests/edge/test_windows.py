"""Per-device windows: channel order from the manifest, stride, gap resets, late and duplicate."""

from __future__ import annotations

import numpy as np
import pytest

from edge.contract import Reading
from edge.windows import Added, Windows, channel_problem, stack

CH = ("a", "b", "c")


def reading(device: str, ts: float, base: float | None = None) -> Reading:
    v = ts if base is None else base
    # dict order differs from the manifest order on purpose
    return Reading(device, ts, {"c": v + 0.3, "a": v + 0.1, "b": v + 0.2})


def feed(w: Windows, device: str, ts_list: list[float]) -> list[Added]:
    return [w.add(reading(device, t)) for t in ts_list]


def test_channels_follow_manifest_order_not_payload_order() -> None:
    w = Windows(CH, window_length=2, stride=1, sample_period_s=1.0, gap_periods=5)
    feed(w, "d", [10.0, 11.0])
    (win,) = w.take_ready()
    np.testing.assert_allclose(win.values, [[10.1, 10.2, 10.3], [11.1, 11.2, 11.3]])
    assert (win.start, win.end, win.device_id, win.seq) == (10.0, 11.0, "d", 0)


@pytest.mark.parametrize("length, stride", [(4, 1), (4, 2), (4, 4), (5, 3)])
def test_stride(length: int, stride: int) -> None:
    w = Windows(CH, window_length=length, stride=stride, sample_period_s=1.0, gap_periods=5)
    n = 20
    feed(w, "d", [float(t) for t in range(n)])
    ends = [win.end for win in w.take_ready()]
    assert ends == [float(t) for t in range(length - 1, n, stride)]


def test_windows_per_device_are_independent_and_batched_together() -> None:
    w = Windows(CH, window_length=3, stride=1, sample_period_s=1.0, gap_periods=5)
    for t in range(5):
        w.add(reading("x", float(t)))
        w.add(reading("y", 100.0 + t))
    ready = w.take_ready()
    assert sorted((win.device_id, win.end) for win in ready) == [("x", 2.0), ("x", 3.0), ("x", 4.0),
                                                                 ("y", 102.0), ("y", 103.0), ("y", 104.0)]
    batch = stack(ready)
    assert batch.shape == (6, 3, 3) and batch.dtype == np.float32
    assert w.take_ready() == [] and w.ready_count == 0


def test_gap_longer_than_n_periods_resets_the_window() -> None:
    w = Windows(CH, window_length=3, stride=1, sample_period_s=2.0, gap_periods=3)  # gap > 6 s resets
    assert feed(w, "d", [0.0, 2.0]) == [Added.OK, Added.OK]
    assert w.add(reading("d", 8.0)) is Added.OK          # exactly 6 s: no reset
    assert [x.end for x in w.take_ready()] == [8.0]
    assert w.add(reading("d", 14.5)) is Added.RESET      # 6.5 s: reset, window restarts
    assert feed(w, "d", [16.0]) == [Added.OK]
    assert w.take_ready() == []                          # only two readings since the reset
    w.add(reading("d", 18.0))
    (win,) = w.take_ready()
    assert win.ts.tolist() == [14.5, 16.0, 18.0]


def test_late_and_duplicate_readings_are_dropped() -> None:
    w = Windows(CH, window_length=3, stride=1, sample_period_s=1.0, gap_periods=5)
    assert feed(w, "d", [1.0, 2.0, 2.0, 1.5, 3.0]) == [Added.OK, Added.OK, Added.DUPLICATE, Added.LATE, Added.OK]
    (win,) = w.take_ready()
    assert win.ts.tolist() == [1.0, 2.0, 3.0]


def test_long_streams_keep_exact_windows_across_buffer_compaction() -> None:
    w = Windows(CH, window_length=5, stride=2, sample_period_s=1.0, gap_periods=5)
    feed(w, "d", [float(t) for t in range(200)])
    ready = w.take_ready()
    for win in ready:
        assert win.ts.tolist() == [win.end - 4 + i for i in range(5)]
        np.testing.assert_allclose(win.values[:, 0], win.ts + 0.1)
    assert [win.seq for win in ready] == list(range(len(ready)))


def test_take_ready_respects_the_limit_and_keeps_the_rest() -> None:
    w = Windows(CH, window_length=2, stride=1, sample_period_s=1.0, gap_periods=5)
    feed(w, "d", [float(t) for t in range(11)])
    first = w.take_ready(4)
    rest = w.take_ready()
    assert len(first) == 4 and len(rest) == 6
    assert [x.end for x in first + rest] == [float(t) for t in range(1, 11)]


def test_channel_problem() -> None:
    ok = Reading("d", 1.0, {"a": 1.0, "b": 2.0, "c": 3.0})
    assert channel_problem([ok], CH) is None
    assert channel_problem([ok, Reading("d", 2.0, {"a": 1.0, "b": 2.0})], CH) == "missing_channel"
    assert channel_problem([Reading("d", 2.0, {"a": 1.0, "b": 2.0, "c": 3.0, "z": 0.0})], CH) == "unknown_channel"
    assert channel_problem([Reading("d", 2.0, {"a": 1.0, "b": 2.0, "z": 0.0})], CH) == "unknown_channel"


@pytest.mark.parametrize("seed", range(12))
def test_add_rows_equals_add_one_by_one(seed: int) -> None:
    """Bulk and per-row placement give the same windows and outcomes, gaps and disorder included."""
    rng = np.random.default_rng(seed)
    length, stride = int(rng.integers(1, 9)), 0
    stride = int(rng.integers(1, length + 1))
    steps = rng.choice([1.0, 1.0, 1.0, 1.0, 0.0, -2.0, 7.0], size=300)
    ts = 100.0 + np.cumsum(steps)
    rows = rng.normal(size=(300, 3))
    one = Windows(CH, window_length=length, stride=stride, sample_period_s=1.0, gap_periods=5)
    bulk = Windows(CH, window_length=length, stride=stride, sample_period_s=1.0, gap_periods=5)
    expected: dict[Added, int] = {}
    for t, row in zip(ts, rows, strict=True):
        outcome = one.add(Reading("d", float(t), dict(zip(CH, map(float, row), strict=True))))
        expected[outcome] = expected.get(outcome, 0) + 1
    got: dict[Added, int] = {}
    cuts = sorted(set(rng.integers(0, 300, size=25).tolist()) | {0, 300})
    for lo, hi in zip(cuts, cuts[1:], strict=False):
        for k, v in bulk.add_rows("d", ts[lo:hi], rows[lo:hi]).items():
            got[k] = got.get(k, 0) + v
    assert got == expected
    a, b = one.take_ready(), bulk.take_ready()
    assert [(w.seq, w.ts.tolist()) for w in a] == [(w.seq, w.ts.tolist()) for w in b]
    for wa, wb in zip(a, b, strict=True):
        np.testing.assert_array_equal(wa.values, wb.values)


def test_add_rows_bulk_path_across_many_compactions() -> None:
    one = Windows(CH, window_length=7, stride=3, sample_period_s=1.0, gap_periods=2)
    bulk = Windows(CH, window_length=7, stride=3, sample_period_s=1.0, gap_periods=2)
    ts = np.arange(1000, dtype=np.float64)
    rows = np.stack([ts, -ts, ts * 2], axis=1)
    for t in ts:
        one.add(Reading("d", float(t), {"a": t, "b": -t, "c": 2 * t}))
    assert bulk.add_rows("d", ts[:5], rows[:5]) == {Added.OK: 5}
    assert bulk.add_rows("d", ts[5:], rows[5:]) == {Added.OK: 995}
    a, b = one.take_ready(), bulk.take_ready()
    assert len(a) == len(b) == (1000 - 7) // 3 + 1
    for wa, wb in zip(a, b, strict=True):
        np.testing.assert_array_equal(wa.values, wb.values)
        np.testing.assert_array_equal(wa.ts, wb.ts)


def test_a_reading_after_latest_is_future_and_never_moves_the_device_on() -> None:
    w = Windows(CH, window_length=3, stride=1, sample_period_s=1.0, gap_periods=5)
    rows = np.ones((1, 3))
    assert w.add_rows("d", np.array([10.0]), rows, latest=15.0) == {Added.OK: 1}
    assert w.add_rows("d", np.array([1e12]), rows, latest=15.0) == {Added.FUTURE: 1}
    assert w.add(reading("d", 16.0), latest=15.0) is Added.FUTURE
    # a batch: its future rows dropped, the rest placed as if they came alone
    got = w.add_rows("d", np.array([11.0, 1e12, 12.0, 13.0, 99.0]), np.ones((5, 3)), latest=15.0)
    assert got == {Added.OK: 3, Added.FUTURE: 2}
    assert [x.ts.tolist() for x in w.take_ready()] == [[10.0, 11.0, 12.0], [11.0, 12.0, 13.0]]
    assert w.add_rows("d", np.array([14.0, 15.0]), np.ones((2, 3)), latest=15.0) == {Added.OK: 2}
    assert [x.end for x in w.take_ready()] == [14.0, 15.0]
    assert w.add_rows("nobody", np.array([1e12, 2e12]), np.ones((2, 3)), latest=15.0) == {Added.FUTURE: 2}
    assert w.devices == 1  # a device whose readings were all future holds nothing


def test_a_reading_older_than_a_window_span_is_past_and_a_closer_one_late() -> None:
    w = Windows(CH, window_length=4, stride=1, sample_period_s=2.0, gap_periods=3)  # span 8 s, gap 6 s
    feed(w, "d", [100.0, 102.0, 104.0, 106.0])
    assert w.add(reading("d", 98.0)) is Added.LATE     # 8 s behind
    assert w.add(reading("d", 97.9)) is Added.PAST     # more than a window's span behind
    assert w.add_rows("d", np.array([0.0, -1e12, 108.0]), np.ones((3, 3))) == {Added.PAST: 2, Added.OK: 1}
    assert [x.end for x in w.take_ready()] == [106.0, 108.0]


def test_forget_drops_the_device_and_its_ready_windows() -> None:
    w = Windows(CH, window_length=2, stride=1, sample_period_s=1.0, gap_periods=5)
    feed(w, "x", [1.0, 2.0, 3.0])
    feed(w, "y", [1.0, 2.0])
    assert w.ready_count == 3 and w.forget("x") and not w.forget("x")
    assert w.devices == 1 and w.ready_count == 1
    assert [(x.device_id, x.end) for x in w.take_ready()] == [("y", 2.0)]
    feed(w, "x", [50.0, 51.0])  # starts afresh
    assert [(x.device_id, x.seq, x.start) for x in w.take_ready()] == [("x", 0, 50.0)]


def test_a_device_with_one_reading_holds_a_small_buffer_that_grows_with_its_readings() -> None:
    w = Windows(CH, window_length=32, stride=4, sample_period_s=1.0, gap_periods=5)
    w.add(reading("d", 0.0))
    assert w._devices["d"].buf.nbytes <= 8 * 3 * 8
    feed(w, "d", [float(t) for t in range(1, 1000)])
    assert w._devices["d"].buf.shape[0] == w._capacity
    assert [x.end for x in w.take_ready()] == [float(t) for t in range(31, 1000, 4)]
