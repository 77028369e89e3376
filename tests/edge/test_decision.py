"""Decision: thresholds with per-device overrides, k-of-n debounce, deterministic events."""

from __future__ import annotations

import pytest

from edge.contract import Calibration, Channel, ModelManifest, decode_event, encode_event, make_event_id
from edge.decision import Decider, build_event, contributions


def fires(d: Decider, device: str, scores: list[float]) -> list[bool]:
    return [d.decide(device, s).fire for s in scores]


def test_one_of_one_fires_on_every_window_above_threshold() -> None:
    d = Decider(5.0)
    assert fires(d, "p", [1, 5, 5.01, 9, 2]) == [False, False, True, True, False]


def test_k_of_n_debounce() -> None:
    d = Decider(1.0, k=2, n=3)
    # over:  F  T  F  T  T  F  F  T  F  F  T
    scores = [0, 2, 0, 2, 2, 0, 0, 2, 0, 0, 2]
    assert fires(d, "p", scores) == [False, False, False, True, True, False, False, False, False, False, False]


def test_k_of_n_is_per_device_and_reset_forgets() -> None:
    d = Decider(1.0, k=2, n=2)
    assert fires(d, "a", [2]) == [False]
    assert fires(d, "b", [2]) == [False]
    assert fires(d, "a", [2]) == [True]
    d.reset("b")
    assert fires(d, "b", [2]) == [False]


def test_per_device_threshold_overrides() -> None:
    d = Decider(5.0, device_thresholds={"loud": 50.0, "quiet": 0.5})
    assert fires(d, "loud", [10, 51]) == [False, True]
    assert fires(d, "quiet", [0.6]) == [True]
    assert fires(d, "other", [4.9, 5.1]) == [False, True]
    assert d.decide("loud", 60).threshold == 50.0


def test_bad_k_n() -> None:
    with pytest.raises(ValueError):
        Decider(1.0, k=3, n=2)


def manifest() -> ModelManifest:
    return ModelManifest(name="m", family="dense_ae", version="1.2", sha256="ab" * 32,
                         channels=(Channel("x"), Channel("y")), window_length=4, stride=2, sample_period_s=1.0,
                         threshold=1.0, calibration=Calibration("quantile"), opset=17, min_onnxruntime="1.17",
                         training_data_fingerprint="fp", metrics={}, created_at="2026-01-01")


def test_event_carries_everything_and_its_id_is_deterministic() -> None:
    kw = dict(device_id="pump-1", window_start=10.0, window_end=13.0, score=4.0, threshold=1.0,
              channel_scores=[3.0, 1.0], manifest=manifest(), agent_id="gw")
    e1 = build_event(**kw, clock=lambda: 100.0)  # type: ignore[arg-type]
    e2 = build_event(**kw, clock=lambda: 200.0)  # type: ignore[arg-type]
    assert e1.event_id == e2.event_id == make_event_id("pump-1", 13.0, "ab" * 32)
    assert e1.channel_scores == {"x": 0.75, "y": 0.25}
    assert (e1.model_name, e1.model_version, e1.model_sha256, e1.agent_id) == ("m", "1.2", "ab" * 32, "gw")
    assert e1.detected_at == 100.0
    assert decode_event(encode_event(e1)) == e1


def test_contributions_are_shares() -> None:
    assert contributions([0.0, 0.0], ["a", "b"]) == {"a": 0.5, "b": 0.5}
    assert contributions([float("nan"), 2.0], ["a", "b"]) == {"a": 0.0, "b": 1.0}
    assert sum(contributions([0.1, 0.2, 0.7], ["a", "b", "c"]).values()) == pytest.approx(1.0)


def test_a_new_segment_restarts_the_debounce() -> None:
    d = Decider(1.0, k=2, n=2)
    assert d.decide("p", 2, segment=0).fire is False
    assert d.decide("p", 2, segment=1).fire is False  # the window after a gap does not pair with the one before
    assert d.decide("p", 2, segment=1).fire is True
