"""One retraining, in-process: :func:`retrain` -> :class:`RetrainResult`.

Stages: production start point -> labelled incidents -> archive -> dataset -> train (fine-tune)
-> export -> evaluate both models through onnxruntime -> gates -> report -> (sign, register,
publish). Each stage reports one progress line. Outcomes: ``registered`` (exit 0), ``rejected``
by a gate, data check included (exit 3), ``no_data``: too few windows to train or evaluate
(exit 4). Anything else raises (exit 1): :class:`ConfigError` for bad input, other
:class:`EdgewatchError` at run time. Blocks for the whole job; not thread-safe per model name
(the registry is not).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cloud.processor.config import StoreSection
from cloud.registry import Registry
from cloud.retrain.config import RetrainConfig
from cloud.retrain.dataset import ArchivedWindow, Dataset, LabelledIncident, build_dataset, degenerate
from cloud.retrain.evaluate import Gate, apply_gates, measure, score_model
from cloud.retrain.production import Starting, load_production, next_version
from edge.contract import ConfigError, EdgewatchError

log = logging.getLogger(__name__)
EXIT_REGISTERED, EXIT_REJECTED, EXIT_NO_DATA = 0, 3, 4
Status = Literal["registered", "rejected", "no_data"]
Progress = Callable[[str], None]


class RetrainCancelled(EdgewatchError):
    """``should_stop`` said stop between two stages; nothing was registered."""


@dataclass(frozen=True)
class PublishTarget:
    """Where ``publish`` announces a registered candidate (:func:`cloud.distribute.publish_model`)."""

    host: str
    port: int
    group: str
    prefix: str = "edgewatch"


@dataclass
class RetrainResult:
    status: Status
    model: str
    production_version: str
    version: str | None  # the candidate's version (None when nothing was trained)
    run_dir: Path
    reason: str
    registry_dir: Path | None = None
    report_json: Path | None = None
    report_png: Path | None = None
    signed: bool = False
    published: bool = False
    fine_tuned: bool = False
    counts: dict[str, int] = field(default_factory=dict)
    production_metrics: dict[str, float | None] = field(default_factory=dict)
    candidate_metrics: dict[str, float | None] = field(default_factory=dict)
    gates: list[Gate] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        return {"registered": EXIT_REGISTERED, "rejected": EXIT_REJECTED, "no_data": EXIT_NO_DATA}[self.status]


def retrain(model: str, *, registry: Path, archive: Path | None = None, since: float | None = None, until: float | None = None,
            store: StoreSection | None = None, windows: Sequence[ArchivedWindow] | None = None,
            incidents: Sequence[LabelledIncident] | None = None, key: Path | None = None, publish: PublishTarget | None = None,
            version: str | None = None, config: RetrainConfig | None = None, trigger: str = "manual",
            progress: Progress | None = None, train_progress: bool = False,
            should_stop: Callable[[], bool] | None = None) -> RetrainResult:
    """Retrain ``model`` from its production version; see the module docstring.

    Data: ``windows`` (already loaded) or the Parquet ``archive`` since/until (event time, s);
    labels: ``incidents`` or the processor's ``store`` (none: no incident is excluded or
    evaluated). ``key`` signs the candidate (required with ``publish``)."""
    from cloud.keys import load_private_key

    cfg = config or RetrainConfig()
    started = time.monotonic()
    reg = Registry(Path(registry))
    private_key = load_private_key(Path(key)) if key is not None else None
    if publish is not None and private_key is None:
        raise ConfigError("--publish needs --key: devices refuse unsigned models")
    if windows is None and archive is None:
        raise ConfigError("retrain needs --archive (or windows in-process)")
    stages = _Stages(model, progress, should_stop)

    start = stages.run("production", lambda: load_production(reg, model, cfg.train), lambda s: s.note)
    run_dir = reg.root / model / "runs" / f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S%fZ}"
    if incidents is None:
        from cloud.retrain.sources import labelled_incidents

        incidents = stages.run("labels", lambda: labelled_incidents(store) if store is not None else [],
                               lambda i: f"{len(i)} labelled incidents" + ("" if store is not None else " (no --store)"))
    if windows is None:
        assert archive is not None
        windows = stages.run("archive", lambda: _read(Path(archive), since, until, incidents, cfg.retrain.incident_pad_s),
                             lambda w: f"{len(w)} windows from {len({x.device_id for x in w})} devices in {archive}")
    data = stages.run("dataset", lambda: _dataset(windows, incidents, start, cfg), _describe)
    result = RetrainResult("no_data", model, start.manifest.version, None, run_dir, "", fine_tuned=start.state is not None,
                           counts=data.counts)
    short = _too_little(data, cfg)
    if short:
        return _finish(result, "no_data", short, started, run_dir, _base_report(result, start, cfg, since, until, trigger))
    problem = degenerate(data, start.manifest.channel_names, cfg.retrain.max_flat_share)
    if problem:
        result.gates = [Gate("training_data", False, True, None, None, problem)]
        return _finish(result, "rejected", problem, started, run_dir, _base_report(result, start, cfg, since, until, trigger))

    cand_version = next_version(reg, model, version)
    result.version = cand_version
    fitted = stages.run("train", lambda: _train(data, start, cfg, train_progress),
                        lambda f: f"{len(f.history.train_loss)} epochs on {len(f.train_scores)} windows, threshold {f.threshold:.4g}")
    stages.run("export", lambda: _export(fitted, run_dir, model, cand_version), lambda _: f"{run_dir}")
    prod_scores, cand_scores = stages.run(
        "evaluate", lambda: (score_model(start.model_dir, data, batch=cfg.retrain.batch_size),
                             score_model(run_dir, data, batch=cfg.retrain.batch_size)),
        lambda s: f"{len(s[0].holdout)} holdout windows, {len(s[0].incidents)} labelled incidents, both through onnxruntime")
    result.production_metrics = measure(prod_scores, data.incident_labels)
    result.candidate_metrics = measure(cand_scores, data.incident_labels)
    result.gates = apply_gates(result.candidate_metrics, result.production_metrics, cfg.retrain)
    failed = [g for g in result.gates if not g.passed]
    reason = ("; ".join(f"{g.name}: candidate {_fmt(g.candidate)} vs production {_fmt(g.production)} ({g.rule})" for g in failed)
              or "every gate passed")
    stages.line("gates", ("REJECTED: " if failed else "passed: ") + reason)
    _annotate_manifest(run_dir, result.candidate_metrics)
    result.status = "rejected" if failed else "registered"
    report = _base_report(result, start, cfg, since, until, trigger)
    report["reason"] = reason
    report["training"] = {"config": dataclasses.asdict(fitted.config), "epochs": len(fitted.history.train_loss),
                          "train_loss": fitted.history.train_loss, "val_loss": fitted.history.val_loss,
                          "threshold": fitted.threshold, "calibration": dict(fitted.calibration.params)}
    from cloud.retrain.report import write_report

    result.report_json, result.report_png = stages.run(
        "report", lambda: write_report(run_dir, report, prod_scores, cand_scores, data.incident_labels), lambda p: f"{p[0]}, {p[1]}")
    if failed:
        return _finish(result, "rejected", reason, started, run_dir, None)
    if private_key is not None:
        from cloud.keys import sign_model_dir

        stages.run("sign", lambda: sign_model_dir(run_dir, private_key), lambda m: f"key {m.signature.key_id if m.signature else '?'}")
        result.signed = True
    card = {"lineage": report["lineage"], "data": report["data"], "evaluation": report["evaluation"]}
    stages.run("register", lambda: reg.register(run_dir, card=card), lambda m: f"{m.name} {m.version} registered as candidate")
    result.registry_dir = reg.version_dir(model, cand_version)
    result.report_json, result.report_png = result.registry_dir / "report.json", result.registry_dir / "report.png"
    if publish is not None:
        from cloud.distribute import publish_model

        stages.run("publish", lambda: publish_model(result.registry_dir, host=publish.host, port=publish.port,  # type: ignore[arg-type]
                                                    group=publish.group, prefix=publish.prefix),
                   lambda a: f"announced to group {publish.group}: {a.size} bytes in {len(a.chunk_sha256)} chunks")
        result.published = True
    return _finish(result, "registered", reason, started, run_dir, None)


class _Stages:
    """Runs named stages with one progress line each and the cancellation check between them."""

    ORDER = ("production", "labels", "archive", "dataset", "train", "export", "evaluate", "gates", "report", "sign",
             "register", "publish")

    def __init__(self, model: str, progress: Progress | None, should_stop: Callable[[], bool] | None) -> None:
        self.model, self.progress, self.should_stop = model, progress, should_stop

    def run(self, name: str, work: Callable[[], Any], describe: Callable[[Any], str]) -> Any:
        if self.should_stop is not None and self.should_stop():
            raise RetrainCancelled(f"retrain {self.model}: stopped before stage {name}")
        t0 = time.monotonic()
        value = work()
        self.line(name, f"{describe(value)} ({time.monotonic() - t0:.1f} s)")
        return value

    def line(self, name: str, text: str) -> None:
        msg = f"[retrain {self.model}] {self.ORDER.index(name) + 1:>2}/{len(self.ORDER)} {name}: {text}"
        log.info("retrain_stage model=%s stage=%s detail=%s", self.model, name, text)
        if self.progress is not None:
            self.progress(msg)


def _read(root: Path, since: float | None, until: float | None, incidents: Sequence[LabelledIncident],
          pad: float) -> list[ArchivedWindow]:
    """The archive since/until, plus the windows of labelled incidents older than ``since`` (evaluation
    evidence: faults are rare, every labelled one counts; they are never trained on)."""
    from cloud.retrain.sources import read_archive

    windows = read_archive(root, since=since, until=until)
    seen = {(w.device_id, w.start) for w in windows}
    for inc in incidents:
        if since is not None and inc.end + pad < since:
            for w in read_archive(root, since=inc.start - pad, until=inc.end + pad, devices=inc.device_ids):
                if (w.device_id, w.start) not in seen:
                    seen.add((w.device_id, w.start))
                    windows.append(w)
    return windows


def _dataset(windows: Sequence[ArchivedWindow], incidents: Sequence[LabelledIncident], start: Starting, cfg: RetrainConfig) -> Dataset:
    m, r = start.manifest, cfg.retrain
    return build_dataset(windows, incidents, channels=m.channel_names, window_length=m.window_length,
                         train_stride=start.config.train_stride, eval_stride=m.stride, sample_period_s=m.sample_period_s,
                         holdout_share=r.holdout_share, incident_pad_s=r.incident_pad_s, exclude_flagged=r.exclude_flagged)


def _describe(d: Dataset) -> str:
    c = d.counts
    return (f"{c['archived']} archived windows: {c['train']} train ({c['train_windows']} training windows), "
            f"{c['holdout']} holdout, {c['true_positive']} in true-positive incidents (excluded), {c['false_positive']} in "
            f"false-positive incidents, {c['flagged']} flagged by the live model (excluded), "
            f"{c['skipped_channels']} without the model's channels")


def _too_little(d: Dataset, cfg: RetrainConfig) -> str:
    r = cfg.retrain
    if d.counts["train_windows"] < r.min_train_windows:
        return f"{d.counts['train_windows']} training windows after exclusions, need {r.min_train_windows}"
    if d.counts["holdout_windows"] < r.min_holdout_windows:
        return f"{d.counts['holdout_windows']} holdout windows, need {r.min_holdout_windows}"
    return ""


def _train(data: Dataset, start: Starting, cfg: RetrainConfig, progress: bool) -> Any:
    from models.fit import fit

    state = start.state
    if state is not None and cfg.retrain.refit_preprocessing:
        from models.fit import preprocessor_for

        pre = preprocessor_for(data.train_segments, start.config)
        state = {**state, **{f"pre.{k}": v for k, v in pre.state_dict().items()}}
    m = start.manifest
    return fit(data.train_segments, start.config, channels=m.channels, sample_period_s=m.sample_period_s, init_from=state,
               progress=progress)


def _export(fitted: Any, run_dir: Path, model: str, version: str) -> None:
    from models.export import write_artifact
    from models.fit import save_checkpoint

    write_artifact(fitted, run_dir, name=model, version=version)
    save_checkpoint(fitted, run_dir / "weights.pt")


def _annotate_manifest(run_dir: Path, metrics: dict[str, float | None]) -> None:
    """Put the candidate's evaluation figures into its manifest (the model file, and so the hash, is unchanged)."""
    from edge.detector import load_manifest
    from models.export import write_manifest

    m = load_manifest(run_dir)
    extra = {f"retrain_{k}": float(v) for k, v in metrics.items() if v is not None}
    write_manifest(dataclasses.replace(m, metrics={**dict(m.metrics), **extra}), run_dir)


def _base_report(r: RetrainResult, start: Starting, cfg: RetrainConfig, since: float | None, until: float | None,
                 trigger: str) -> dict[str, Any]:
    return {
        "model": r.model, "decision": r.status, "candidate_version": r.version,
        "lineage": {"parent_version": start.manifest.version, "parent_sha256": start.manifest.sha256,
                    "fine_tuned": start.state is not None, "start": start.note, "trigger": trigger},
        "data": {"since": since, "until": until, "counts": r.counts},
        "evaluation": {"production": r.production_metrics, "candidate": r.candidate_metrics,
                       "gates": [g.to_dict() for g in r.gates]},
        "config": {"retrain": dataclasses.asdict(cfg.retrain), "train_overrides": dict(cfg.train)},
    }


def _finish(r: RetrainResult, status: Status, reason: str, started: float, run_dir: Path,
            report: dict[str, Any] | None) -> RetrainResult:
    r.status, r.reason, r.seconds = status, reason, time.monotonic() - started
    if report is not None:  # outcomes decided before any scoring: the JSON report only
        import json

        report["decision"], report["reason"] = status, reason
        run_dir.mkdir(parents=True, exist_ok=True)
        r.report_json = run_dir / "report.json"
        r.report_json.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    log.info("retrain_finished model=%s status=%s version=%s seconds=%.1f reason=%s", r.model, status, r.version, r.seconds, reason)
    return r


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4g}"
