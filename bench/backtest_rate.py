"""The backtest's rate (device-days per minute) and peak memory, against an archive 4x smaller and
against replaying after loading everything, for docs/rollouts.md "Backtest".

Two synthetic archives (``tests.cloud.archive_util.write_archive``: ``edge.synth`` pumps, windows
of the tiny test model's shape, ``--per-day`` windows per device-day, about what the agent's
default telemetry sampling sends, 108; written with the archive's own ``write_flush``):
``--devices`` x ``--days`` device-days and ``--devices`` x ``--days``/4. Each is replayed in a
child process of its own (peak RSS is per process) two ways:

- ``stream``: :func:`cloud.backtest.backtest` (the default agent config: adaptive layer on);
- ``load``: the baseline, :func:`cloud.retrain.sources.read_archive` (every window in memory),
  then the same scoring and decisions per device.

Memory that stays flat as the archive grows shows as a large/small peak-RSS ratio near 1 for
``stream``; ``load``'s grows with the archive.

    .venv/bin/python -m bench.backtest_rate [--devices 50] [--days 20] [--per-day 108]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _child(mode: str, archive: Path) -> dict[str, Any]:
    import pyarrow.dataset  # noqa: F401  # both paths import these lazily: in the base, not in the replay's share
    import pyarrow.parquet  # noqa: F401

    from cloud.backtest.replay import Replay, backtest
    from cloud.evaluate.agent_path import agent_config
    from cloud.retrain.sources import read_archive
    from edge.detector import OnnxDetector
    from tests.cloud.archive_util import TINY_MODEL

    config = agent_config()
    OnnxDetector.load(TINY_MODEL).warm_up()  # onnxruntime's arena and the imports are in the base, not in the replay's share
    base = _peak_rss_mib()
    t0 = time.perf_counter()
    if mode == "stream":
        r = backtest(archive, TINY_MODEL, config=config)
        s = r.overall()
        device_days, windows, alerts = s.device_days, s.windows, s.alerts
    else:
        loaded = read_archive(archive)
        replay = Replay(OnnxDetector.load(TINY_MODEL), config)
        by_device: dict[str, list[Any]] = {}
        for w in loaded:
            by_device.setdefault(w.device_id, []).append(w)
        alerts, device_days, windows = 0, 0.0, len(loaded)
        for device, items in by_device.items():
            items.sort(key=lambda w: w.ts[0])
            values = np.stack([w.values for w in items]).astype(np.float32)
            ends = np.array([w.ts[-1] for w in items])
            scores, members = replay.scores(values, 4096)
            fire = replay.fire(device, scores, ends, values[:, -1, :].astype(np.float64), members)
            alerts += int(fire.sum())
            device_days += (ends[-1] - items[0].ts[0]) / 86400.0
    seconds = time.perf_counter() - t0
    return {"mode": mode, "seconds": seconds, "device_days": device_days, "windows": windows, "alerts": alerts,
            "peak_rss_mib": _peak_rss_mib(), "base_rss_mib": base}


def _peak_rss_mib() -> float:
    """This process's peak RSS (``VmHWM``: ru_maxrss would carry the parent's peak across fork and exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _run_child(mode: str, archive: Path) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "bench.backtest_rate", "--child", mode, str(archive)], cwd=ROOT, check=True,
                         capture_output=True, text=True, timeout=900)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int, default=50)
    p.add_argument("--days", type=int, default=20)
    p.add_argument("--per-day", type=int, default=108)
    p.add_argument("--child", nargs=2, metavar=("MODE", "ARCHIVE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(_child(args.child[0], Path(args.child[1]))))
        return
    from tests.cloud.archive_util import write_archive

    work = Path(tempfile.mkdtemp(prefix="backtest-bench-"))
    try:
        sizes = {"large": args.days, "small": max(1, args.days // 4)}
        rows = {}
        for name, days in sizes.items():
            t0 = time.perf_counter()
            write_archive(work / name, devices=args.devices, days=days, per_day=args.per_day)
            mib = sum(f.stat().st_size for f in (work / name).rglob("*.parquet")) / 2**20
            print(f"archive {name}: {args.devices} devices x {days} days x {args.per_day} windows, {mib:.0f} MiB "
                  f"written in {time.perf_counter() - t0:.0f} s", flush=True)
            for mode in ("stream", "load"):
                rows[name, mode] = r = _run_child(mode, work / name)
                print(f"  {mode:6} {r['device_days']:7.0f} device-days {r['windows']:8d} windows {r['seconds']:6.1f} s "
                      f"{r['device_days'] / r['seconds'] * 60:8.0f} device-days/min  peak RSS {r['peak_rss_mib']:4.0f} MiB "
                      f"(+{r['peak_rss_mib'] - r['base_rss_mib']:.0f} over the {r['base_rss_mib']:.0f} MiB after imports) "
                      f"alerts {r['alerts']}", flush=True)
        for mode in ("stream", "load"):
            big, small = rows["large", mode], rows["small", mode]
            grown = [r["peak_rss_mib"] - r["base_rss_mib"] for r in (big, small)]
            rate = big["device_days"] / big["seconds"] / (small["device_days"] / small["seconds"])
            print(f"{mode:6}: peak RSS large/small {big['peak_rss_mib'] / small['peak_rss_mib']:.2f} "
                  f"({big['peak_rss_mib']:.0f} / {small['peak_rss_mib']:.0f} MiB; over the imports +{grown[0]:.0f} / "
                  f"+{grown[1]:.0f}) for {big['device_days'] / small['device_days']:.1f}x the device-days; rate large/small {rate:.2f}")
        stream, load = rows["large", "stream"], rows["large", "load"]
        print(f"stream vs load on the large archive: peak RSS {stream['peak_rss_mib'] / load['peak_rss_mib']:.2f}, "
              f"rate {load['seconds'] / stream['seconds']:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
