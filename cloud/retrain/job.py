"""One retraining, in-process: :func:`retrain` -> :class:`RetrainResult`.

Stages: production start point -> labelled incidents -> archive -> dataset -> train (fine-tune)
-> export -> evaluate both models through onnxruntime -> gates -> report -> backtest (with an
archive: :mod:`cloud.backtest.gate`) -> (sign, register, publish). Each stage reports one
progress line. Outcomes: ``registered`` (exit 0), ``rejected`` by a gate, data check or backtest
included (exit 3), ``no_data``: too few windows to train or evaluate
(exit 4). A family that learns from labels (``ladder``: ``[train] family`` or ``--family``, or picked
when the store holds ``ladder_min_labelled`` labelled incidents) trains from scratch on the
archive plus the earlier labelled incidents' windows (:func:`labelled_set`); contradictory labels
or no unlabelled training window raise :class:`ConfigError` before anything is written.
Anything else raises (exit 1): :class:`ConfigError` for bad input, other
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
from cloud.retrain.dataset import ArchivedWindow, Dataset, LabelledIncident, build_dataset, degenerate, labelled_set
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


@dataclass(frozen=True)
class RetrainInputs:
    """Where a retraining's data come from: ``windows`` (already loaded) or the Parquet ``archive``
    between ``since`` and ``until`` (event time, s); labels: ``incidents`` or the processor's ``store``
    (neither: no incident is excluded or evaluated)."""

    archive: Path | None = None
    since: float | None = None
    until: float | None = None
    windows: Sequence[ArchivedWindow] | None = None
    store: StoreSection | None = None
    incidents: Sequence[LabelledIncident] | None = None


@dataclass(frozen=True)
class Release:
    """What becomes of a candidate that passes every gate: registered as ``version`` (None: the next
    one), signed with ``key``, announced to ``publish`` (which needs the key: devices refuse unsigned models)."""

    version: str | None = None
    key: Path | None = None
    publish: PublishTarget | None = None


@dataclass(frozen=True)
class Watch:
    """How a caller follows and stops a job: a line per stage, the trainer's own progress, and a
    check between stages (true: stop, :class:`RetrainCancelled`)."""

    progress: Progress | None = None
    train_progress: bool = False
    should_stop: Callable[[], bool] | None = None


@dataclass(frozen=True)
class _Gathered:
    """Stages production -> dataset: the start point, the labels and the dataset built from them."""

    start: Starting
    incidents: Sequence[LabelledIncident]
    data: Dataset
    labelled: tuple[Any, Any] | None = None  # (windows, 0/1 labels) for a family that uses labels


@dataclass(frozen=True)
class _Candidate:
    """Stages train -> export: the fitted candidate, exported to ``run_dir``."""

    fitted: Any
    run_dir: Path


@dataclass(frozen=True)
class _Verdict:
    """Stages evaluate -> report: the gates that failed (none: it passes), why, and the report written."""

    failed: list[Gate]
    reason: str
    report: dict[str, Any]


def retrain(model: str, *, registry: Path, inputs: RetrainInputs, release: Release = Release(),
            config: RetrainConfig | None = None, trigger: str = "manual", watch: Watch = Watch()) -> RetrainResult:
    """Retrain ``model`` from its production version; see the module docstring."""
    job = _Job(model, Registry(Path(registry)), inputs, release, config or RetrainConfig(), trigger, watch)
    gathered = job.gather()
    stopped = job.check(gathered)
    if stopped is not None:
        return stopped
    candidate = job.train(gathered)
    verdict = job.evaluate(gathered, candidate)
    if verdict.failed:
        return job.finish("rejected", verdict.reason)
    return job.release(candidate, verdict)


class _Job:
    """One retraining's stages, in the order :func:`retrain` runs them; ``result`` fills in as they go."""

    def __init__(self, model: str, reg: Registry, inputs: RetrainInputs, release: Release, cfg: RetrainConfig, trigger: str,
                 watch: Watch) -> None:
        from cloud.keys import load_private_key

        if release.publish is not None and release.key is None:
            raise ConfigError("--publish needs --key: devices refuse unsigned models")
        if inputs.windows is None and inputs.archive is None:
            raise ConfigError("retrain needs --archive (or windows in-process)")
        self.model, self.reg, self.inputs, self.release_to, self.cfg, self.trigger = model, reg, inputs, release, cfg, trigger
        self.private_key = load_private_key(Path(release.key)) if release.key is not None else None
        self.train_progress = watch.train_progress
        self.stages = _Stages(model, watch.progress, watch.should_stop)
        self.started = time.monotonic()
        self.run_dir = reg.root / model / "runs" / f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S%fZ}"
        self.result = RetrainResult("no_data", model, "", None, self.run_dir, "")
        self.report: dict[str, Any] | None = None  # before any scoring: finish writes the JSON report only
        self.production_dir: Path | None = None
        self.incidents: Sequence[LabelledIncident] = ()

    def gather(self) -> _Gathered:
        """Stages production, labels, archive, dataset."""
        inputs, stages, cfg = self.inputs, self.stages, self.cfg
        start = stages.run("production", lambda: load_production(self.reg, self.model, cfg.train), lambda s: s.note)
        incidents = inputs.incidents
        if incidents is None:
            from cloud.retrain.sources import labelled_incidents

            store = inputs.store
            incidents = stages.run("labels", lambda: labelled_incidents(store) if store is not None else [],
                                   lambda i: f"{len(i)} labelled incidents" + ("" if store is not None else " (no --store)"))
        windows = inputs.windows
        if windows is None:
            assert inputs.archive is not None  # checked at the start
            archive, labels = Path(inputs.archive), incidents
            windows = stages.run("archive", lambda: _read(archive, inputs.since, inputs.until, labels, cfg.retrain.incident_pad_s),
                                 lambda w: f"{len(w)} windows from {len({x.device_id for x in w})} devices in {archive}")
        self.production_dir, self.incidents = start.model_dir, incidents  # for the backtest stage
        start = self._pick_family(start, incidents)
        data = stages.run("dataset", lambda: _dataset(windows, incidents, start, cfg), _describe)
        labelled = None
        from models.registry import uses_labels

        if uses_labels(start.config.family):
            windows_l, labels, data = _labelled(data, start.config.family, cfg)
            labelled = (windows_l, labels)
        r = self.result
        r.production_version, r.fine_tuned, r.counts = start.manifest.version, start.state is not None, data.counts
        self.report = _base_report(r, start, cfg, inputs.since, inputs.until, self.trigger)
        return _Gathered(start, incidents, data, labelled)

    def _pick_family(self, start: Starting, incidents: Sequence[LabelledIncident]) -> Starting:
        """``ladder`` instead of production's family when ``[retrain] ladder_min_labelled`` labelled
        incidents exist and no family was asked for."""
        threshold = self.cfg.retrain.ladder_min_labelled
        if not threshold or "family" in self.cfg.train or len(incidents) < threshold or start.config.family == "ladder":
            return start
        self.stages.line("production", f"{len(incidents)} labelled incidents >= retrain.ladder_min_labelled = {threshold}: "
                                       "training the ladder family")
        return load_production(self.reg, self.model, {**self.cfg.train, "family": "ladder"})

    def check(self, g: _Gathered) -> RetrainResult | None:
        """Before training: enough data (else ``no_data``), and data that is not degenerate (else ``rejected``)."""
        short = _too_little(g.data, self.cfg)
        if short:
            return self.finish("no_data", short)
        problem = degenerate(g.data, g.start.manifest.channel_names, self.cfg.retrain.max_flat_share)
        if problem:
            self.result.gates = [Gate("training_data", False, True, None, None, problem)]
            assert self.report is not None
            self.report["evaluation"]["gates"] = [g.to_dict() for g in self.result.gates]
            return self.finish("rejected", problem)
        return None

    def train(self, g: _Gathered) -> _Candidate:
        """Stages train (fine-tune from production) and export."""
        version = self.result.version = next_version(self.reg, self.model, self.release_to.version)
        fitted = self.stages.run("train", lambda: _train(g.data, g.start, self.cfg, self.train_progress, g.labelled),
                                 lambda f: f"{len(f.history.train_loss)} epochs on {len(f.train_scores)} windows, "
                                           f"threshold {f.threshold:.4g}")
        self.stages.run("export", lambda: _export(fitted, self.run_dir, self.model, version), lambda _: f"{self.run_dir}")
        return _Candidate(fitted, self.run_dir)

    def evaluate(self, g: _Gathered, c: _Candidate) -> _Verdict:
        """Stages evaluate (both models through onnxruntime), gates and report."""
        r, batch = self.result, self.cfg.retrain.batch_size
        prod_scores, cand_scores = self.stages.run(
            "evaluate", lambda: (score_model(g.start.model_dir, g.data, batch=batch), score_model(c.run_dir, g.data, batch=batch)),
            lambda s: f"{len(s[0].holdout)} holdout windows, {len(s[0].incidents)} labelled incidents, both through onnxruntime")
        r.production_metrics = measure(prod_scores, g.data.incident_labels)
        r.candidate_metrics = measure(cand_scores, g.data.incident_labels)
        r.gates = apply_gates(r.candidate_metrics, r.production_metrics, self.cfg.retrain)
        failed = [gate for gate in r.gates if not gate.passed]
        reason = ("; ".join(f"{gate.name}: candidate {_fmt(gate.candidate)} vs production {_fmt(gate.production)} ({gate.rule})"
                            for gate in failed) or "every gate passed")
        self.stages.line("gates", ("REJECTED: " if failed else "passed: ") + reason)
        _annotate_manifest(c.run_dir, r.candidate_metrics)
        r.status = "rejected" if failed else "registered"
        report = _base_report(r, g.start, self.cfg, self.inputs.since, self.inputs.until, self.trigger)
        report["reason"] = reason
        f = c.fitted
        report["training"] = {"config": dataclasses.asdict(f.config), "epochs": len(f.history.train_loss),
                              "train_loss": f.history.train_loss, "val_loss": f.history.val_loss,
                              "threshold": f.threshold, "calibration": dict(f.calibration.params)}
        from cloud.retrain.report import write_report

        r.report_json, r.report_png = self.stages.run(
            "report", lambda: write_report(c.run_dir, report, prod_scores, cand_scores, g.data.incident_labels),
            lambda p: f"{p[0]}, {p[1]}")
        self.report = None  # written
        return _Verdict(failed, reason, report)

    def release(self, c: _Candidate, verdict: _Verdict) -> RetrainResult:
        """Stages sign, register and publish, as :class:`Release` asks."""
        r, key, publish = self.result, self.private_key, self.release_to.publish
        card = {k: verdict.report[k] for k in ("lineage", "data", "evaluation")}
        if self.inputs.archive is not None:  # the backtest gate, and the prediction into the manifest before it is signed
            refused = self._backtest(c, card)
            if refused is not None:
                return self.finish("rejected", refused)
        if key is not None:
            from cloud.keys import sign_model_dir

            self.stages.run("sign", lambda: sign_model_dir(c.run_dir, key), lambda m: f"key {m.signature.key_id if m.signature else '?'}")
            r.signed = True
        self.stages.run("register", lambda: self.reg.register(c.run_dir, card=card),
                        lambda m: f"{m.name} {m.version} registered as candidate")
        assert r.version is not None
        registered = r.registry_dir = self.reg.version_dir(self.model, r.version)
        r.report_json, r.report_png = registered / "report.json", registered / "report.png"
        if publish is not None:
            from cloud.distribute import publish_model

            self.stages.run("publish", lambda: publish_model(registered, host=publish.host, port=publish.port, group=publish.group,
                                                             prefix=publish.prefix),
                            lambda a: f"announced to group {publish.group}: {a.size} bytes in {len(a.chunk_sha256)} chunks")
            r.published = True
        return self.finish("registered", verdict.reason)

    def _backtest(self, c: _Candidate, card: dict[str, Any]) -> str | None:
        """Stage backtest (:mod:`cloud.backtest.gate`): candidate and production replayed on the archive range
        trained from; the refusal, or None with ``expected_alerts`` written into the candidate's manifest."""
        from cloud.backtest.gate import GateOutcome, alert_gate, stamp
        from cloud.evaluate.agent_path import agent_config

        assert self.inputs.archive is not None and self.production_dir is not None
        i, ratio = self.inputs, self.cfg.retrain.max_alert_ratio
        outcome: GateOutcome = self.stages.run("backtest", lambda: alert_gate(c.run_dir, self.production_dir, archive=Path(i.archive or ""),
                                                                 config=agent_config(), since=i.since, until=i.until,
                                                                 labels=self.incidents, max_ratio=ratio),
                                  lambda o: o.refusal or f"passed: median alerts per device-day "
                                                         f"{o.expected.alerts_per_device_day['p50']:.3g} over {o.expected.devices} devices")
        card["backtest"] = outcome.card()
        if outcome.refusal is None:
            stamp(c.run_dir, outcome.expected)
        return outcome.refusal

    def finish(self, status: Status, reason: str) -> RetrainResult:
        """The outcome; before any scoring (no report written yet) with its JSON report."""
        r = self.result
        r.status, r.reason, r.seconds = status, reason, time.monotonic() - self.started
        if self.report is not None:
            import json

            self.report["decision"], self.report["reason"] = status, reason
            self.run_dir.mkdir(parents=True, exist_ok=True)
            r.report_json = self.run_dir / "report.json"
            r.report_json.write_text(json.dumps(self.report, indent=2, default=str) + "\n", encoding="utf-8")
        log.info("retrain_finished model=%s status=%s version=%s seconds=%.1f reason=%s", r.model, status, r.version, r.seconds,
                 reason)
        return r


class _Stages:
    """Runs named stages with one progress line each and the cancellation check between them."""

    ORDER = ("production", "labels", "archive", "dataset", "train", "export", "evaluate", "gates", "report", "backtest",
             "sign", "register", "publish")

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


def _labelled(data: Dataset, family: str, cfg: RetrainConfig) -> tuple[Any, Any, Dataset]:
    """The labelled training set of a family that uses labels, after the checks it needs."""
    if data.contradictions:
        device, at, tp, fp = data.contradictions[0]
        raise ConfigError(f"retrain --family {family}: contradictory labels: {len(data.contradictions)} windows lie in both a "
                          f"true-positive and a false-positive incident (first: device {device} at {at:.0f}, incidents {tp} "
                          f"and {fp}); relabel one of them")
    if data.counts["train_windows"] == 0:
        raise ConfigError(f"retrain --family {family}: no unlabelled data: no training window in the archive after exclusions "
                          f"({data.counts['archived']} archived windows)")
    windows, labels, kept = labelled_set(data, cfg.retrain.holdout_share)
    kept.counts["labelled_anomalies"], kept.counts["labelled_normals"] = int(labels.sum()), int(len(labels) - labels.sum())
    return windows, labels, kept


def _train(data: Dataset, start: Starting, cfg: RetrainConfig, progress: bool, labelled: tuple[Any, Any] | None = None) -> Any:
    from models.fit import fit
    from models.train import LabelledWindows

    state = start.state
    if state is not None and cfg.retrain.refit_preprocessing:
        from models.fit import preprocessor_for

        pre = preprocessor_for(data.train_segments, start.config)
        state = {**state, **{f"pre.{k}": v for k, v in pre.state_dict().items()}}
    m = start.manifest
    return fit(data.train_segments, start.config, channels=m.channels, sample_period_s=m.sample_period_s, init_from=state,
               progress=progress, labelled=LabelledWindows(*labelled) if labelled is not None else None)


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


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4g}"
