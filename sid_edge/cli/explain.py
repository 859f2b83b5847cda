"""`sid-edge explain`: a report on why a detector decides as it does."""

from __future__ import annotations


from sid_edge.cli.common import (
    EXIT_OK,
    ModelError,
    prepare_report_dir,
    UsageError,
    console,
)



def add_parser(sub) -> None:
    x = sub.add_parser("explain", help="explain a detector in words: head directions, orthogonality, image reasons",
                       description="Write REPORT_DIR/report.md (+ report.json) with PNG charts: for each head direction "
                                   "the most aligned and most opposed concepts, the directions' Gram matrix, and for "
                                   "the given images the concepts that pushed their score up or down. Needs an "
                                   "artifact exported with a vocabulary, and matplotlib.")
    x.add_argument("model", metavar="DIR", help="detector artifact")
    x.add_argument("--images", nargs="*", default=[], metavar="IMG", help="images or folders to explain")
    x.add_argument("--out", required=True, metavar="REPORT_DIR", help="report folder (created)")
    x.add_argument("--top", type=int, default=8, metavar="N", help="concepts per list (default: %(default)s)")
    x.add_argument("--backend", default="auto", choices=["auto", "cpu", "cuda"], help="inference backend for the images (default: %(default)s)")


def run(args) -> int:
    from rich.markup import escape

    from sid_edge.runtime.images import discover_images
    from sid_edge.runtime.scan import path_text
    from sid_edge.artifact.manifest import ManifestError

    if args.top < 1:
        raise UsageError(f"--top {args.top}: must be >= 1")
    try:
        images = discover_images(args.images)
    except FileNotFoundError as e:
        raise UsageError(str(e)) from e
    try:
        from sid_edge.tools.explain import explain
        import matplotlib  # noqa: F401  (a clear message below instead of a traceback mid-report)
    except ImportError as e:
        raise UsageError(f"sid-edge explain needs matplotlib: pip install 'sid-edge[explain]' ({e})") from e
    prepare_report_dir(args.out)
    with console.status("Writing the explanation report…"):
        try:
            report = explain(args.model, args.out, images, top=args.top, backend=args.backend)
        except (ManifestError, ValueError) as e:
            raise ModelError(str(e)) from e
    failed = [img for img in report.images if img.error is not None]
    for img in failed:
        console.print(f"[yellow]skipped[/] {escape(path_text(img.source))}: {escape(img.error)}", highlight=False)
    console.print(f"report written to {report.markdown} ({len(report.charts)} charts: {len(report.directions)} "
                  f"directions, {len(report.images) - len(failed)} images)", highlight=False)
    return EXIT_OK
