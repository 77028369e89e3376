"""``edgewatch-agent simulate``: publish a simulated fleet (or replay a CSV) over MQTT."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from edge import simulator
from edge.cliutil import EXIT_FAILURE, EXIT_OK, add_flag
from edge.synth import FAULT_KINDS, FaultKind


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "simulate", help="publish a simulated pump fleet (or replay a CSV) over MQTT",
        description="Publish synthetic pump readings from N devices over MQTT at QoS 1, with seeded faults, "
                    "and write the ground truth of what was injected. Readings are stamped --sample-period-s "
                    "apart in event time and published --rate steps per wall-clock second, so --rate 10 runs a "
                    "1 Hz machine ten times faster than real time. With --replay, one CSV is replayed instead.",
    )

    def flag(name: str, **kw: Any) -> None:
        add_flag(p, name, env_prefix="SIMULATE_", **kw)

    flag("--host", default="127.0.0.1", help="MQTT broker host")
    flag("--port", type=int, default=1883, help="MQTT broker port")
    flag("--topic-prefix", default="edgewatch", help="topics are <prefix>/<device>/readings")
    flag("--devices", type=int, default=10, help="number of simulated devices")
    flag("--rate", type=float, default=10.0, help="steps per wall-clock second per device (0: as fast as acks allow)")
    flag("--duration", type=float, default=60.0, help="wall-clock seconds to run (steps = rate x duration)")
    flag("--sample-period-s", type=float, default=1.0, help="event-time seconds between readings")
    flag("--faults", default=",".join(FAULT_KINDS),
             help="comma-separated fault kinds to inject (spike, drift, stuck, noise, decorrelate) or 'none'")
    flag("--faults-per-device", type=int, default=2, help="faults per device")
    flag("--batch", type=int, default=1, help="readings per MQTT payload")
    flag("--seed", type=int, default=0, help="seed for signals and fault placement")
    flag("--truth", default="simulation-truth.json", help="where to write the ground truth (JSON)")
    flag("--replay", help="replay this CSV (',' or ';', a datetime column) instead of synthetic data")
    flag("--speed", type=float, default=1.0, help="replay speed-up over the CSV's own timing")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.replay:
        stream = simulator.replay_csv(Path(args.replay))
        period = float(stream.ts[1] - stream.ts[0]) if len(stream.ts) > 1 else 1.0
        fleet = [stream]
        rate = args.speed / period
    else:
        kinds: tuple[FaultKind, ...] = ()
        if args.faults != "none":
            kinds = tuple(k.strip() for k in args.faults.split(",") if k.strip())
            unknown = [k for k in kinds if k not in FAULT_KINDS]
            if unknown:
                print(f"edgewatch-agent simulate: unknown fault kind {unknown[0]!r}; choose from {', '.join(FAULT_KINDS)} or none",
                      file=sys.stderr)
                return 2
        steps = max(1, int(args.rate * args.duration)) if args.rate > 0 else max(1, int(args.duration))
        period = args.sample_period_s
        fleet = simulator.synthetic_fleet(args.devices, steps, seed=args.seed, sample_period_s=period, kinds=kinds,
                                          faults_per_device=args.faults_per_device if kinds else 0)
        rate = args.rate
    publisher = simulator.Publisher(args.host, args.port, prefix=args.topic_prefix, client_id=f"edgewatch-sim-{args.seed}")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def progress(stats: simulator.PublishStats, step: int, total: int) -> None:
        print(f"\rsimulate: step {step}/{total}  {stats.readings_sent} readings in {stats.messages_sent} messages  "
              f"failed {stats.messages_failed}", end="", file=sys.stderr, flush=True)

    try:
        stats = simulator.run(fleet, publisher, rate_hz=rate, batch=args.batch, progress=progress, stop=stop)
    except KeyboardInterrupt:
        stats = simulator.PublishStats()
    unacked = publisher.close()
    stats.messages_failed += unacked
    print(file=sys.stderr)
    truth = simulator.truth_document(fleet, stats, period)
    Path(args.truth).write_text(json.dumps(truth, indent=2) + "\n")
    print(f"sent {stats.readings_sent} readings in {stats.messages_sent} messages over {stats.elapsed_s:.1f} s, "
          f"{stats.messages_failed} not acknowledged; {len(truth['faults'])} faults injected; truth in {args.truth}")  # type: ignore[arg-type]
    return EXIT_OK if stats.messages_failed == 0 else EXIT_FAILURE
