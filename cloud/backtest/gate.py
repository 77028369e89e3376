"""The registration gate on the backtest: a candidate's predicted alert rate against production's.

``registry register --archive`` and ``retrain`` (its release stage) replay the archive through the
candidate and through the production version (:func:`cloud.backtest.backtest`, the same devices,
range and decision config), refuse a candidate whose median alerts per device-day exceed
``max_ratio`` x production's, and write the prediction (:class:`edge.contract.ExpectedAlerts`)
into the manifest. A manifest that was signed loses its signature there (it no longer covers the
manifest): ``registry publish --key`` or ``keys sign`` signs it again, the prediction included.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloud.backtest.replay import backtest
from cloud.backtest.result import BacktestResult
from cloud.retrain.dataset import LabelledIncident
from edge.config import Config
from edge.contract import ExpectedAlerts, encode_manifest
from edge.detector import load_manifest

log = logging.getLogger(__name__)

DEFAULT_MAX_ALERT_RATIO = 2.0


@dataclass(frozen=True)
class GateOutcome:
    candidate: BacktestResult
    production: BacktestResult | None  # None: no production version
    expected: ExpectedAlerts
    refusal: str | None                 # why the candidate is refused (None: it passes)

    def card(self, forced: bool = False) -> dict[str, Any]:
        """The model card's ``backtest`` entry: both replays' overall figures and the decision."""
        def overall(r: BacktestResult) -> dict[str, Any]:
            return {"version": r.version, **dataclasses.asdict(r.overall())}

        return {"since": self.expected.since, "until": self.expected.until, "max_ratio": self.expected.max_ratio,
                "candidate": overall(self.candidate), "production": None if self.production is None else overall(self.production),
                "decision": "passed" if self.refusal is None else ("forced" if forced else "refused"), "reason": self.refusal}


def alert_gate(candidate_dir: Path, production_dir: Path | None, *, archive: Path, config: Config, since: float | None = None,
               until: float | None = None, labels: Sequence[LabelledIncident] | None = None,
               max_ratio: float = DEFAULT_MAX_ALERT_RATIO, progress: Callable[[str], None] | None = None) -> GateOutcome:
    """Backtest the candidate, then production (if any) on the same range; raises what
    :func:`backtest` raises (a range without data: :class:`ConfigError`)."""
    def run(model_dir: Path, what: str) -> BacktestResult:
        if progress is not None:
            progress(f"backtest: replaying {what} {model_dir}")
        return backtest(archive, model_dir, config=config, since=since, until=until, labels=labels)

    cand = run(candidate_dir, "candidate")
    prod = run(production_dir, "production") if production_dir is not None else None
    return GateOutcome(cand, prod, cand.expected_alerts(prod, max_ratio), refusal(cand, prod, max_ratio))


def refusal(candidate: BacktestResult, production: BacktestResult | None, max_ratio: float) -> str | None:
    """Why ``candidate`` is refused: its median alerts per device-day above ``max_ratio`` x production's."""
    if production is None:
        return None
    c, p = candidate.overall().alerts_per_device_day["p50"], production.overall().alerts_per_device_day["p50"]
    if c <= max_ratio * p or c == 0:
        return None
    return (f"candidate {candidate.model} {candidate.version} raises a median {c:.3g} alerts per device-day on the archive, "
            f"production {production.version} {p:.3g}: more than --max-alert-ratio {max_ratio:g} x production's")


def stamp(model_dir: Path, expected: ExpectedAlerts) -> bool:
    """Write ``expected`` into ``model_dir/manifest.json``; True if a signature was dropped."""
    manifest = load_manifest(model_dir)
    signed = manifest.signature is not None
    (Path(model_dir) / "manifest.json").write_bytes(encode_manifest(dataclasses.replace(manifest, expected_alerts=expected,
                                                                                           signature=None)))
    if signed:
        log.warning("backtest_signature_dropped model_dir=%s", model_dir)
    return signed


def labels_from(spec: str | None) -> list[LabelledIncident] | None:
    """Labelled incidents from ``--store``: a processor TOML (its ``[store]``), a SQLite file or a
    PostgreSQL DSN; None without one."""
    from cloud.retrain.sources import labelled_incidents, store_section

    if not spec:
        return None
    if spec.endswith(".toml"):
        from cloud.processor.config import load_config

        return labelled_incidents(load_config(Path(spec)).store)
    return labelled_incidents(store_section(spec))
