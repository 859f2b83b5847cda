"""`sid-edge evaluate`: AP/mAP per dataset and generator, the detector x dataset matrix, thresholds."""

from __future__ import annotations

from pathlib import Path

from rich.markup import escape

from sid_edge.cli.common import (
    BACKEND_CHOICES,
    EXIT_OK,
    ModelError,
    prepare_report_dir,
    PRECISIONS,
    UsageError,
    console,
    stdout_console,
)



def add_parser(sub) -> None:
    v = sub.add_parser("evaluate", help="AP per dataset and generator, the cross-dataset matrix, plots, thresholds",
                       description="Score labelled datasets with one or more detector artifacts and report, for each "
                                   "pair: mAP (mean per-generator AP, the paper's metric) and pooled AP, accuracy and "
                                   "balanced accuracy at the artifact's threshold, real and synthetic accuracy, and AP per "
                                   "generator (source) against the real images; with several artifacts, the detector x "
                                   "dataset matrix. Writes REPORT_DIR/report.md, report.json, scores.csv and PNG plots. "
                                   "Backbone features are computed once per dataset and backbone and shared by every "
                                   "FP32 orthogonal/linear head (cached by image content). No PyTorch needed; needs "
                                   "scikit-learn and matplotlib (pip install 'sid-edge[evaluate]').")
    v.add_argument("models", nargs="+", metavar="DIR",
                   help="detector artifacts; NAME=DIR names one (default name: the folder's)")
    v.add_argument("--data", nargs="+", default=[], metavar="DATA",
                   help="labelled datasets (folder, CSV, parquet, save_to_disk folder, hf:OWNER/NAME); NAME=DATA names "
                        "one (default name: the path's stem)")
    v.add_argument("--split", default="test", help="split to evaluate (datasets without splits are used whole; default: %(default)s)")
    v.add_argument("--precision", default=None, choices=PRECISIONS, type=str.lower,
                   help="model variant of every artifact (default: each artifact's default, fp32 when present)")
    v.add_argument("--out", default="evaluation", metavar="REPORT_DIR", help="report folder, created or updated (default: %(default)s)")
    v.add_argument("--batch-size", type=int, default=8, help="images per inference batch (default: %(default)s)")
    v.add_argument("--backend", default="auto", choices=BACKEND_CHOICES, help="inference backend (default: %(default)s)")
    v.add_argument("--workers", type=int, default=None, help="decoder threads (default: one per core, at least 2)")
    v.add_argument("--pairing", default="auto", choices=["auto", "shared", "matched"],
                   help="real images each generator's AP is computed against: all of the split (shared), those of the "
                        "same source (matched, CNNSpot's convention), or matched when real images carry generator "
                        "names as their source (auto, default)")
    v.add_argument("--no-cache", action="store_true", help="neither read nor write the per-image cache")
    v.add_argument("--no-progress", action="store_true", help="no progress bars")
    pv = v.add_argument_group("provenance")
    pv.add_argument("--provenance", action="store_true",
                    help="also read each image's provenance signals (C2PA, IPTC, generator metadata) and report, per "
                         "dataset, how many images carry each kind and how the scores distribute among them "
                         "(REPORT_DIR/provenance.json)")
    pv.add_argument("--c2pa-trust", default=None, metavar="FILE", help="PEM file of C2PA trust anchors (with --provenance)")
    rb = v.add_argument_group("robustness (how far to trust a verdict)")
    rb.add_argument("--perturb", nargs="*", default=None, metavar="SPEC",
                    help="also score every dataset under each deterministic perturbation and report AP, accuracy, the "
                         "flip rate of verdicts and mean/max |Δp| against the unperturbed images: jpeg:Q, webp:Q, "
                         "resize:F, thumbnail:N, crop:F, gray, blur:SIGMA, screenshot[:F] (no SPEC: jpeg:90 jpeg:75 "
                         "jpeg:40 webp:80 resize:0.5 resize:0.25 thumbnail:128 crop:0.8 gray blur:1.0 screenshot)")
    rb.add_argument("--write-band", action="store_true",
                    help="with --perturb: write into each artifact's manifest the uncertain band, the p_synthetic range "
                         "around the threshold whose verdicts flipped under the measured perturbations; scan and the "
                         "API then report 'uncertain' inside it")
    rb.add_argument("--band-coverage", type=float, default=1.0, metavar="Q",
                    help="share of the flips on each side of the threshold the band must hold, in (0, 1] "
                         "(default: %(default)s, every flip)")
    rb.add_argument("--no-bias-check", action="store_true",
                    help="do not check whether labels are predictable from file format, JPEG quality, size or EXIF")
    th = v.add_argument_group("threshold at a target false-positive rate")
    th.add_argument("--threshold-from", default=None, metavar="DATA",
                    help="choose each artifact's threshold so that at most --target-fpr of DATA's real images are "
                         "flagged; the evaluation then uses it (--data may be omitted)")
    th.add_argument("--threshold-split", default="validation", metavar="SPLIT",
                    help="split of --threshold-from DATA (default: %(default)s; never choose it on the test split)")
    th.add_argument("--target-fpr", type=float, default=0.01, metavar="RATE",
                    help="false-positive rate on real images, in [0, 1] (default: %(default)s)")
    th.add_argument("--write-threshold", action="store_true",
                    help="write the chosen threshold into each artifact's manifest (recording data, split, target FPR "
                         "and counts)")


def run(args) -> int:
    from sid_edge.tools.datasets import read_labelled_images
    from sid_edge.artifact.manifest import ManifestError

    if not args.data and not args.threshold_from:
        raise UsageError("nothing to do: give --data DATA… to evaluate on, or --threshold-from DATA to set thresholds")
    if args.write_threshold and not args.threshold_from:
        raise UsageError("--write-threshold needs --threshold-from DATA")
    if not 0.0 <= args.target_fpr <= 1.0:
        raise UsageError(f"--target-fpr {args.target_fpr}: must be in [0, 1]")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size {args.batch_size}: must be >= 1")
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers {args.workers}: must be >= 1")
    if args.c2pa_trust and not args.provenance:
        raise UsageError("--c2pa-trust needs --provenance")
    perturbations = []
    if args.perturb is not None:
        from sid_edge.robustness import DEFAULT_PERTURBATIONS, parse_perturbations

        try:
            perturbations = parse_perturbations(args.perturb or DEFAULT_PERTURBATIONS)
        except ValueError as e:
            raise UsageError(str(e)) from e
    if args.write_band and not perturbations:
        raise UsageError("--write-band needs --perturb (the band comes from the measured flips)")
    if args.write_band and not args.data:
        raise UsageError("--write-band needs --data DATA… to measure the flips on")
    if args.write_band and args.threshold_from and not args.write_threshold:
        raise UsageError("--write-band with --threshold-from needs --write-threshold (the band belongs to the "
                         "threshold the manifest keeps)")
    if not 0.0 < args.band_coverage <= 1.0:
        raise UsageError(f"--band-coverage {args.band_coverage}: must be in (0, 1]")
    prepare_report_dir(args.out)
    reader = None
    if args.provenance:
        from sid_edge.provenance import ProvenanceReader

        try:
            reader = ProvenanceReader(args.c2pa_trust)
        except ValueError as e:
            raise UsageError(str(e)) from e
    try:
        import matplotlib  # noqa: F401  (clear messages instead of a traceback after minutes of scoring)
        import sklearn  # noqa: F401

        from sid_edge.tools.evaluation import runner as ev
    except ImportError as e:
        raise UsageError(f"sid-edge evaluate needs scikit-learn and matplotlib: pip install 'sid-edge[evaluate]' ({e})") from e
    from sid_edge.runtime.progress import progress_tasks

    try:
        models = ev.parse_named(args.models, "detector")
        datasets = [ev.NamedData(n, d) for n, d in ev.parse_named(args.data, "dataset")]
    except ValueError as e:
        raise UsageError(str(e)) from e
    checks = [(d.data, args.split) for d in datasets]
    if args.threshold_from:
        checks.append((args.threshold_from, args.threshold_split))
    for data, split in checks:  # fail fast (exit 2) on unreadable data, before any model runs
        try:
            read_labelled_images(data, split=split)
        except (FileNotFoundError, ValueError) as e:
            raise UsageError(str(e)) from e
    try:
        detectors = [ev.load_detector(name, path, args.precision) for name, path in models]
    except ManifestError as e:
        raise ModelError(str(e)) from e
    for d in detectors:
        how = "head on shared features" if d.scoring == "features+head" else f"own graph ({d.scoring_reason})"
        console.print(f"{d.name}: {d.directory} ({d.precision}), {how}, threshold {d.threshold:g}", highlight=False)
    options = dict(batch_size=args.batch_size, backend=args.backend, workers=args.workers,
                   use_cache=not args.no_cache)
    try:
        with progress_tasks(enabled=False if args.no_progress else None) as new_task:
            thresholds = None
            if args.threshold_from:
                name = ev.default_name(args.threshold_from)
                choices = ev.choose_thresholds(detectors, ev.NamedData(name, args.threshold_from),
                                               split=args.threshold_split, target_fpr=args.target_fpr,
                                               progress=new_task, **options)
                thresholds = {k: c.threshold for k, c in choices.items()}
            if args.write_threshold and args.threshold_from:  # before the evaluation: a band belongs to this threshold
                for d in detectors:
                    path = ev.write_threshold(d, choices[d.name])
                    console.print(f"threshold {choices[d.name].threshold:.6g} written to {path}", highlight=False)
            result = ev.evaluate(detectors, datasets, split=args.split, thresholds=thresholds, pairing=args.pairing,
                                 progress=new_task, perturbations=perturbations, **options) if datasets else None
            if reader is not None and result is not None:
                from sid_edge.provenance import evaluation as pe

                signals = {d.name: pe.read_signals(read_labelled_images(d.data, split=args.split), reader, new_task)
                           for d in datasets}
                provenance_groups = pe.summarize(result, signals)
    except (ManifestError, ValueError, RuntimeError) as e:  # BackendUnavailable is a ValueError
        raise ModelError(str(e)) from e
    out = stdout_console()
    if args.threshold_from:
        out.print(_threshold_table(choices.values()))
        for line in threshold_warnings(choices.values(), args.threshold_from, args.threshold_split,
                                       [(d.data, args.split) for d in datasets]):
            console.print(f"[yellow]warning:[/] {escape(line)}", highlight=False)
    if not args.no_bias_check and datasets:
        _bias_warnings(datasets, args.split)
    if result is None:
        path = _write_threshold_report(choices.values(), args.out)
        console.print(f"thresholds written to {path} (+ report.json)", highlight=False)
        return EXIT_OK
    result.threshold_choices = choices if args.threshold_from else {}
    out.print(_matrix_table(result))
    out.print(_metrics_table(result))
    for key, s in result.scored.items():
        for line in s.notes()[:-1]:  # exclusions and failures; where scores came from is in the report
            console.print(f"[yellow]{key[0]} on {key[1]}:[/] {line}", highlight=False)
    if reader is not None:
        out.print(_provenance_table(provenance_groups))
        for kind, reason in reader.unavailable.items():
            console.print(f"provenance: {kind} not checked: {reason}", highlight=False)
        pe.write_summary(provenance_groups, args.out)
    if result.perturbed:
        from sid_edge.tools.evaluation import perturbed as pt

        out.print(_perturbed_table(result))
        bands = pt.bands(result.perturbed, args.band_coverage)
        for d in detectors:
            b = bands[d.name]
            console.print(f"{d.name}: uncertain band [{b.low:.6g}, {b.high:.6g}] around threshold {b.threshold:.6g} "
                          f"({b.flips} of {b.pairs} image×perturbation pairs flipped)", highlight=False)
            if args.write_band:
                try:
                    path = pt.write_band(d.directory, b, [r for r in result.perturbed if r.detector == d.name],
                                         [x.data for x in datasets])
                except ManifestError as e:
                    raise ModelError(str(e)) from e
                console.print(f"uncertain band written to {path}", highlight=False)
    files = ev.write_report(result, args.out, band_coverage=args.band_coverage)
    console.print(f"report written to {Path(args.out) / 'report.md'} (+ report.json, scores.csv, "
                  f"{sum(name.endswith('.png') for name in files)} plots)", highlight=False)
    return EXIT_OK


def _bias_warnings(datasets, split) -> None:
    from sid_edge.robustness.bias import format_bias
    from sid_edge.tools.datasets import read_labelled_images

    for d in datasets:
        for line in format_bias(read_labelled_images(d.data, split=split)):
            console.print(f"[yellow]warning[/] {d.name}: {line}", highlight=False)


def _perturbed_table(result):
    from rich.table import Table

    table = Table("detector", "dataset", "perturbation", "n", "AP", "acc.", "flip rate", "mean |Δp|", "max |Δp|",
                  title="Under perturbation (flips against the unperturbed verdicts)")
    for r in result.perturbed:
        table.add_row(r.detector, r.dataset, r.perturbation.name, str(r.metrics.n), _fmt3(r.metrics.ap),
                      _fmt3(r.metrics.accuracy), _fmt3(r.flips.flip_rate), _fmt3(r.flips.mean_abs_dp),
                      _fmt3(r.flips.max_abs_dp))
    return table


def _threshold_table(choices):
    from rich.table import Table

    table = Table("detector", "threshold", "target FPR", "FPR reached", "TPR", "real", "synthetic",
                  title="Thresholds at the target false-positive rate on real images")
    for c in choices:
        table.add_row(c.detector, f"{c.threshold:.6g}", f"{c.target_fpr:g}", f"{c.achieved_fpr:.4f}",
                      "–" if c.tpr != c.tpr else f"{c.tpr:.4f}", str(c.n_real), str(c.n_synthetic))
    return table


def _provenance_table(groups):
    from rich.table import Table

    table = Table("dataset", "images with", "n", "real", "synth.", "detector", "mean p", "median p", "flagged",
                  title="Provenance signals and the CLIP score (flagged: share at or above the threshold)")
    for g in groups:
        for i, s in enumerate(g.scores):
            first = (g.dataset, g.group, str(g.n), str(g.n_real), str(g.n_synthetic))
            table.add_row(*(first if i == 0 else ("",) * 5), s.detector, _fmt3(s.mean_p), _fmt3(s.median_p),
                          _fmt3(s.flagged))
    return table


def _fmt3(v) -> str:
    return "–" if v is None or v != v else f"{v:.3f}"


def _matrix_table(result):
    from rich.table import Table

    table = Table("detector", *result.datasets, title="mAP (pooled AP), detector × dataset")
    maps, aps = result.matrix("map"), result.matrix("ap")
    for i, det in enumerate(result.detectors):
        table.add_row(det, *(f"{_fmt3(maps[i, j])} ({_fmt3(aps[i, j])})" for j in range(len(result.datasets))))
    return table


def _metrics_table(result):
    from rich.table import Table

    table = Table("detector", "dataset", "n", "real", "synth.", "mAP", "AP", "acc.", "bal. acc.", "real acc.",
                  "synth. acc.", "threshold", title=f"Metrics ({_split_text(result)}) at each detector's threshold")
    for (det, ds), m in result.metrics.items():
        table.add_row(det, ds, str(m.n), str(m.n_real), str(m.n_synthetic), _fmt3(m.map), _fmt3(m.ap),
                      _fmt3(m.accuracy), _fmt3(m.balanced_accuracy), _fmt3(m.real_accuracy),
                      _fmt3(m.synthetic_accuracy), f"{m.threshold:.4g}")
    return table


def threshold_warnings(choices, data: str, split: str, evaluated: list[tuple[str, str]]) -> list[str]:
    """Warnings about chosen thresholds: a target FPR finer than the real images can resolve (FPR moves in steps
    of 1/n_real), and a threshold chosen on the very images it is then evaluated on."""
    from sid_edge.tools.datasets import dataset_location, dataset_splits, read_labelled_images

    lines = []
    for c in choices:
        if c.n_real and 0 < c.target_fpr < 1.0 / c.n_real:
            lines.append(f"{c.detector}: a target FPR of {c.target_fpr:g} cannot be resolved with {c.n_real} real "
                         f"images (the FPR moves in steps of 1/{c.n_real} = {1 / c.n_real:.3g}); use more real images")
    try:
        pooled = not dataset_splits(read_labelled_images(data, split=None))
    except (OSError, ValueError):
        pooled = False
    here = dataset_location(data)
    for other, other_split in evaluated:
        if dataset_location(other) == here and (pooled or other_split == split):
            lines.append(f"the threshold is chosen on {data} and evaluated on the same images"
                         + (" (the dataset has no splits)" if pooled else f" (split {split})")
                         + ": the accuracy at that threshold is optimistic; choose it on a validation split")
    return lines


def _write_threshold_report(choices, out_dir: str):
    import json
    from pathlib import Path

    from sid_edge.artifact.files import write_text_atomic

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = [c.__dict__ | {"tpr": None if c.tpr != c.tpr else c.tpr} for c in choices]
    write_text_atomic(out / "report.json", json.dumps({"thresholds": rows}, indent=2) + "\n")
    lines = ["# Thresholds at a target false-positive rate", "",
             "| detector | threshold | target FPR | FPR reached | TPR | real | synthetic | data |", "|---|---|---|---|---|---|---|---|"]
    for c in choices:
        tpr = "–" if c.tpr != c.tpr else f"{c.tpr:.4f}"
        lines.append(f"| {c.detector} | {c.threshold:.6g} | {c.target_fpr:g} | {c.achieved_fpr:.4f} | {tpr} | {c.n_real} | "
                     f"{c.n_synthetic} | {c.data} ({c.split or 'all'}) |")
    return write_text_atomic(out / "report.md", "\n".join(lines) + "\n")


def _split_text(result) -> str:
    """"split test", or "whole datasets (no splits)" when no dataset had the split asked for."""
    splits = {s.split for s in result.scored.values()}
    if splits == {None}:
        return "whole datasets: they have no splits"
    return f"split {result.split}" + (" (datasets without splits used whole)" if None in splits else "")
