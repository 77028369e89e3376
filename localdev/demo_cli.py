"""``edgewatch demo``: the whole pipeline on local brokers with a simulated fleet."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from edge.cliutil import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, add_flag
from localdev.stack import cache_dir


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "demo", help="run the whole pipeline locally: brokers, agent, processor, simulated fleet",
        description="Start Mosquitto and Kafka on loopback, the edge agent with the default model, the stream processor "
                    "and a simulated fleet with injected faults. Anomalies and alerts print as they arrive from Kafka; "
                    "the run ends with faults found and missed, false alarms, per incident kind what was injected, found and "
                    "missed, the metrics addresses and a plot.",
    )

    def flag(name: str, **kw: Any) -> None:
        add_flag(p, name, env_prefix="DEMO_", **kw)

    flag("--devices", type=int, default=20, help="simulated devices")
    flag("--groups", type=int, default=4, help="sites the devices are spread over, with a peer drift, a sensor fault of "
                                               "each kind and a silent device among them (0: independent pumps only)")
    flag("--rate", type=float, default=20.0, help="machine steps per wall-clock second (1 step = 1 s of machine time)")
    flag("--duration", type=float, default=60.0, help="wall-clock seconds of simulation")
    flag("--seed", type=int, default=1, help="seed for signals and faults")
    flag("--out", default=str(cache_dir() / "demo"), help="folder for configs, logs, truth and the plot")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging

    from localdev.demo import run_demo

    if not args.verbose:  # the demo prints its own lines; library chatter would drown them
        logging.getLogger().setLevel(logging.WARNING)
    try:
        result = run_demo(Path(args.out), devices=args.devices, groups=args.groups, rate_hz=args.rate,
                          duration_s=args.duration, seed=args.seed)
    except ValueError as exc:  # a fleet the flags cannot make, said before anything starts
        print(f"edgewatch demo: --devices {args.devices} --groups {args.groups}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return EXIT_OK if result.readings_sent and result.windows_scored else EXIT_FAILURE
