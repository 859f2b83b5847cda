"""ModelOpt and ONNX Runtime calibrator chatter kept off the console (used by FP16 AutoCast and INT8 PTQ)."""

from __future__ import annotations

import contextlib
import functools
import logging
import os


class _QuietModelOpt(logging.Filter):
    # ModelOpt logs its progress at INFO, "Failed to get GPU count: NVML Shared Library Not Found" at ERROR on every
    # CPU-only calibration (expected here, not an error) and a warning for the shared constants it duplicates. Its records propagate to the root logger,
    # whose handlers ignore the logger levels ModelOpt sets, so they are filtered where they are made.
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return record.levelno >= logging.WARNING and not any(noise in message for noise in _NOISE)


_MODELOPT_LOGGERS = ("modelopt.onnx", "modelopt.onnx.autocast")
_NOISE = ("Failed to get GPU count", "Shared constants were detected")  # expected on every run, nothing to act on


@contextlib.contextmanager
def modelopt_logging():
    """Run ModelOpt and ONNX Runtime's calibrators without their console chatter.

    ModelOpt attaches handlers that print to stdout (kept for our machine-readable output) and ONNX Runtime's
    histogram calibrators print and draw a tqdm bar per batch; our own progress bar shows the calibration.
    ModelOpt's warnings still reach the root logger.
    """
    import modelopt.onnx  # noqa: F401 - its import configures its loggers; undo that below
    from modelopt.onnx.quantization import ort_patching

    loggers = [logging.getLogger(name) for name in _MODELOPT_LOGGERS]
    quiet = _QuietModelOpt()

    def drop_handlers():
        for lg in loggers:
            for handler in lg.handlers[:]:
                lg.removeHandler(handler)

    drop_handlers()
    for lg in loggers:
        lg.addFilter(quiet)
    saved_tqdm = ort_patching.tqdm
    ort_patching.tqdm = functools.partial(saved_tqdm, disable=True)
    try:
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            yield
    finally:
        drop_handlers()  # ModelOpt re-adds handlers bound to the (now closed) redirected stdout on each call
        for lg in loggers:
            lg.removeFilter(quiet)
        ort_patching.tqdm = saved_tqdm
