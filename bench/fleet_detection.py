"""Detection on the simulated fleet, one model against three that vote, offline and side by side.

The fleet of the acceptance test (``tests/cloud/fleet_util.build_fleet``: 31 devices at operating
points, noise and drift of their own, 119 injected faults, 7.6 device-days at 1 Hz) goes through
each artifact's onnxruntime session (windows of the model, its stride) and the agent's decision
classes as the backtest replays them (:class:`cloud.backtest.replay.Replay`: the shipped
``[adaptive]`` defaults, or with ``adaptive.enabled = false`` the manifest's threshold), device by
device in time order, each window with its last row for the seasonal channel. An
event's window is scored against the faults as the acceptance test scores them (false alarms per
device-day; a fault is caught when an event's window holds one of its readings). Offline: no
brokers, no restart, no rebaseline, no sensor checks (the acceptance test has those), so the figures
compare models, not the test's run.

Models: the default model's training config (``models.zoo.DEFAULT_CONFIG``) with ``--seeds``
seeds from its own (7), each as one model and as an ensemble of ``--members`` (trained here, on one
core: about 30 s a model; the seed-7 single model is the shipped default itself).

    .venv/bin/python -m bench.fleet_detection [--members 3] [--seeds 3] [--hours 6]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from tests.cloud.fleet_util import Device


def decide_fleet(model_dir: Path, fleet: Sequence[Device], t0: float, *, adaptive: bool) -> dict[str, list[tuple[float, float]]]:
    """Each device's firing windows ``(window_start, window_end)`` under one artifact and one path,
    decided by the backtest's replay of the agent's decision path (:class:`cloud.backtest.replay.Replay`)."""
    from cloud.backtest.replay import BATCH_SIZE, Replay
    from edge.config import load_config
    from edge.detector import OnnxDetector
    from models.data import make_windows

    detector = OnnxDetector.load(model_dir, threads=1)
    m = detector.manifest
    config = load_config(None, env={})
    replay = Replay(detector, replace(config, adaptive=replace(config.adaptive, enabled=adaptive)))
    events: dict[str, list[tuple[float, float]]] = {}
    for d in fleet:
        windows = make_windows(d.values.astype(np.float32), m.window_length, m.stride)
        starts = t0 + d.first_s + np.arange(len(windows)) * m.stride
        ends = starts + m.window_length - 1.0
        scores, members = replay.scores(windows, BATCH_SIZE)
        fire = replay.fire(d.device_id, scores, ends, windows[:, -1, :].astype(np.float64), members)
        events[d.device_id] = [(float(starts[i]), float(ends[i])) for i in np.flatnonzero(fire)]
    return events


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=3, help="members of each ensemble (odd, >= 3; default: 3)")
    parser.add_argument("--seeds", type=int, default=3,
                        help="training seeds from the default config's (7): one model and one ensemble each (default: 3)")
    parser.add_argument("--hours", type=float, default=6.0, help="hours of the simulated fleet (default: 6, as the acceptance test)")
    parser.add_argument("--fleet-seed", type=int, default=0, help="the fleet's seed (default: 0, as the acceptance test)")
    args = parser.parse_args(argv)

    import torch

    from edge.config import default_model_dir
    from models.zoo import DEFAULT_CONFIG, build_default
    from tests.cloud.fleet_util import build_fleet, score

    torch.set_num_threads(1)
    fleet = build_fleet(args.hours, seed=args.fleet_seed)
    t0 = 1.7e9
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgewatch-fleet-detection-") as tmp:
        for seed in range(DEFAULT_CONFIG.seed, DEFAULT_CONFIG.seed + args.seeds):
            for members in (1, args.members):
                model_dir = Path(tmp) / f"s{seed}m{members}"
                if seed == DEFAULT_CONFIG.seed and members == 1:
                    model_dir = default_model_dir()  # the shipped default is this config's fit
                else:
                    started = time.perf_counter()
                    build_default(model_dir, config=DEFAULT_CONFIG.with_(seed=seed, members=members), evaluate=False)
                    print(f"seed {seed}, {members} member(s): trained in {time.perf_counter() - started:.0f} s", file=sys.stderr)
                for path in ("static", "adaptive"):
                    board = score(fleet, t0, decide_fleet(model_dir, fleet, t0, adaptive=path == "adaptive"))
                    rows.append((members, seed, path, board))
    first = rows[0][3]
    print(f"simulated fleet: {len(fleet)} devices, {first.device_days:.1f} device-days, {first.faults} faults "
          f"(fleet seed {args.fleet_seed}); offline decisions; members 1 = one model")
    print(f"{'members':>7} {'seed':>4} {'path':<9} {'events':>7} {'false alarms/device-day':>24} {'fault recall':>13}  missed")
    for members, seed, path, b in rows:
        print(f"{members:>7} {seed:>4} {path:<9} {b.events:>7} {b.false_alarms_per_device_day:>24.1f} {b.recall:>13.3f}  {len(b.missed)}")
    for members in (1, args.members):
        for path in ("static", "adaptive"):
            boards = [b for m, _, p, b in rows if m == members and p == path]
            print(f"mean, {members} member(s), {path}: {np.mean([b.false_alarms_per_device_day for b in boards]):.1f} false alarms "
                  f"per device-day, recall {np.mean([b.recall for b in boards]):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
