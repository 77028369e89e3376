"""``edgewatch retrain``: one retraining of a model (exit 0 registered, 3 rejected by a gate, 4 not
enough data, 1 failure, 2 bad configuration), or with ``--on-drift`` the long-running drift trigger."""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

from edge.cliutil import EXIT_FAILURE, EXIT_OK, add_flag
from edge.contract import ConfigError, EdgewatchError

log = logging.getLogger(__name__)
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def register(sub: Any) -> None:
    from edge.config_parse import parse_bool

    p: argparse.ArgumentParser = sub.add_parser(
        "retrain", help="retrain a model on archived telemetry, gate it against production, register, sign, publish",
        description="Load archived telemetry windows (since T), leave out windows of incidents labelled true-positive and "
                    "windows the live model flagged, fine-tune from the production version's weights (or train from "
                    "scratch with its manifest's family, window and channels), recalibrate the threshold, evaluate "
                    "candidate and production through onnxruntime on a holdout plus labelled incidents, and register the "
                    "candidate only if it is not worse by the configured margins; then sign (--key) and publish (--publish). "
                    "Writes report.json and report.png. Exit codes: 0 registered (and published), 3 not registered "
                    "(a gate failed), 4 not enough data, 1 runtime failure, 2 bad configuration. With --on-drift: consume "
                    "edgewatch.alerts and start a retraining per drift alert, with a cool-down per model; SIGTERM drains.",
    )

    def flag(name: str, **kw: Any) -> None:
        add_flag(p, name, env_prefix="RETRAIN_", **kw)

    flag("--model", help="model name in the registry (required unless --on-drift)")
    flag("--since", help="train on windows from this time: ISO 8601, Unix seconds, or a duration ago (30m, 12h, 7d)")
    flag("--until", help="and until this time (same formats; default: now)")
    flag("--archive", default="archive", help="telemetry archive folder (the processor's [archive] dir)")
    flag("--registry", default="registry", help="model registry folder")
    flag("--store", help="incident store with operator labels: SQLite file or PostgreSQL DSN (postgresql://...)")
    flag("--processor-config", help="or: the processor's TOML, whose [store] section names the store")
    flag("--config", help="retrain TOML: [retrain] data and gates, [train] TrainConfig overrides, [trigger]")
    flag("--epochs", type=int, help="fine-tuning epochs (shortcut for [train] epochs)")
    flag("--family", help="train this family from scratch instead of fine-tuning production's (shortcut for [train] family); "
                          "ladder also learns from the labelled incidents")
    flag("--version", help="candidate version (default: one minor above the highest registered)")
    flag("--key", help="Ed25519 private key to sign the candidate with (required with --publish)")
    flag("--publish", type=parse_bool, nargs="?", const=True, default=False, metavar="BOOL",
         help="announce the registered candidate to --group over MQTT")
    flag("--group", default="default", help="device group to announce to")
    flag("--mqtt-host", default="127.0.0.1", help="MQTT broker for --publish")
    flag("--mqtt-port", type=int, default=1883, help="MQTT port for --publish")
    flag("--progress", type=parse_bool, default=True, metavar="BOOL", help="progress lines per stage and a training bar")
    flag("--on-drift", type=parse_bool, nargs="?", const=True, default=False, metavar="BOOL",
         help="run the drift trigger: a Kafka consumer of the alerts topic")
    flag("--kafka-bootstrap", help="Kafka bootstrap servers for --on-drift (default: [trigger] bootstrap)")
    flag("--alerts-topic", help="alerts topic (default: [trigger] alerts_topic)")
    flag("--group-id", help="consumer group (default: [trigger] group_id)")
    flag("--cooldown-s", type=float, help="seconds after a model's job ends during which its drift alerts are skipped")
    flag("--lookback-s", type=float, help="a drift-started job trains on the archive since alert time minus this")
    flag("--metrics-port", type=int, default=0, help="Prometheus endpoint on 127.0.0.1 for --on-drift (0: none)")
    p.set_defaults(func=run)


def parse_time(text: str, now: float) -> float:
    """``text`` as Unix seconds: a number, a duration ago (``7d``), or ISO 8601 (UTC when no zone is given)."""
    text = text.strip()
    m = _DURATION.match(text)
    if m:
        return now - float(m[1]) * _UNITS[m[2]]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"time {text!r}: expected ISO 8601, Unix seconds or a duration like 12h or 7d") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)).timestamp()


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from cloud.retrain.config import load_retrain_config

    config = load_retrain_config(args.config)
    if args.epochs is not None:
        config = dataclasses.replace(config, train={**config.train, "epochs": args.epochs})
    if args.family is not None:
        from models.registry import get_builder

        get_builder(args.family)  # an unknown family fails here, listing the known ones
        config = dataclasses.replace(config, train={**config.train, "family": args.family})
    from cloud.retrain.job import Release, RetrainInputs, Watch

    inputs = RetrainInputs(archive=Path(args.archive), store=_store(args))
    release = Release(key=Path(args.key) if args.key else None, publish=_publish(args))
    watch = Watch(progress=(lambda line: print(line, file=sys.stderr, flush=True)) if args.progress else None,
                  train_progress=args.progress)
    if args.on_drift:
        return _on_drift(args, config, registry=Path(args.registry), inputs=inputs, release=release, watch=watch)
    if not args.model:
        raise ConfigError("--model is required (or EDGEWATCH_RETRAIN_MODEL), unless --on-drift")
    now = time.time()
    inputs = dataclasses.replace(inputs, since=parse_time(args.since, now) if args.since else None,
                                 until=parse_time(args.until, now) if args.until else None)
    return _one(args.model, registry=Path(args.registry), inputs=inputs, release=dataclasses.replace(release, version=args.version),
                config=config, watch=watch)


def _one(model: str, **kw: Any) -> int:
    """:func:`cloud.retrain.job.retrain` of ``model`` (``kw``: its other arguments), its outcome printed; the exit code."""
    from cloud.retrain.job import retrain

    try:
        result = retrain(model, **kw)
    except EdgewatchError:
        raise
    except Exception as exc:  # torch, pyarrow, OS errors: a runtime failure with its reason, exit 1
        log.exception("retrain_failed model=%s", model)
        print(f"edgewatch: retrain {model} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    where = result.report_json or result.run_dir
    if result.status == "registered":
        extra = (", signed" if result.signed else "") + (", published" if result.published else "")
        print(f"registered {model} {result.version} as candidate{extra}; report {where}")
    elif result.status == "rejected":
        print(f"not registered: {model} {result.version or '(not trained)'}: {result.reason}; report {where}")
    else:
        print(f"not enough data for {model}: {result.reason}; report {where}")
    return result.exit_code


def _store(args: argparse.Namespace) -> Any:
    if args.store:
        from cloud.retrain.sources import store_section

        return store_section(args.store)
    if args.processor_config:
        from cloud.processor.config import load_config

        return load_config(Path(args.processor_config)).store
    return None


def _publish(args: argparse.Namespace) -> Any:
    if not args.publish:
        return None
    from cloud.retrain.job import PublishTarget

    return PublishTarget(host=args.mqtt_host, port=args.mqtt_port, group=args.group)


def _on_drift(args: argparse.Namespace, config: Any, **runner: Any) -> int:
    import dataclasses

    from prometheus_client import CollectorRegistry, start_http_server

    from cloud.retrain.trigger import DriftTrigger, drift_runner

    overrides = {k: v for k, v in (("bootstrap", args.kafka_bootstrap), ("alerts_topic", args.alerts_topic),
                                   ("group_id", args.group_id), ("cooldown_s", args.cooldown_s),
                                   ("lookback_s", args.lookback_s)) if v is not None}
    section = dataclasses.replace(config.trigger, **overrides)

    registry = CollectorRegistry()
    if args.metrics_port:
        start_http_server(args.metrics_port, addr="127.0.0.1", registry=registry)
    trigger = DriftTrigger(section, drift_runner(section, config=config, **runner), registry=registry)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: trigger.stop.set())
    try:
        trigger.run()
    except Exception as exc:  # kafka-python errors: cannot reach or use the broker
        log.exception("retrain_trigger_failed")
        print(f"edgewatch: retrain --on-drift failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK

