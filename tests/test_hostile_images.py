"""Hostile images and image sources (issue: hostile inputs): work bounded by what the resize would cost, one opener
that refuses FIFOs and oversized files for every read (decoder, cache hashing, datasets)."""

import io
import os
import threading

import numpy as np
import pytest
from PIL import Image

from sid_edge.artifact.preprocessing import Preprocessing
from sid_edge.runtime.images import (
    MAX_ASPECT_RATIO,
    ImageDecodeError,
    load_and_preprocess,
    open_image_source,
    preprocess,
)
from sid_edge.tools.caches import content_sha256

SPEC = Preprocessing(64, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def _png(w, h) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (10, 200, 30)).save(buf, format="PNG")
    return buf.getvalue()


def test_a_thin_strip_is_refused_before_the_resize(tmp_path):
    strip = tmp_path / "strip.png"
    strip.write_bytes(_png(20000, 1))
    assert strip.stat().st_size < 200  # a file smaller than a tweet ...
    with pytest.raises(ImageDecodeError) as e:
        load_and_preprocess(strip, SPEC)  # ... would need a 1,280,000x64 intermediate
    assert e.value.path == str(strip)
    assert "aspect ratio 20000:1 exceeds 32:1" in e.value.reason and "1280000x64" in e.value.reason
    # Panoramas below the bound go through, and so does a squash rule (no long side then).
    assert preprocess(Image.new("RGB", (int(64 * MAX_ASPECT_RATIO), 64)), SPEC).shape == (3, 64, 64)
    squash = Preprocessing(64, (0.5,) * 3, (0.5,) * 3, resize_mode="squash")
    assert load_and_preprocess(strip, squash).shape == (3, 64, 64)


def test_fifo_is_refused_by_every_reader(tmp_path):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    result = {}

    def hash_it():
        try:
            content_sha256(fifo)
        except OSError as e:
            result["error"] = str(e)

    t = threading.Thread(target=hash_it, daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive(), "hashing a FIFO blocked"
    assert "not a regular file" in result["error"]
    with pytest.raises(ImageDecodeError, match="not a regular file"):
        open_image_source(fifo)


def test_oversized_files_and_sources_are_refused(tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(_png(8, 8))
    with pytest.raises(ImageDecodeError, match="file larger than 10 bytes"):
        open_image_source(big, max_bytes=10)
    with pytest.raises(ImageDecodeError, match="file larger than 10 bytes"):
        open_image_source(io.BytesIO(big.read_bytes()), max_bytes=10)
    with pytest.raises(TypeError, match="binary mode"):
        open_image_source(io.StringIO("text"))


def test_bytes_like_sources_decode_alike(tmp_path):
    data = _png(80, 60)
    ref = load_and_preprocess(data, SPEC)
    for source in (bytearray(data), memoryview(data), io.BytesIO(data)):
        np.testing.assert_array_equal(load_and_preprocess(source, SPEC), ref)
    assert content_sha256(data) == content_sha256(bytearray(data))
