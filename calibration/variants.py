"""Add precision variants (FP16, INT8 Q/DQ) to a detector artifact and record their fidelity in its manifest.

    FP32 graph ──► FP16 (export/fp16.py, ModelOpt AutoCast)            ─┐
         │    └──► INT8 Q/DQ (calibration/int8.py, ModelOpt ONNX PTQ)  ─┤─► fidelity on held-out images
         └──────────────────────────────────────────────────────────────┘   (calibration/fidelity.py)

Every variant keeps float32 inputs and outputs, so the runtime loads any of them the same way
(``Detector.load(dir, precision="int8")``, ``sid-edge scan --precision int8``).

Manifest additions: ``models[p]`` for each precision (file, sha256, size, and a ``conversion`` / ``quantization``
block saying how it was made), ``models[p]["fidelity"]["held_out"]`` (the figures), ``fidelity_set`` (which
images), ``calibration`` (how the calibration set was drawn, its composition and every image id, so evaluation
can exclude them) and ``default_precision``.
"""

from __future__ import annotations

import logging
import os
from importlib import metadata
from pathlib import Path
from typing import Callable, Sequence

from sid_edge.calibration.calibration_set import CalibrationSet, build_calibration_set
from sid_edge.calibration.fidelity import held_out_set, measure_fidelity
from sid_edge.calibration.int8 import DEFAULT_CALIBRATION_METHOD, quantize_int8
from sid_edge.artifact.names import model_file_name as model_file
from sid_edge.artifact.preprocessing import Preprocessing
from sid_edge.artifact.manifest import (
    PRECISIONS,
    Calibration,
    FidelitySet,
    HeldOut,
    ModelEntry,
    artifact_path,
    file_entry,
    model_entry,
    read_manifest,
    set_models,
)

log = logging.getLogger(__name__)



def _entry(directory: Path, precision: str, **made: dict) -> ModelEntry:
    name = model_file(precision)
    entry = {"precision": precision, **file_entry(directory, name), **made}
    data_files = sorted(p.name for p in directory.iterdir() if p.name.startswith(name) and p.name != name)
    if data_files:
        entry["external_data"] = [file_entry(directory, n) for n in data_files]
    return ModelEntry.model_validate(entry)


def int8_model_fields(info: dict) -> dict:
    """The INT8 model entry's own fields: ``quantization`` (how it was made, from
    :func:`sid_edge.calibration.int8.quantize_int8`) and ``needs_exact_int8_accumulation`` (bool: the graph's
    integer GEMMs must accumulate exactly; the runtime picks the kernel for the CPU at hand, see
    :func:`sid_edge.runtime.cpu_features.ort_int8_session_config`). Artifacts before this field baked the choice
    as ``onnxruntime.session_config["session.x64quantprecision"] = "1"``; the runtime still reads that."""
    quantization = {k: v for k, v in info.items() if k not in ("onnxruntime", "needs_exact_int8_accumulation")}
    return {"quantization": quantization,
            "needs_exact_int8_accumulation": bool(info.get("needs_exact_int8_accumulation", True))}


def other_backend_rows(precisions: Sequence[str]) -> dict[str, tuple[str, str]]:
    """Fidelity rows for backends whose arithmetic differs from ONNX Runtime's: OpenVINO on the INT8 graph, and
    OpenVINO's BF16 hint on the FP32 graph (only on a CPU with BF16 units), where OpenVINO is installed. FP32 on
    OpenVINO is not listed: it agrees with ONNX Runtime to ~1e-6 in logit (tests check 1e-5)."""
    from sid_edge.runtime.openvino_backend import openvino_problem

    rows = {}
    if "int8" in precisions and openvino_problem("int8") is None:
        rows["openvino:int8"] = ("int8", "openvino")
    if "fp32" in precisions and openvino_problem("bf16") is None:
        rows["openvino:bf16"] = ("bf16", "openvino")
    return rows


def _remove_model(directory: Path, entry: ModelEntry) -> None:
    for f in entry.files():
        artifact_path(directory, f.file).unlink(missing_ok=True)


def add_precision_variants(
    artifact_dir: str | os.PathLike,
    precisions: Sequence[str],
    *,
    calibration_data: str | os.PathLike,
    calibration_split: str = "train",
    calibration_size: int | None = None,
    calibration_seed: int = 0,
    calibration_method: str = DEFAULT_CALIBRATION_METHOD,
    high_precision: str = "fp32",
    fidelity_data: str | os.PathLike | None = None,
    fidelity_split: str = "validation",
    fidelity_size: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: Callable[[str, int], Callable[[int], None]] | None = None,
    say: Callable[[str], None] = log.info,
    fidelity_backends: dict[str, tuple[str, str]] | None = None,
) -> dict:
    """Make the requested precisions of an artifact's FP32 graph, measure them, and rewrite its manifest.

    Args:
        artifact_dir: an artifact written by :func:`sid_edge.export.export_detector` (it must hold ``fp32``).
        precisions: any subset of :data:`PRECISIONS`; the artifact keeps exactly these (an FP32 graph not asked
            for is used as the source and reference, then removed).
        calibration_data: dataset for calibration (any form :func:`sid_edge.tools.datasets.read_labelled_images` reads).
        calibration_split, calibration_size, calibration_seed: the calibration draw (size default
            :func:`sid_edge.calibration.calibration_set.default_calibration_size`).
        calibration_method, high_precision: INT8 options (see :func:`sid_edge.calibration.int8.quantize_int8`).
        fidelity_data: held-out dataset (default: ``calibration_data``); ``fidelity_split`` its split (datasets
            without splits are used whole); ``fidelity_size`` caps it with a stratified draw (None: all).
        progress: ``progress(description, total) -> advance(n)`` for the long steps.
        say: receives one line per step.
        fidelity_backends: extra fidelity rows {label: (precision, backend)} (default :func:`other_backend_rows`:
            OpenVINO's INT8 and BF16 where OpenVINO runs them here; ``{}`` for none). Stored in the manifest as
            ``models[graph]["fidelity"]["held_out_backends"][name]``: ``models["int8"]...["openvino"]`` (the INT8
            graph on OpenVINO), ``models["fp32"]...["openvino-bf16"]`` (the FP32 graph with the BF16 hint).

    Returns the new manifest.

    Raises:
        ValueError: an unknown or empty precision list; bad calibration/fidelity data (from the readers).
        ManifestError: the artifact is missing, damaged, or has no FP32 model.
    """
    wanted = list(dict.fromkeys(precisions))
    unknown = [p for p in wanted if p not in PRECISIONS]
    if not wanted or unknown:
        raise ValueError(f"precisions must be a non-empty subset of {', '.join(PRECISIONS)}; got {', '.join(map(str, precisions))}")
    out = Path(artifact_dir)
    manifest = read_manifest(out)
    fp32 = model_entry(manifest, "fp32")
    fp32_path = artifact_path(out, fp32.file)
    external = bool(fp32.external_data)
    preprocessing: Preprocessing = manifest.preprocessing
    input_name = manifest.input.name

    calibration: CalibrationSet = build_calibration_set(
        calibration_data, preprocessing, size=calibration_size, seed=calibration_seed, split=calibration_split,
        cache_dir=cache_dir, progress=progress,
    )
    say(f"calibration set: {len(calibration)} images from {calibration_data}"
        + (" (cached)" if calibration.from_cache else "") + (f", {len(calibration.skipped)} undecodable" if calibration.skipped else ""))

    for precision, entry in manifest.models.items():  # variants of an earlier run are replaced, not left behind
        if precision != "fp32":
            _remove_model(out, entry)
    models = {"fp32": fp32}
    if "fp16" in wanted:
        from sid_edge.export.fp16 import convert_fp16

        say("FP16: converting with ModelOpt AutoCast")
        info = convert_fp16(fp32_path, out / model_file("fp16"), calibration.pixel_values, input_name=input_name,
                            use_external_data=external)
        models["fp16"] = _entry(out, "fp16", conversion={k: v for k, v in info.items() if k != "onnxruntime"},
                                onnxruntime=info["onnxruntime"])
    if "int8" in wanted:
        say(f"INT8: ModelOpt PTQ, {calibration_method} calibration on {len(calibration)} images")
        info = quantize_int8(fp32_path, out / model_file("int8"), calibration.pixel_values, method=calibration_method,
                             high_precision=high_precision, input_name=input_name,
                             use_external_data=external, progress=progress)
        models["int8"] = _entry(out, "int8", **int8_model_fields(info))
    libraries = {**manifest.libraries, "nvidia-modelopt": metadata.version("nvidia-modelopt")}
    # Written now: the runtime loads the variants from the manifest to measure them.
    set_models(out, models, calibration=Calibration.model_validate(calibration.summary()), libraries=libraries)

    held_out = held_out_set(fidelity_data or calibration_data, split=fidelity_split, exclude=calibration.image_ids,
                            size=fidelity_size, seed=calibration_seed)
    say(f"fidelity: {len(held_out.items)} held-out images ({held_out.description['excluded_calibration_images']} "
        f"calibration images excluded)")
    backends = other_backend_rows(list(models)) if fidelity_backends is None else dict(fidelity_backends)
    if backends:
        say("fidelity: also " + ", ".join(backends) + " against ONNX Runtime FP32")
    report, description = measure_fidelity(out, list(models), held_out, progress=progress, backends=backends)
    for precision, figures in report.items():
        if precision in backends:  # "openvino:int8" -> models["int8"]; "openvino:bf16" -> the FP32 graph it runs
            run_as, backend = backends[precision]
            graph = {"bf16": "fp32"}.get(run_as, run_as)
            name = backend if graph == run_as else f"{backend}-{run_as}"
            fidelity = models[graph].fidelity
            rows = dict(fidelity.held_out_backends)
            rows[name] = HeldOut.model_validate(figures)
            fidelity.held_out_backends = rows
            continue
        models[precision].fidelity.held_out = HeldOut.model_validate(figures)

    if "fp32" not in wanted:
        _remove_model(out, models.pop("fp32"))
    return set_models(out, {p: models[p] for p in PRECISIONS if p in models},
                      default_precision="fp32" if "fp32" in models else wanted[0],
                      fidelity_set=FidelitySet.model_validate(description))
