"""``edgewatch train`` (fit a family on a CSV, NAB CSV or .npy file and write the artifact) and
``edgewatch zoo build-default`` (rebuild ``models/zoo/default`` deterministically).

Every :class:`models.config.TrainConfig` field is a flag (``--epochs``, ``--optimizer``, ...),
each with its environment twin. Precedence: defaults < ``--config`` TOML <
``EDGEWATCH_TRAIN__KEY`` < flag or its ``EDGEWATCH_<FLAG>`` twin.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from edge.cliutil import EXIT_OK, add_flag

log = logging.getLogger(__name__)
_RENAMED = {"window_length": "--window"}
_DEFAULT_ZOO = Path(__file__).resolve().parents[2] / "models" / "zoo" / "default"


def register(sub: Any) -> None:
    from edge.config_parse import parse_bool
    from models.config import field_help, literal_choices

    p: argparse.ArgumentParser = sub.add_parser(
        "train", help="train a model family and write model.onnx + manifest.json",
        description="Fit a model family on training rows (CSV with , or ; delimiters, NAB CSV timestamp,value, or .npy), "
                    "calibrate its threshold on the training scores, export one ONNX graph (preprocessing, network, "
                    "scoring head) and its manifest into --out, plus training/ (checkpoint for fine-tuning, report.json, "
                    "report.png). Configuration precedence: defaults < --config < EDGEWATCH_TRAIN__KEY < flags.",
    )
    add_flag(p, "--data", help="training data: .csv, NAB .csv or .npy (rows = time, columns = channels)")
    add_flag(p, "--out", help="output model folder")
    add_flag(p, "--channels", help="comma-separated channel (column) names to use (default: every numeric column)")
    add_flag(p, "--units", help="comma-separated units, one per channel (default: empty)")
    add_flag(p, "--config", help="TOML file with a [train] table of the settings below")
    add_flag(p, "--name", help="model name in the manifest (default: the --out folder name)")
    add_flag(p, "--model-version", default="1.0.0", help="model version in the manifest")
    add_flag(p, "--sample-period-s", type=float, default=1.0, help="seconds between two readings")
    add_flag(p, "--init-from", help="fine-tune: model folder (with training/checkpoint.pt) or checkpoint file to start from")
    add_flag(p, "--quantize", type=parse_bool, default=False, metavar="BOOL",
             help="also write an INT8 dynamically quantized copy to OUT/int8 and report its speed-up and agreement")
    add_flag(p, "--progress", type=parse_bool, default=True, metavar="BOOL", help="show a progress bar while training")
    group = p.add_argument_group("training configuration (models.config.TrainConfig)")
    for name, (kind, default, text) in field_help().items():
        choices = literal_choices(name)
        flag = _RENAMED.get(name, "--" + name.replace("_", "-"))
        add_flag(group, flag, dest=name, type=parse_bool if kind is bool else kind, choices=choices,  # type: ignore[arg-type]  # kind: a TrainConfig field's type, called on the text
                 metavar="BOOL" if kind is bool else None, help=f"{text} (default: {default})")
    p.set_defaults(func=run_train)

    z: argparse.ArgumentParser = sub.add_parser(
        "zoo", help="rebuild the default model zoo",
        description="build-default: train the default detector (dense autoencoder, window 32, stride 8, six pump channels) on "
                    "fault-free synthetic fleet data, export it, evaluate it on fresh synthetic seeds through onnxruntime and "
                    "write model.onnx + manifest.json. Deterministic: the same versions of torch and onnxruntime on the same "
                    "platform rebuild it byte for byte.",
    )
    z.add_argument("action", choices=["build-default"], help="what to build")
    add_flag(z, "--out", default=str(_DEFAULT_ZOO), help="output folder")
    add_flag(z, "--progress", type=parse_bool, default=True, metavar="BOOL", help="show a progress bar while training")
    z.set_defaults(func=run_zoo)


def run_train(args: argparse.Namespace) -> int:
    from edge.contract import Channel
    from edge.contract.errors import ConfigError
    from models.config import config_from_mapping, field_help, load_config
    from models.data import load_rows, make_windows
    from models.export import write_artifact
    from models.fit import CHECKPOINT, fit, save_checkpoint
    from models.report import write_report

    if not args.data or not args.out:
        raise ConfigError("--data and --out are required (or EDGEWATCH_DATA / EDGEWATCH_OUT)")
    config = load_config(args.config)
    flags = {name: getattr(args, name) for name in field_help() if getattr(args, name) is not None}
    config = config_from_mapping(flags, origin="command line", base=config)
    rows, names = load_rows(args.data, channels=args.channels.split(",") if args.channels else None)
    units = args.units.split(",") if args.units else [""] * len(names)
    if len(units) != len(names):
        raise ConfigError(f"--units has {len(units)} entries for {len(names)} channels {names}")
    out = Path(args.out)
    print(f"training {config.family} on {args.data}: {rows.shape[0]} rows x {len(names)} channels {list(names)}")
    fitted = fit(rows, config, channels=[Channel(n, u) for n, u in zip(names, units, strict=True)],
                 sample_period_s=args.sample_period_s, init_from=args.init_from, progress=args.progress)
    manifest = write_artifact(fitted, out, name=args.name or out.resolve().name, version=args.model_version)
    save_checkpoint(fitted, out / CHECKPOINT)
    extra: dict[str, Any] = {}
    if args.quantize:
        from models.quantize import quantize_artifact

        windows = make_windows(rows, config.window_length, config.stride)
        extra["quantization"] = quantize_artifact(out, out / "int8", windows)
        print("int8: " + json.dumps({k: round(v, 4) for k, v in extra["quantization"].items()}))
    png = write_report(fitted, out / "training", extra=extra)
    h = fitted.history
    print(f"epochs {len(h.train_loss)} (best {h.best_epoch + 1}{', stopped early' if h.stopped_early else ''}) "
          f"in {h.seconds:.1f} s; threshold {fitted.threshold:.4g} ({fitted.calibration.method})")
    print(f"wrote {out / 'model.onnx'} (sha256 {manifest.sha256[:12]}), {out / 'manifest.json'}, report {png}")
    return EXIT_OK


def run_zoo(args: argparse.Namespace) -> int:
    from models.zoo import build_default

    manifest = build_default(Path(args.out), progress=args.progress)
    print(f"wrote {args.out}: sha256 {manifest.sha256}, threshold {manifest.threshold:.4g}")
    for key, value in sorted(manifest.metrics.items()):
        print(f"  {key} = {value:g}")
    return EXIT_OK
