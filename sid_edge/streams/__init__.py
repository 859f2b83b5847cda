"""Video files, live sources (RTSP/HTTP/cameras) and streaming scans on top of the runtime (torch-free; OpenCV).

    >>> from sid_edge import Detector
    >>> from sid_edge.streams import read_frames
    >>> det = Detector.load("my-detector")
    >>> for pred in det.stream(read_frames("rtsp://camera/stream", fps=2.0), batch_size=4, max_latency_ms=200):
    ...     frame_index, time_s = pred.source
    ...     print(frame_index, time_s, pred.p_synthetic)

:mod:`.sources` says what an input is (image, video file, live source); :mod:`.reader` decodes and samples
frames by presentation time; :mod:`.scan` writes rows and per-video summaries for ``sid-edge scan``.
"""

from sid_edge.streams.reader import DEFAULT_FPS, Frame, FrameReader, StreamIssue, read_frames
from sid_edge.streams.scan import MediaScanSummary, VideoSummary, scan_media, write_summaries
from sid_edge.streams.sources import VIDEO_EXTENSIONS, MediaInput, VideoSourceError, discover_media, is_live_source

__all__ = ["DEFAULT_FPS", "Frame", "FrameReader", "StreamIssue", "read_frames", "MediaScanSummary", "VideoSummary",
           "scan_media", "write_summaries", "VIDEO_EXTENSIONS", "MediaInput", "VideoSourceError", "discover_media",
           "is_live_source"]
