"""``edgewatch``: the cloud side and the developer tooling.

Subcommands register themselves from their own modules; this file only wires them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from edge.cliutil import EXIT_CONFIG, EXIT_FAILURE, run_main, setup_logging
from edge.contract.errors import ConfigError, EdgewatchError


def build_parser() -> argparse.ArgumentParser:
    from cloud import demo_cli, evaluate_cli, incidents_cli, keys_cli, processor_cli, registry_cli, retrain_cli, stack_cli, train_cli

    parser = argparse.ArgumentParser(
        prog="edgewatch",
        description="edgewatch cloud side: local broker stack, training, evaluation, stream processing.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    stack_cli.register(sub)
    processor_cli.register(sub)
    incidents_cli.register(sub)
    keys_cli.register(sub)
    registry_cli.register(sub)
    retrain_cli.register(sub)
    evaluate_cli.register(sub)
    train_cli.register(sub)
    demo_cli.register(sub)
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


if __name__ == "__main__":
    sys.exit(main())
