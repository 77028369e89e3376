"""Drift signal: per device and model version, the anomaly rate and the score distribution in
event-time buckets of ``window_s``, against what the model's calibration expects.

Expected anomaly rate per hour = (expected share of flagged windows) x (windows per hour), from
the manifest (``calibration.params.expected_anomaly_rate``, or ``1 - quantile``; windows per
hour from stride and sample period). Expected score ratio (mean score / threshold of anomalies)
from ``calibration.params.expected_score_ratio``. Without a manifest for the model's sha256,
the configured defaults are used. A bucket deviates when its rate exceeds ``rate_factor`` times
the expected rate, or (with at least 3 anomalies) its mean ratio exceeds ``score_factor`` times
the expected ratio. ``sustain_windows`` deviating buckets in a row open a drift incident and a
``drift`` alert naming the device, the model and the statistic; the first normal bucket closes it.

A bucket is judged only once the partition's final time has passed its end, so the result does
not depend on batch boundaries or process layout. Pure logic on the device state; never blocks.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloud.processor.config import DriftSection
from cloud.processor.fastevent import EventFields
from cloud.processor.incidents import Changes, DeviceState
from cloud.processor.store import IncidentRow
from edge.contract import Alert, ContractError, ModelManifest, decode_manifest, make_incident_id

log = logging.getLogger(__name__)
MIN_EVENTS_FOR_SCORE = 3


@dataclass(frozen=True)
class Expectation:
    rate_per_hour: float
    score_ratio: float


def expectation_from_manifest(m: ModelManifest, default: Expectation) -> Expectation:
    params = m.calibration.params
    share = params.get("expected_anomaly_rate")
    if not isinstance(share, float) and isinstance(params.get("quantile"), float):
        share = 1.0 - float(params["quantile"])
    windows_per_hour = 3600.0 / (m.stride * m.sample_period_s)
    rate = float(share) * windows_per_hour if isinstance(share, float) else default.rate_per_hour
    ratio = params.get("expected_score_ratio")
    return Expectation(rate, float(ratio) if isinstance(ratio, float) else default.score_ratio)


def load_expectations(section: DriftSection) -> dict[str, Expectation]:
    """Expectations by model sha256 from every ``*.json`` manifest under ``manifest_dir``."""
    out: dict[str, Expectation] = {}
    if not section.manifest_dir:
        return out
    default = Expectation(section.expected_rate_per_hour, section.expected_score_ratio)
    for path in sorted(Path(section.manifest_dir).rglob("*.json")):
        try:
            m = decode_manifest(path.read_bytes())
        except (ContractError, OSError) as exc:
            log.warning("drift_manifest_skipped path=%s reason=%s", path, exc)
            continue
        out[m.sha256] = expectation_from_manifest(m, default)
    log.info("drift_manifests_loaded count=%d dir=%s", len(out), section.manifest_dir)
    return out


class DriftMonitor:
    """See the module docstring; state lives under ``state["drift"][model_version]``."""

    def __init__(self, section: DriftSection, expectations: Mapping[str, Expectation], site_of: Any) -> None:
        self.s = section
        self.expect = expectations
        self.default = Expectation(section.expected_rate_per_hour, section.expected_score_ratio)
        self.site_of = site_of

    def apply(self, state: DeviceState, event: EventFields, final: float, out: Changes) -> None:
        """Count one new (not duplicate, not late) anomaly of its device in its model version's bucket."""
        if not self.s.enabled:
            return
        device, t, score, threshold = event.device_id, event.window_end, event.score, event.threshold
        model_name, model_version, sha256 = event.model_name, event.model_version, event.model_sha256
        b = int(math.floor(t / self.s.window_s))
        st = state["drift"].get(model_version)
        if st is None:
            st = state["drift"][model_version] = {"next": b, "buckets": {}, "streak": 0, "open": None,
                                                  "model_name": model_name, "sha": sha256}
        self.flush(device, state, final, out)
        if not st["buckets"] and st["open"] is None and b > st["next"]:
            st["streak"], st["next"] = 0, b  # the buckets in between had no anomaly: normal
        if b < st["next"]:
            return  # its bucket was already judged (cannot happen for events inside the allowed lateness)
        buckets, key = st["buckets"], str(b)
        n_sum = buckets.get(key)
        if n_sum is None:
            n_sum = buckets[key] = [0, 0.0]
        n_sum[0] += 1
        n_sum[1] += score / threshold if threshold > 0 else 0.0
        st["model_name"], st["sha"] = model_name, sha256

    def due(self, state: DeviceState) -> float:
        """The final time at which a pending bucket of the device can be judged (inf: nothing pending)."""
        due = math.inf
        for st in state["drift"].values():
            if st["buckets"] or st["open"]:
                due = min(due, (st["next"] + 1) * self.s.window_s)
        return due

    def flush(self, device: str, state: DeviceState, final: float, out: Changes) -> None:
        """Judge every bucket of the device that ended at or before ``final``."""
        w = self.s.window_s
        current = int(math.floor(final / w))
        for version, st in state["drift"].items():
            while (st["buckets"] or st["open"]) and (st["next"] + 1) * w <= final:
                n, total = st["buckets"].pop(str(st["next"]), [0, 0.0])
                self._judge(device, version, st, n, total, (st["next"] + 1) * w, out)
                st["next"] += 1
            if not st["buckets"] and st["open"] is None and current > st["next"]:
                st["streak"], st["next"] = 0, current  # buckets without anomalies are normal

    def _judge(self, device: str, version: str, st: dict[str, Any], n: int, total: float, end: float, out: Changes) -> None:
        exp = self.expect.get(st["sha"], self.default)
        rate = n * 3600.0 / self.s.window_s
        ratio = total / n if n else 0.0
        stat: tuple[str, float, float] | None = None
        if rate > self.s.rate_factor * exp.rate_per_hour:
            stat = ("anomaly_rate", rate, exp.rate_per_hour)
        elif n >= MIN_EVENTS_FOR_SCORE and ratio > self.s.score_factor * exp.score_ratio:
            stat = ("score_ratio", ratio, exp.score_ratio)
        if stat is None:
            st["streak"] = 0
            if st["open"] is not None:
                self._emit(device, version, st, st["open"], end, out)
                st["open"] = None
            return
        st["streak"] += 1
        if st["streak"] >= self.s.sustain_windows and st["open"] is None:
            opened = {"opened_at": end, "statistic": stat[0], "observed": stat[1], "expected": stat[2],
                      "count": st["streak"], "id": make_incident_id("drift", f"{device}/{version}", end)}
            st["open"] = opened
            self._emit(device, version, st, opened, None, out)
        elif st["open"] is not None:
            st["open"]["count"] = st["streak"]

    def _emit(self, device: str, version: str, st: dict[str, Any], d: dict[str, Any], closed_at: float | None,
              out: Changes) -> None:
        detail = (f"{d['statistic']} {d['observed']:.3g} vs expected {d['expected']:.3g} for {d['count']} "
                  f"buckets of {self.s.window_s:g} s")
        row = IncidentRow(
            incident_id=d["id"], kind="drift", site=self.site_of(device), device_id=device, device_ids=(device,),
            opened_at=d["opened_at"], closed_at=closed_at, last_event_at=closed_at or d["opened_at"], event_count=d["count"],
            max_score=0.0, model_name=st["model_name"], model_version=version, statistic=d["statistic"],
            observed=d["observed"], expected=d["expected"], detail=detail,
        )
        out.put(row)
        out.alerts.append(Alert(
            kind="drift", action="open" if closed_at is None else "close", incident_id=row.incident_id, site=row.site,
            device_ids=(device,), opened_at=row.opened_at, closed_at=closed_at, event_count=row.event_count,
            model_name=row.model_name, model_version=version, statistic=row.statistic, observed=row.observed,
            expected=row.expected, detail=detail,
        ))
