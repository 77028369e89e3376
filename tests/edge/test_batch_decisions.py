"""Per-batch decisions agree with deciding window by window: the pipeline's records (events,
telemetry samples, their order), the debounce state and the score histogram are what the
per-window reference (Decider.decide, TelemetrySampler.observe on each Window) gives, with gaps,
several devices, non-finite scores and batches split by max_batch_windows."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram

from edge import pipeline
from edge.config import load_config
from edge.contract import ModelManifest, Reading, encode_event, encode_telemetry, telemetry_from_window
from edge.decision import Decider, build_event
from edge.detector import load_manifest
from edge.intake import Message
from edge.metrics import RATIO_BUCKETS, AgentMetrics, BatchHistogram
from edge.outbox import Record
from edge.pipeline import Pipeline
from edge.telemetry import Scored, TelemetrySampler
from edge.windows import Added, Window, Windows
from tests.edge.agent_util import TINY_MODEL, fleet_readings, payloads

CLOCK = 2_000_000_000.0  # after every reading: none is ahead of the clock


class HashScorer:
    """Scores that depend only on a window's values (so both sides agree), about a quarter of them
    over the threshold, and NaN for some."""

    def __init__(self, manifest: ModelManifest, nan_every: int) -> None:
        self.manifest = manifest
        self.nan_every = nan_every

    def score(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        key = np.abs(windows.astype(np.float64)).sum(axis=(1, 2)) * 1000.0
        scores = (key % 4.0) * self.manifest.threshold / 2.5
        if self.nan_every:
            scores[(key.astype(np.int64) % self.nan_every) == 0] = np.nan
        channel_scores = np.abs(windows[:, -1, :]).astype(np.float32) + 0.1
        return scores.astype(np.float32), channel_scores


def reference(pipe: Pipeline, windows: list[Window], scorer: HashScorer, decider: Decider, sampler: TelemetrySampler,
              ratios: list[float]) -> list[Record]:
    """The pipeline's decisions as they were made before batching: one window at a time."""
    cfg, m = pipe.config, pipe.manifest
    records: list[Record] = []
    if not windows:
        return records
    scores, channel_scores = scorer.score(np.stack([w.values for w in windows]).astype(np.float32))
    for w, score, cs in zip(windows, scores.astype(np.float64).tolist(), channel_scores, strict=True):
        if not math.isfinite(score):
            continue
        verdict = decider.decide(w.device_id, score, w.segment)
        if verdict.threshold > 0:
            ratios.append(score / verdict.threshold)
        key = w.device_id.encode()
        if verdict.fire:
            event = build_event(device_id=w.device_id, window_start=w.start, window_end=w.end, score=score,
                                threshold=verdict.threshold, channel_scores=cs, manifest=m, agent_id=cfg.agent.id,
                                clock=lambda: CLOCK)
            records.append(Record("anomaly", cfg.kafka.anomalies_topic, key, encode_event(event)))
        for sample in sampler.observe(Scored(w, score, verdict.threshold, verdict.fire)):
            s = sample.scored
            message = telemetry_from_window(device_id=s.window.device_id, agent_id=cfg.agent.id, reason=sample.reason,
                                            channels=m.channel_names, ts=s.window.ts.tolist(), values=s.window.values.tolist(),
                                            score=s.score, threshold=s.threshold, anomalous=s.anomalous, model_sha256=m.sha256)
            records.append(Record("telemetry", cfg.kafka.telemetry_topic, key, encode_telemetry(message)))
    return records


@pytest.mark.parametrize(("k", "n", "every_n", "context", "max_batch", "batch", "nan_every"), [
    (1, 1, 5, 2, 4096, 40, 0),
    (2, 3, 7, 3, 5, 16, 11),
    (3, 3, 0, 0, 13, 1, 7),
    (1, 4, 1, 1, 64, 7, 0),
    (2, 2, 3, 4, 2, 25, 5),
])
def test_batched_decisions_equal_window_by_window(k: int, n: int, every_n: int, context: int, max_batch: int, batch: int,
                                                  nan_every: int) -> None:
    manifest = load_manifest(TINY_MODEL)
    config = load_config(None, env={"EDGEWATCH_AGENT__ID": "gw-1", "EDGEWATCH_DECISION__K": str(k), "EDGEWATCH_DECISION__N": str(n),
                                    "EDGEWATCH_TELEMETRY__EVERY_N_WINDOWS": str(every_n),
                                    "EDGEWATCH_TELEMETRY__ANOMALY_CONTEXT_WINDOWS": str(context),
                                    "EDGEWATCH_AGENT__MAX_BATCH_WINDOWS": str(max_batch), "EDGEWATCH_ADAPTIVE__ENABLED": "false"})
    scorer = HashScorer(manifest, nan_every)
    metrics = AgentMetrics(CollectorRegistry())
    pipe = Pipeline(config, scorer, metrics, clock=lambda: CLOCK)
    pipe.decider.device_thresholds["dev-b"] = manifest.threshold * 1.5
    ref_windows = Windows(manifest.channel_names, manifest.window_length, manifest.stride, manifest.sample_period_s,
                          config.windows.gap_periods)
    ref_decider = Decider(manifest.threshold, k=k, n=n, device_thresholds=pipe.decider.device_thresholds)
    ref_sampler = TelemetrySampler(every_n, context)
    stream: list[tuple[str, bytes]] = []
    for i, device in enumerate(("dev-a", "dev-b", "dev-c")):
        readings = fleet_readings(device, 300, seed=i)
        # a gap in the middle of dev-a and dev-c: a new segment, the debounce starts afresh
        readings = [r for j, r in enumerate(readings) if not (device != "dev-b" and 140 <= j < 160)]
        stream.extend(payloads(readings, batch))
    rng = np.random.default_rng(k * 100 + n)
    order = rng.permutation(len(stream))  # devices interleaved, each device's payloads in order
    per_device: dict[str, list[tuple[str, bytes]]] = {}
    for topic, payload in stream:
        per_device.setdefault(topic, []).append((topic, payload))
    queues = list(per_device.values())
    interleaved = []
    for j in order:
        q = queues[j % len(queues)] or next(q for q in queues if q)
        interleaved.append(q.pop(0))
    got: list[Record] = []
    expected: list[Record] = []
    ratios: list[float] = []
    for lo in range(0, len(interleaved), 37):  # ticks
        messages = [Message(t, p, 1000.0) for t, p in interleaved[lo: lo + 37]]
        got.extend(pipe.process(messages))
        for msg in messages:
            decoded = pipe._fast.decode(msg.payload, msg.topic.split("/")[1])
            assert decoded is not None
            ref_windows.add_rows(msg.topic.split("/")[1], *decoded)
        while ref_windows.ready_count:
            expected.extend(reference(pipe, ref_windows.take_ready(max_batch), scorer, ref_decider, ref_sampler, ratios))
    assert [r.kind for r in got].count("anomaly") > 3
    assert got == expected
    assert pipe.decider._history == ref_decider._history and pipe.decider._segment == ref_decider._segment
    reg = CollectorRegistry()
    hist = Histogram("ratio", "ratio", buckets=RATIO_BUCKETS, registry=reg)
    for r in ratios:
        hist.observe(r)
    for le in [*map(str, RATIO_BUCKETS), "+Inf"]:
        assert metrics.registry.get_sample_value("edgewatch_agent_score_threshold_ratio_bucket", {"le": le}) == \
            reg.get_sample_value("ratio_bucket", {"le": le}), le
    assert metrics.registry.get_sample_value("edgewatch_agent_score_threshold_ratio_count") == len(ratios)
    assert metrics.registry.get_sample_value("edgewatch_agent_score_threshold_ratio_sum") == pytest.approx(sum(ratios))


def mixed_stream(rng: np.random.Generator) -> list[tuple[str, bytes]]:
    """Three devices' payloads of 1 to 40 readings (most of one), interleaved, each device's in order;
    with a gap, duplicate, late, past and future readings among them."""
    per_device = []
    for i, device in enumerate(("dev-a", "dev-b", "dev-c")):
        readings = [r for j, r in enumerate(fleet_readings(device, 300, seed=i)) if not 140 <= j < 160]
        for j in sorted(rng.choice(np.arange(40, len(readings)), 12, replace=False).tolist(), reverse=True):
            r = readings[j - 1]
            ts = (r.ts, r.ts - 2.5, r.ts - 100.0, CLOCK + 10 ** 6)[j % 4]  # duplicate, late, past, future
            readings.insert(j, Reading(device, ts, r.values))
        items, at = [], 0
        while at < len(readings):
            size = int(rng.choice([1, 1, 1, 1, 2, 7, 40]))
            items.extend(payloads(readings[at: at + size], size))
            at += size
        per_device.append(items)
    stream = []
    while any(per_device):
        stream.append(per_device[int(rng.choice([k for k, q in enumerate(per_device) if q]))].pop(0))
    return stream


@pytest.mark.parametrize(("flush_rows", "seed"), [(8192, 0), (8192, 1), (30, 2)])
def test_mixed_payloads_gathered_per_round_decide_as_placed_one_by_one(monkeypatch: pytest.MonkeyPatch, flush_rows: int,
                                                                     seed: int) -> None:
    """A round gathers each device's payloads, single readings and batches mixed, and places them in one
    array (FLUSH_ROWS small: also mid-round): the records and the drop and reset counts are those of
    placing each payload in turn."""
    monkeypatch.setattr(pipeline, "FLUSH_ROWS", flush_rows)
    manifest = load_manifest(TINY_MODEL)
    config = load_config(None, env={"EDGEWATCH_AGENT__ID": "gw-1", "EDGEWATCH_DECISION__K": "2", "EDGEWATCH_DECISION__N": "3",
                                    "EDGEWATCH_TELEMETRY__EVERY_N_WINDOWS": "4", "EDGEWATCH_ADAPTIVE__ENABLED": "false",
                                    "EDGEWATCH_SENSOR_HEALTH__ENABLED": "false"})
    scorer = HashScorer(manifest, 0)
    metrics = AgentMetrics(CollectorRegistry())
    pipe = Pipeline(config, scorer, metrics, clock=lambda: CLOCK)
    ref_windows = Windows(manifest.channel_names, manifest.window_length, manifest.stride, manifest.sample_period_s,
                          config.windows.gap_periods)
    ref_decider = Decider(manifest.threshold, k=2, n=3)
    ref_sampler = TelemetrySampler(4, config.telemetry.anomaly_context_windows)
    stream = mixed_stream(np.random.default_rng(seed))
    got: list[Record] = []
    expected: list[Record] = []
    outcomes: Counter[Added] = Counter()
    for lo in range(0, len(stream), 37):  # rounds
        messages = [Message(t, p, 1000.0) for t, p in stream[lo: lo + 37]]
        got.extend(pipe.process(messages))
        for msg in messages:
            device = msg.topic.split("/")[1]
            decoded = pipe._fast.decode(msg.payload, device)
            assert decoded is not None
            outcomes.update(ref_windows.add_rows(device, *decoded, CLOCK + config.windows.max_clock_skew_s))
        while ref_windows.ready_count:
            expected.extend(reference(pipe, ref_windows.take_ready(), scorer, ref_decider, ref_sampler, []))
    assert all(outcomes[a] for a in Added) and [r.kind for r in got].count("anomaly") > 3
    assert got == expected
    for added in Added:
        name, labels = ("edgewatch_agent_window_resets_total", None) if added is Added.RESET else \
            ("edgewatch_agent_readings_dropped_total", {"reason": added.value})
        if added is not Added.OK:
            assert metrics.registry.get_sample_value(name, labels) == outcomes[added], added
    assert metrics.registry.get_sample_value("edgewatch_agent_readings_received_total") == sum(outcomes.values())
    assert not pipe._pending and pipe._pending_rows == 0


@pytest.mark.parametrize("seed", range(8))
def test_decide_many_equals_decide_one_by_one(seed: int) -> None:
    rng = np.random.default_rng(seed)
    k = int(rng.integers(1, 5))
    n = int(rng.integers(k, 7))
    one, many = Decider(1.0, k=k, n=n), Decider(1.0, k=k, n=n)
    segment = 0
    for _ in range(30):
        size = int(rng.integers(0, 12))
        scores = rng.uniform(0, 2, size)
        segments = segment + np.cumsum(rng.random(size) < 0.1)
        segment = int(segments[-1]) if size else segment
        expected = [one.decide("d", float(s), int(g)) for s, g in zip(scores, segments, strict=True)]
        fire, over, threshold = many.decide_many("d", scores, segments)
        assert fire.tolist() == [v.fire for v in expected] and over.tolist() == [v.over for v in expected]
        assert threshold == 1.0
    assert one._history == many._history and one._segment == many._segment


def test_batch_histogram_matches_prometheus_histogram() -> None:
    values = np.concatenate([np.array(RATIO_BUCKETS), np.random.default_rng(3).exponential(1.5, 500), [0.0, 1e9, np.nan]])
    reg = CollectorRegistry()
    ours = BatchHistogram("ours", "ours", RATIO_BUCKETS, reg)
    theirs = Histogram("theirs", "theirs", buckets=RATIO_BUCKETS, registry=reg)
    ours.observe_many(values[:200])
    ours.observe_many(values[200:])
    ours.observe(2.0)
    for v in [*values[~np.isnan(values)].tolist(), 2.0]:
        theirs.observe(v)
    for le in [*map(str, RATIO_BUCKETS), "+Inf"]:
        assert reg.get_sample_value("ours_bucket", {"le": le}) == reg.get_sample_value("theirs_bucket", {"le": le}), le
    assert reg.get_sample_value("ours_count") == reg.get_sample_value("theirs_count") == len(values) - 1 + 1
    assert reg.get_sample_value("ours_sum") == pytest.approx(reg.get_sample_value("theirs_sum"))
