"""The default detector: OpenAI CLIP ViT-L/14-336 (through open_clip) fused with the paper's released SynthCLIC
orthogonal head, built once and cached in the user's cache directory.

Building needs the ``train`` extra and a network (or local files named by environment variables):

* ``SID_EDGE_DEFAULT_HEAD``  — a local copy of ``clip_orthogonal_synthclic.ckpt`` (still verified by sha256);
* ``SID_EDGE_CLIP_WEIGHTS``  — a local open_clip state dict of ViT-L-14-336 OpenAI weights (e.g.
  ``open_clip_model.safetensors`` from the Hugging Face repo ``timm/vit_large_patch14_clip_336.openai``).

Using the cached artifact afterwards is torch-free.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


from sid_edge.artifact.files import sha256_file
from sid_edge.artifact.locations import cache_root, default_detector_dir
from sid_edge.artifact.names import DEFAULT_CLIP_MODEL as CLIP_MODEL
from sid_edge.artifact.names import DEFAULT_CLIP_PRETRAINED as CLIP_PRETRAINED
from sid_edge.artifact.names import MANIFEST_NAME
HEAD_NAME = "clip_orthogonal_synthclic.ckpt"
HEAD_COMMIT = "ad9eea9a0f287ab8869e7f16aeef4a6878d1059d"
HEAD_URL = f"https://github.com/marco-willi/clip-cues/raw/{HEAD_COMMIT}/data/checkpoints/{HEAD_NAME}"
HEAD_SHA256 = "0ddba778343c20186c6d3ab06198a956da3572058806cfbbf287a275f97ca5e4"


class DefaultDetectorUnavailable(RuntimeError):
    """The default detector is not cached and could not be built; the message says what and how to proceed."""


_OFFLINE_HELP = (
    "To work offline, point at local files: set SID_EDGE_DEFAULT_HEAD to a copy of {head} and SID_EDGE_CLIP_WEIGHTS "
    "to the open_clip ViT-L-14-336 OpenAI weights file, or build your own artifact with\n"
    "  sid-edge export --head HEAD.ckpt --clip-pretrained WEIGHTS_FILE --out DIR\n"
    "and scan with --model DIR."
).format(head=HEAD_NAME)


def fetch_head(url: str | None = None, timeout: float = 30.0) -> Path:
    """Return a verified local copy of the clip-cues SynthCLIC head (sha256 checked), downloading it if needed.

    Downloads go through pooch (``pooch.retrieve`` with the published sha256 as ``known_hash``), into
    ``<cache root>/downloads``. Raises DefaultDetectorUnavailable when it cannot be fetched or its sha256 differs.
    """
    local = os.environ.get("SID_EDGE_DEFAULT_HEAD")
    if local:
        path = Path(local)
        if not path.is_file():
            raise DefaultDetectorUnavailable(f"SID_EDGE_DEFAULT_HEAD={local}: no such file")
    else:
        import pooch
        import requests

        url = url or os.environ.get("SID_EDGE_HEAD_URL") or HEAD_URL
        try:
            path = Path(pooch.retrieve(url, known_hash=f"sha256:{HEAD_SHA256}", fname=HEAD_NAME,
                                       path=cache_root() / "downloads",
                                       downloader=pooch.HTTPDownloader(timeout=timeout)))
        except ValueError as e:  # pooch: the downloaded file's hash differs (the file is removed)
            raise DefaultDetectorUnavailable(f"{url}: downloaded file's sha256 does not match the published {HEAD_SHA256}") from e
        except (requests.RequestException, OSError) as e:
            raise DefaultDetectorUnavailable(
                f"could not fetch the default head {HEAD_NAME} from {url} ({type(e).__name__}).\n{_OFFLINE_HELP}"
            ) from e
    digest = sha256_file(path)
    if digest != HEAD_SHA256:
        raise DefaultDetectorUnavailable(f"{path}: sha256 {digest} is not the published {HEAD_SHA256} of {HEAD_NAME}")
    return path


def ensure_default_detector() -> Path:
    """Path of the cached default artifact, building it first if absent. Raises DefaultDetectorUnavailable."""
    target = default_detector_dir()
    if (target / MANIFEST_NAME).is_file():
        return target
    try:
        from sid_edge.build.backbone import load_backbone
        from sid_edge.export import export_detector
    except ImportError as e:
        raise DefaultDetectorUnavailable(
            f"the default detector is not built yet and building it needs the training extra ({e.name} is missing): "
            f"pip install 'sid-edge[train]', or pass --model DIR"
        ) from e
    head = fetch_head()
    weights = os.environ.get("SID_EDGE_CLIP_WEIGHTS") or CLIP_PRETRAINED
    try:
        backbone = load_backbone(CLIP_MODEL, weights)
    except (RuntimeError, ValueError) as e:
        raise DefaultDetectorUnavailable(f"could not load the CLIP weights {CLIP_MODEL}/{weights}: {e}\n{_OFFLINE_HELP}") from e
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".building-") as tmp:
        export_detector(head, Path(tmp) / "artifact", backbone=backbone)
        os.replace(Path(tmp) / "artifact", target)
    return target
