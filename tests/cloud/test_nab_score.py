"""NAB scoring as NAB v1.1's own code does it (nab/sweeper.py, nab/optimizer.py, Runner.normalize):
one worked case per rule, numbers worked out by hand from ``sigma(y) = 2 / (1 + exp(5 y)) - 1``, and
the one-pass threshold sweep against trying every threshold one by one."""

from __future__ import annotations

import numpy as np
import pytest

from cloud.evaluate.nab_score import PROFILES, Layout, best_threshold, score_corpus, score_file

STANDARD = PROFILES["standard"]  # A_TP 1, A_FP 0.11, A_FN 1

SIGMA_M1 = 0.9866142981514305  # sigma(-1) = 2 / (1 + e^-5) - 1: NAB's maxTP
SIGMA_M05 = 0.8482836399575131  # sigma(-0.5) = 2 / (1 + e^-2.5) - 1
SIGMA_M08 = 0.9640275800758169  # sigma(-0.8) = 2 / (1 + e^-4) - 1
SIGMA_1 = -0.9866142981514303  # sigma(1) = 2 / (1 + e^5) - 1
SIGMA_11_9 = -0.995573648215434  # sigma(11/9) = 2 / (1 + e^(55/9)) - 1
SIGMA_2 = -0.9999092042625951  # sigma(2) = 2 / (1 + e^10) - 1


def _layout(probation: int = 0) -> Layout:
    return Layout.build(100, [(20, 29), (60, 69)], probation=probation)  # two windows of width 10


def _detect(*rows: int, n: int = 100) -> np.ndarray:
    d = np.zeros(n, dtype=bool)
    d[list(rows)] = True
    return d


def test_a_window_detected_on_its_first_row_earns_exactly_a_tp() -> None:
    # row 20: y = (20 - 29 - 1) / 10 = -1, reward sigma(-1) / maxTP = 1; the second window is missed
    assert score_file(_layout(), _detect(20), STANDARD).raw == pytest.approx(1.0 - 1.0, abs=1e-12)
    # row 25: y = -0.5, reward sigma(-0.5) / sigma(-1) = 0.85979...
    assert score_file(_layout(), _detect(25, 60), STANDARD).raw == pytest.approx(SIGMA_M05 / SIGMA_M1 + 1.0, rel=1e-12)
    assert SIGMA_M05 / SIGMA_M1 == pytest.approx(0.8597925669, rel=1e-9)


def test_perfect_score_is_windows_times_a_tp() -> None:
    perfect = score_file(_layout(), _detect(20, 60), STANDARD)
    assert perfect.raw == pytest.approx(2.0) and (perfect.perfect, perfect.null) == (2.0, -2.0)
    assert perfect.normalised == pytest.approx(100.0)
    # one window found on its first row, one false positive before any window (-A_FP in full):
    # raw 1 - 1 - 0.11 = -0.11, normalised 100 (-0.11 + 2) / (2 + 2) = 47.25
    assert score_file(_layout(), _detect(5, 20), STANDARD).normalised == pytest.approx(47.25, rel=1e-12)
    low_fn = score_file(_layout(), _detect(20), PROFILES["reward_low_fn"])  # A_FN 2: null -4, perfect 2
    assert low_fn.raw == pytest.approx(-1.0) and (low_fn.null, low_fn.perfect) == (-4.0, 2.0)


def test_false_positive_after_a_window_decays_over_width_minus_one() -> None:
    # row 38 after the window ending at 29, width 10: y = (38 - 29) / (10 - 1) = 1, cost 0.11 sigma(1)
    result = score_file(_layout(), _detect(20, 60, 38), STANDARD)
    assert result.raw == pytest.approx(2.0 + 0.11 * SIGMA_1, rel=1e-12)
    assert result.raw == pytest.approx(1.8914724272, rel=1e-10)
    assert result.fp == 1
    # after a one-row window (where NAB divides by zero) a false positive costs A_FP in full
    single = Layout.build(10, [(2, 2)])
    assert score_file(single, _detect(2, 3, n=10), STANDARD).raw == pytest.approx(1.0 - 0.11)


def test_probation_ignores_its_rows_but_a_window_ending_in_it_still_sets_the_decay() -> None:
    layout = Layout.build(100, [(5, 9), (60, 69)], probation=15)
    assert layout.windows == ((60, 69),) and layout.labelled == 2
    # row 3 in probation counts for nothing; row 17: y = (17 - 9) / (5 - 1) = 2 after the first window
    result = score_file(layout, _detect(3, 17, 60), STANDARD)
    assert (result.tp, result.fp, result.fn) == (1, 1, 0)
    assert result.raw == pytest.approx(1.0 + 0.11 * SIGMA_2, rel=1e-12)
    # NAB's perfect score counts every labelled window (its corpus has none inside probation), the null one the scored
    assert (result.perfect, result.null) == (2.0, -1.0)


def test_sweep_tries_every_distinct_score_with_score_at_or_above_the_threshold() -> None:
    scores = np.full(100, 0.1)
    scores[25] = 0.9  # window 1, y = -0.5
    scores[40] = 0.7  # false positive, y = (40 - 29) / 9 = 11/9
    scores[[22, 60, 27]] = 0.6  # window 1 earlier (y = -0.8), window 2 on its first row, a repeat in window 1
    scores[5] = 0.95  # inside the probationary period: never a threshold, never a detection
    t, result = best_threshold([_layout(probation=10)], [scores], STANDARD)
    # t = 0.9: -1 + 0.8598 = -0.14; t = 0.7: -0.14 - 0.1095 = -0.25; t = 0.6: both windows, the earlier row of window 1
    assert t == 0.6
    assert result.raw == pytest.approx(SIGMA_M08 / SIGMA_M1 + 1.0 + 0.11 * SIGMA_11_9, rel=1e-12)
    assert result.raw == pytest.approx(1.8675937396, rel=1e-10)
    assert (result.tp, result.fp, result.fn) == (2, 1, 0)


def test_sweep_keeps_the_highest_of_equal_thresholds() -> None:
    scores = np.full(100, 0.1)
    scores[[20, 60]] = 0.9
    scores[21] = 0.8  # a second detection in window 1 changes nothing: 0.8 scores as 0.9 does
    t, result = best_threshold([_layout()], [scores], STANDARD)
    assert t == 0.9 and result.normalised == pytest.approx(100.0)
    scores[[20, 21, 60]] = 0.0
    scores[[5, 10, 90]] = 1.0  # every detection costs: flagging nothing is best
    t, result = best_threshold([_layout()], [scores], STANDARD)
    assert t == float("inf") and result.raw == -2.0 and result.fp == 0
    no_windows = Layout.build(100, [])
    assert best_threshold([no_windows], [scores], STANDARD)[0] == float("inf")
    assert best_threshold([], [], STANDARD)[0] == float("inf")


def _random_corpus(rng: np.random.Generator) -> tuple[list[Layout], list[np.ndarray]]:
    layouts, scores = [], []
    for _ in range(5):
        n = int(rng.integers(60, 400))
        starts = np.sort(rng.choice(np.arange(0, n - 12, 12), size=int(rng.integers(0, 4)), replace=False))
        windows = [(int(s), int(s + rng.integers(0, 11))) for s in starts]
        layouts.append(Layout.build(n, windows, probation=int(rng.integers(0, n // 5))))
        s = np.round(rng.random(n) ** 3, 2)  # few distinct values: many ties
        s[rng.random(n) < 0.02] = np.nan
        scores.append(s)
    return layouts, scores


@pytest.mark.parametrize("seed", range(12))
def test_one_pass_sweep_equals_scoring_every_threshold(seed: int) -> None:
    layouts, scores = _random_corpus(np.random.default_rng(seed))
    for profile in PROFILES.values():
        t, result = best_threshold(layouts, scores, profile)
        pooled = np.concatenate([s[lay.probation:] for lay, s in zip(layouts, scores, strict=True)])
        candidates = [np.inf, *sorted(set(pooled[~np.isnan(pooled)].tolist()), reverse=True)]
        raws = [score_corpus(layouts, [s >= c for s in scores], profile).raw for c in candidates]
        best = max(raws)
        assert result.raw == pytest.approx(best, abs=1e-9)
        assert t == next(c for c, r in zip(candidates, raws, strict=True) if r >= best - 1e-9)
