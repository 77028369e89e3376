"""An ensemble's decisions (edge/adaptive.py EnsembleLayer): each member decided by its own
adaptive layer, a window over when most members are, state that round-trips, and the manifest
that selects it (edge/contract members). Pure logic: seeded synthetic scores, no torch."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edge.adaptive import AdaptiveLayer, AdaptiveSettings, EnsembleLayer, Prior, layer_for
from edge.adaptive_store import AdaptiveStore
from edge.contract import Calibration, ContractError, Member, decode_manifest, encode_manifest
from edge.detector import load_manifest
from tests.edge.agent_util import TINY_MODEL
from tests.edge.test_seasonal import FLAT, daily, flat_middle

SETTINGS = AdaptiveSettings(warmup_windows=100)
PRIORS = [Prior(threshold=30.0, quantile=11.0, excess=3.8), Prior(threshold=3.0, quantile=1.1, excess=0.38),
          Prior(threshold=300.0, quantile=110.0, excess=38.0)]  # three members, three score units


def member_scores(n: int, seed: int = 0) -> np.ndarray:
    """Each member's normal scores in its own unit (the priors' scales), independent per member."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.gamma(4.0, p.quantile / 4.0 / 1.5, n) for p in PRIORS], axis=1)


def times(n: int) -> np.ndarray:
    return 8.0 * np.arange(n, dtype=np.float64)


def test_each_member_is_decided_by_its_own_layer_and_most_of_them_decide() -> None:
    scores = member_scores(3000)
    for j, at in ((0, 1500), (1, 2000), (2, 2500)):  # a spike in one member only ...
        scores[at, j] *= 50
    scores[2800, :2] *= 50                           # ... and one in two members
    ensemble = EnsembleLayer(SETTINGS, PRIORS)
    over, surprise, thresholds = ensemble.decide_many("d", scores, times(len(scores)))
    singles = [AdaptiveLayer(SETTINGS, p).decide_many("d", scores[:, j], times(len(scores))) for j, p in enumerate(PRIORS)]
    assert np.array_equal(over, np.sum([s[0] for s in singles], axis=0) >= 2)
    assert np.array_equal(surprise, np.median([s[1] for s in singles], axis=0))
    assert np.array_equal(over, surprise > SETTINGS.surprise_limit)  # a majority over is a median surprise over the limit
    assert not over[[1500, 2000, 2500]].any() and over[2800]
    assert all(s[0][at] for s, at in zip(singles, (1500, 2000, 2500), strict=True))  # each member alone fired
    # thresholds in the ensemble score's unit: each member's over its prior threshold, the median
    expected = np.median([s[2] / p.threshold for s, p in zip(singles, PRIORS, strict=True)], axis=0)
    assert np.array_equal(thresholds, expected)
    assert ensemble.threshold("d") == pytest.approx(np.median([AdaptiveLayer.threshold(m, "d") / m.prior.threshold
                                                               for m in ensemble.members]))
    assert not ensemble.warming("d") and ensemble.warming("never-seen")


def test_one_seasonal_channel_decides_as_one_per_member_would() -> None:
    ends, rows = daily(7)
    rows = flat_middle(rows)  # a flat day: only the daily profile of the raw values sees it
    scores = member_scores(len(ends), seed=2)
    ensemble = EnsembleLayer(SETTINGS, PRIORS)
    over, surprise, _ = ensemble.decide_many("d", scores[:1000], ends[:1000], rows[:1000])
    rest = ensemble.decide_many("d", scores[1000:], ends[1000:], rows[1000:])
    over, surprise = np.concatenate([over, rest[0]]), np.concatenate([surprise, rest[1]])
    # the semantics it replaces: every member a single model's layer with its own channel
    singles = [AdaptiveLayer(SETTINGS, p).decide_many("d", scores[:, j], ends, rows) for j, p in enumerate(PRIORS)]
    assert np.array_equal(over, np.sum([s[0] for s in singles], axis=0) >= 2)
    assert np.array_equal(surprise, np.median([s[1] for s in singles], axis=0))
    assert over[FLAT].mean() > 0.5 and not over[:FLAT.start].any()
    first, *others = ensemble.members
    assert first.devices["d"].seasonal is not None
    assert all(m.devices["d"].seasonal is None for m in others)  # it runs once, not once per member
    # a row saved when every member ran its own channel: the copies are dropped, the first one decides on
    rows_saved, _ = ensemble.take_changes()
    parts = rows_saved["d"]["members"]  # type: ignore[index]
    old_rows = {"d": {"members": [parts[0], *[{**part, "seasonal": parts[0]["seasonal"]} for part in parts[1:]]]}}
    restored = EnsembleLayer(SETTINGS, PRIORS)
    assert restored.restore(old_rows) == 1
    assert all(m.devices["d"].seasonal is None for m in restored.members[1:])
    more_ends = ends[-1] + 300.0 * np.arange(1, 289)
    more_rows, more_scores = daily(1, seed=5)[1], member_scores(288, seed=6)
    assert all(np.array_equal(x, y) for x, y in zip(ensemble.decide_many("d", more_scores, more_ends, more_rows),
                                                    restored.decide_many("d", more_scores, more_ends, more_rows), strict=True))


def test_state_round_trips_and_forget_and_rebaseline_reach_every_member(tmp_path: Path) -> None:
    scores = member_scores(1200, seed=1)
    ensemble = EnsembleLayer(SETTINGS, PRIORS)
    ensemble.decide_many("a", scores[:800], times(800))
    ensemble.decide_many("b", scores[:300], times(300))
    rows, gone = ensemble.take_changes()
    assert set(rows) == {"a", "b"} and not gone and len(rows["a"]["members"]) == 3  # type: ignore[arg-type]
    store = AdaptiveStore(tmp_path / "outbox.adaptive.sqlite")  # the agent's restart: through SQLite
    store.save("sha", rows)
    restored = EnsembleLayer(SETTINGS, PRIORS)
    assert restored.restore(store.load("sha")) == 2
    store.close()
    rest = times(1200)[800:]
    assert all(np.array_equal(x, y) for x, y in zip(ensemble.decide_many("a", scores[800:], rest),
                                                    restored.decide_many("a", scores[800:], rest), strict=True))
    assert restored.restore({"c": {"quantile": 1.0}}) == 0  # a single model's row is not an ensemble's
    ensemble.rebaseline("a")
    assert all(layer.warming("a") for layer in ensemble.members)
    ensemble.forget("b")
    assert all("b" not in layer.devices for layer in ensemble.members)
    rows, gone = ensemble.take_changes()
    assert set(rows) == {"a"} and gone == {"b"}
    ensemble.unsaved(rows, gone)  # a failed save: taken again next time
    assert ensemble.take_changes() == (rows, gone)


def test_an_ensemble_refuses_scores_that_are_not_its_members() -> None:
    with pytest.raises(ValueError, match="ensemble of 3"):
        EnsembleLayer(SETTINGS, PRIORS).decide_many("d", np.ones(10), times(10))


def test_the_manifest_selects_the_layer_and_its_members_are_checked() -> None:
    single = load_manifest(TINY_MODEL)
    assert isinstance(layer_for(SETTINGS, single), AdaptiveLayer)
    members = tuple(Member(p.threshold, Calibration("quantile", {"train_p90": p.quantile, "train_p99": p.quantile * 2}))
                    for p in PRIORS)
    ensemble = decode_manifest(encode_manifest(replace(single, members=members)))
    assert ensemble.members == members
    layer = layer_for(SETTINGS, ensemble, threshold=99.0)  # decision.threshold does not apply to members
    assert isinstance(layer, EnsembleLayer)
    assert [m.prior.threshold for m in layer.members] == [p.threshold for p in PRIORS]
    assert b'"members"' not in encode_manifest(single)  # absent, not null: older signatures stay valid
    for bad, rule in ((members[:2], "odd number"), ((*members, members[0], members[0]), None),
                      ((replace(members[0], threshold=-1.0), *members[1:]), "must be >= 0")):
        if rule is None:  # five members are fine
            assert decode_manifest(encode_manifest(replace(single, members=bad))).members == bad
            continue
        with pytest.raises(ContractError, match=rule):
            decode_manifest(encode_manifest(replace(single, members=bad)))
