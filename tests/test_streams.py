"""Video files, live sources and the streaming API (sid_edge.streams, Detector.stream): frames, timestamps,
sampling, rows, summaries, bad videos, a local MJPEG HTTP source, and frame-vs-PNG equality."""

from __future__ import annotations

import csv
import fractions
import http.server
import json
import socket
import socketserver
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

cv2 = pytest.importorskip("cv2")

from sid_edge.cli import main  # noqa: E402
from sid_edge.runtime.detector import Detector  # noqa: E402
from sid_edge.streams import FrameReader, VideoSourceError, discover_media, read_frames  # noqa: E402
from sid_edge.streams.sources import display_name, is_live_source  # noqa: E402

W, H = 96, 64


def frame_image(i: int) -> np.ndarray:
    """A BGR frame whose content changes with i (a gradient, a moving block and seeded noise), so scores differ."""
    rng = np.random.default_rng(i)
    y, x = np.mgrid[0:H, 0:W]
    img = np.stack([(x * 2 + i * 9) % 256, (y * 3 + i * 5) % 256, ((x + y) + i * 13) % 256], axis=2).astype(np.uint8)
    img[(i * 7) % (H - 16):(i * 7) % (H - 16) + 16, (i * 11) % (W - 16):(i * 11) % (W - 16) + 16] = (255, 255, 255)
    img[..., 0] //= 3  # little blue: channel order shows in the channel means
    noise = rng.integers(0, 40 * (i % 4), size=img.shape, dtype=np.int32) if i % 4 else 0
    return np.clip(img.astype(np.int32) + noise, 0, 255).astype(np.uint8)


def write_video(path: Path, fourcc: str = "mp4v", n: int = 30, fps: float = 10.0) -> Path:
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (W, H))
    assert w.isOpened(), f"this OpenCV build cannot write {fourcc} to {path.suffix}"
    for i in range(n):
        w.write(frame_image(i))
    w.release()
    return path


def write_vfr(path: Path, pts_ms: list[int]) -> Path:
    """A variable-frame-rate MKV/MP4 (MPEG-4 Part 2) with the given presentation times, written with PyAV."""
    av = pytest.importorskip("av")
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=30)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        s.time_base = s.codec_context.time_base = fractions.Fraction(1, 1000)
        for i, t in enumerate(pts_ms):
            f = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame_image(i)[..., ::-1]), format="rgb24")
            f = f.reformat(format="yuv420p")
            f.pts, f.time_base = t, fractions.Fraction(1, 1000)
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def read_rows(path: Path) -> list[dict]:
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# --- frames and timestamps ----------------------------------------------------------------------------------------
def test_constant_rate_sampling_every_fps_duration_max_frames(tmp_path):
    clip = write_video(tmp_path / "c.mp4", n=30, fps=10.0)
    frames = list(read_frames(clip, every=1))
    assert [f.index for f in frames] == list(range(30))
    assert [f.time_s for f in frames] == pytest.approx([i / 10 for i in range(30)], abs=1e-6)
    assert all(f.rgb.shape == (H, W, 3) and f.rgb.dtype == np.uint8 for f in frames)
    # RGB order: channel means (which survive the lossy codec) are those of the written BGR frame, flipped.
    for f in frames[::4]:
        written = frame_image(f.index).reshape(-1, 3).mean(axis=0)
        decoded = f.rgb.reshape(-1, 3).mean(axis=0)
        assert decoded == pytest.approx(written[::-1], abs=4)
        assert np.abs(decoded - written).max() > 10
    default = list(read_frames(clip))  # 1 frame per second
    assert [f.index for f in default] == [0, 10, 20] and [f.time_s for f in default] == pytest.approx([0.0, 1.0, 2.0])
    assert [f.index for f in read_frames(clip, every=7)] == [0, 7, 14, 21, 28]
    assert [f.index for f in read_frames(clip, fps=4.0)] == [0, 3, 5, 8, 10, 13, 15, 18, 20, 23, 25, 28]  # 0.25 s slots
    assert [f.index for f in read_frames(clip, every=1, max_frames=4)] == [0, 1, 2, 3]
    assert [f.index for f in read_frames(clip, every=1, duration_s=1.5)] == list(range(15))
    with pytest.raises(ValueError, match="either every or fps"):
        FrameReader(clip, every=2, fps=1.0)


@pytest.mark.parametrize("suffix", [".mkv", ".mp4"])
def test_variable_frame_rate_samples_by_presentation_time(tmp_path, suffix):
    pts = [0, 100, 150, 160, 500, 1000, 1010, 1500, 2700, 3000]
    clip = write_vfr(tmp_path / f"vfr{suffix}", pts)
    # The original decoding path (FFmpeg through PyAV) gives the reference presentation times.
    import av

    with av.open(str(clip)) as c:
        reference = [float(f.time) for f in c.decode(video=0)]
    assert reference == pytest.approx([t / 1000 for t in pts])
    reader = FrameReader(clip, every=1)
    frames = list(reader)
    assert [f.time_s for f in frames] == pytest.approx(reference, abs=1e-6)
    assert reader.issues == []  # all frames there: no "ended early" report whatever the container declares
    # 2 frames per second of presentation time = the first frame in each 0.5 s slot: none in [2.0, 2.5).
    sampled = list(read_frames(clip, fps=2.0))
    assert [f.index for f in sampled] == [0, 4, 5, 7, 8, 9]
    assert [f.time_s for f in sampled] == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.7, 3.0])
    # --every counts decoded frames, whatever their times.
    assert [f.index for f in read_frames(clip, every=3)] == [0, 3, 6, 9]


def test_bad_videos_raise_with_a_reason(tmp_path):
    good = write_video(tmp_path / "g.avi", "MJPG", n=30)
    data = good.read_bytes()
    (tmp_path / "trunc.avi").write_bytes(data[: len(data) // 2])
    reader = FrameReader(tmp_path / "trunc.avi", every=1)
    frames = list(reader)
    assert 0 < len(frames) < 30
    assert len(reader.issues) == 1 and f"after {len(frames)} of 30 declared frames" in reader.issues[0].reason
    write_video(tmp_path / "zero.avi", "MJPG", n=0)
    cases = {
        "zero.avi": "no frames",
        "garbage.mp4": "cannot open video",
        "empty.mkv": "empty file",
        "missing.mp4": "file not found",
        "folder.mp4": "is a directory",
        "moov-less.mp4": "cannot open video",
        "concat-list.mkv": "cannot open video",  # an ffconcat list naming a sibling video: never followed
        "playlist.mp4": "cannot open video",  # an HLS playlist naming a sibling video: never followed
    }
    (tmp_path / "concat-list.mkv").write_text("ffconcat version 1.0\nfile m.mp4\n")
    (tmp_path / "playlist.mp4").write_text("#EXTM3U\n#EXT-X-TARGETDURATION:3\n#EXTINF:3,\nm.mp4\n#EXT-X-ENDLIST\n")
    (tmp_path / "garbage.mp4").write_bytes(b"\x00\x01not a video" * 50)
    (tmp_path / "empty.mkv").write_bytes(b"")
    (tmp_path / "folder.mp4").mkdir()
    mp4 = write_video(tmp_path / "m.mp4").read_bytes()
    (tmp_path / "moov-less.mp4").write_bytes(mp4[: len(mp4) // 2])  # OpenCV writes the index (moov) last
    for name, reason in cases.items():
        with pytest.raises(VideoSourceError, match=reason) as e:
            list(read_frames(tmp_path / name))
        assert e.value.source == str(tmp_path / name)


def test_sources_discovery_and_credentials(tmp_path):
    write_video(tmp_path / "b.mp4")
    Image.fromarray(frame_image(1)).save(tmp_path / "a.png")
    (tmp_path / "notes.txt").write_text("x")
    found = discover_media([tmp_path, "rtsp://cam.local/s", "camera:0", tmp_path / "b.mp4"])
    assert found.has_video and found.skipped == {".txt": 1}
    assert [(m.kind, m.name) for m in found.inputs] == [
        ("image", str(tmp_path / "a.png")), ("video", str(tmp_path / "b.mp4")),
        ("live", "rtsp://cam.local/s"), ("live", "camera:0")]
    assert is_live_source("http://127.0.0.1:8080/video") and is_live_source("camera:2")
    assert not is_live_source("camera:x") and not is_live_source("clip.mp4")
    assert display_name("rtsp://admin:secret@10.0.0.5:554/live?x=1") == "rtsp://***@10.0.0.5:554/live?x=1"
    with pytest.raises(FileNotFoundError):
        discover_media([tmp_path / "nope.mp4"])
    # The reader takes any scan source: a still image is a one-frame stream.
    (still,) = read_frames(tmp_path / "a.png")
    assert still.index == 0 and still.time_s == 0.0 and np.array_equal(still.rgb, frame_image(1))
    (tmp_path / "fake.png").write_text("not an image at all")
    with pytest.raises(VideoSourceError, match="not an image"):
        list(read_frames(tmp_path / "fake.png"))


# --- the streaming API --------------------------------------------------------------------------------------------
def test_stream_matches_predict_in_order_with_bgr_and_bad_frames(artifact):
    det = Detector.load(artifact)
    rgbs = [np.ascontiguousarray(frame_image(i)[..., ::-1]) for i in range(7)]
    expected = [p.p_synthetic for p in det.predict(rgbs)]
    assert len(set(np.round(expected, 9))) > 1
    got = list(det.stream(iter(rgbs), batch_size=3))
    assert [p.source for p in got] == list(range(7))
    assert [p.p_synthetic for p in got] == pytest.approx(expected, abs=1e-6)
    bgr = list(det.stream((frame_image(i) for i in range(7)), batch_size=4, bgr=True))
    assert [p.p_synthetic for p in bgr] == pytest.approx(expected, abs=1e-6)
    mixed = list(det.stream([(10, 1.0, rgbs[0]), (11, 1.1, np.zeros((4, 4), np.uint8)), (12, 1.2, rgbs[2])]))
    assert [p.source for p in mixed] == [(10, 1.0), (11, 1.1), (12, 1.2)]
    assert mixed[0].ok and mixed[2].ok and "expected an (H, W, 3) uint8 frame" in mixed[1].error


def test_stream_releases_a_partial_batch_when_the_latency_budget_runs_out(artifact):
    det = Detector.load(artifact)
    produced = []

    def slow_camera():
        for i in range(4):
            produced.append(i)
            yield frame_image(i)
            time.sleep(0.4)

    seen_when_first_arrived = None
    for pred in det.stream(slow_camera(), batch_size=8, max_latency_ms=50):
        if seen_when_first_arrived is None:
            seen_when_first_arrived = len(produced)
    # With batch 8 and a 50 ms budget, frame 0 is scored long before the 4th frame exists.
    assert seen_when_first_arrived is not None and seen_when_first_arrived <= 2


def test_stream_reraises_the_source_error_after_earlier_frames(artifact):
    det = Detector.load(artifact)

    def broken():
        yield frame_image(0)
        yield frame_image(1)
        raise RuntimeError("camera unplugged")

    got = []
    with pytest.raises(RuntimeError, match="camera unplugged"):
        for p in det.stream(broken(), batch_size=8, bgr=True):
            got.append(p)
    assert len(got) == 2


# --- scans ----------------------------------------------------------------------------------------------------------
def test_scan_videos_images_rows_summary_and_png_equality(artifact, tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    Image.fromarray(frame_image(5)[..., ::-1]).save(media / "a_still.png")
    write_video(media / "b_clip.mp4", "mp4v", n=30, fps=10.0)
    write_video(media / "c_clip.avi", "MJPG", n=20, fps=5.0)
    (media / "d_broken.mkv").write_bytes(b"definitely not matroska" * 10)
    out, summary = tmp_path / "rows.csv", tmp_path / "summary.csv"
    assert main(["scan", str(media), "--model", str(artifact), "--out", str(out), "--every", "5",
                 "--summary", str(summary), "--top-concepts", "0", "--no-progress"]) == 0
    rows = read_rows(out)
    assert list(rows[0]) == ["path", "frame", "time_s", "p_synthetic", "prediction", "error", "provenance"]
    assert all(r["provenance"] == "" for r in rows if r["frame"])  # frames carry no file metadata
    by_path: dict[str, list[dict]] = {}
    for r in rows:
        by_path.setdefault(Path(r["path"]).name, []).append(r)
    assert list(by_path) == ["a_still.png", "b_clip.mp4", "c_clip.avi", "d_broken.mkv"]
    (still,) = by_path["a_still.png"]
    assert still["frame"] == "" and still["time_s"] == "" and still["error"] == ""
    assert [int(r["frame"]) for r in by_path["b_clip.mp4"]] == [0, 5, 10, 15, 20, 25]
    assert [float(r["time_s"]) for r in by_path["b_clip.mp4"]] == pytest.approx([0, 0.5, 1.0, 1.5, 2.0, 2.5])
    assert [float(r["time_s"]) for r in by_path["c_clip.avi"]] == pytest.approx([0, 1, 2, 3])
    (broken,) = by_path["d_broken.mkv"]
    assert broken["p_synthetic"] == "" and "cannot open video" in broken["error"]

    # Frames score exactly like the same pixels saved losslessly as PNG and scanned as images.
    frames = list(read_frames(media / "b_clip.mp4", every=5))
    pngs = []
    for f in frames:
        pngs.append(tmp_path / f"frame{f.index:03d}.png")
        Image.fromarray(f.rgb).save(pngs[-1])
    png_out = tmp_path / "png.csv"
    assert main(["scan", *map(str, pngs), "--model", str(artifact), "--out", str(png_out), "--no-progress"]) == 0
    png_p = [float(r["p_synthetic"]) for r in read_rows(png_out)]
    video_p = [float(r["p_synthetic"]) for r in by_path["b_clip.mp4"]]
    assert video_p == pytest.approx(png_p, abs=1e-6)

    # The summary agrees with the rows (threshold: the artifact's).
    threshold = Detector.load(artifact).threshold
    summaries = {Path(s["path"]).name: s for s in read_rows(summary)}
    assert list(summaries) == ["b_clip.mp4", "c_clip.avi", "d_broken.mkv"]
    for name in ("b_clip.mp4", "c_clip.avi"):
        s, ps = summaries[name], [float(r["p_synthetic"]) for r in by_path[name]]
        flagged = [r for r in by_path[name] if float(r["p_synthetic"]) >= threshold]
        assert int(s["frames_scored"]) == len(ps) and int(s["errors"]) == 0
        assert int(s["frames_decoded"]) == (30 if name == "b_clip.mp4" else 20)
        assert float(s["max_p_synthetic"]) == pytest.approx(max(ps), rel=1e-6)
        assert float(s["mean_p_synthetic"]) == pytest.approx(np.mean(ps), rel=1e-6)
        assert float(s["flagged_fraction"]) == pytest.approx(len(flagged) / len(ps))
        if flagged:
            assert float(s["first_flagged_time_s"]) == float(flagged[0]["time_s"])
            assert s["first_flagged_frame"] == flagged[0]["frame"]
        else:
            assert s["first_flagged_time_s"] == s["first_flagged_frame"] == ""
    assert summaries["d_broken.mkv"]["frames_scored"] == "0" and "cannot open video" in summaries["d_broken.mkv"]["error"]


def test_scan_summary_flags_with_threshold_and_jsonl_rows(artifact, tmp_path):
    clip = write_video(tmp_path / "clip.mp4", n=20, fps=10.0)
    Image.fromarray(frame_image(2)).save(tmp_path / "still.png")
    ps = [float(p.p_synthetic) for p in Detector.load(artifact).stream(read_frames(clip, every=1))]
    threshold = float(np.median(ps))  # about half the frames flagged
    out, summary = tmp_path / "r.jsonl", tmp_path / "s.jsonl"
    assert main(["scan", str(tmp_path / "still.png"), str(clip), "--model", str(artifact), "--every", "1",
                 "--threshold", repr(threshold), "--out", str(out), "--summary", str(summary), "--no-progress"]) == 0
    rows = read_rows(out)
    assert "frame" not in rows[0] and "time_s" not in rows[0]  # the still image
    frames = rows[1:]
    assert [r["frame"] for r in frames] == list(range(20))
    assert [r["p_synthetic"] for r in frames] == pytest.approx(ps, abs=1e-6)
    (s,) = read_rows(summary)
    first = next(r for r in frames if r["p_synthetic"] >= threshold)
    assert s["flagged"] == sum(p >= threshold for p in (r["p_synthetic"] for r in frames)) >= 10
    assert s["first_flagged_frame"] == first["frame"] and s["first_flagged_time_s"] == pytest.approx(first["time_s"])
    assert s["max_p_synthetic"] == pytest.approx(max(ps), abs=1e-6)


def test_scan_truncated_and_zero_frame_videos_give_error_rows(artifact, tmp_path):
    good = write_video(tmp_path / "good.avi", "MJPG", n=30, fps=10.0)
    data = good.read_bytes()
    (tmp_path / "trunc.avi").write_bytes(data[: len(data) // 2])
    write_video(tmp_path / "zero.avi", "MJPG", n=0)
    out = tmp_path / "r.csv"
    assert main(["scan", str(tmp_path / "trunc.avi"), str(tmp_path / "zero.avi"), str(good), "--model", str(artifact),
                 "--every", "1", "--out", str(out), "--no-progress"]) == 0
    rows = read_rows(out)
    trunc = [r for r in rows if r["path"].endswith("trunc.avi")]
    assert all(r["error"] == "" for r in trunc[:-1]) and len(trunc) >= 2
    assert "declared frames (truncated or corrupt file)" in trunc[-1]["error"] and trunc[-1]["frame"] == ""
    (zero,) = [r for r in rows if r["path"].endswith("zero.avi")]
    assert "no frames" in zero["error"]
    assert sum(r["path"].endswith("good.avi") and r["error"] == "" for r in rows) == 30


# --- live sources ---------------------------------------------------------------------------------------------------
class _MJPEG(http.server.BaseHTTPRequestHandler):
    frames_per_connection = 12

    def log_message(self, *a):
        pass

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.end_headers()
        for i in range(self.frames_per_connection):
            ok, buf = cv2.imencode(".jpg", frame_image(i))
            try:
                self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(buf)
                                 + buf.tobytes() + b"\r\n")
                self.wfile.flush()
            except OSError:
                return
            time.sleep(0.01)
        # then the connection closes: a dropped stream


@pytest.fixture
def mjpeg_server():
    srv = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _MJPEG)
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/stream.mjpg"
    srv.shutdown()
    srv.server_close()


def test_live_mjpeg_source_reconnects_and_stops_at_max_frames(artifact, mjpeg_server, tmp_path):
    out, summary = tmp_path / "live.csv", tmp_path / "live-summary.csv"
    assert main(["scan", mjpeg_server, "--model", str(artifact), "--every", "1", "--max-frames", "20",
                 "--timeout", "3", "--retries", "2", "--out", str(out), "--summary", str(summary), "--no-progress"]) == 0
    rows = read_rows(out)
    frame_rows = [r for r in rows if r["error"] == ""]
    assert [int(r["frame"]) for r in frame_rows] == list(range(20))  # indices continue across the reconnect
    times = [float(r["time_s"]) for r in frame_rows]
    assert times == sorted(times) and times[0] >= 0
    issues = [r for r in rows if r["error"]]
    assert len(issues) == 1 and "stream stalled or dropped after 12 frames; reconnecting" in issues[0]["error"]
    assert rows.index(issues[0]) == 12  # written where it happened, between frame 11 and frame 12
    (s,) = read_rows(summary)
    assert s["frames_scored"] == "20" and s["errors"] == "1"


def test_live_source_that_never_answers_gives_an_error_row(artifact, tmp_path):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts connections (the kernel does) but never says a word
    url = f"http://127.0.0.1:{silent.getsockname()[1]}/never"
    refused = socket.socket()
    refused.bind(("127.0.0.1", 0))
    refused_url = f"rtsp://user:pw@127.0.0.1:{refused.getsockname()[1]}/x"  # bound, not listening: refused
    out = tmp_path / "r.csv"
    try:
        assert main(["scan", url, refused_url, "camera:97", "--model", str(artifact), "--timeout", "1",
                     "--retries", "1", "--out", str(out), "--no-progress"]) == 0
    finally:
        silent.close()
        refused.close()
    rows = read_rows(out)
    assert [r["path"] for r in rows] == [url, refused_url.replace("user:pw@", "***@"), "camera:97"]
    assert "no answer within 1 s); gave up after 2 attempts" in rows[0]["error"]
    assert "gave up after 2 attempts" in rows[1]["error"]
    assert "cannot open camera 97" in rows[2]["error"]
    assert all(r["p_synthetic"] == "" for r in rows)


def test_cli_video_usage_errors(artifact, tmp_path, capsys):
    clip = write_video(tmp_path / "c.mp4", n=3)
    for bad in (["--fps", "0"], ["--every", "0"], ["--duration", "-1"], ["--max-frames", "0"], ["--retries", "-1"]):
        assert main(["scan", str(clip), "--model", str(artifact), *bad]) == 2
    with pytest.raises(SystemExit) as e:
        main(["scan", str(clip), "--model", str(artifact), "--fps", "1", "--every", "2"])
    assert e.value.code == 2
    assert main(["scan", "camera:x", "--model", str(artifact)]) == 2  # neither a file nor a live source
    assert main(["scan", str(clip), "--model", str(artifact), "--resume", "--out", str(tmp_path / "r.csv")]) == 2
    before = clip.read_bytes()
    assert main(["scan", str(clip), "--model", str(artifact), "--out", str(clip)]) == 2  # never overwrite an input
    assert clip.read_bytes() == before
    assert "destroy" in capsys.readouterr().err


def test_streams_do_not_import_torch():
    r = subprocess.run([sys.executable, "-c", "import sys; import sid_edge.streams, sid_edge.runtime.streaming; "
                        "print('torch' in sys.modules)"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


def test_ctrl_c_stops_a_live_scan_with_rows_and_summary_flushed(artifact, mjpeg_server, tmp_path):
    import signal

    out, summary = tmp_path / "live.csv", tmp_path / "live-summary.csv"
    code = ("import sys; from sid_edge.cli import main; sys.exit(main(sys.argv[1:]))")
    proc = subprocess.Popen([sys.executable, "-c", code, "scan", mjpeg_server, "--model", str(artifact), "--every", "1",
                             "--out", str(out), "--summary", str(summary), "--no-progress"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 6):
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130, proc.stderr.read()
    finally:
        proc.kill()
    text = out.read_text()
    assert text.endswith("\n")  # no half-written row
    rows = read_rows(out)
    frames = [r for r in rows if r["error"] == ""]
    assert len(frames) >= 5 and [int(r["frame"]) for r in frames] == list(range(len(frames)))
    (s,) = read_rows(summary)
    assert int(s["frames_scored"]) == len(frames)
