"""`sid-edge provenance`: every provenance signal of a few files, in full (no model needed)."""

from __future__ import annotations

from pathlib import Path

from sid_edge.cli.common import EXIT_OK, UsageError, count, stdout_console


def add_parser(sub) -> None:
    p = sub.add_parser(
        "provenance", help="show C2PA, IPTC, generator-metadata and watermark signals of images",
        description="Read the provenance signals of images (files, or folders searched recursively): C2PA content "
                    "credentials with their validation status, the IPTC digital source type in XMP, generation "
                    "parameters that tools write into PNG text chunks / EXIF / XMP, and Stable Diffusion's "
                    "invisible DWT-DCT watermark. Each signal says what it asserts and how far it can be trusted: "
                    "trusted (C2PA signer on the trust list), valid-untrusted (intact, unknown signer), invalid "
                    "(tampered or broken manifest), unsigned (a claim anyone can forge or strip), statistical "
                    "(watermark bit agreement). No signal is not evidence of a real photograph.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files, or folders searched recursively")
    p.add_argument("--c2pa-trust", default=None, metavar="FILE",
                   help="PEM file of C2PA trust anchors (default: none; valid signatures read 'valid-untrusted')")
    p.add_argument("--no-watermark", action="store_true", help="skip the watermark check (it decodes the pixels)")
    p.add_argument("--json", action="store_true",
                   help="one JSON object per file on stdout: {path, signals: [...], notes: [...]}")


def run(args) -> int:
    import json

    from sid_edge.provenance import ProvenanceReader
    from sid_edge.runtime.images import discover_images
    from sid_edge.runtime.scan import _path_bytes, path_text

    missing = [p for p in args.paths if not Path(p).exists() and not Path(p).is_symlink()]
    if missing:
        raise UsageError("no such file or folder: " + ", ".join(missing))
    try:
        reader = ProvenanceReader(args.c2pa_trust, check_watermark=not args.no_watermark)
    except ValueError as e:
        raise UsageError(str(e)) from e
    files = [Path(p) if Path(p).is_file() or Path(p).is_symlink() else None for p in args.paths]
    paths: list[Path] = []
    for given, f in zip(args.paths, files):
        paths += [f] if f is not None else discover_images([given])
    out = stdout_console()
    if not args.json:
        for kind, reason in reader.unavailable.items():
            out.print(f"[dim]{kind} not checked: {reason}[/]", highlight=False)
    with_signals = 0
    for path in paths:
        result = reader.read(path)
        with_signals += bool(result.signals)
        if args.json:
            raw = _path_bytes(path)  # a non-UTF-8 name: \xNN escapes in "path", the exact bytes here (as scan rows)
            print(json.dumps({"path": path_text(path), **({"path_bytes": raw} if raw else {}), **result.to_dict()},
                             ensure_ascii=False))
            continue
        _print(out, path, result)
    if not args.json:
        out.print(f"{count(len(paths), 'file')}, {with_signals} with provenance signals; checks: "
                  + ", ".join(reader.checks), highlight=False)
    return EXIT_OK


def _print(out, path, result) -> None:
    from rich.markup import escape

    from sid_edge.runtime.scan import path_text

    out.print(f"[bold]{escape(path_text(path))}[/]", highlight=False)
    if not result.signals:
        out.print("  no provenance signals", highlight=False)
    for s in result.signals:
        out.print(f"  [cyan]{s.kind}[/] [{_colour(s.trust)}]{s.trust}[/]: {escape(s.assertion)}", highlight=False)
        out.print(f"    source: {escape(s.source)}", highlight=False)
        for key, value in s.details.items():
            if value not in (None, [], {}, ""):
                out.print(f"    {key}: {escape(str(value))[:300]}", highlight=False)
    for note in result.notes:
        out.print(f"  [dim]note: {escape(note)}[/]", highlight=False)


def _colour(trust: str) -> str:
    return {"trusted": "green", "valid-untrusted": "yellow", "invalid": "red", "unsigned": "magenta"}.get(trust, "blue")
