"""The ``attrib`` command: ``attrib demo``, ``attrib explain``, ``attrib benchmark``, ``attrib run``.

Run ``attrib --help`` (or ``python -m attrib --help``). Every bad argument
gives a one-line error and a non-zero exit status; ``--debug`` shows the
traceback of an unexpected failure instead.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import NoReturn

from .common import CommandError


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (usage is on ``--help``)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The command's parser with every subcommand registered."""
    from .. import __version__

    parser = _Parser(prog="attrib", description="Attribution maps for PyTorch models.")
    parser.add_argument("--version", action="version", version=f"attrib {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an unexpected error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in ("demo", "explain", "benchmark"):
        importlib.import_module(f"{__name__}.{name}").add_parser(sub)
    # `attrib run` (dataset-scale runs) lives in attrib/cli/run.py, owned by its own feature;
    # it is registered when present and exposes add_parser(subparsers) like the others.
    try:
        run = importlib.import_module(f"{__name__}.run")
    except ModuleNotFoundError as error:
        if error.name != f"{__name__}.run":
            raise
    else:
        run.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        status = args.handler(args)
    except KeyboardInterrupt:
        print("attrib: interrupted", file=sys.stderr)
        return 130
    except CommandError as error:
        print(f"attrib {args.command}: error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # noqa: BLE001 - the command never shows a traceback unless asked
        if args.debug:
            raise
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"attrib {args.command}: error: {message} ({type(error).__name__}; --debug shows the traceback)",
              file=sys.stderr)
        return 1
    return int(status or 0)
