"""The default detector: fetched from its published location, verified by sha256, plain message offline."""

import pytest

import sid_edge.export.default_detector as dd
from sid_edge.cli import main
from tests.conftest import clip_cues_file


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SID_EDGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SID_EDGE_DEFAULT_HEAD", raising=False)
    # A closed local port: the same failure as a machine without a network, without waiting for DNS.
    monkeypatch.setenv("SID_EDGE_HEAD_URL", "http://127.0.0.1:9/clip_orthogonal_synthclic.ckpt")
    return tmp_path


def test_published_location_and_hash():
    assert dd.HEAD_URL.startswith("https://github.com/marco-willi/clip-cues/raw/ad9eea9a0f287ab8869e7f16aeef4a6878d1059d/")
    assert dd.HEAD_URL.endswith("data/checkpoints/clip_orthogonal_synthclic.ckpt")
    assert dd.HEAD_SHA256 == "0ddba778343c20186c6d3ab06198a956da3572058806cfbbf287a275f97ca5e4"


def test_offline_message_says_what_and_how(fresh_cache):
    with pytest.raises(dd.DefaultDetectorUnavailable) as e:
        dd.ensure_default_detector()
    msg = str(e.value)
    assert "could not fetch the default head clip_orthogonal_synthclic.ckpt" in msg
    assert "SID_EDGE_DEFAULT_HEAD" in msg and "--model DIR" in msg


def test_scan_without_model_offline_exits_3(fresh_cache, tmp_path, capsys):
    (tmp_path / "img").mkdir()
    assert main(["scan", str(tmp_path / "img")]) == 3
    assert "could not fetch" in capsys.readouterr().err


def test_local_head_with_wrong_hash_is_refused(fresh_cache, tmp_path, monkeypatch):
    wrong = tmp_path / "head.ckpt"
    wrong.write_bytes(b"not the published file")
    monkeypatch.setenv("SID_EDGE_DEFAULT_HEAD", str(wrong))
    with pytest.raises(dd.DefaultDetectorUnavailable, match="is not the published"):
        dd.fetch_head()


def test_local_head_with_right_hash_is_used(fresh_cache, monkeypatch):
    path = clip_cues_file("clip_orthogonal_synthclic.ckpt")
    monkeypatch.setenv("SID_EDGE_DEFAULT_HEAD", str(path))
    assert dd.fetch_head() == path


def test_cached_default_detector_is_used(fresh_cache, artifact, monkeypatch):
    import shutil

    shutil.copytree(artifact, dd.default_detector_dir())
    assert dd.ensure_default_detector() == dd.default_detector_dir()
