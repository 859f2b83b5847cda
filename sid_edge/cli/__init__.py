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

#: Optional libraries and the extra that installs each (a runtime-only install lacks them).
EXTRA_FOR_MODULE = {
    "torch": "train", "torchvision": "train", "open_clip": "train", "onnx": "train", "onnxscript": "train",
    "safetensors": "train", "modelopt": "train", "onnx_graphsurgeon": "train", "pooch": "train",
    "sklearn": "evaluate", "matplotlib": "evaluate", "pyarrow": "evaluate", "datasets": "train",
    "tensorrt": "tensorrt", "cuda": "tensorrt",
}

#: Subcommands in the order ``--help`` lists them: name -> module under sid_edge.cli.
COMMANDS = ("train", "export", "build", "scan", "info", "explain", "evaluate", "provenance", "serve")


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
    for command in sub.choices.values():  # `sid-edge scan ... -v` works as `sid-edge -v scan ...` does
        command.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                             help="log progress details")
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
    except ModuleNotFoundError as e:
        extra = EXTRA_FOR_MODULE.get((e.name or "").split(".")[0])
        if extra is None:
            raise
        console.print(f"[bold red]error:[/] sid-edge {escape(args.command)} needs {escape(e.name)}, which is not "
                      f"installed: pip install {escape(repr('sid-edge[' + extra + ']'))}", highlight=False)
        return EXIT_USAGE
    except KeyboardInterrupt:
        console.print("interrupted")
        return 130
    except BrokenPipeError:  # e.g. `sid-edge info --json | head`: the reader left, nothing is wrong
        sys.stdout = None
        return EXIT_OK
    except Exception as e:  # a bug: one line by default, the traceback with -v
        if getattr(args, "verbose", False):
            console.print_exception()
        console.print(f"[bold red]error:[/] unexpected failure in sid-edge {escape(args.command)}: "
                      f"{escape(type(e).__name__)}: {escape(str(e))} (run with -v for the traceback; please report it)",
                      highlight=False)
        return 1
