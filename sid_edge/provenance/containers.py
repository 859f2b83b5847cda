"""Bounded reads of the metadata an image file carries: PNG text chunks, XMP packets, EXIF fields.

Everything here treats the file as hostile: each read is capped in size and count (:class:`Limits`), compressed
text is inflated with a cap on the output (no zip bomb), and a malformed structure ends the walk with a note
instead of an exception. No pixel data is decoded.

PNG text chunks are walked here (chunk headers only; IDAT is skipped by length) rather than through Pillow
because Pillow reads only the chunks before the first IDAT without a full decode and allows a 64 MiB text total;
generation tools may write text after IDAT, and a scan wants a far smaller bound per file. EXIF comes from
Pillow's own parser (``Image.getexif``), which reads the header only.
"""

from __future__ import annotations

import io
import logging
import struct
import warnings
import zlib
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
XMP_PNG_KEY = "XML:com.adobe.xmp"


@dataclass(frozen=True)
class Limits:
    """Caps on what provenance reading may spend per file.

    Attributes:
        max_file_bytes: files larger than this are not read for provenance at all (bytes).
        max_text_bytes: one text chunk / XMP packet / EXIF string, after decompression (bytes); larger ones are
            skipped with a note.
        max_total_text_bytes: all text of one file together (bytes).
        max_chunks: PNG chunks walked per file.
        max_xmp_packets: XMP packets parsed per file.
    """

    max_file_bytes: int = 64 * 2**20
    max_text_bytes: int = 1 * 2**20
    max_total_text_bytes: int = 4 * 2**20
    max_chunks: int = 10_000
    max_xmp_packets: int = 4


@dataclass
class Metadata:
    """What a file carries beside its pixels.

    Attributes:
        text: PNG text chunks as (keyword, text) in file order (tEXt, zTXt, iTXt; the XMP iTXt is in ``xmp``).
        xmp: raw XMP packets (bytes), each at most ``Limits.max_text_bytes``.
        exif: selected EXIF fields by name (Software, ImageDescription, UserComment, Make, Model, Artist) as text.
        notes: what was skipped or malformed, in words (e.g. "PNG text chunk 'parameters' over 1048576 bytes:
            skipped").
    """

    text: list[tuple[str, str]] = field(default_factory=list)
    xmp: list[bytes] = field(default_factory=list)
    exif: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    png_exif: bytes | None = None  # the PNG eXIf chunk's body (TIFF-structured EXIF), when present


def _inflate(data: bytes, limit: int) -> bytes | None:
    """zlib-inflate at most ``limit`` bytes; None when the stream is larger or corrupt."""
    d = zlib.decompressobj()
    try:
        out = d.decompress(data, limit + 1)
    except zlib.error:
        return None
    return None if len(out) > limit else out


def _decode_text(raw: bytes, encoding: str) -> str:
    return raw.decode(encoding, errors="replace")


def png_text_chunks(data: bytes, limits: Limits, meta: Metadata) -> None:
    """Walk the PNG chunks of ``data`` (which starts with the PNG signature) and collect tEXt/zTXt/iTXt text into
    ``meta.text`` and XMP iTXt packets into ``meta.xmp``. Never raises: a broken structure ends the walk with a
    note. CRCs are not checked (a bad CRC does not make a claim more or less forgeable)."""
    pos, n, total = len(PNG_SIGNATURE), 0, 0
    end = len(data)
    while pos + 8 <= end:
        n += 1
        if n > limits.max_chunks:
            meta.notes.append(f"more than {limits.max_chunks} PNG chunks: stopped reading")
            return
        length, ctype = struct.unpack(">I4s", data[pos:pos + 8])
        body_start, body_end = pos + 8, pos + 8 + length
        if body_end + 4 > end:
            meta.notes.append(f"PNG chunk {ctype!r} runs past the end of the file: stopped reading")
            return
        pos = body_end + 4
        if ctype == b"IEND":
            return
        if ctype == b"eXIf" and meta.png_exif is None:
            if length <= limits.max_text_bytes:
                meta.png_exif = data[body_start:body_end]
            else:
                meta.notes.append(f"PNG eXIf chunk over {limits.max_text_bytes} bytes: skipped")
            continue
        if ctype not in (b"tEXt", b"zTXt", b"iTXt"):
            continue
        body = data[body_start:body_end]
        key_raw, sep, rest = body.partition(b"\0")
        key = _decode_text(key_raw[:79], "latin-1")
        if not sep:
            meta.notes.append(f"PNG {ctype.decode()} chunk without a keyword separator: ignored")
            continue
        if ctype == b"tEXt":
            raw = rest if len(rest) <= limits.max_text_bytes else None
            text_encoding = "latin-1"
        elif ctype == b"zTXt":
            raw = _inflate(rest[1:], limits.max_text_bytes) if rest[:1] == b"\0" else None
            text_encoding = "latin-1"
        else:  # iTXt: flag, method, language\0, translated keyword\0, text
            if len(rest) < 2:
                meta.notes.append(f"PNG iTXt chunk {key!r} is truncated: ignored")
                continue
            compressed, method = rest[0], rest[1]
            parts = rest[2:].split(b"\0", 2)
            if len(parts) < 3:
                meta.notes.append(f"PNG iTXt chunk {key!r} is malformed: ignored")
                continue
            payload = parts[2]
            if compressed:
                raw = _inflate(payload, limits.max_text_bytes) if method == 0 else None
            else:
                raw = payload if len(payload) <= limits.max_text_bytes else None
            text_encoding = "utf-8"
        if raw is None:
            meta.notes.append(f"PNG {ctype.decode()} chunk {key!r} is over {limits.max_text_bytes} bytes or "
                              "corrupt: skipped")
            continue
        total += len(raw)
        if total > limits.max_total_text_bytes:
            meta.notes.append(f"PNG text over {limits.max_total_text_bytes} bytes in total: stopped reading")
            return
        if key == XMP_PNG_KEY:
            meta.xmp.append(raw)
        else:
            meta.text.append((key, _decode_text(raw, text_encoding)))


def find_xmp_packets(data: bytes, limits: Limits, meta: Metadata) -> None:
    """Find uncompressed XMP packets (``<x:xmpmeta …</x:xmpmeta>``) anywhere in the file: JPEG APP1, WebP
    ``XMP `` chunks, TIFF tag 700, AVIF/HEIF items and uncompressed PNG iTXt all store them as plain bytes."""
    start = 0
    while len(meta.xmp) < limits.max_xmp_packets:
        i = data.find(b"<x:xmpmeta", start)
        if i < 0:
            return
        j = data.find(b"</x:xmpmeta>", i, i + limits.max_text_bytes + 64)
        if j < 0:
            meta.notes.append(f"XMP packet without an end within {limits.max_text_bytes} bytes: skipped")
            start = i + 10
            continue
        packet = data[i:j + len(b"</x:xmpmeta>")]
        if not any(packet in known for known in meta.xmp):  # e.g. already read from a PNG iTXt chunk
            meta.xmp.append(packet)
        start = j


#: EXIF tags read (name -> (IFD, tag)). UserComment lives in the Exif sub-IFD (0x8769).
EXIF_TAGS = {
    "Software": (None, 0x0131),
    "ImageDescription": (None, 0x010E),
    "Make": (None, 0x010F),
    "Model": (None, 0x0110),
    "Artist": (None, 0x013B),
    "UserComment": (0x8769, 0x9286),
}


def _exif_text(value, limit: int) -> str | None:
    if isinstance(value, bytes):
        raw = value[:limit]
        # UserComment: 8-byte character code, then the text (ASCII, UNICODE = UTF-16, or undefined).
        if raw[:8] == b"UNICODE\0":
            body = raw[8:]
            enc = "utf-16-be" if body[:1] == b"\0" else "utf-16-le"  # writers differ; a leading NUL means BE
            text = body.decode(enc, errors="replace")
        elif raw[:8] in (b"ASCII\0\0\0", b"\0" * 8, b"JIS\0\0\0\0\0"):
            text = raw[8:].decode("latin-1", errors="replace")
        else:
            text = raw.decode("utf-8", errors="replace")
    elif isinstance(value, str):
        text = value[:limit]
    else:
        return None
    text = text.replace("\0", "").strip()
    return text or None


def exif_fields(data: bytes, limits: Limits, meta: Metadata) -> None:
    """Read :data:`EXIF_TAGS` with Pillow's EXIF parser (header only, no pixel decode; for PNG the eXIf chunk found
    by :func:`png_text_chunks`, since Pillow's ``PngImageFile.getexif`` decodes the whole image to look for one
    after IDAT). Unreadable files or EXIF blocks add a note at most."""
    from PIL import Image

    def collect(exif) -> None:
        for name, (ifd, tag) in EXIF_TAGS.items():
            value = (exif.get_ifd(ifd) if ifd else exif).get(tag)
            text = _exif_text(value, limits.max_text_bytes)
            if text:
                meta.exif[name] = text

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if data.startswith(PNG_SIGNATURE):
                if meta.png_exif:
                    exif = Image.Exif()
                    exif.load(meta.png_exif)
                    collect(exif)
                return
            with Image.open(io.BytesIO(data)) as im:
                collect(im.getexif())
    except Image.DecompressionBombError:
        meta.notes.append("image header declares too many pixels for Pillow: EXIF not read")
    except Exception as e:  # noqa: BLE001 - hostile input: any parser failure is a note, never a crash
        log.debug("EXIF not readable: %s", e)
        meta.notes.append(f"EXIF not readable ({type(e).__name__})")


def read_metadata(data: bytes, limits: Limits) -> Metadata:
    """Everything :class:`Metadata` holds, read from a whole file's bytes within ``limits``. Never raises."""
    meta = Metadata()
    if data.startswith(PNG_SIGNATURE):
        png_text_chunks(data, limits, meta)
    find_xmp_packets(data, limits, meta)
    exif_fields(data, limits, meta)
    return meta
