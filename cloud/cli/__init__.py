"""``edgewatch``: the cloud side and the developer tooling.

Subcommands register themselves from their own modules, one per command: this package's for
operations and models, :mod:`localdev`'s for local development. This file only wires them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from edge.cliutil import EXIT_CONFIG, EXIT_FAILURE, run_main, setup_logging
from edge.contract.errors import ConfigError, EdgewatchError

COMMAND_GROUPS = """commands by what they are for:
  operations         process, incidents, devices, retrain, acls
  models             train, evaluate, backtest, registry, rollout, keys
  local development  stack, demo (localdev/: a loopback broker stack and the demo, not for production)"""


def build_parser() -> argparse.ArgumentParser:
    from cloud.cli import acls, backtest, devices, evaluate, incidents, keys, process, registry, retrain, rollout, train
    from localdev import demo_cli, stack_cli

    parser = argparse.ArgumentParser(
        prog="edgewatch",
        description="edgewatch cloud side: local broker stack, training, evaluation, stream processing.",
        epilog=COMMAND_GROUPS, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in (process, incidents, devices, retrain, acls, train, evaluate, backtest, registry, rollout, keys, stack_cli, demo_cli):
        command.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse and run one command; quiet with 141 when the output pipe closes (:func:`edge.cliutil.run_main`)."""
    return run_main(lambda: _run(argv))


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"edgewatch: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except EdgewatchError as exc:
        print(f"edgewatch: {exc}", file=sys.stderr)
        return EXIT_FAILURE

