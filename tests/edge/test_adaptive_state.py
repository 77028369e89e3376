"""The adaptive layer in the pipeline: its state is saved beside the outbox and resumed after a
restart, belongs to one model (a swap starts every device from the new prior and deletes the old
rows), forgets with the device, and shows per device in Prometheus. No brokers."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from edge.adaptive_store import AdaptiveStore, state_path
from edge.config import load_config
from edge.detector import OnnxDetector
from edge.intake import Message
from edge.metrics import AgentMetrics
from edge.pipeline import Pipeline
from tests.edge.agent_util import TINY_MODEL, fleet_readings, payloads

CLOCK = 2_000_000_000.0
ENV = {"EDGEWATCH_AGENT__ID": "gw-1", "EDGEWATCH_TELEMETRY__EVERY_N_WINDOWS": "0", "EDGEWATCH_ADAPTIVE__WARMUP_WINDOWS": "20"}


@pytest.fixture(scope="module")
def detector() -> OnnxDetector:
    return OnnxDetector.load(TINY_MODEL)


def pipeline(detector: OnnxDetector, store: AdaptiveStore, registry: CollectorRegistry | None = None) -> Pipeline:
    config = load_config(None, env=ENV)
    return Pipeline(config, detector, AgentMetrics(registry or CollectorRegistry()), clock=lambda: CLOCK, state=store)


def rows(pipe: Pipeline) -> str:
    assert pipe.adaptive is not None
    return json.dumps({d: s.as_row() for d, s in sorted(pipe.adaptive.devices.items())})  # NaN run_start compares as text


def feed(pipe: Pipeline, device: str, steps: int, seed: int) -> None:
    pipe.process([Message(t, p, CLOCK) for t, p in payloads(fleet_readings(device, steps, seed=seed), batch=20)])


def test_state_is_saved_beside_the_outbox_and_resumed_after_a_restart(detector: OnnxDetector, tmp_path: Path) -> None:
    path = state_path(tmp_path / "edgewatch-outbox.sqlite")
    assert path == tmp_path / "edgewatch-outbox.adaptive.sqlite"
    store = AdaptiveStore(path)
    first = pipeline(detector, store)
    assert first.adaptive is not None
    for device, seed in (("p-1", 1), ("p-2", 2)):
        feed(first, device, 600, seed)
    before = rows(first)
    assert not first.adaptive.warming("p-1") and not first.adaptive.warming("p-2")
    first.save_state()
    store.close()

    store = AdaptiveStore(path)
    second = pipeline(detector, store)
    assert second.adaptive is not None
    assert rows(second) == before
    # forgetting a device deletes its row with the next save
    second.forget_device("p-1")
    second.save_state()
    assert set(store.load(detector.manifest.sha256)) == {"p-2"}


def test_a_new_model_starts_every_device_from_its_prior_and_drops_the_old_rows(detector: OnnxDetector, tmp_path: Path) -> None:
    store = AdaptiveStore(tmp_path / "s.sqlite")
    pipe = pipeline(detector, store)
    assert pipe.adaptive is not None
    feed(pipe, "p-1", 600, 3)
    pipe.save_state()

    class Other:
        manifest = replace(detector.manifest, sha256="f" * 64, version="9.9.9", threshold=detector.manifest.threshold * 3)

        def score(self, windows):  # type: ignore[no-untyped-def]
            return detector.score(windows)

    pipe.swap_scorer(Other())  # type: ignore[arg-type]
    assert pipe.adaptive.devices == {} and pipe.adaptive.threshold("p-1") == pytest.approx(
        Other.manifest.threshold * pipe.config.adaptive.warmup_factor)
    assert store.count() == 0  # the old model's rows are gone at once


def test_per_device_threshold_warm_up_and_budget_burn_are_scraped(detector: OnnxDetector, tmp_path: Path) -> None:
    registry = CollectorRegistry()
    pipe = pipeline(detector, AdaptiveStore(tmp_path / "s.sqlite"), registry)
    feed(pipe, "p-1", 600, 4)
    feed(pipe, "p-2", 40, 5)  # a few windows: still warming up
    assert pipe.adaptive is not None
    value = registry.get_sample_value
    assert value("edgewatch_agent_device_warming", {"device_id": "p-1"}) == 0.0
    assert value("edgewatch_agent_device_warming", {"device_id": "p-2"}) == 1.0
    assert value("edgewatch_agent_device_threshold", {"device_id": "p-1"}) == pytest.approx(pipe.adaptive.threshold("p-1"))
    assert value("edgewatch_agent_device_alert_budget_burn", {"device_id": "p-1"}) == pytest.approx(pipe.adaptive.burn("p-1"))
    pipe.forget_device("p-2")
    assert value("edgewatch_agent_device_warming", {"device_id": "p-2"}) is None


def test_an_unreadable_row_is_skipped_not_fatal(detector: OnnxDetector, tmp_path: Path) -> None:
    store = AdaptiveStore(tmp_path / "s.sqlite")
    store.save(detector.manifest.sha256, {"good": {"quantile": 1.0}, "bad": {"quantile": "x"}})
    pipe = pipeline(detector, store)
    assert pipe.adaptive is not None and pipe.adaptive.devices == {}
