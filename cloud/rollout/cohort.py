"""Comparing the agents on a rollout's new version with the rest of their group.

Cohorts are by live version: events (and incidents, per kind) carry the model version that
raised them, and exposure is counted per version an agent ran (:mod:`cloud.rollout.state`). A
rate is counts per device-hour since the rollout started; the ratio of two rates adds one to
each count, so a cohort with no event yet has a finite, conservative ratio. What is counted is
read from the store on each call (events ingested since the rollout started: a scan of that
range; fine for a rollout of hours, not a store-wide index). Only what the model decides is
compared: process anomaly events, and incidents of :data:`MODEL_KINDS`. Sensor faults, peer
outliers and silent devices are the sensors' and the machines' doing, whatever model runs.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

import orjson

from cloud.processor.store import Store
from cloud.rollout import state

Verdict = Literal["diverged", "healthy", "wait"]


@dataclass(frozen=True)
class Cohort:
    agents: frozenset[str]
    device_hours: float
    counts: dict[str, int] = field(default_factory=dict)  # "events", "incidents:<kind>"

    def rate(self, key: str) -> float:
        return self.counts.get(key, 0) / self.device_hours if self.device_hours > 0 else float("nan")


@dataclass(frozen=True)
class Comparison:
    new: Cohort
    rest: Cohort
    wave: frozenset[str]  # agents announced the candidate
    rejected: dict[str, str]  # wave agents that rejected it in shadow: reason

    def ratio(self, key: str) -> float:
        """(new count + 1) / new device-hours over the same for the rest; inf when the rest has no exposure."""
        if self.rest.device_hours <= 0 or self.new.device_hours <= 0:
            return float("inf")
        return ((self.new.counts.get(key, 0) + 1) / self.new.device_hours) / ((self.rest.counts.get(key, 0) + 1) / self.rest.device_hours)

    @property
    def keys(self) -> list[str]:
        return sorted(set(self.new.counts) | set(self.rest.counts) | {"events"})

    @property
    def rejection_share(self) -> float:
        return len(self.rejected) / len(self.wave) if self.wave else 0.0


MODEL_KINDS = frozenset({"incident", "fleet_incident", "drift"})  # incidents the model's verdicts make


def compare(store: Store, rollout: state.Rollout) -> Comparison:
    """The two cohorts of ``rollout`` from the store, now."""
    group = set(state.reports(store, rollout.group))
    hours: dict[bool, float] = {True: 0.0, False: 0.0}
    agents: dict[bool, set[str]] = {True: set(), False: set()}
    for (agent, version), h in state.exposure(store, rollout.rollout_id).items():
        if agent in group:
            hours[version == rollout.version] += h
            agents[version == rollout.version].add(agent)
    counts: dict[bool, Counter[str]] = {True: Counter(), False: Counter()}
    device_agent: dict[str, str] = {}
    for (payload,) in store.execute("SELECT payload FROM events WHERE ingested_at >= ?", (rollout.started_at,)):
        e = orjson.loads(payload)
        if e.get("model_name") == rollout.name and e.get("agent_id") in group and e.get("kind", "process") == "process":
            counts[e.get("model_version") == rollout.version]["events"] += 1
            device_agent[e["device_id"]] = e["agent_id"]
    for kind, device, version in store.execute("SELECT kind, device_id, model_version FROM incidents WHERE updated_at >= ? "
                                               "AND model_name = ?", (rollout.started_at, rollout.name)):
        if device in device_agent and kind in MODEL_KINDS:
            counts[version == rollout.version][f"incidents:{kind}"] += 1
    wave = frozenset(m.agent_id for m in state.members(store, rollout.rollout_id) if m.skipped is None)
    said = state.statuses(store, rollout.name, rollout.version)
    rejected = {a: said[a]["rejected"] for a in sorted(wave) if "rejected" in said.get(a, {})}
    return Comparison(Cohort(frozenset(agents[True]), hours[True], dict(counts[True])),
                      Cohort(frozenset(agents[False]), hours[False], dict(counts[False])), wave, rejected)


def judge(c: Comparison, *, min_exposure_device_hours: float, max_ratio: float, max_shadow_rejection_share: float,
          min_events: int) -> tuple[Verdict, str]:
    """``diverged`` (pause), ``healthy`` (enough exposure, no divergence) or ``wait``, with the reason."""
    if c.wave and c.rejection_share > max_shadow_rejection_share:
        return "diverged", (f"{len(c.rejected)} of {len(c.wave)} wave agents rejected the candidate in shadow "
                            f"({c.rejection_share:.0%} > {max_shadow_rejection_share:.0%}): "
                            + "; ".join(f"{a}: {r}" for a, r in c.rejected.items()))
    short = [f"{name} {cohort.device_hours:.3g}" for name, cohort in (("new", c.new), ("rest", c.rest))
             if cohort.device_hours < min_exposure_device_hours]
    if short:
        return "wait", f"exposure below {min_exposure_device_hours:g} device-hours: {', '.join(short)}"
    for key in c.keys:
        ratio = c.ratio(key)
        if c.new.counts.get(key, 0) >= min_events and ratio > max_ratio:
            return "diverged", (f"{key}: {c.new.rate(key):.3g} per device-hour on the new version against "
                                f"{c.rest.rate(key):.3g} on the rest, ratio {ratio:.2f} > {max_ratio:g} "
                                f"({c.new.device_hours:.3g} and {c.rest.device_hours:.3g} device-hours)")
    worst = max(c.keys, key=c.ratio)
    return "healthy", f"no divergence: highest ratio {c.ratio(worst):.2f} ({worst}) <= {max_ratio:g}"
