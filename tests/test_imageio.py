"""Tests for sid_edge.runtime.images: decoding of every encoding and bad file, preprocessing parity with open_clip,
discovery of image files. Fixture files are written into tmp_path."""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from sid_edge.runtime.images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    ImageDecodeError,
    Preprocessing,
    decode_image,
    discover_images,
    load_and_preprocess,
    preprocess,
)

REPO = Path(__file__).resolve().parents[1]
SAMPLES = Path("/work/shared/samples/clip-cues")


# ----------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------


def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _smooth(h: int, w: int) -> np.ndarray:
    """Smooth gradients: survive JPEG with small error."""
    y, x = np.mgrid[0:h, 0:w]
    r = 255 * x / max(w - 1, 1)
    g = 255 * y / max(h - 1, 1)
    b = 128 + 60 * np.sin(x / 7.0) * np.cos(y / 9.0)
    return np.clip(np.stack([r, g, b], axis=2).round(), 0, 255).astype(np.uint8)


def _png_chunk(ctype: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + ctype + data + struct.pack(">I", zlib.crc32(ctype + data) & 0xFFFFFFFF)


def _png_with_header(width: int, height: int) -> bytes:
    """A tiny, otherwise valid-looking PNG whose IHDR declares width x height 8-bit RGB."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _reason(source, **kw) -> str:
    with pytest.raises(ImageDecodeError) as ei:
        decode_image(source, **kw)
    return ei.value.reason


def _assert_rgb(im: Image.Image, size: tuple[int, int]) -> np.ndarray:
    assert isinstance(im, Image.Image)
    assert im.mode == "RGB"
    assert im.size == size
    arr = np.asarray(im)
    assert arr.dtype == np.uint8 and arr.shape == (size[1], size[0], 3)
    return arr


# ----------------------------------------------------------------------------------------------------------------
# bad files
# ----------------------------------------------------------------------------------------------------------------


def test_empty_file(tmp_path):
    p = _write(tmp_path / "empty.jpg", b"")
    with pytest.raises(ImageDecodeError) as ei:
        decode_image(p)
    assert ei.value.reason == "empty file"
    assert ei.value.path == str(p)
    assert str(ei.value) == f"{p}: empty file"
    assert _reason(b"") == "empty file"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_file(tmp_path, fmt):
    data = _encode(Image.fromarray(_noise(64, 80)), fmt)
    p = _write(tmp_path / f"cut.{fmt.lower()}", data[: len(data) // 2])
    assert _reason(p) == "truncated image data"
    assert _reason(data[: len(data) // 2]) == "truncated image data"
    # the rule must not leak into Pillow's global switch
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_corrupt_data_not_truncated():
    data = bytearray(_encode(Image.fromarray(_noise(64, 80)), "PNG"))
    idat = data.find(b"IDAT")
    data[idat + 20 : idat + 40] = b"\x00" * 20
    reason = _reason(bytes(data))
    assert reason.startswith("corrupt image data"), reason


def test_not_an_image(tmp_path):
    p = _write(tmp_path / "notes.jpg", b"hello, this is text and not a JPEG at all\n" * 5)
    assert _reason(p) == "not an image (unrecognised format)"
    # text that happens to start like a BMP ("BM"): Pillow's BMP plugin tries it and fails; not called a BMP
    assert _reason(b"BMW is a car brand, says this text file") == "cannot read image header (OSError: Truncated File Read)"


@pytest.mark.parametrize("cut", [33, 41])  # signature + IHDR; + the IDAT chunk header without data
def test_header_only_png(tmp_path, cut):
    data = _encode(Image.fromarray(_noise(64, 80)), "PNG")
    assert data[37:41] == b"IDAT"  # the cut points sit where the test says they do
    p = _write(tmp_path / "head.png", data[:cut])
    assert _reason(p) == "no pixel data (header only)"


def test_header_only_jpeg():
    data = _encode(Image.fromarray(_noise(64, 80)), "JPEG")
    sos = data.find(b"\xff\xda")
    assert _reason(data[:sos]) == "no pixel data (header only)"  # ends before the scan header
    sos_len = struct.unpack(">H", data[sos + 2 : sos + 4])[0]
    assert _reason(data[: sos + 2 + sos_len]) == "no pixel data (header only)"  # scan header, no scan data


def test_header_only_bmp():
    data = _encode(Image.fromarray(_noise(8, 8)), "BMP")
    assert _reason(data[:54]) == "no pixel data (header only)"


def test_missing_file_and_dangling_link(tmp_path):
    assert _reason(tmp_path / "nope.png") == "file not found"
    link = tmp_path / "dangling.png"
    link.symlink_to(tmp_path / "gone.png")
    with pytest.raises(ImageDecodeError) as ei:
        decode_image(link)
    assert ei.value.reason == "file not found (dangling link?)"
    assert ei.value.path == str(link)


def test_directory(tmp_path):
    d = tmp_path / "folder.jpg"
    d.mkdir()
    assert _reason(d) == "is a directory"


def test_decompression_bomb_refused_from_header_without_decoding(tmp_path, monkeypatch):
    # Any attempt to decode pixels fails the test: the refusal must come from the header alone.
    def no_load(self, *a, **k):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_load)

    # 900 M pixels: above Pillow's own hard limit (2 * MAX_IMAGE_PIXELS), Pillow raises in Image.open
    p = _write(tmp_path / "bomb.png", _png_with_header(30000, 30000))
    assert p.stat().st_size < 200
    assert _reason(p) == "decompression bomb: 30000x30000 = 900000000 pixels exceeds the limit of 89478485"

    # 100 M pixels: between Pillow's warning and error limits; our own check refuses it
    small_bomb = _png_with_header(10000, 10000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        assert _reason(small_bomb) == "decompression bomb: 10000x10000 = 100000000 pixels exceeds the limit of 89478485"
    # ... and when the warning is turned into an exception, it is still our error
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        assert _reason(small_bomb) == "decompression bomb: 10000x10000 = 100000000 pixels exceeds the limit of 89478485"


def test_max_pixels_on_small_real_image(tmp_path):
    p = _write(tmp_path / "small.png", _encode(Image.fromarray(_noise(30, 40)), "PNG"))
    assert _reason(p, max_pixels=1000) == "decompression bomb: 40x30 = 1200 pixels exceeds the limit of 1000"
    assert decode_image(p, max_pixels=1200).size == (40, 30)  # the limit itself is allowed
    assert DEFAULT_MAX_PIXELS == Image.MAX_IMAGE_PIXELS == 89_478_485
    with pytest.raises(ValueError):
        decode_image(p, max_pixels=0)


def test_error_from_bytes_and_pickling():
    with pytest.raises(ImageDecodeError) as ei:
        decode_image(b"definitely not an image")
    e = ei.value
    assert e.path is None
    assert str(e) == "<bytes>: not an image (unrecognised format)"
    e2 = pickle.loads(pickle.dumps(ImageDecodeError("/x/y.jpg", "empty file")))
    assert (e2.path, e2.reason, str(e2)) == ("/x/y.jpg", "empty file", "/x/y.jpg: empty file")


def test_wrong_source_type():
    with pytest.raises(TypeError):
        decode_image(12345)


# ----------------------------------------------------------------------------------------------------------------
# encodings
# ----------------------------------------------------------------------------------------------------------------


def test_jpeg(tmp_path):
    arr = _smooth(48, 64)
    p = _write(tmp_path / "a.jpg", _encode(Image.fromarray(arr), "JPEG", quality=95))
    got = _assert_rgb(decode_image(p), (64, 48))
    diff = np.abs(got.astype(int) - arr.astype(int))
    assert diff.mean() < 2.0 and diff.max() < 30


@pytest.mark.parametrize(
    "fmt,ext,kw",
    [("PNG", "png", {}), ("BMP", "bmp", {}), ("TIFF", "tif", {}), ("WEBP", "webp", {"lossless": True}), ("PPM", "ppm", {})],
)
def test_lossless_rgb_exact(tmp_path, fmt, ext, kw):
    arr = _noise(37, 53, seed=3)
    p = _write(tmp_path / f"a.{ext}", _encode(Image.fromarray(arr), fmt, **kw))
    got = _assert_rgb(decode_image(p), (53, 37))
    np.testing.assert_array_equal(got, arr)
    # the same bytes in memory decode the same
    np.testing.assert_array_equal(np.asarray(decode_image(p.read_bytes())), arr)


def test_webp_lossy(tmp_path):
    arr = _smooth(40, 60)
    got = _assert_rgb(decode_image(_encode(Image.fromarray(arr), "WEBP", quality=95)), (60, 40))
    assert np.abs(got.astype(int) - arr.astype(int)).mean() < 3.0


def test_png_16bit_gray_is_scaled_not_white(tmp_path):
    ramp16 = (np.arange(256, dtype=np.uint16) * 257)[None, :].repeat(4, axis=0)  # 0, 257, ..., 65535
    im16 = Image.fromarray(ramp16)
    p = _write(tmp_path / "gray16.png", _encode(im16, "PNG"))
    with Image.open(p) as src:
        assert src.mode == "I;16"  # really a 16-bit file
    got = _assert_rgb(decode_image(p), (256, 4))
    expected = np.arange(256, dtype=np.uint8)[None, :].repeat(4, axis=0)
    for c in range(3):
        np.testing.assert_array_equal(got[:, :, c], expected)
    # values between the multiples of 257 are rounded: round(v / 257)
    vals = np.array([[0, 128, 129, 385, 386, 1000, 30000, 65534, 65535]], dtype=np.uint16)
    got = np.asarray(decode_image(_encode(Image.fromarray(vals), "PNG")))[0, :, 0]
    np.testing.assert_array_equal(got, [0, 0, 1, 1, 2, 4, 117, 255, 255])


def test_tiff_16bit_gray_big_endian():
    vals = (np.arange(20, dtype=np.uint16) * 3000).reshape(4, 5)
    im = Image.frombytes("I;16B", (5, 4), vals.astype(">u2").tobytes())  # (convert("I;16B") would clamp)
    data = _encode(im, "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "I;16B"
    got = np.asarray(decode_image(data))[:, :, 1]
    np.testing.assert_array_equal(got, np.rint(vals / 257.0).astype(np.uint8))


def test_png_16bit_rgb_from_opencv(tmp_path):
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(5)
    rgb16 = rng.integers(0, 65536, (24, 32, 3)).astype(np.uint16)
    p = tmp_path / "rgb16.png"
    assert cv2.imwrite(str(p), rgb16[:, :, ::-1])  # OpenCV writes BGR
    got = _assert_rgb(decode_image(p), (32, 24)).astype(int)
    expected = np.rint(rgb16 / 257.0).astype(int)
    assert np.abs(got - expected).max() <= 1  # Pillow keeps the high byte: floor(v/256) vs round(v/257)
    assert got.mean() < 200  # not white (a clamped 16-bit image would be ~255 everywhere)
    assert abs(got.mean() - expected.mean()) < 1.0


def test_float_tiff_0_to_1():
    vals = np.linspace(0.0, 1.0, 12, dtype=np.float32).reshape(3, 4)
    data = _encode(Image.fromarray(vals), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "F"
    got = np.asarray(decode_image(data))[:, :, 0]
    np.testing.assert_array_equal(got, np.rint(vals.astype(np.float64) * 255).astype(np.uint8))


def test_gray_l(tmp_path):
    g = np.arange(0, 250, 10, dtype=np.uint8).reshape(5, 5)
    got = _assert_rgb(decode_image(_write(tmp_path / "g.png", _encode(Image.fromarray(g), "PNG"))), (5, 5))
    for c in range(3):
        np.testing.assert_array_equal(got[:, :, c], g)


def test_gray_alpha_la():
    la = Image.fromarray(np.dstack([np.full((4, 4), 77, np.uint8), np.zeros((4, 4), np.uint8)]), "LA")
    got = np.asarray(decode_image(_encode(la, "PNG")))
    assert (got == 77).all()


def test_rgba_alpha_dropped_not_composited():
    rgba = np.zeros((6, 6, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2] = 10, 20, 30
    rgba[..., 3] = np.arange(6, dtype=np.uint8)[None, :] * 40  # from fully transparent to opaque
    got = _assert_rgb(decode_image(_encode(Image.fromarray(rgba), "PNG")), (6, 6))
    assert (got == np.array([10, 20, 30], np.uint8)).all()


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_with_transparency(fmt):
    idx = np.array([[0, 1, 2], [2, 1, 0]], dtype=np.uint8)
    p = Image.fromarray(idx, "L").convert("P")
    palette = [255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 9)
    p.putpalette(palette)
    data = _encode(p, fmt, transparency=1)
    src = Image.open(io.BytesIO(data))
    assert src.mode == "P" and "transparency" in src.info
    got = _assert_rgb(decode_image(data), (3, 2))
    colours = np.array(palette[:9], np.uint8).reshape(3, 3)
    np.testing.assert_array_equal(got, colours[idx])


def test_animated_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (20, 10), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    p = tmp_path / "anim.gif"
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=50, loop=0)
    with Image.open(p) as src:
        assert src.n_frames == 3
    got = _assert_rgb(decode_image(p), (20, 10))
    assert (got == np.array([255, 0, 0], np.uint8)).all()


def test_multipage_tiff_first_page(tmp_path):
    pages = [Image.new("RGB", (9, 7), c) for c in [(1, 2, 3), (200, 100, 50)]]
    p = tmp_path / "pages.tiff"
    pages[0].save(p, save_all=True, append_images=pages[1:])
    with Image.open(p) as src:
        assert src.n_frames == 2
    got = _assert_rgb(decode_image(p), (9, 7))
    assert (got == np.array([1, 2, 3], np.uint8)).all()


def test_cmyk_jpeg():
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red in Pillow's naive CMYK model
    data = _encode(cmyk, "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    got = _assert_rgb(decode_image(data), (16, 16)).astype(int)
    assert np.abs(got - np.array([255, 0, 0])).max() <= 8


def test_unicode_and_space_path(tmp_path):
    arr = _noise(10, 12)
    p = _write(tmp_path / "fotos ü" / "bild é.png", _encode(Image.fromarray(arr), "PNG"))
    np.testing.assert_array_equal(np.asarray(decode_image(p)), arr)
    np.testing.assert_array_equal(np.asarray(decode_image(str(p))), arr)
    pj = _write(tmp_path / "fotos ü" / "bild é.jpg", _encode(Image.fromarray(_smooth(10, 12)), "JPEG"))
    _assert_rgb(decode_image(pj), (12, 10))


def test_exif_orientation_applied(tmp_path):
    # 60 wide x 40 high, left half red, right half blue
    arr = np.zeros((40, 60, 3), np.uint8)
    arr[:, :30] = (255, 0, 0)
    arr[:, 30:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    p = _write(tmp_path / "rot.jpg", _encode(Image.fromarray(arr), "JPEG", quality=95, exif=exif))
    with Image.open(p) as src:
        assert src.size == (60, 40)  # stored sideways
    got = _assert_rgb(decode_image(p), (40, 60)).astype(int)  # width and height swapped
    # rotated 90 degrees clockwise: the left (red) half is now on top
    assert np.abs(got[5, 20] - [255, 0, 0]).max() < 20
    assert np.abs(got[55, 20] - [0, 0, 255]).max() < 20


# ----------------------------------------------------------------------------------------------------------------
# preprocessing parity with open_clip
# ----------------------------------------------------------------------------------------------------------------


def _open_clip():
    return pytest.importorskip("open_clip")


def _reference(img: Image.Image, spec: Preprocessing) -> np.ndarray:
    open_clip = _open_clip()
    tf = open_clip.image_transform(
        spec.size,
        is_train=False,
        mean=spec.mean,
        std=spec.std,
        resize_mode=spec.resize_mode,
        interpolation=spec.interpolation,
    )
    return tf(img).numpy()


def _spec(size: int, resize_mode: str = "shortest", interpolation: str = "bicubic") -> Preprocessing:
    open_clip = _open_clip()
    return Preprocessing(
        size=size,
        mean=tuple(open_clip.OPENAI_DATASET_MEAN),
        std=tuple(open_clip.OPENAI_DATASET_STD),
        interpolation=interpolation,
        resize_mode=resize_mode,
    )


def _assert_parity(img: Image.Image, spec: Preprocessing) -> None:
    got = preprocess(img, spec)
    ref = _reference(img, spec)
    assert got.dtype == np.float32
    assert got.shape == (3, spec.size, spec.size) == ref.shape
    assert got.flags["C_CONTIGUOUS"]
    assert float(np.abs(got - ref).max()) <= 1e-5


SHAPES = [  # (width, height)
    (640, 480),  # landscape
    (480, 640),  # portrait
    (300, 300),  # square, downscale
    (100, 150),  # smaller than size: upscale
    (333, 517),  # odd dims
    (1000, 225),  # extreme aspect
    (224, 224),  # exact size: no resize at all
    (224, 225),  # crop offset (1/2) rounds half to even
    (227, 224),  # crop offset (3/2)
    (224, 300),  # short side already right: crop only
]


@pytest.mark.parametrize("resize_mode", ["shortest", "squash"])
@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
@pytest.mark.parametrize("wh", SHAPES, ids=[f"{w}x{h}" for w, h in SHAPES])
def test_parity_with_open_clip(wh, resize_mode, interpolation):
    w, h = wh
    img = Image.fromarray(_noise(h, w, seed=w * 7 + h))
    _assert_parity(img, _spec(224, resize_mode, interpolation))


@pytest.mark.parametrize("size", [97, 336])
@pytest.mark.parametrize("resize_mode", ["shortest", "squash"])
def test_parity_other_sizes(size, resize_mode):
    for w, h in [(513, 775), (775, 513), (50, 31)]:
        _assert_parity(Image.fromarray(_smooth(h, w)), _spec(size, resize_mode))


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea"])
@pytest.mark.parametrize("resize_mode", ["shortest", "squash"])
def test_parity_real_photographs(name, resize_mode):
    data = pytest.importorskip("skimage.data")
    img = Image.fromarray(getattr(data, name)())
    _assert_parity(img, _spec(336, resize_mode))
    _assert_parity(img, _spec(224, resize_mode))


def _sample_files() -> list[Path]:
    if not SAMPLES.is_dir():
        return []
    return sorted(p for p in SAMPLES.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))


def test_parity_clip_cues_samples():
    files = _sample_files()
    if not files:
        pytest.skip(f"{SAMPLES} absent or empty")
    from PIL import ImageOps

    spec = _spec(336)
    for p in files:
        got = load_and_preprocess(p, spec)
        with Image.open(p) as src:
            ref = _reference(ImageOps.exif_transpose(src).convert("RGB"), spec)
        assert got.shape == (3, 336, 336)
        assert float(np.abs(got - ref).max()) <= 1e-5, p.name


def test_numpy_input_equals_pil_input():
    arr = _noise(123, 77, seed=9)
    spec = _spec(64)
    np.testing.assert_array_equal(preprocess(arr, spec), preprocess(Image.fromarray(arr), spec))
    # a non-contiguous view (e.g. BGR->RGB flip) is accepted too
    bgr = np.ascontiguousarray(arr[:, :, ::-1])
    np.testing.assert_array_equal(preprocess(bgr[:, :, ::-1], spec), preprocess(Image.fromarray(arr), spec))


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((10, 10), np.uint8),
        np.zeros((10, 10, 4), np.uint8),
        np.zeros((10, 10, 3), np.float32),
        np.zeros((10, 10, 3), np.uint16),
        np.zeros((3, 10, 10, 3), np.uint8),
    ],
    ids=["HxW", "HxWx4", "float32", "uint16", "4d"],
)
def test_preprocess_rejects_bad_arrays(bad):
    with pytest.raises(ValueError, match=str(bad.dtype)) as ei:
        preprocess(bad, _spec(32))
    assert str(bad.shape) in str(ei.value)


def test_preprocess_non_rgb_pil_uses_decode_rule():
    spec = _spec(16)
    g16 = Image.fromarray((np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000))
    assert g16.mode == "I;16"
    expected_gray = np.rint(np.arange(64).reshape(8, 8) * 1000 / 257.0).astype(np.uint8)
    np.testing.assert_array_equal(preprocess(g16, spec), preprocess(np.repeat(expected_gray[:, :, None], 3, 2), spec))
    with pytest.raises(TypeError):
        preprocess([[1, 2, 3]], spec)


def test_preprocess_values():
    # a flat mid-grey image: every output value is (128/255 - mean) / std of its channel
    spec = Preprocessing(size=8, mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0))
    out = preprocess(np.full((20, 30, 3), 128, np.uint8), spec)
    x = np.float32(128) / np.float32(255)
    for c, (m, s) in enumerate(zip(spec.mean, spec.std)):
        assert np.all(out[c] == (x - np.float32(m)) / np.float32(s))


def test_load_and_preprocess(tmp_path):
    arr = _noise(40, 50)
    p = _write(tmp_path / "x.png", _encode(Image.fromarray(arr), "PNG"))
    spec = _spec(32)
    np.testing.assert_array_equal(load_and_preprocess(p, spec), preprocess(arr, spec))
    with pytest.raises(ImageDecodeError):
        load_and_preprocess(_write(tmp_path / "bad.png", b"nope"), spec)
    with pytest.raises(ImageDecodeError, match="decompression bomb"):
        load_and_preprocess(p, spec, max_pixels=100)


# ----------------------------------------------------------------------------------------------------------------
# Preprocessing spec
# ----------------------------------------------------------------------------------------------------------------


def test_preprocessing_round_trip():
    spec = Preprocessing(size=336, mean=(0.48145466, 0.4578275, 0.40821073), std=(0.26862954, 0.26130258, 0.27577711))
    d = spec.to_dict()
    assert d == {
        "pipeline": "open_clip",
        "size": 336,
        "mean": [0.48145466, 0.4578275, 0.40821073],
        "std": [0.26862954, 0.26130258, 0.27577711],
        "interpolation": "bicubic",
        "resize_mode": "shortest",
        "crop_offset": "round",
        "colour_order": "RGB",
        "crop": "center",
        "value_range": "0-1 then (x-mean)/std",
        "layout": "NCHW float32",
        "rgb_conversion": "before resize",
    }
    back = Preprocessing.from_dict(json.loads(json.dumps(d)))
    assert back == spec
    assert isinstance(back.mean, tuple)
    squash = Preprocessing(size=224, mean=[0.5] * 3, std=[0.5] * 3, interpolation="bilinear", resize_mode="squash")
    assert Preprocessing.from_dict(squash.to_dict()) == squash
    # the fixed keys are optional on input
    assert Preprocessing.from_dict({"size": 224, "mean": [0.5] * 3, "std": [0.5] * 3}) == Preprocessing(
        224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    )


@pytest.mark.parametrize(
    "change,field",
    [
        ({"resize_mode": "longest"}, "resize_mode"),
        ({"interpolation": "nearest"}, "interpolation"),
        ({"colour_order": "BGR"}, "colour_order"),
        ({"mean": [0.5, 0.5]}, "mean"),
        ({"std": [0.5, 0.5, 0.5, 0.5]}, "std"),
        ({"std": [0.5, 0.0, 0.5]}, "std"),
        ({"size": 0}, "size"),
        ({"size": "224"}, "size"),
        ({"crop": "none"}, "crop"),
        ({"fill_color": 0}, "fill_color"),
    ],
)
def test_preprocessing_bad_field(change, field):
    d = {**Preprocessing(224, (0.5,) * 3, (0.5,) * 3).to_dict(), **change}
    with pytest.raises(ValueError, match=field):
        Preprocessing.from_dict(d)


def test_preprocessing_missing_field():
    with pytest.raises(ValueError, match="size"):
        Preprocessing.from_dict({"mean": [0.5] * 3, "std": [0.5] * 3})


# ----------------------------------------------------------------------------------------------------------------
# discovery
# ----------------------------------------------------------------------------------------------------------------


def test_image_extensions():
    Image.init()
    registered = Image.registered_extensions()
    required = {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".dib", ".tif", ".tiff", ".gif",
                ".ppm", ".pgm", ".pbm", ".pnm"}
    assert required <= IMAGE_EXTENSIONS
    for ext in IMAGE_EXTENSIONS:
        assert ext == ext.lower() and ext.startswith(".")
        assert ext in registered, f"{ext} listed but Pillow cannot open it"


def test_discover_images(tmp_path):
    root = tmp_path / "root"
    for rel in ["b.jpg", "A.PNG", "notes.txt", "sub/c.webp", "sub/deeper/d.TIFF", "sub/readme.md"]:
        _write(root / rel, b"x")
    (root / "dangling.jpg").symlink_to(tmp_path / "missing.jpg")
    (root / "dangling.txt").symlink_to(tmp_path / "missing.txt")
    (root / "linkdir").symlink_to(root / "sub", target_is_directory=True)  # not followed
    other = _write(tmp_path / "explicit.dat", b"x")
    explicit_dangling = tmp_path / "gone.link"
    explicit_dangling.symlink_to(tmp_path / "nowhere")

    found = discover_images([root])
    assert found == [
        root / "A.PNG",
        root / "b.jpg",
        root / "dangling.jpg",
        root / "sub" / "c.webp",
        root / "sub" / "deeper" / "d.TIFF",
    ]
    assert all(isinstance(p, Path) for p in found)

    # argument order kept, explicit non-image file and dangling link kept, duplicates removed
    found = discover_images([str(other), root, root / "b.jpg", explicit_dangling, str(root / "sub")])
    assert found == [
        other,
        root / "A.PNG",
        root / "b.jpg",
        root / "dangling.jpg",
        root / "sub" / "c.webp",
        root / "sub" / "deeper" / "d.TIFF",
        explicit_dangling,
    ]

    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        discover_images([root, tmp_path / "does-not-exist"])

    # the dangling link reaches decode_image and gets a reason, it does not vanish
    assert _reason(root / "dangling.jpg") == "file not found (dangling link?)"


def test_discover_then_decode_unicode(tmp_path):
    p = _write(tmp_path / "fotos ü" / "bild é.JPG", _encode(Image.fromarray(_smooth(8, 8)), "JPEG"))
    assert discover_images([tmp_path]) == [p]


# ----------------------------------------------------------------------------------------------------------------
# runtime stays torch-free
# ----------------------------------------------------------------------------------------------------------------


def test_import_does_not_pull_torch():
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run(
        [sys.executable, "-c", "import sys, sid_edge.runtime.images; print('torch' in sys.modules, 'open_clip' in sys.modules)"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split() == ["False", "False"], out.stdout + out.stderr
