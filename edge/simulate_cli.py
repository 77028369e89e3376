"""``edgewatch-agent simulate``: publish a simulated fleet (or replay a CSV) over MQTT."""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from edge import fleetsim, simulator
from edge.cliutil import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, ProgressLine, add_flag
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
    flag("--port", type=_bounded(int, 1, 65535), default=1883, help="MQTT broker port")
    flag("--topic-prefix", default="edgewatch", help="topics are <prefix>/<device>/readings")
    flag("--devices", type=_bounded(int, 1), default=10, help="number of simulated devices")
    flag("--rate", type=_bounded(float, 0), default=10.0, help="steps per wall-clock second per device (0: as fast as acks allow)")
    flag("--duration", type=_bounded(float, 0, above=True), default=60.0,
         help="wall-clock seconds to run (steps = rate x duration)")
    flag("--sample-period-s", type=_bounded(float, 0, above=True), default=1.0, help="event-time seconds between readings")
    flag("--faults", default=",".join(FAULT_KINDS),
             help="comma-separated fault kinds to inject (spike, drift, stuck, noise, decorrelate) or 'none'")
    flag("--faults-per-device", type=_bounded(int, 0), default=2,
         help="faults per device; shrunk, or fewer, when the run is too short for them (logged)")
    flag("--batch", type=_bounded(int, 1), default=1, help="readings per MQTT payload")
    flag("--seed", type=_bounded(int, 0), default=0, help="seed for signals and fault placement")
    flag("--truth", default="simulation-truth.json", help="where to write the ground truth (JSON)")
    flag("--replay", help="replay this CSV (',' or ';', a datetime column) instead of synthetic data")
    flag("--speed", type=_bounded(float, 0, above=True), default=1.0, help="replay speed-up over the CSV's own timing")
    fleet = p.add_argument_group(
        "a fleet in groups", "With --groups N > 0 the devices are pumps of N sites (plant-a-pump-00, ...) sharing their "
        "site's duty, and some get a role whose ground truth goes into --truth as the incident kind it should raise: "
        "a slow drift away from the peers (peer_outlier), one sensor fault per kind (sensor_fault), a silence then a "
        "resume (device_silent); the others get --faults-per-device process faults of --faults (incident).")

    def fleet_flag(name: str, **kw: Any) -> None:
        add_flag(cast(argparse.ArgumentParser, fleet), name, env_prefix="SIMULATE_", **kw)

    fleet_flag("--groups", type=_bounded(int, 0), default=0, help="sites to spread --devices over (0: no groups, no roles)")
    fleet_flag("--peer-drift", type=_bounded(int, 0), default=1, help="devices whose load drifts slowly away from their site's")
    fleet_flag("--sensor-faults", default=",".join(fleetsim.SENSOR_CHECKS),
               help="comma-separated sensor faults, one device each (stuck, range, dropout, clock, rate) or 'none'")
    fleet_flag("--silent", type=_bounded(int, 0), default=1, help="devices that go silent for a while, then resume")
    fleet_flag("--silence-steps", type=_bounded(int, 0), default=0,
               help="how many readings a silence lasts (0: a fifth of the run, as long as a sensor fault)")
    fleet_flag("--fault-free-steps", type=_bounded(int, 0), default=0,
               help="readings at the start with nothing injected (the drift starts, and every fault lies, after them): "
                    "shows that a healthy fleet raises nothing")
    p.set_defaults(func=run)


def _bounded(kind: Callable[[str], float], low: float, high: float | None = None, *,
             above: bool = False) -> Callable[[str], Any]:
    """An argparse type: ``kind`` (int or float), finite, ``>= low`` (``> low`` with ``above``) and ``<= high``;
    anything else is argparse's usage error (exit 2) with the rule."""
    noun = "an integer" if kind is int else "a number"
    rule = f"{noun} {'>' if above else '>='} {low:g}" + (f" and <= {high:g}" if high is not None else "")

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None
        if not math.isfinite(value) or value < low or (above and value == low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{text!r} must be {rule}")
        return value

    parse.__name__ = kind.__name__
    return parse


class _Usage(Exception):
    """A bad argument found after parsing (a file, a fault kind): exit 2 with the message."""


def run(args: argparse.Namespace) -> int:
    try:
        if not Path(args.truth).resolve().parent.is_dir():
            raise _Usage(f"--truth {args.truth}: no folder {Path(args.truth).resolve().parent}")
        fleet, period, rate, extra = _replay(args) if args.replay else _synthetic(args)
    except _Usage as exc:
        print(f"edgewatch-agent simulate: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        publisher = simulator.Publisher(args.host, args.port, prefix=args.topic_prefix, client_id=f"edgewatch-sim-{args.seed}")
    except ConnectionError as exc:
        print(f"edgewatch-agent simulate: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    progress_line = ProgressLine(lambda: sys.stderr)  # redrawn on a terminal; plain lines every 10 s in a log

    def progress(stats: simulator.PublishStats, step: int, total: int) -> None:
        progress_line.update(f"simulate: step {step}/{total}  {stats.readings_sent} readings in {stats.messages_sent} messages  "
                             f"failed {stats.messages_failed}")

    try:
        stats = simulator.run(fleet, publisher, rate_hz=rate, batch=args.batch, progress=progress, stop=stop)
    except KeyboardInterrupt:
        stats = simulator.PublishStats()
    unacked = publisher.close()
    stats.messages_failed += unacked
    progress_line.close()
    truth = simulator.truth_document(fleet, stats, period, extra)
    Path(args.truth).write_text(json.dumps(truth, indent=2) + "\n")
    print(f"sent {stats.readings_sent} readings in {stats.messages_sent} messages over {stats.elapsed_s:.1f} s, "
          f"{stats.messages_failed} not acknowledged; {len(truth['faults'])} faults injected; truth in {args.truth}")  # type: ignore[arg-type]  # the truth document's 'faults' is a list
    if extra:
        kinds = Counter(i.kind for i in fleetsim.injected_of(extra))
        print("injected, by the incident kind each should raise: " + ", ".join(f"{k} {kinds[k]}" for k in fleetsim.INJECTED_KINDS))
    return EXIT_OK if stats.messages_failed == 0 else EXIT_FAILURE


Fleet = tuple[list[simulator.DeviceStream], float, float, dict[str, object]]


def _replay(args: argparse.Namespace) -> Fleet:
    """The replayed CSV as a one-device fleet, its sample period, the publish rate and no extra truth;
    :class:`_Usage` on a bad file."""
    try:
        stream = simulator.replay_csv(Path(args.replay))
    except OSError as exc:
        raise _Usage(f"--replay {args.replay}: cannot read ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise _Usage(f"--replay: {exc}") from None
    period = float(stream.ts[1] - stream.ts[0]) if len(stream.ts) > 1 else 1.0
    return [stream], period, args.speed / period, {}


def _synthetic(args: argparse.Namespace) -> Fleet:
    """The synthetic fleet the flags describe, its sample period, the publish rate and the grouped fleet's truth
    (with --groups); :class:`_Usage` on a bad fault kind or an impossible fleet."""
    kinds: tuple[FaultKind, ...] = ()
    if args.faults != "none":
        kinds = tuple(k.strip() for k in args.faults.split(",") if k.strip())
        unknown = [k for k in kinds if k not in FAULT_KINDS]
        if unknown or not kinds:
            raise _Usage(f"--faults: unknown fault kind {(unknown or [args.faults])[0]!r}; choose from {', '.join(FAULT_KINDS)} "
                         "or none")
    steps = max(1, int(args.rate * args.duration)) if args.rate > 0 else max(1, int(args.duration))
    if args.groups:
        checks = () if args.sensor_faults == "none" else tuple(c.strip() for c in args.sensor_faults.split(",") if c.strip())
        plan = fleetsim.FleetPlan(devices=args.devices, groups=args.groups, peer_drift=args.peer_drift,
                                  sensor_faults=checks, silent=args.silent,  # checked by problems()
                                  faults_per_device=args.faults_per_device if kinds else 0, fault_kinds=kinds,
                                  fault_free_steps=args.fault_free_steps, silence_steps=args.silence_steps)
        try:
            grouped = fleetsim.grouped_fleet(plan, steps, seed=args.seed, sample_period_s=args.sample_period_s)
        except ValueError as exc:  # the plan's problems, or a lead longer than the run
            raise _Usage(str(exc)) from None
        return grouped.streams, args.sample_period_s, args.rate, grouped.truth()
    fleet = simulator.synthetic_fleet(args.devices, steps, seed=args.seed, sample_period_s=args.sample_period_s, kinds=kinds,
                                      faults_per_device=args.faults_per_device if kinds else 0)
    return fleet, args.sample_period_s, args.rate, {}
