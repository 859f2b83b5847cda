"""``sid-edge`` command line: one module per command, each with ``add_parser(subparsers)`` and ``run(args)``.

Command modules import their heavy dependencies inside ``run``, so ``sid-edge --help`` loads neither numpy-heavy
modules nor ONNX Runtime, and ``scan``/``info``/``explain``/``evaluate`` run without PyTorch. A new command is a
new module here plus one line in :data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from rich.markup import escape

from sid_edge import __version__
from sid_edge.cli.common import EXIT_MODEL, EXIT_OK, EXIT_USAGE, ModelError, UsageError, console, setup_logging

#: Subcommands in the order ``--help`` lists them: name -> module under sid_edge.cli.
COMMANDS = ("train", "export", "build", "scan", "info", "explain", "evaluate", "provenance")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (every subcommand registered by its module)."""
    parser = argparse.ArgumentParser(
        prog="sid-edge",
        description="Synthetic image detection on frozen CLIP features: train a head, export one fused ONNX "
                    "graph, scan folders.",
    )
    parser.add_argument("--version", action="version", version=f"sid-edge {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        _module(name).add_parser(sub)
    return parser


def _module(name: str):
    return importlib.import_module(f"sid_edge.cli.{name}")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 done, 2 usage error, 3 model error, 130 interrupted)."""
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        return _module(args.command).run(args)
    except UsageError as e:
        console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False)
        return EXIT_USAGE
    except ModelError as e:
        console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False)
        return EXIT_MODEL
    except KeyboardInterrupt:
        console.print("interrupted")
        return 130
    except BrokenPipeError:  # e.g. `sid-edge info --json | head`: the reader left, nothing is wrong
        sys.stdout = None
        return EXIT_OK
