"""``edgewatch evaluate skab|nab``: benchmark model families on SKAB and NAB (scores from onnxruntime)."""

from __future__ import annotations

import argparse
import logging
import tomllib
from pathlib import Path
from typing import Any

from edge.cliutil import EXIT_OK, add_flag
from edge.contract.errors import ConfigError

log = logging.getLogger(__name__)


def register(sub: Any) -> None:
    """Add ``evaluate`` with its ``skab`` and ``nab`` subcommands to the ``edgewatch`` parser."""
    parser = sub.add_parser("evaluate", help="score model families on SKAB or NAB (onnxruntime outputs)",
                            description="Benchmark protocols: SKAB leaderboard (per file: fit on the first 400 rows, "
                                        "predict the rest) and NAB streaming (learn on the probationary 15 %%).")
    bench = parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    skab = bench.add_parser("skab", help="SKAB leaderboard protocol: F1, FAR, MAR, changepoint NAB scores")
    _common(skab, "EVALUATE_SKAB_", default_out=None)
    add_flag(skab, "--exclude", default="anomaly-free", env_prefix="EVALUATE_SKAB_",
             help="comma-separated folder names under --data to skip (SKAB's leaderboard leaves out anomaly-free)")
    add_flag(skab, "--n-train", type=int, default=400, env_prefix="EVALUATE_SKAB_", help="training rows at the start of each file")
    add_flag(skab, "--nab-window-s", type=float, default=60.0, env_prefix="EVALUATE_SKAB_",
             help="changepoint NAB window to the right of each true changepoint, seconds")
    add_flag(skab, "--normal", env_prefix="EVALUATE_SKAB_",
             help="anomaly-free SKAB csv (or folder): scale every threshold for --far-target on pieces of it (label-free)")
    add_flag(skab, "--far-target", default="0.1", env_prefix="EVALUATE_SKAB_",
             help="false-alarm rate(s) the --normal calibration aims at, comma-separated; the first is the main one")
    skab.set_defaults(func=_run_skab)
    nab = bench.add_parser("nab", help="NAB streaming protocol: normalised NAB scores per category")
    _common(nab, "EVALUATE_NAB_", default_out="edgewatch-nab")
    add_flag(nab, "--holdoff", type=int, default=64, env_prefix="EVALUATE_NAB_",
             help="static column only: rows it stays quiet after an alarm-level score (causal; 0 = off)")
    nab.set_defaults(func=_run_nab)


def _common(p: argparse.ArgumentParser, prefix: str, *, default_out: str | None) -> None:
    add_flag(p, "--data", env_prefix=prefix, help="benchmark folder (required)")
    add_flag(p, "--out", default=default_out, env_prefix=prefix, help="output folder" + (" (required)" if default_out is None else ""))
    add_flag(p, "--family", default="conv_ae", env_prefix=prefix, help="model family")
    add_flag(p, "--families", env_prefix=prefix, help="'all' or a comma-separated list (overrides --family)")
    add_flag(p, "--seeds", type=int, default=1, env_prefix=prefix, help="repeat with seeds seed..seed+N-1, report mean and sd")
    add_flag(p, "--seed", type=int, default=0, env_prefix=prefix, help="first seed")
    add_flag(p, "--config", env_prefix=prefix, help="TOML file with training-config keys ([train] table or top level)")
    add_flag(p, "--window", type=int, env_prefix=prefix, help="window length (overrides the config)")
    add_flag(p, "--epochs", type=int, env_prefix=prefix, help="maximum epochs (overrides the config)")
    add_flag(p, "--quantile", type=float, env_prefix=prefix, help="threshold quantile of training scores (overrides the config)")
    add_flag(p, "--margin", type=float, env_prefix=prefix, help="threshold margin factor (overrides the config)")
    add_flag(p, "--agent-config", env_prefix=prefix,
             help="agent TOML whose decision path ([adaptive], [decision]) is scored; default: the agent's own defaults")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _families(args: argparse.Namespace) -> list[str]:
    from models.registry import family_names, get_builder

    if not args.families:
        names = [args.family]
    elif args.families.strip() == "all":
        names = list(family_names())
    else:
        names = [n.strip() for n in args.families.split(",") if n.strip()]
    for name in names:
        get_builder(name)  # raises ConfigError listing the known names
    return names


def _overrides(args: argparse.Namespace) -> dict[str, object]:
    data: dict[str, object] = {}
    if args.config:
        path = Path(args.config)
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"--config {path}: cannot read TOML: {exc}") from None
        data.update(raw.get("train", raw))
        for key in ("family", "seed"):
            if key in data:
                raise ConfigError(f"{path}: train.{key} is set by --family/--families and --seed here")
    for flag, key in (("window", "window_length"), ("epochs", "epochs"), ("quantile", "quantile"), ("margin", "margin")):
        if getattr(args, flag) is not None:
            data[key] = getattr(args, flag)
    return data


def _require(args: argparse.Namespace, *flags: str) -> None:
    """Required flags are checked here, not by argparse, so that their environment twins count."""
    for flag in flags:
        if not getattr(args, flag):
            raise ConfigError(f"--{flag} is required (or its EDGEWATCH_EVALUATE_{args.benchmark.upper()}_{flag.upper()} twin)")


def _seeds(args: argparse.Namespace) -> list[int]:
    if args.seeds < 1:
        raise ConfigError(f"--seeds {args.seeds}: must be at least 1")
    return list(range(args.seed, args.seed + args.seeds))


def _far_targets(text: str) -> list[float]:
    try:
        targets = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--far-target {text!r}: expected numbers between 0 and 1, comma-separated") from None
    if not targets or not all(0.0 < t < 1.0 for t in targets):
        raise ConfigError(f"--far-target {text!r}: expected numbers between 0 and 1, comma-separated")
    return targets


def _run_skab(args: argparse.Namespace) -> int:
    import numpy as np

    from cloud.evaluate.normal import normal_chunks
    from cloud.evaluate.report import format_pm
    from cloud.evaluate.skab import discover
    from cloud.evaluate.skab_run import run_skab

    _require(args, "data", "out")
    families, seeds, overrides = _families(args), _seeds(args), _overrides(args)
    files = discover(args.data, exclude=[x.strip() for x in args.exclude.split(",") if x.strip()])
    out = Path(args.out)
    normal = []
    if args.normal:
        length = int(np.median([len(f.rows) for f in files]))
        normal = normal_chunks(args.normal, length=length, min_rows=args.n_train + 100)
    payload = run_skab(files, families, seeds, out, overrides=overrides, n_train=args.n_train,
                       nab_window_s=args.nab_window_s, normal=normal, far_targets=_far_targets(args.far_target),
                       agent_toml=args.agent_config, progress=not args.no_progress)
    print(f"SKAB, {len(files)} files, seeds {seeds[0]}..{seeds[-1]} (mean ± sd), {payload['wall_seconds']:.0f} s wall; "
          "'agent': the agent's decisions, 'static': per-file thresholds" + (" x the anomaly-free scale" if normal else ""))
    print(f"{'family':<14} {'path':<7} {'F1':>15} {'FAR %':>13} {'MAR %':>13} {'NAB std':>15} {'normal FAR %':>13} {'fit s/file':>10}")
    rows = [(f, path, v["mean"], v["sd"], prefix) for f, v in payload["families"].items()
            for path, prefix in (("agent", ""), ("static", "static_"))]
    rows.append(("all-anomaly", "", payload["baseline_all_anomaly"], {k: 0.0 for k in payload["baseline_all_anomaly"]}, ""))
    for name, path, mean, sd, p in rows:
        fit_s = f"{mean['fit_seconds_per_file']:.1f}" if "fit_seconds_per_file" in mean and not p else "-"
        normal_key = "normal_far_agent" if not p else "threshold_scale"
        normal_far = format_pm(mean[normal_key], sd[normal_key], percent=True) if normal_key in mean and not p else "-"
        print(f"{name:<14} {path:<7} {format_pm(mean[p + 'f1'], sd[p + 'f1']):>15} "
              f"{format_pm(mean[p + 'far'], sd[p + 'far'], percent=True):>13} "
              f"{format_pm(mean[p + 'mar'], sd[p + 'mar'], percent=True):>13} "
              f"{format_pm(mean[p + 'nab_standard'] / 100, sd[p + 'nab_standard'] / 100, percent=True):>15} {normal_far:>13} {fit_s:>10}")
    print(f"wrote {out / 'metrics.json'}")
    return EXIT_OK


def _num(value: float) -> str:
    return "n/a" if value != value else f"{value:.1f}"  # NaN: no windows in that category


def _run_nab(args: argparse.Namespace) -> int:
    from cloud.evaluate.nab_run import run_nab

    _require(args, "data", "out")
    if args.holdoff < 0:
        raise ConfigError(f"--holdoff {args.holdoff}: must be 0 or more")
    payload = run_nab(args.data, _families(args), _seeds(args), Path(args.out), overrides=_overrides(args),
                      holdoff=args.holdoff, agent_toml=args.agent_config, progress=not args.no_progress)
    print(f"NAB, {payload['files']} files, standard profile, normalised score (corpus-optimised threshold / label-free default)")
    for family, result in payload["families"].items():
        standard = result["mean"]
        for label, prefix in (("agent", ""), ("every window", "every_window_"), ("static", "static_")):
            cells = "  ".join(f"{cat} {_num(standard[f'{prefix}{cat}_optimised'])} / {_num(standard[f'{prefix}{cat}_calibrated'])}"
                              for cat in payload["categories"] + ["corpus"])
            print(f"{family:<14} {label:<13} {cells}")
    print(f"wrote {Path(args.out) / 'metrics.json'}")
    return EXIT_OK
