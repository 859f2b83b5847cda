"""`sid-edge scan --ray [ADDRESS]`: the scan on Ray Data (flags added to `scan`; the work is in sid_edge.distributed)."""

from __future__ import annotations

import re
from pathlib import Path

from sid_edge.cli.common import EXIT_FAILURE, EXIT_OK, ModelError, UsageError, console, count

_ADDRESS = re.compile(r"^(local|auto|ray://[^\s]+|[A-Za-z0-9.\-\[\]:]+:\d{1,5})$")


def add_ray_args(s) -> None:
    g = s.add_argument_group(
        "many machines (Ray Data; needs the `ray` extra: pip install 'sid-edge[ray]')",
        "With --ray, PATH may also be @FILE (one path or URI per line), a parquet dataset (SynthCLIC layout; a "
        "folder's *.parquet files are read too), or an object-store URI (s3://bucket/prefix/, gs://…, file:///…). "
        "--out is required: results.csv/.jsonl (plus partitions in results.parquet/) or results.parquet. --resume "
        "skips inputs that have a row in those partitions. Provenance is read as without --ray.")
    g.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="run on Ray: without ADDRESS a local Ray instance; `auto`, `ray://HOST:10001` or HOST:PORT "
                        "joins a cluster (write --ray=ADDRESS, or put PATHs first)")
    g.add_argument("--actors", type=int, default=1, metavar="N",
                   help="inference actors, each loading the artifact once (default: %(default)s)")
    g.add_argument("--gpus-per-actor", type=float, default=None, metavar="G",
                   help="GPUs per actor (default: 1 when the cluster has GPUs, else 0)")
    g.add_argument("--cpus-per-actor", type=float, default=1.0, metavar="C",
                   help="CPUs per actor, also its ONNX Runtime threads (default: %(default)s)")
    g.add_argument("--part-rows", type=int, default=None, metavar="N",
                   help="rows per parquet partition; an interruption loses at most the unsaved rows (default: 4096)")


def run(args) -> int:
    try:
        import ray  # noqa: F401
        import pyarrow  # noqa: F401
    except ImportError:
        raise UsageError("--ray needs Ray Data: pip install 'sid-edge[ray]'") from None
    from sid_edge.artifact.manifest import ManifestError
    from sid_edge.distributed.inputs import InputError
    from sid_edge.distributed.results import ResultsError
    from sid_edge.distributed.scan import DEFAULT_PART_ROWS, ClusterError, IncompleteScan, ray_scan
    from sid_edge.runtime.images import DEFAULT_MAX_PIXELS

    if not _ADDRESS.match(args.ray):
        raise UsageError(f"--ray {args.ray}: not a Ray address (auto, ray://HOST:PORT, HOST:PORT); if it is a PATH, "
                         f"put it before --ray or write --ray=ADDRESS")
    if args.out is None:
        raise UsageError("--ray needs --out results.csv, results.jsonl or results.parquet")
    if args.model is None:
        raise UsageError("--ray needs --model DIR (the artifact folder, at the same path on every node)")
    for flag, value, low in (("--batch-size", args.batch_size, 1), ("--actors", args.actors, 1),
                             ("--part-rows", args.part_rows or 1, 1), ("--top-concepts", args.top_concepts, 0)):
        if value < low:
            raise UsageError(f"{flag} {value}: must be >= {low}")
    if args.cpus_per_actor <= 0 or (args.gpus_per_actor is not None and args.gpus_per_actor < 0):
        raise UsageError("--cpus-per-actor must be > 0 and --gpus-per-actor >= 0")
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise UsageError(f"--threshold {args.threshold}: must be in [0, 1] (it applies to p_synthetic)")
    if args.all_files:
        raise UsageError("--all-files is not supported with --ray (folders give rows to image files only)")
    provenance = None
    if not args.no_provenance:
        from sid_edge.provenance import ProvenanceReader

        if args.c2pa_trust is not None and not Path(args.c2pa_trust).is_file():
            raise UsageError(f"--c2pa-trust {args.c2pa_trust}: no such file")
        provenance = {"c2pa_trust": str(Path(args.c2pa_trust).absolute()) if args.c2pa_trust else None,
                      "check_watermark": bool(args.watermark)}
        try:  # checked here once, then each decode task builds its own reader
            reader = ProvenanceReader(**provenance)
        except ValueError as e:
            raise UsageError(str(e)) from e
        for kind, reason in reader.unavailable.items():
            console.print(f"provenance: {kind} not checked: {reason}", highlight=False, markup=False)
    elif args.c2pa_trust or args.watermark:
        raise UsageError("--c2pa-trust and --watermark need provenance; drop --no-provenance")
    try:
        s = ray_scan(args.paths, args.model, out=args.out, address=args.ray, actors=args.actors,
                     batch_size=args.batch_size, precision=args.precision, backend=args.backend,
                     allow_fallback=args.allow_fallback, threshold=args.threshold, top_concepts=args.top_concepts,
                     max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS, gpus_per_actor=args.gpus_per_actor,
                     cpus_per_actor=args.cpus_per_actor, resume=args.resume,
                     part_rows=args.part_rows or DEFAULT_PART_ROWS, progress=False if args.no_progress else None,
                     provenance=provenance)
    except ManifestError as e:
        raise ModelError(str(e)) from e
    except (InputError, ResultsError, ClusterError) as e:
        raise UsageError(str(e)) from e
    except IncompleteScan as e:
        console.print(f"error: {e}", highlight=False, markup=False)
        return EXIT_FAILURE
    for b in s.backends:
        console.print(f"backend: {b}", highlight=False, markup=False)
    faults = []
    if s.actor_restarts:
        faults.append(f"{count(s.actor_restarts, 'actor restart')}")
    if s.retried_rows:
        faults.append(f"{count(s.retried_rows, 'row')} scored again after a failure (duplicates dropped)")
    console.print(
        f"{count(s.files, 'file')}: {s.scored} scored ({s.synthetic} synthetic at threshold {s.threshold:g}), "
        f"{count(s.errors, 'error')}; {s.rows_this_run} this run"
        + (f", {s.resumed} from the earlier run" if s.resumed else "")
        + f" in {s.seconds:.1f} s ({s.images_per_second:.1f} images/s, {count(s.actors, 'actor')}); "
        + ("retried: " + ", ".join(faults) if faults else "nothing retried")
        + f"; results in {args.out}" + (f" and {s.parts}" if str(s.parts) != str(args.out) else ""),
        highlight=False, markup=False,
    )
    return EXIT_OK
