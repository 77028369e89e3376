"""The retraining job's typed configuration (``retrain.toml``): frozen dataclasses loaded from TOML.

Three tables, all optional::

    [retrain]   data selection and evaluation gates    env EDGEWATCH_RETRAIN__<KEY>
    [train]     TrainConfig overrides for fine-tuning  env EDGEWATCH_TRAIN__<KEY>  (models.config keys)
    [trigger]   the drift-alert consumer               env EDGEWATCH_TRIGGER__<KEY>

Unknown tables or keys raise :class:`ConfigError` naming the file and the dotted key; so do
out-of-range values. Environment twins are read when the config is loaded.
"""

from __future__ import annotations

import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.config_parse import build_section, check_host_ports, read_toml
from edge.contract import ConfigError
from edge.kafka_security import KafkaSecurity, check_security
from models.config import config_from_mapping, train_overrides


@dataclass(frozen=True)
class RetrainSection:
    """What data a retraining uses and how a candidate must compare with production."""

    holdout_share: float = 0.2  # latest share of each device's windows, kept out of training for evaluation
    min_train_windows: int = 32  # fewer after exclusions: nothing is trained (exit 4)
    min_holdout_windows: int = 8
    incident_pad_s: float = 60.0  # a window within this of a labelled incident's span belongs to it
    exclude_flagged: bool = True  # leave windows the live model flagged anomalous out of training (not out of the holdout)
    max_flat_share: float = 0.2  # more training rows than this in segments with a constant channel: rejected (exit 3)
    refit_preprocessing: bool = False  # fine-tuning: refit scaling on the new rows instead of keeping production's
    max_far_increase: float = 0.01  # gate: candidate holdout false-alarm rate <= production's + this
    max_recall_drop: float = 0.0  # gate: candidate recall on true-positive incidents >= production's - this
    max_fp_increase: float = 0.05  # gate: candidate's alarming share of false-positive incident windows <= production's + this
    batch_size: int = 4096  # windows per onnxruntime call during evaluation
    ladder_min_labelled: int = 0  # this many labelled incidents or more: train the ladder family on them (0 = only --family ladder)
    max_alert_ratio: float = 2.0  # backtest gate: candidate median alerts per device-day <= this x production's (docs/rollouts.md)


@dataclass(frozen=True)
class TriggerSection(KafkaSecurity):
    """The long-running ``edgewatch retrain --on-drift`` consumer; TLS and SASL keys (``security_protocol``,
    ``ssl_cafile``, ... ``username``; ``password`` from ``EDGEWATCH_TRIGGER__PASSWORD`` only) from
    :class:`~edge.kafka_security.KafkaSecurity`."""

    bootstrap: str = "127.0.0.1:9092"
    alerts_topic: str = "edgewatch.alerts"
    group_id: str = "edgewatch-retrain"
    client_id: str = "edgewatch-retrain"
    auto_offset_reset: typing.Literal["earliest", "latest"] = "latest"
    cooldown_s: float = 3600.0  # after a job for a model ends, its drift alerts are skipped this long
    lookback_s: float = 86400.0  # a drift-started job trains on the archive since alert time - lookback
    exclude_flagged: bool = False  # a drift-started job's [retrain] exclude_flagged: flagged windows are mostly the new normal
    max_jobs: int = 1  # jobs running at once (over all models)
    poll_timeout_s: float = 0.5
    drain_timeout_s: float = 600.0  # on SIGTERM, wait this long for running jobs


@dataclass(frozen=True)
class RetrainConfig:
    retrain: RetrainSection = RetrainSection()
    train: Mapping[str, Any] = field(default_factory=dict)  # validated against models.config.TrainConfig
    trigger: TriggerSection = TriggerSection()


def load_retrain_config(path: Path | str | None = None, env: Mapping[str, str] | None = None) -> RetrainConfig:
    """Read ``path`` (or defaults only), apply environment twins, validate; raises :class:`ConfigError`."""
    env = os.environ if env is None else env
    where = str(path) if path else "<defaults>"
    raw = read_toml(Path(path)) if path is not None else {}
    for key in raw:
        if key not in ("retrain", "train", "trigger"):
            raise ConfigError(f"{where}: unknown key {key!r} (known tables: retrain, train, trigger)")
    train = train_overrides(raw.get("train", {}), where, env)
    config_from_mapping(train, origin=where)  # out-of-range values fail here, at start
    config = RetrainConfig(retrain=build_section(RetrainSection, raw.get("retrain", {}), "retrain", where, env), train=train,
                           trigger=check_security(build_section(TriggerSection, raw.get("trigger", {}), "trigger", where, env,
                                                                frozenset({"password"})),
                                                  section="trigger", where=where,
                                                  base=Path(path).resolve().parent if path else None))
    _validate(config, where)
    return config


def _validate(c: RetrainConfig, where: str) -> None:
    r, t = c.retrain, c.trigger
    checks = [
        (0.0 < r.holdout_share < 0.9, "retrain.holdout_share", r.holdout_share, "must be in (0, 0.9)"),
        (r.min_train_windows >= 4, "retrain.min_train_windows", r.min_train_windows, "must be >= 4"),
        (r.min_holdout_windows >= 1, "retrain.min_holdout_windows", r.min_holdout_windows, "must be >= 1"),
        (0.0 <= r.max_flat_share <= 1.0, "retrain.max_flat_share", r.max_flat_share, "must be in [0, 1]"),
        (r.incident_pad_s >= 0, "retrain.incident_pad_s", r.incident_pad_s, "must be >= 0"),
        (min(r.max_far_increase, r.max_recall_drop, r.max_fp_increase) >= 0, "retrain.max_*", "", "margins must be >= 0"),
        (r.batch_size >= 1, "retrain.batch_size", r.batch_size, "must be >= 1"),
        (r.ladder_min_labelled >= 0, "retrain.ladder_min_labelled", r.ladder_min_labelled, "must be >= 0"),
        (r.max_alert_ratio > 0, "retrain.max_alert_ratio", r.max_alert_ratio, "must be > 0"),
        (t.cooldown_s >= 0, "trigger.cooldown_s", t.cooldown_s, "must be >= 0"),
        (t.lookback_s > 0, "trigger.lookback_s", t.lookback_s, "must be > 0"),
        (t.max_jobs >= 1, "trigger.max_jobs", t.max_jobs, "must be >= 1"),
        (t.poll_timeout_s > 0, "trigger.poll_timeout_s", t.poll_timeout_s, "must be > 0"),
    ]
    for ok, key, value, rule in checks:
        if not ok:
            raise ConfigError(f"{where}: {key} = {value!r} {rule}")
    check_host_ports(t.bootstrap, "trigger.bootstrap", where)
