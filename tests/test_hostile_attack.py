"""Hostile inputs found by attacking the product after issue 11 (each test failed before its fix)."""

from __future__ import annotations

import os
import stat

import pytest

from sid_edge.runtime.images import ImageDecodeError, decode_image

EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nnewpath 0 0 moveto 10 10 lineto stroke\nshowpage\n"


def test_eps_never_reaches_ghostscript(tmp_path, monkeypatch):
    """An EPS upload (whatever its name) must not be handed to Ghostscript, an external PostScript interpreter."""
    from PIL import EpsImagePlugin

    marker = tmp_path / "ghostscript-ran"
    fake_gs = tmp_path / "gs"
    fake_gs.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    fake_gs.chmod(fake_gs.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(EpsImagePlugin, "gs_binary", str(fake_gs))
    named_png = tmp_path / "upload.png"
    named_png.write_bytes(EPS)
    for source in (EPS, named_png):
        with pytest.raises(ImageDecodeError) as e:
            decode_image(source)
        assert e.value.reason == "PostScript/EPS is not decoded (it would run Ghostscript)"
    assert not marker.exists()
