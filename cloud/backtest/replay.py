"""The backtest: archived telemetry replayed through the agent's decision path, streamed.

:func:`backtest` reads the processor's Parquet archive (:mod:`cloud.processor.archive`,
``device_id=<device>/date=<day>/*.parquet``) with ``pyarrow.dataset``: the device, day and time
filters are pushed down (partition pruning, then Parquet statistics and row filters), only the
columns the replay needs are read, in record batches of ``batch_size`` rows. Devices are replayed
one after another, each day in order, so at most one device-day of windows is in memory; each
device's state (the adaptive layer's estimate, the k-of-n history, its open incident and coverage)
is carried from one day to the next. Within a day, windows are sorted by ``window_start``.

Each window goes through exactly the agent's classes (:mod:`edge.pipeline`'s ``_fire``): the
model in onnxruntime (:class:`edge.detector.OnnxDetector`), then :class:`edge.adaptive.AdaptiveLayer`
when ``adaptive.enabled`` (unless the device has a ``decision.device_thresholds`` entry), then the
k-of-n :class:`edge.decision.Decider`, configured from the agent's config. A window that fires is
one alert (one anomaly event of the agent). A device's alerts closer than ``incident_gap_s`` (the
processor's ``incidents.quiet_s``) in window-end time form one incident. Windows whose channels or
length do not match the model's are skipped and counted. Debounce segments are not rebuilt from
gaps (archived windows are a sample): one segment per device, as :mod:`cloud.evaluate.agent_path`.

Device-days: a device's covered time is the union of its windows, windows less than
``coverage_gap_s`` apart joined (the archive holds every Nth window, so the time between two
samples counts); the sum over devices divided by 86400.

Blocking, single-threaded (onnxruntime with one thread). Raises :class:`ConfigError` for a missing
archive, a file that is not an archive file, or a range without any window of the model's channels.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cloud.backtest.result import INCIDENT_GAP_S, BacktestResult, DeviceResult, Summary, all_one_group
from cloud.processor.archive import SCHEMA, day_of
from cloud.retrain.dataset import LabelledIncident
from edge.adaptive import layer_for
from edge.config import Config
from edge.contract import ConfigError
from edge.decision import Decider
from edge.detector import OnnxDetector

__all__ = ["BacktestResult", "DeviceResult", "Summary", "backtest"]

log = logging.getLogger(__name__)

COVERAGE_GAP_S = 3600.0
BATCH_SIZE = 4096
_COLUMNS = ["agent_id", "window_start", "window_end", "channels", "values"]


@dataclass
class _DayWindows:
    """One device-day's windows that fit the model, in window_start order."""

    starts: np.ndarray
    ends: np.ndarray
    values: np.ndarray  # (n, window_length, channels) float32
    skipped: int
    agent_id: str


class Replay:
    """The agent's decision path (``edge.pipeline``'s ``_fire``), per device, state kept across calls."""

    def __init__(self, detector: OnnxDetector, config: Config) -> None:
        m = detector.manifest
        threshold = config.decision.threshold if config.decision.threshold is not None else m.threshold
        self.detector = detector
        self.decider = Decider(threshold, k=config.decision.k, n=config.decision.n,
                               device_thresholds=config.decision.device_thresholds)
        self.layer = layer_for(config.adaptive, m, config.decision.threshold) if config.adaptive.enabled else None

    def scores(self, values: np.ndarray, chunk: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The windows' scores, and an ensemble's member scores (None for one model)."""
        ensemble = self.detector.manifest.members is not None
        score: Callable[[np.ndarray], tuple[np.ndarray, ...]] = self.detector.score_members if ensemble else self.detector.score
        runs = [score(values[i:i + chunk]) for i in range(0, len(values), chunk)]
        members = np.asarray(np.concatenate([r[2] for r in runs]), dtype=np.float64) if ensemble else None
        return np.asarray(np.concatenate([r[0] for r in runs]), dtype=np.float64), members

    def fire(self, device: str, scores: np.ndarray, ends: np.ndarray, last_rows: np.ndarray,
             members: np.ndarray | None = None) -> np.ndarray:
        segments = np.zeros(len(scores), dtype=np.int64)
        if self.layer is None or device in self.decider.device_thresholds:
            fire, _over, _t = self.decider.decide_many(device, scores, segments)
            return fire
        over, _surprise, _thresholds = self.layer.decide_many(device, scores if members is None else members, ends, last_rows)
        return self.decider.debounce(device, over, segments)


def backtest(archive: Path, model_dir: Path, *, config: Config, since: float | None = None, until: float | None = None,
             devices: Sequence[str] | None = None, group_of: Callable[[str], str] = all_one_group,
             labels: Sequence[LabelledIncident] | None = None, incident_gap_s: float = INCIDENT_GAP_S,
             coverage_gap_s: float = COVERAGE_GAP_S, batch_size: int = BATCH_SIZE,
             progress: Callable[[int, int], None] | None = None,
             on_decided: Callable[[str, np.ndarray, np.ndarray, np.ndarray], None] | None = None) -> BacktestResult:
    """Replay ``archive`` through the model in ``model_dir`` (see the module docstring).

    ``progress(done, total)`` is called after each device; ``on_decided(device, window_ends,
    scores, fire)`` after each device-day (tests compare it with :mod:`cloud.evaluate.agent_path`)."""
    detector = OnnxDetector.load(model_dir)
    m = detector.manifest
    replay = Replay(detector, config)
    days = _device_days(Path(archive), since, until, devices)
    results: dict[str, DeviceResult] = {}
    total = len({device for device, _day, _paths in days})
    for device, day, paths in days:
        if device not in results:
            if results and progress is not None:
                progress(len(results), total)
            results[device] = DeviceResult(device)
        d = results[device]
        w = _read_day(paths, since, until, m.channel_names, m.window_length, batch_size)
        d.skipped += w.skipped
        if not len(w.starts):
            continue
        scores, members = replay.scores(w.values, batch_size)
        fire = replay.fire(device, scores, w.ends, w.values[:, -1, :].astype(np.float64), members)
        if on_decided is not None:
            on_decided(device, w.ends, scores, fire)
        _account(d, day, w, scores > m.threshold, fire, incident_gap_s, coverage_gap_s)
    if progress is not None and results:
        progress(len(results), total)
    replayed = [d for d in results.values() if d.windows]
    if not replayed:
        skipped = sum(d.skipped for d in results.values())
        raise ConfigError(f"--archive {archive}: no archived windows {_range_text(since, until, devices)}"
                          + (f" ({skipped} windows whose channels or length do not fit {m.name} {m.version})" if skipped else ""))
    for d in replayed:  # the open coverage run
        d.covered_s += d.last - d.run_start
    log.info("backtest_done model=%s version=%s devices=%d windows=%d alerts=%d", m.name, m.version, len(replayed),
             sum(d.windows for d in replayed), sum(d.alerts for d in replayed))
    return BacktestResult(m.name, m.version, m.sha256, m.threshold,
                          since if since is not None else min(d.first for d in replayed),
                          until if until is not None else max(d.last for d in replayed),
                          results, group_of, tuple(labels or ()), incident_gap_s)


def _range_text(since: float | None, until: float | None, devices: Sequence[str] | None) -> str:
    parts = [f"since {_iso(since)}" if since is not None else "", f"until {_iso(until)}" if until is not None else "",
             f"for devices {', '.join(devices)}" if devices else ""]
    return " ".join(p for p in parts if p) or "at all"


def _iso(t: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="seconds")


def _account(d: DeviceResult, day: str, w: _DayWindows, over: np.ndarray, fire: np.ndarray, gap_s: float,
             coverage_gap_s: float) -> None:
    """Add one device-day to its device: counts, incidents (the open one carried on), coverage."""
    d.agent_id = w.agent_id or d.agent_id
    d.windows += len(w.starts)
    d.over += int(over.sum())
    d.alerts += int(fire.sum())
    d.daily[day] = d.daily.get(day, 0) + int(fire.sum())
    for end in w.ends[fire].tolist():
        if d.incidents and end - d.incidents[-1][1] <= gap_s:
            d.incidents[-1] = (d.incidents[-1][0], end)
        else:
            d.incidents.append((end, end))
    for s, e in zip(w.starts.tolist(), w.ends.tolist(), strict=True):  # coverage: runs of windows closer than the gap
        if math.isnan(d.run_start):
            d.run_start, d.first, d.last = s, s, e
        elif s - d.last > coverage_gap_s:
            d.covered_s += d.last - d.run_start
            d.run_start = s
        d.last = max(d.last, e)


def _device_days(root: Path, since: float | None, until: float | None,
                 devices: Sequence[str] | None) -> list[tuple[str, str, list[str]]]:
    """(device, day, files) in device then day order, after partition pruning; no file is opened."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    if not root.is_dir():
        raise ConfigError(f"--archive {root}: no such directory")
    paths = sorted(str(p) for p in root.glob("device_id=*/date=*/*.parquet"))
    if not paths:
        return []
    schema = SCHEMA.append(pa.field("date", pa.string()))
    partitioning = ds.partitioning(pa.schema([("device_id", pa.string()), ("date", pa.string())]), flavor="hive")
    dataset = ds.dataset(paths, schema=schema, format="parquet", partitioning=partitioning, partition_base_dir=str(root))
    where = []
    if since is not None:  # a window lies in the folder of the day it starts; one starting the day before may end after since
        where.append(ds.field("date") >= day_of(since - 86400))
    if until is not None:
        where.append(ds.field("date") <= day_of(until))
    if devices:
        where.append(ds.field("device_id").isin(list(devices)))
    grouped: dict[tuple[str, str], list[str]] = {}
    for frag in dataset.get_fragments(filter=_all(where)):
        keys = ds.get_partition_keys(frag.partition_expression)
        grouped.setdefault((str(keys["device_id"]), str(keys["date"])), []).append(frag.path)
    # paths, not fragments: a scanned fragment keeps its Parquet metadata, which would add up over the replay
    return [(device, day, grouped[device, day]) for device, day in sorted(grouped)]


def _all(exprs: list[Any]) -> Any:
    out = None
    for e in exprs:
        out = e if out is None else out & e
    return out


def _read_day(paths: list[str], since: float | None, until: float | None, channels: tuple[str, ...], length: int,
              batch_size: int) -> _DayWindows:
    """One device-day: its files scanned in batches, only the replay's columns, the time filter pushed down."""
    import pyarrow.dataset as ds

    where = _all([e for e in (ds.field("window_end") >= since if since is not None else None,
                              ds.field("window_start") < until if until is not None else None) if e is not None])
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    skipped, agent = 0, ""
    for path in paths:
        try:
            scanner = ds.dataset(path, schema=SCHEMA, format="parquet").scanner(columns=_COLUMNS, filter=where,
                                                                               batch_size=batch_size, use_threads=False)
            for batch in scanner.to_batches():
                starts, ends, values, bad, last_agent = _batch_windows(batch, channels, length)
                skipped += bad
                agent = last_agent or agent
                if len(starts):
                    parts.append((starts, ends, values))
        except (OSError, ValueError, KeyError) as exc:  # pyarrow: ArrowInvalid is a ValueError
            raise ConfigError(f"{path}: not a telemetry archive file ({exc})") from None
    if not parts:
        empty = np.zeros(0)
        return _DayWindows(empty, empty, np.zeros((0, length, len(channels)), dtype=np.float32), skipped, agent)
    starts = np.concatenate([p[0] for p in parts])
    order = np.argsort(starts, kind="stable")
    return _DayWindows(starts[order], np.concatenate([p[1] for p in parts])[order],
                       np.concatenate([p[2] for p in parts])[order], skipped, agent)


def _batch_windows(batch: Any, channels: tuple[str, ...], length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, str]:
    """A record batch's windows that fit the model (channels in its order, ``length`` rows of one
    value per channel): starts, ends, values ``(n, length, channels)`` float32; the count of the
    others; the batch's last agent id."""
    n, c = batch.num_rows, len(channels)
    if n == 0:
        return np.zeros(0), np.zeros(0), np.zeros((0, length, c), dtype=np.float32), 0, ""
    cols = {name: batch.column(name) for name in _COLUMNS}
    fits = np.array([tuple(ch) == channels for ch in cols["channels"].to_pylist()], dtype=bool)
    outer = cols["values"]
    outer_off = outer.offsets.to_numpy()
    rows = outer.flatten()
    row_off = rows.offsets.to_numpy()
    row_ok = np.diff(row_off) == c
    bad_rows = np.concatenate(([0], np.cumsum(~row_ok)))
    rel = outer_off - outer_off[0]
    fits &= (np.diff(rel) == length) & (bad_rows[rel[1:]] == bad_rows[rel[:-1]])
    flat = rows.flatten().to_numpy(zero_copy_only=False)
    first_value = row_off[rel[:-1][fits]] - row_off[0]
    idx = first_value[:, None] + np.arange(length * c)[None, :]
    values = flat[idx].reshape(-1, length, c).astype(np.float32) if len(first_value) else np.zeros((0, length, c), np.float32)
    agents = cols["agent_id"].to_pylist()
    starts = cols["window_start"].to_numpy(zero_copy_only=False)[fits]
    ends = cols["window_end"].to_numpy(zero_copy_only=False)[fits]
    return starts, ends, values, int(n - fits.sum()), str(agents[-1] or "")
