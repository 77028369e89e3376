"""``edgewatch process --config cloud.toml``: the cloud stream processor (and, if enabled, the telemetry archive
and the rollout monitor)."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server

from edge.cliutil import EXIT_OK, add_flag

log = logging.getLogger(__name__)


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "process", help="consume anomaly events into incidents and alerts (Kafka consumer group)",
        description="Consume edgewatch.anomalies in a consumer group, de-duplicate on event_id, open and close device and "
                    "fleet incidents in event time, emit alerts, store everything (SQLite or PostgreSQL), and commit "
                    "offsets only after the store write. Runs as two processes: this one talks to Kafka, a child "
                    "(edgewatch-store) decodes, correlates and writes the store (store.own_process = false: one). "
                    "SIGTERM drains the polls in flight and stops cleanly. Every config key has an environment twin "
                    "EDGEWATCH_<SECTION>__<KEY>.",
    )
    add_flag(p, "--config", help="processor config (TOML); see deploy/cloud.example.toml")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # first: a SIGTERM that arrives while the store and the clients are still being set up must stop the
    # processor cleanly (exit 0), not kill it
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.set())
    from cloud.processor.backends import open_store
    from cloud.processor.config import load_config
    from cloud.processor.consumer import Processor

    config = load_config(Path(args.config) if args.config else None)
    log.info("processor_config %s", config.masked())
    store = open_store(config.store)
    registry = CollectorRegistry()
    if config.metrics.port:
        start_http_server(config.metrics.port, addr=config.metrics.host, registry=registry)
        log.info("metrics_listening host=%s port=%d", config.metrics.host, config.metrics.port)
    archive_thread = None
    if config.archive.enabled:
        from cloud.processor.archive import run_archive

        archive_thread = threading.Thread(target=run_archive, args=(config, stop, registry), name="archive", daemon=True)
        archive_thread.start()
    rollout_thread = None
    if config.rollout.enabled:
        from cloud.rollout.monitor import run_rollout

        rollout_thread = threading.Thread(target=run_rollout, args=(config, stop, registry), name="rollout", daemon=True)
        rollout_thread.start()
    fleet_thread = None
    if config.peers.enabled or config.silence.enabled:  # peer outliers and silent devices (docs/fleet.md)
        from cloud.fleetwatch.watch import run_fleetwatch

        fleet_thread = threading.Thread(target=run_fleetwatch, args=(config, stop, registry), name="fleetwatch", daemon=True)
        fleet_thread.start()
    escalation_thread = None
    if config.escalation.enabled:  # borderline windows scored again (docs/fleet.md)
        from cloud.processor.escalation import run_escalation

        escalation_thread = threading.Thread(target=run_escalation, args=(config, stop, registry), name="escalation", daemon=True)
        escalation_thread.start()
    try:
        Processor(config, store, registry=registry, stop=stop).run()
    finally:
        stop.set()
        store.close()
        for thread in (archive_thread, rollout_thread, fleet_thread, escalation_thread):
            if thread is not None:
                thread.join(timeout=60)
    return EXIT_OK
