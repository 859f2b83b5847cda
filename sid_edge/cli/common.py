"""Shared pieces of the command line: exit codes, errors, flags several commands repeat, output helpers.

Imports stay light (argparse, rich): ``sid-edge --help`` must not load numpy-heavy modules or ONNX Runtime.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from sid_edge.artifact.names import (
    BACKEND_CHOICES,
    CALIBRATION_METHODS,
    DEFAULT_CALIBRATION_METHOD,
    DEFAULT_CLIP_MODEL,
    DEFAULT_CLIP_PRETRAINED,
    PRECISIONS,
)
from sid_edge.runtime.progress import console

__all__ = ["EXIT_OK", "EXIT_FAILURE", "EXIT_USAGE", "EXIT_MODEL", "UsageError", "ModelError", "console",
           "add_backbone_args", "add_engine_args", "count", "setup_logging", "stdout_console", "check_dataset",
           "BACKEND_CHOICES", "PRECISIONS", "require_extra", "default_model_dir", "CALIBRATION_METHODS", "DEFAULT_CALIBRATION_METHOD", "load_backbone_or_fail", "DEFAULT_CLIP_MODEL", "DEFAULT_CLIP_PRETRAINED"]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_MODEL = 0, 1, 2, 3


class UsageError(Exception):
    """Bad arguments discovered after parsing (exit status 2)."""


class ModelError(Exception):
    """The model/artifact/head cannot be used (exit status 3)."""


def add_backbone_args(p: argparse.ArgumentParser, default_from_head: bool = False) -> None:
    suffix = " (default: the head's own backbone, else %(default)s)" if default_from_head else " (default: %(default)s)"
    p.add_argument("--clip-model", default=None if default_from_head else DEFAULT_CLIP_MODEL, metavar="NAME",
                   help="open_clip model name; OpenAI weights need a -quickgelu name" + suffix.replace("%(default)s", DEFAULT_CLIP_MODEL))
    p.add_argument("--clip-pretrained", default=None if default_from_head else DEFAULT_CLIP_PRETRAINED, metavar="TAG|PATH|none",
                   help="open_clip pretrained tag, a local open_clip weights file (works offline), or 'none' for random "
                        "weights (predictions meaningless; for scale checks)" + suffix.replace("%(default)s", DEFAULT_CLIP_PRETRAINED))


def add_engine_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("TensorRT engine build")
    g.add_argument("--min-batch", type=int, default=1, metavar="N", help="smallest batch the engine accepts (default: %(default)s)")
    g.add_argument("--opt-batch", type=int, default=8, metavar="N", help="batch the engine is tuned for (default: %(default)s)")
    g.add_argument("--max-batch", type=int, default=64, metavar="N",
                   help="largest batch the engine accepts; bigger batches are split at run time (default: %(default)s)")
    g.add_argument("--workspace", type=float, default=None, metavar="GIB",
                   help="cap on TensorRT's scratch memory in GiB (default: TensorRT's, the GPU's memory)")
    g.add_argument("--opt-level", type=int, default=3, metavar="0-5",
                   help="builder optimization level: 0 builds fastest, 5 searches longest (default: %(default)s)")
    g.add_argument("--no-timing-cache", action="store_true",
                   help="neither read nor update the timing cache kept in the artifact")
    g.add_argument("--device", type=int, default=0, help="CUDA device to build for (default: %(default)s)")


def count(n: int, noun: str) -> str:
    """'1 file', '3 files'."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def setup_logging(verbose: bool) -> None:
    import warnings

    from rich.logging import RichHandler

    # The decoder refuses such images itself (an error row naming the limit); Pillow's own warning would only
    # interleave a raw traceback-like line with the results on the terminal.
    warnings.filterwarnings("ignore", message=r".*could be decompression bomb DOS attack")

    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_time=False, show_path=False)],
        force=True,
    )


def check_dataset(data: str, split: str) -> None:
    """Fail fast (exit 2) on unreadable data before minutes of export."""
    from sid_edge.tools.datasets import read_labelled_images

    try:
        read_labelled_images(data, split=split)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(str(e)) from e


def prepare_report_dir(out) -> Path:
    """Create the report folder ``--out`` (parents included) before any long work. Raises UsageError (exit 2) when
    it is a file, lies below a file, or cannot be created or written (a read-only place, /proc)."""
    p = Path(out)
    if p.exists() and not p.is_dir():
        raise UsageError(f"--out {out}: is a file; name a folder for the report")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--out {out}: cannot create this folder ({e.strerror or e})") from None
    if not os.access(p, os.W_OK):
        raise UsageError(f"--out {out}: this folder is not writable")
    return p


def stdout_console():
    """A rich Console on stdout; piped output gets 120 columns (rich's default of 80 would truncate tables)."""
    import sys

    return console.__class__(width=None if sys.stdout.isatty() else 160)


def load_backbone_or_fail(model: str, pretrained: str):
    from sid_edge.build.backbone import load_backbone

    try:
        return load_backbone(model, pretrained)
    except ValueError as e:
        raise UsageError(str(e)) from e
    except RuntimeError as e:
        raise ModelError(str(e)) from e


def default_model_dir():
    """The default detector's folder: the cached artifact when built; else built now when the training extra is
    installed (ViT-L-14-336 OpenAI weights + the paper's SynthCLIC head); else ModelError saying what to install.

    The runtime never imports the build stage: only this CLI step does, and only when nothing is cached.
    """
    import importlib.util

    from sid_edge.artifact.locations import default_detector_dir
    from sid_edge.artifact.names import MANIFEST_NAME

    cached = default_detector_dir()
    if (cached / MANIFEST_NAME).is_file():
        return cached
    missing = [m for m in ("torch", "open_clip", "onnx", "pooch") if importlib.util.find_spec(m) is None]
    if missing:
        raise ModelError(f"no default detector is built on this machine ({cached}), and building it needs the training "
                         f"extra ({', '.join(missing)} missing): pip install 'sid-edge[train]' and run this again, "
                         f"or pass --model DIR")
    from sid_edge.export.default_detector import DefaultDetectorUnavailable, ensure_default_detector

    try:
        return ensure_default_detector()
    except DefaultDetectorUnavailable as e:
        raise ModelError(str(e)) from e


def require_extra(extra: str, *modules: str) -> None:
    """Stop with exit 2 and the pip command when an optional library of ``extra`` is missing (before any work)."""
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            raise UsageError(f"this command needs {name}, which is not installed: pip install 'sid-edge[{extra}]'") from None
