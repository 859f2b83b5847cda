"""Image decoding and CLIP preprocessing for the sid-edge runtime.

This module is part of the edge runtime: it imports only the standard library, numpy and Pillow (never torch,
torchvision or open_clip), yet reproduces the original pipelines exactly (clip-cues' torchvision transform,
Hugging Face's CLIPImageProcessor, open_clip's inference transform; see :func:`preprocess`).

Two halves:

* :func:`decode_image` turns a file or a byte string into a fully loaded mode-"RGB" PIL image, or raises
  :class:`ImageDecodeError` with a short human reason. A folder scan turns each such error into an error row.
* :class:`Preprocessing` (the rule, written to the artifact manifest) and :func:`preprocess` turn an RGB image into
  the float32 ``[3, size, size]`` array the ONNX graph takes.
"""

from __future__ import annotations

import io
import os
import stat
import struct
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from sid_edge.artifact.preprocessing import Preprocessing

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "ImageDecodeError",
    "Preprocessing",
    "decode_image",
    "discover_images",
    "load_and_preprocess",
    "preprocess",
]

#: Decompression-bomb limit in pixels (width * height): Pillow's own default ``Image.MAX_IMAGE_PIXELS``.
DEFAULT_MAX_PIXELS: int = 89_478_485
#: Largest image file read (bytes): bounds what one hostile file can make a reader or a hasher do.
MAX_FILE_BYTES: int = 1 << 30
#: Largest long:short side ratio preprocessed. The shortest side goes to the model's size S, so the resize works
#: on S x (S * ratio) pixels: a 20000x1 strip (143 bytes as PNG) would need a 1,280,000x64 intermediate at S=64 and
#: 6,720,000x336 (6.8 GB in RGB) at S=336. Panoramas stay well below 32:1.
MAX_ASPECT_RATIO: float = 32.0

Source = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview]


def _register_heif() -> bool:
    # HEIC/HEIF is what phones upload; pillow-heif adds it to Pillow (a runtime dependency, optional at import).
    try:
        import pillow_heif
    except ImportError:
        return False
    pillow_heif.register_heif_opener()
    return True


_HEIF = _register_heif()


def _image_extensions() -> frozenset[str]:
    # Raster formats a photo or generated image arrives in. Codec-backed formats are listed only when this Pillow
    # build can actually decode them, so a scan never collects files it is bound to fail on for lack of a codec.
    exts = {
        ".jpg", ".jpeg", ".jpe", ".jfif", ".mpo",  # JPEG (MPO: multi-picture JPEG from cameras)
        ".png", ".apng",
        ".bmp", ".dib",
        ".tif", ".tiff",
        ".gif",
        ".ppm", ".pgm", ".pbm", ".pnm",
    }
    if _HEIF:
        exts |= {".heic", ".heif", ".hif"}
    try:
        from PIL import features

        if features.check_module("webp"):
            exts |= {".webp"}
        if features.check_module("avif"):
            exts |= {".avif", ".avifs"}
        if features.check_codec("jpg_2000"):
            exts |= {".jp2", ".j2k", ".jpc", ".jpf", ".jpx", ".j2c"}
    except Exception:  # pragma: no cover - a stripped Pillow build; keep the always-built formats
        pass
    return frozenset(exts)


#: File suffixes (lower case, with the dot) that :func:`discover_images` collects when walking a directory.
IMAGE_EXTENSIONS: frozenset[str] = _image_extensions()


class ImageDecodeError(Exception):
    """An image that cannot be turned into pixels.

    Attributes:
        path: the file path as ``str``, or ``None`` when the source was a byte string.
        reason: short human text, e.g. ``'empty file'``, ``'truncated image data'``,
            ``'not an image (unrecognised format)'``, ``'no pixel data (header only)'``,
            ``'file not found (dangling link?)'``,
            ``'decompression bomb: 20000x20000 = 400000000 pixels exceeds the limit of 89478485'``.

    ``str(e)`` is ``f"{path}: {reason}"`` (``"<bytes>: {reason}"`` when ``path`` is None).
    """

    def __init__(self, path: str | None, reason: str):
        # Both values go to Exception.args so the error pickles across process pools.
        super().__init__(path, reason)
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.path if self.path is not None else '<bytes>'}: {self.reason}"


# --------------------------------------------------------------------------------------------------------------
# decoding
# --------------------------------------------------------------------------------------------------------------

# Leading bytes of formats we can name when Pillow cannot even parse the header (used for error reasons only).
_SIGNATURES: tuple[tuple[bytes, int, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", 0, "PNG"),
    (b"\xff\xd8\xff", 0, "JPEG"),
    (b"GIF87a", 0, "GIF"),
    (b"GIF89a", 0, "GIF"),
    (b"II*\x00", 0, "TIFF"),
    (b"MM\x00*", 0, "TIFF"),
    (b"WEBP", 8, "WebP"),
    (b"BM", 0, "BMP"),
    (b"ftypavif", 4, "AVIF"),
    (b"ftypavis", 4, "AVIF"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", 0, "JPEG 2000"),
    (b"\xff\x4f\xff\x51", 0, "JPEG 2000"),
)

_BMP_DIB_SIZES = (12, 40, 52, 56, 64, 108, 124)
_INT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


#: Pillow plugins never used to decode: EPS hands the file to Ghostscript (an external PostScript interpreter, a
#: long record of code-execution flaws) when it loads pixels. A hostile upload named ``x.png`` reaches the decoder
#: whatever its name, so the exclusion is by format, not by suffix.
EXCLUDED_FORMATS: frozenset[str] = frozenset({"EPS"})
_POSTSCRIPT = (b"%!PS", b"\xc5\xd0\xd3\xc6")  # PostScript/EPS text, DOS EPS binary header


def decoder_formats() -> list[str]:
    """The Pillow formats :func:`decode_image` tries (every registered plugin but :data:`EXCLUDED_FORMATS`)."""
    Image.init()
    return [f for f in Image.ID if f not in EXCLUDED_FORMATS]


def _sniff_format(prefix: bytes) -> str | None:
    for magic, offset, name in _SIGNATURES:
        if prefix[offset : offset + len(magic)] == magic:
            # "BM" alone is too weak (text can start with it): also require a known DIB header size.
            if name == "BMP" and (len(prefix) < 18 or struct.unpack("<I", prefix[14:18])[0] not in _BMP_DIB_SIZES):
                continue
            return name
    return None


def _png_pixel_state(fp: io.BufferedIOBase | io.BytesIO, size: int) -> str:
    """Walk PNG chunks: 'header_only' if the file ends (or IEND comes) before any IDAT byte, else 'has_data'/'corrupt'."""
    pos = 8
    fp.seek(pos)
    while True:
        hdr = fp.read(8)
        if len(hdr) < 8:
            return "header_only"
        length, ctype = struct.unpack(">I4s", hdr)
        if ctype == b"IDAT":
            return "has_data" if length > 0 and pos + 8 < size else "header_only"
        if ctype == b"IEND":
            return "header_only"
        if not ctype.isalpha():
            return "corrupt"
        pos += 12 + length  # length + type + data + crc
        if pos > size:
            return "header_only"
        fp.seek(pos)


def _jpeg_pixel_state(fp: io.BufferedIOBase | io.BytesIO, size: int) -> str:
    """Walk JPEG markers: 'header_only' if the file ends before any entropy-coded byte after SOS."""
    fp.seek(2)  # past SOI
    while True:
        b = fp.read(1)
        if not b:
            return "header_only"
        if b != b"\xff":
            return "corrupt"
        m = fp.read(1)
        while m == b"\xff":  # fill bytes
            m = fp.read(1)
        if not m:
            return "header_only"
        marker = m[0]
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # markers without a length field
            continue
        if marker == 0xD9:  # EOI before any scan
            return "header_only"
        ln = fp.read(2)
        if len(ln) < 2:
            return "header_only"
        (length,) = struct.unpack(">H", ln)
        if length < 2:
            return "corrupt"
        end = fp.tell() + length - 2
        if marker == 0xDA:  # SOS: scan data follows its header
            return "has_data" if end < size else "header_only"
        if end > size:
            return "header_only"
        fp.seek(end)


def _is_header_only(fp, size: int, fmt: str | None, im: Image.Image | None) -> bool:
    try:
        if fmt == "PNG" and _png_pixel_state(fp, size) == "header_only":
            return True
        if fmt == "JPEG" and _jpeg_pixel_state(fp, size) == "header_only":
            return True
    except Exception:
        pass
    if im is not None:
        # Generic rule for tile-based plugins (BMP, GIF, TIFF, PNG, ...): pixel data starts at the first tile's
        # offset; offset 0 means "the codec reads the whole stream" (JPEG, WebP) and tells nothing.
        offsets = [t[2] for t in getattr(im, "tile", None) or () if t[2]]
        if offsets and min(offsets) >= size:
            return True
    return False


def _bomb_reason(width: int, height: int, limit: int) -> str:
    return f"decompression bomb: {width}x{height} = {width * height} pixels exceeds the limit of {limit}"


def _size_bypassing_pillow_bomb_check(fp, prefix: bytes) -> tuple[int, int] | None:
    """Header size of an image Pillow refused as a bomb, read with the same plugin registry ``Image.open`` uses.

    ``Image.open`` checks the pixel count against its *global* limit right after parsing the header; calling the
    plugin factory directly reads the same header without that check (and without decoding), so the error can name
    the dimensions. Never changes Pillow's global state.
    """
    for fmt in decoder_formats():
        try:
            factory, accept = Image.OPEN[fmt]
            result = not accept or accept(prefix)
            if not result or isinstance(result, str):
                continue
            fp.seek(0)
            return factory(fp, None).size
        except Exception:
            continue
    return None


def _bomb_error(path: str | None, fp, prefix: bytes, max_pixels: int | None, exc: BaseException) -> ImageDecodeError:
    dims = _size_bypassing_pillow_bomb_check(fp, prefix)
    pillow_limit = Image.MAX_IMAGE_PIXELS or 0
    pillow_limit = 2 * pillow_limit if isinstance(exc, Image.DecompressionBombError) else pillow_limit
    if dims is None:
        return ImageDecodeError(path, f"decompression bomb: {exc}")
    w, h = dims
    # Name the limit that was actually exceeded: ours, or Pillow's global one when max_pixels was set higher.
    limit = max_pixels if max_pixels is not None and w * h > max_pixels else pillow_limit
    return ImageDecodeError(path, _bomb_reason(w, h, limit))


def _scale_to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    """Integer/float single-channel pixels -> uint8, scaled (not clamped). Rule documented in decode_image."""
    a = arr.astype(np.float64)  # also normalises big-endian I;16B
    if mode == "F":
        a = np.where(np.isfinite(a), a, 0.0)
        top = float(a.max()) if a.size else 0.0
        if top <= 1.0:
            a = a * 255.0
        elif top > 255.0:
            a = a / 257.0
    else:
        a = a / 257.0  # 0..65535 -> 0..255; 65535 / 257 == 255 exactly
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode -> mode "RGB" (the rule decode_image documents). Raises ValueError for unconvertible modes."""
    if im.mode == "RGB":
        return im
    if im.mode in _INT_MODES or im.mode == "F":
        # Pillow's convert("RGB") clamps these to 0..255 (a 16-bit PNG turns white); scale instead.
        gray = _scale_to_uint8(np.asarray(im), im.mode)
        return Image.fromarray(np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2)))
    # 1, L, LA, La, P, PA, RGBA, RGBa, RGBX, CMYK, YCbCr, HSV: Pillow's own conversion, alpha dropped, exactly as
    # open_clip's _convert_to_rgb / MaybeConvertMode and Hugging Face's convert_rgb do.
    return im.convert("RGB")


def open_image_source(source: Any, max_bytes: int = MAX_FILE_BYTES) -> tuple[str | None, Any, int]:
    """The one opener every image read goes through (decoding, dataset readers, cache hashing, calibration).

    Returns ``(path or None, binary file object positioned at 0, size in bytes)``; the caller closes the file.
    Accepts a path (``str``/``os.PathLike``) or encoded content (``bytes``, ``bytearray``, ``memoryview``, or a
    binary file object such as ``io.BytesIO``, read from its current position).

    Raises:
        ImageDecodeError: missing file, dangling link, directory, FIFO/device/socket (opening a FIFO would block),
            permission denied, empty file, or a file larger than ``max_bytes``.
        TypeError: any other kind of source.
    """
    if hasattr(source, "read") and not isinstance(source, (str, os.PathLike)):
        if isinstance(source, io.TextIOBase):
            raise TypeError("image source: a file object must be opened in binary mode ('rb'), got a text-mode file")
        data = source.read(max_bytes + 1)
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError(f"image source: a file object must be opened in binary mode, got {type(data).__name__}")
        source = bytes(data)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if not data:
            raise ImageDecodeError(None, "empty file")
        if len(data) > max_bytes:
            raise ImageDecodeError(None, f"file larger than {max_bytes} bytes")
        return None, io.BytesIO(data), len(data)
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"image source must be a path (str/os.PathLike), bytes-like or a binary file object, got "
                        f"{type(source).__name__}")
    fspath = os.fspath(source)
    path = os.fsdecode(fspath)
    try:
        st = os.stat(fspath)  # follows links: a dangling link raises FileNotFoundError here
    except FileNotFoundError:
        reason = "file not found (dangling link?)" if os.path.islink(fspath) else "file not found"
        raise ImageDecodeError(path, reason) from None
    except PermissionError:
        raise ImageDecodeError(path, "permission denied") from None
    except OSError as e:
        raise ImageDecodeError(path, f"cannot access file ({e.strerror or e})") from None
    if stat.S_ISDIR(st.st_mode):
        raise ImageDecodeError(path, "is a directory")
    if not stat.S_ISREG(st.st_mode):
        # Opening a FIFO would block; devices and sockets are never images.
        raise ImageDecodeError(path, "not a regular file")
    if st.st_size == 0:
        raise ImageDecodeError(path, "empty file")
    if st.st_size > max_bytes:
        raise ImageDecodeError(path, f"file larger than {max_bytes} bytes ({st.st_size})")
    try:
        fp = open(fspath, "rb")
    except PermissionError:
        raise ImageDecodeError(path, "permission denied") from None
    except FileNotFoundError:  # removed between stat and open
        raise ImageDecodeError(path, "file not found") from None
    except OSError as e:
        raise ImageDecodeError(path, f"cannot open file ({e.strerror or e})") from None
    return path, fp, st.st_size


_STRICT_LOAD = threading.Lock()


def _load_strict(im: Image.Image) -> None:
    """``im.load()`` that never accepts a truncated file, even when the host process has set Pillow's global
    ``ImageFile.LOAD_TRUNCATED_IMAGES = True`` (a workaround other projects suggest): the flag is turned off for
    the duration of this load (under a lock) and restored after."""
    if not ImageFile.LOAD_TRUNCATED_IMAGES:
        im.load()
        return
    with _STRICT_LOAD:
        saved, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
        try:
            im.load()
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = saved


def decode_image(source: Source, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode an image file or byte string into a fully loaded mode-"RGB" PIL image.

    Args:
        source: a path (``str`` or ``os.PathLike``) or the encoded file content (``bytes``/``bytearray``/
            ``memoryview``; a ``bytes`` object is always content, never a path).
        max_pixels: refuse images whose header declares more than this many pixels (width * height). ``None``
            leaves only Pillow's own limit. Pillow refuses images above ``2 * PIL.Image.MAX_IMAGE_PIXELS`` in
            ``Image.open`` whatever this value is (this module never changes Pillow's global settings).

    Returns:
        A loaded ``PIL.Image.Image`` in mode ``"RGB"`` (8 bits per channel), detached from the file.

    Rules, in order:

    1. The header is read (``Image.open`` reads no pixels) and width * height is checked against ``max_pixels``
       *before* any pixel is decoded. Pillow's own ``DecompressionBombError`` (and its ``DecompressionBombWarning``
       when warnings are turned into errors) becomes the same "decompression bomb" error.
    2. Only the first frame is decoded: first frame of an animated GIF/WebP/PNG, first page of a multi-page TIFF.
    3. The EXIF orientation is applied (``ImageOps.exif_transpose``), so pixels are upright as a viewer shows them
       (``cv2.imread`` does the same; plain ``Image.open`` does not).
    4. Conversion to RGB:

       * 16-bit and 32-bit integer modes (``I;16``, ``I;16L``, ``I;16B``, ``I;16N``, ``I``) are *scaled*:
         ``round(value / 257)`` clipped to 0..255 (so 65535 -> 255, 257 -> 1). ``I`` is read as the 0..65535 range
         of the 16-bit files it usually comes from; negative values clip to 0. Pillow's ``convert("RGB")`` would
         clamp instead and turn a 16-bit image white.
       * Float mode ``F``: NaN/inf -> 0; if the largest value is <= 1 the range is taken as 0..1 (x * 255); if it
         is <= 255, as 0..255 (unchanged); otherwise as 0..65535 (x / 257); then rounded and clipped.
       * 16-bit RGB/RGBA files (PNG, TIFF) are exposed by Pillow as 8-bit ``RGB``/``RGBA`` by keeping the high
         byte (``value >> 8``), which differs from ``round(value / 257)`` by at most 1.
       * Every other mode (``1``, ``L``, ``LA``, ``P`` with or without transparency, ``PA``, ``RGBA``, ``CMYK``,
         ``YCbCr``, ...) goes through Pillow's ``convert("RGB")``: alpha is dropped (not composited), as
         open_clip's ``_convert_to_rgb`` and Hugging Face's CLIP processor do, for parity with the features the
         heads were trained on. Embedded ICC profiles are ignored, as in those pipelines.

    Raises:
        ImageDecodeError: for every file that cannot be decoded, with ``.reason`` one of: ``'file not found'``,
            ``'file not found (dangling link?)'``, ``'is a directory'``, ``'not a regular file'``,
            ``'permission denied'``, ``'empty file'``, ``'not an image (unrecognised format)'``,
            ``'no pixel data (header only)'``, ``'truncated image data'``, ``'decompression bomb: WxH = N pixels
            exceeds the limit of L'``, or a text starting ``'corrupt ...'``, ``'cannot ...'`` or
            ``'unreadable EXIF orientation ...'`` that carries the codec's message.
        TypeError: ``source`` is neither a path nor bytes (a programming error, not a bad file).
        ValueError: ``max_pixels`` is not a positive int or None.

    Truncated files are never decoded partially, even when the host process set
    ``ImageFile.LOAD_TRUNCATED_IMAGES = True`` (see :func:`_load_strict`).
    """
    if max_pixels is not None and (isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels <= 0):
        raise ValueError(f"max_pixels must be a positive int or None, got {max_pixels!r}")
    path, fp, size = open_image_source(source)
    with fp:
        prefix = fp.read(32)
        fp.seek(0)
        fmt = _sniff_format(prefix)

        # 1. header
        try:
            im = Image.open(fp, formats=decoder_formats())
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise _bomb_error(path, fp, prefix, max_pixels, e) from None
        except Exception as e:
            if fmt is None:
                if prefix.startswith(_POSTSCRIPT):
                    raise ImageDecodeError(path, "PostScript/EPS is not decoded (it would run Ghostscript)") from None
                if isinstance(e, UnidentifiedImageError):
                    raise ImageDecodeError(path, "not an image (unrecognised format)") from None
                raise ImageDecodeError(path, f"cannot read image header ({type(e).__name__}: {e})") from None
            if _is_header_only(fp, size, fmt, None):
                raise ImageDecodeError(path, "no pixel data (header only)") from None
            detail = "unrecognised by Pillow" if isinstance(e, UnidentifiedImageError) else f"{type(e).__name__}: {e}"
            raise ImageDecodeError(path, f"corrupt or truncated {fmt} header ({detail})") from None

        width, height = im.size
        if max_pixels is not None and width * height > max_pixels:
            raise ImageDecodeError(path, _bomb_reason(width, height, max_pixels))

        # 2. pixels of the first frame (Image.open leaves frame 0 selected)
        try:
            _load_strict(im)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise _bomb_error(path, fp, prefix, max_pixels, e) from None
        except Exception as e:
            if _is_header_only(fp, size, fmt or im.format, im):
                raise ImageDecodeError(path, "no pixel data (header only)") from None
            if "truncated" in str(e).lower():
                raise ImageDecodeError(path, "truncated image data") from None
            raise ImageDecodeError(path, f"corrupt image data ({type(e).__name__}: {e})") from None

        # 3. orientation; exif_transpose always returns a new image, detached from fp
        try:
            im = ImageOps.exif_transpose(im)
        except Exception as e:
            raise ImageDecodeError(path, f"unreadable EXIF orientation ({type(e).__name__}: {e})") from None

    # 4. colour
    try:
        return _to_rgb(im)
    except Exception as e:
        raise ImageDecodeError(path, f"cannot convert mode {im.mode} to RGB ({type(e).__name__}: {e})") from None


# --------------------------------------------------------------------------------------------------------------
# preprocessing
# --------------------------------------------------------------------------------------------------------------

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


def _center_crop_or_pad(arr: np.ndarray, size: int, offset: str = "round") -> np.ndarray:
    """Centre crop of an HxWxC array to size x size: torchvision ``center_crop`` (``offset="round"``: zero-pad if
    smaller, then ``int(round(d / 2))``) or Hugging Face ``center_crop`` (``offset="floor"``: ``d // 2``)."""
    h, w = arr.shape[:2]
    if size > w or size > h:
        left = (size - w) // 2 if size > w else 0
        top = (size - h) // 2 if size > h else 0
        right = (size - w + 1) // 2 if size > w else 0
        bottom = (size - h + 1) // 2 if size > h else 0
        arr = np.pad(arr, ((top, bottom), (left, right), (0, 0)), mode="constant", constant_values=0)
        h, w = arr.shape[:2]
        if h == size and w == size:
            return arr
    if offset == "floor":  # transformers.image_transforms.center_crop
        top, left = (h - size) // 2, (w - size) // 2
    else:  # Python's round (half to even), exactly as torchvision writes it.
        top = int(round((h - size) / 2.0))
        left = int(round((w - size) / 2.0))
    return arr[top : top + size, left : left + size]


def check_resize_work(width: int, height: int, spec: Preprocessing) -> None:
    """Refuse an image whose resize would cost far more than its file suggests (ImageDecodeError, no path).

    With ``resize_mode="shortest"`` the short side goes to ``spec.size`` and the long side to
    ``size * long / short``: the work and memory grow with the aspect ratio, not with the source pixels. Ratios
    above :data:`MAX_ASPECT_RATIO` are refused.
    """
    short, long = min(width, height), max(width, height)
    if spec.resize_mode == "shortest" and short > 0 and long / short > MAX_ASPECT_RATIO:
        raise ImageDecodeError(None, f"aspect ratio {long}:{short} exceeds {MAX_ASPECT_RATIO:g}:1 (resizing its short "
                                     f"side to {spec.size} px would need a {int(spec.size * long / short)}x{spec.size} "
                                     f"intermediate)")


def preprocess(image: Image.Image | np.ndarray, spec: Preprocessing) -> np.ndarray:
    """One image -> the network input, exactly as the original pipeline ``spec`` names computes it.

    Args:
        image: a PIL image of any mode (converted to RGB by the rule :func:`decode_image` documents, 16-bit scaling
            included; no EXIF orientation is applied here: decode_image does that), or a numpy array of shape
            ``(H, W, 3)``, dtype ``uint8``, channels in **RGB** order (``cv2.imread`` gives BGR: flip it first).
        spec: the preprocessing rule.

    Returns:
        ``float32`` array of shape ``(3, spec.size, spec.size)`` (CHW, RGB), C-contiguous, values
        ``(pixel / 255 - mean) / std``.

    Rule (torchvision ``Resize``/``CenterCrop``/``ToTensor``/``Normalize`` on a PIL image, as clip-cues and
    open_clip compose them, or Hugging Face's PIL ``CLIPImageProcessor``; ``spec.pipeline`` names which):

    1. Resize (torchvision ``_compute_resized_output_size`` = transformers ``get_resize_output_image_size``):
       ``"shortest"``: short side -> ``size``, long side -> ``int(size * long / short)`` (truncation);
       ``"squash"``: -> ``size x size``. Done with ``PIL.Image.resize((w, h), BICUBIC|BILINEAR)`` (``spec.
       interpolation``; Pillow antialiases when downscaling), skipped when the size is unchanged (as both do).
    2. ``"shortest"`` only: centre crop to ``size``: ``top = int(round((h - size) / 2.0))`` for
       ``crop_offset="round"`` (torchvision ``CenterCrop``), ``(h - size) // 2`` for ``"floor"`` (transformers);
       ``left`` likewise; zero padding first if a side is smaller than ``size`` (unreachable after a shortest-side
       resize).
    3. ``ToTensor`` then ``Normalize``: ``x = uint8 / 255`` in float32, then ``(x - mean) / std`` in float32.
       (transformers' ``uint8 * (1/255)`` in float64 cast to float32 gives the same float32 for all 256 values.)

    A non-RGB PIL image is converted to RGB *before* resizing (clip-cues' ``.convert("RGB")`` loaders and Hugging
    Face's processor do the same); open_clip resizes in the source mode and converts afterwards. The two agree
    exactly for RGB input.

    Raises:
        ValueError: array of another shape or dtype (the message names what was received), or a PIL mode that
            cannot be converted to RGB.
        ImageDecodeError: an aspect ratio above :data:`MAX_ASPECT_RATIO` (see :func:`check_resize_work`).
        TypeError: neither a PIL image nor a numpy array.
    """
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(
                f"preprocess: expected an (H, W, 3) uint8 RGB array, got shape {image.shape} dtype {image.dtype}"
            )
        if image.shape[0] == 0 or image.shape[1] == 0:
            raise ValueError(f"preprocess: empty image, shape {image.shape}")
        img = Image.fromarray(np.ascontiguousarray(image))
    elif isinstance(image, Image.Image):
        if image.width == 0 or image.height == 0:
            raise ValueError(f"preprocess: empty image, size {image.size}")
        img = _to_rgb(image)
    else:
        raise TypeError(f"preprocess: expected a PIL image or numpy array, got {type(image).__name__}")

    size = spec.size
    w, h = img.size
    check_resize_work(w, h, spec)
    if spec.resize_mode == "shortest":
        # torchvision _compute_resized_output_size for an int size
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = size, int(size * long / short)
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    else:
        new_w, new_h = size, size
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), _RESAMPLE[spec.interpolation])

    arr = np.asarray(img, dtype=np.uint8)
    if arr.shape[0] != size or arr.shape[1] != size:
        arr = _center_crop_or_pad(arr, size, spec.crop_offset)

    x = arr.astype(np.float32) / np.float32(255.0)
    x -= np.asarray(spec.mean, dtype=np.float32)
    x /= np.asarray(spec.std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def load_and_preprocess(
    source: Source, spec: Preprocessing, *, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """:func:`decode_image` then :func:`preprocess`: float32 ``(3, size, size)``. Raises ImageDecodeError (naming
    the file when ``source`` is a path)."""
    image = decode_image(source, max_pixels=max_pixels)
    try:
        return preprocess(image, spec)
    except ImageDecodeError as e:
        if e.path is None and isinstance(source, (str, os.PathLike)):
            raise ImageDecodeError(os.fsdecode(os.fspath(source)), e.reason) from None
        raise


# --------------------------------------------------------------------------------------------------------------
# discovery
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Discovery:
    """What :func:`discover` found: ``files`` to score (in order), files in folders that were ``skipped`` (not an
    image extension; count by lower-case extension, ``""`` for none) and ``unreadable`` folders (path, reason)."""

    files: list[Path]
    skipped: Counter
    unreadable: list[tuple[Path, str]]


def discover(paths: Iterable[str | os.PathLike[str]], *, all_files: bool = False,
             extensions: Iterable[str] | None = None) -> Discovery:
    """Expand files and directories like :func:`discover_images`, but never stop at an unreadable folder: it is
    reported in ``unreadable`` and the rest is scanned. ``all_files`` keeps every file found in a folder;
    ``extensions`` (lower case, with the dot) replaces :data:`IMAGE_EXTENSIONS` as the suffixes kept in folders.

    Raises FileNotFoundError for an argument that does not exist at all (not even as a dangling link)."""
    suffixes = IMAGE_EXTENSIONS if extensions is None else frozenset(extensions)
    files: list[Path] = []
    skipped: Counter = Counter()
    unreadable: list[tuple[Path, str]] = []
    seen: set[Path] = set()

    def add(p: Path) -> None:
        key = p.absolute()
        if key not in seen:
            seen.add(key)
            files.append(p)

    def unlistable(err: OSError) -> None:
        unreadable.append((Path(os.fsdecode(err.filename)), err.strerror or type(err).__name__))

    for arg in paths:
        p = Path(arg)
        if p.is_dir():
            found = []
            for root, _dirs, names in os.walk(p, followlinks=False, onerror=unlistable):
                for name in names:
                    ext = os.path.splitext(name)[1].lower()
                    if all_files or ext in suffixes:
                        found.append(Path(root, name))
                    else:
                        skipped[ext] += 1
            for f in sorted(found):
                add(f)
        elif os.path.lexists(p):
            add(p)
        else:
            raise FileNotFoundError(2, "No such file or directory", str(arg))
    return Discovery(files, skipped, unreadable)


def discover_images(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Expand files and directories into the list of image files to scan.

    Args:
        paths: files and/or directories (``str`` or ``os.PathLike``).

    Returns:
        ``pathlib.Path`` objects in argument order; each directory's files sorted (``Path`` ordering, i.e. by
        path components); a file reached twice is kept once, at its first place (compared by absolute path).

    Rules:
        * A directory is walked recursively (``os.walk(followlinks=False)``: links to directories are not
          entered, which also rules out cycles). Files whose suffix, lower-cased, is in :data:`IMAGE_EXTENSIONS`
          are kept, dangling symlinks with such a suffix included, so that they reach :func:`decode_image` and
          get an error row instead of vanishing.
        * A path given explicitly that is not a directory (a file of any suffix, a dangling link, ...) is kept
          as it is.

    Raises:
        FileNotFoundError: an argument does not exist at all (not even as a dangling link); names it.
        OSError: a directory inside the tree cannot be listed (e.g. PermissionError), rather than silently
            scanning less than asked.
    """
    found = discover(paths)
    if found.unreadable:
        folder, reason = found.unreadable[0]
        raise PermissionError(13, reason, str(folder)) if "ermission" in reason else OSError(reason, str(folder))
    return found.files
