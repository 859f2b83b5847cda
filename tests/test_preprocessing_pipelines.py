"""Preprocessing follows the head (issue 10): each named pipeline reproduces its ORIGINAL code path exactly.

* ``clip-cues``: torchvision composed as clip-cues' ``CLIPLargePatch14.get_transforms()`` (``Resize(336)`` at its
  default interpolation, ``CenterCrop(336)``, ``ToTensor()``, ``Normalize(CLIPImageProcessor mean/std)``) after
  ``.convert("RGB")``;
* ``hf-clip``: transformers' PIL ``CLIPImageProcessor`` (``CLIPImageProcessorPil`` in transformers 5) configured as
  openai/clip-vit-large-patch14-336's ``preprocessor_config.json``;
* ``open_clip``: ``open_clip.image_transform(336, is_train=False)`` (also covered at more sizes in test_imageio).

The runtime side is torch-free (numpy + Pillow); the references need torchvision / transformers / open_clip and are
skipped cleanly where absent.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from sid_edge.artifact.preprocessing import CLIP_MEAN, CLIP_STD, PIPELINES, Preprocessing
from sid_edge.runtime.images import decode_image, preprocess

from .conftest import CLIP_CUES_SAMPLES, clip_cues_file

SIZE = 336


# ------------------------------------------------------------------------------------------------ references
def _clip_cues_reference(img: Image.Image) -> np.ndarray:
    """clip-cues' transform, composed exactly as src/clip_cues/feature_extractor.py get_transforms() does."""
    tvt = pytest.importorskip("torchvision.transforms")
    transforms = tvt.Compose([tvt.Resize(SIZE), tvt.CenterCrop(SIZE), tvt.ToTensor(),
                              tvt.Normalize(mean=list(CLIP_MEAN), std=list(CLIP_STD))])
    return transforms(img.convert("RGB")).numpy()


def _hf_processor():
    transformers = pytest.importorskip("transformers")
    cls = getattr(transformers, "CLIPImageProcessorPil", None)  # transformers >= 5: the PIL backend
    if cls is None:  # transformers 4.x: the (slow) CLIPImageProcessor is the PIL one
        cls = transformers.CLIPImageProcessor
    # openai/clip-vit-large-patch14-336 preprocessor_config.json
    return cls(do_resize=True, size={"shortest_edge": SIZE}, resample=3, do_center_crop=True,
               crop_size={"height": SIZE, "width": SIZE}, do_rescale=True, rescale_factor=1 / 255,
               do_normalize=True, image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD), do_convert_rgb=True)


def _hf_reference(img: Image.Image) -> np.ndarray:
    return np.asarray(_hf_processor()(images=img, return_tensors="np")["pixel_values"][0])


def _open_clip_reference(img: Image.Image) -> np.ndarray:
    open_clip = pytest.importorskip("open_clip")
    tf = open_clip.image_transform(SIZE, is_train=False, mean=open_clip.OPENAI_DATASET_MEAN,
                                   std=open_clip.OPENAI_DATASET_STD)
    return tf(img).numpy()


REFERENCES = {"clip-cues": _clip_cues_reference, "hf-clip": _hf_reference, "open_clip": _open_clip_reference}


def _rule(name: str) -> Preprocessing:
    return Preprocessing.for_pipeline(name, SIZE)


def _assert_same(name: str, img: Image.Image, what: str) -> None:
    got = preprocess(img, _rule(name))
    ref = REFERENCES[name](img)
    assert got.shape == ref.shape == (3, SIZE, SIZE), what
    assert got.dtype == np.float32
    # The arithmetic is the same float32 operations in the same order: bit-identical, not merely close.
    diff = float(np.abs(got - ref.astype(np.float32)).max())
    assert diff == 0.0, f"{name} on {what}: max |Δpixel| {diff:.3g}"


# ------------------------------------------------------------------------------------------------ images
def _smooth(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A photo-like image (smooth gradients + some noise), uint8 HxWx3."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([np.sin(x / (7 + c) + y / (11 + c) + c) for c in range(3)], axis=-1) * 90 + 128
    return np.clip(base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)


# (width, height): resized long side minus 336 odd and even, both orientations, up- and downscaling, strips.
SHAPES = [
    (775, 513),   # the shared samples' size: 507x336, diff 171 -> crop 86 (round) vs 85 (floor)
    (513, 775),   # portrait of the same
    (640, 480),   # diff 112 even: all crop rules agree
    (1023, 683),  # 503x336, diff 167 -> 84 (round half to even: 83.5 -> 84) vs 83
    (683, 1023),
    (200, 151),   # upscale: 445x336, diff 109 -> 54 (54.5 -> half to even 54) vs 54: rules agree
    (3000, 94),   # strip (aspect just under the runtime's 32 limit): 10723x336, diff 10387 -> 5194 vs 5193
    (95, 3000),   # strip: 336x10610, diff 10274 even: rules agree
    (97, 3000),   # strip: 336x10391, diff 10055 -> 5028 (5027.5, half to even) vs 5027
    (336, 337),   # crop only, diff 1 -> 0 vs 0
    (339, 336),   # crop only, diff 3 -> 2 vs 1
]
IDS = [f"{w}x{h}" for w, h in SHAPES]


@pytest.mark.parametrize("name", list(PIPELINES))
@pytest.mark.parametrize("wh", SHAPES, ids=IDS)
def test_pipeline_matches_original_code_path_on_odd_sizes(name, wh):
    w, h = wh
    _assert_same(name, Image.fromarray(_smooth(h, w, seed=w + h)), f"{w}x{h}")


def test_crop_rules_really_differ_where_the_offsets_differ():
    """The parity above is not vacuous: on 775x513 the HF processor's crop starts one column left of torchvision's,
    and bilinear differs from bicubic; on 640x480 both crop rules agree."""
    img = Image.fromarray(_smooth(513, 775, seed=3))
    oc, hf = _rule("open_clip"), _rule("hf-clip")  # both bicubic, only the crop offset differs
    a, b = preprocess(img, oc), preprocess(img, hf)
    assert float(np.abs(a - b).max()) > 0.05
    np.testing.assert_array_equal(a[:, :, :-1], b[:, :, 1:])  # one-pixel shift of the same resized image
    even = Image.fromarray(_smooth(480, 640, seed=3))
    np.testing.assert_array_equal(preprocess(even, oc), preprocess(even, hf))
    assert float(np.abs(preprocess(even, oc) - preprocess(even, _rule("clip-cues"))).max()) > 0.01


@pytest.mark.parametrize("name", ["clip-cues", "hf-clip"])
def test_grayscale_16bit_and_exif_inputs(name, tmp_path):
    """Grayscale, 16-bit and EXIF-rotated files, decoded by the runtime's documented rule (EXIF applied, 16-bit
    scaled by 1/257), then preprocessed: identical to the original pipeline fed the same decoded image. Both
    originals convert to RGB before resizing, as the runtime does, so grayscale needs no special case."""
    gray = Image.fromarray(_smooth(513, 775, seed=5)[:, :, 0])
    gray.save(tmp_path / "gray.png")
    _assert_same(name, decode_image(tmp_path / "gray.png"), "grayscale 775x513")
    _assert_same(name, gray, "grayscale PIL image, mode L")

    wide = (_smooth(775, 513, seed=6)[:, :, 1].astype(np.uint16) * 257 + 128)
    Image.fromarray(wide).save(tmp_path / "gray16.png")  # mode I;16
    with Image.open(tmp_path / "gray16.png") as src:
        assert src.mode.startswith("I")
        # Why the runtime scales: Pillow's convert("RGB") clamps 16-bit values, so the naive path sees white.
        assert (np.asarray(src.convert("RGB")) == 255).mean() > 0.99
    decoded = decode_image(tmp_path / "gray16.png")
    np.testing.assert_array_equal(np.asarray(decoded)[:, :, 0], np.rint(wide / 257).astype(np.uint8))
    _assert_same(name, decoded, "16-bit grayscale 513x775")

    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to view
    buf = io.BytesIO()
    Image.fromarray(_smooth(513, 775, seed=7)).save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    upright = decode_image(buf.getvalue())
    assert upright.size == (513, 775)  # stored 775x513, shown portrait
    with Image.open(io.BytesIO(buf.getvalue())) as src:
        np.testing.assert_array_equal(np.asarray(upright), np.asarray(ImageOps.exif_transpose(src).convert("RGB")))
    _assert_same(name, upright, "EXIF-rotated JPEG")


def _samples() -> list[Path]:
    if not CLIP_CUES_SAMPLES.is_dir():
        pytest.skip(f"{CLIP_CUES_SAMPLES} absent (../shared is optional)")
    files = sorted(p for p in CLIP_CUES_SAMPLES.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not files:
        pytest.skip(f"{CLIP_CUES_SAMPLES} holds no images")
    return files


@pytest.mark.parametrize("name", list(PIPELINES))
def test_pipeline_matches_original_code_path_on_shared_samples(name):
    for p in _samples():
        with Image.open(p) as src:
            original = src.convert("RGB")  # the paper's loaders: Image.open(...).convert("RGB")
        _assert_same(name, original, p.name)
        _assert_same(name, decode_image(p), f"{p.name} (runtime decoder)")


# ------------------------------------------------------------------------------------------------ the recorded rule
def test_rule_round_trips_and_names_its_pipeline():
    for name in PIPELINES:
        rule = _rule(name)
        d = rule.to_dict()
        assert d["pipeline"] == name and d["rgb_conversion"] == "before resize"
        assert Preprocessing.from_dict(d) == rule
    assert _rule("clip-cues").to_dict()["interpolation"] == "bilinear"
    assert _rule("hf-clip").to_dict()["crop_offset"] == "floor"


def test_old_manifest_rule_without_crop_offset_reads_as_torchvision_round():
    old = {"size": 336, "mean": list(CLIP_MEAN), "std": list(CLIP_STD), "interpolation": "bicubic",
           "resize_mode": "shortest", "colour_order": "RGB", "crop": "center", "value_range": "0-1 then (x-mean)/std",
           "layout": "NCHW float32"}
    rule = Preprocessing.from_dict(old)
    assert rule.crop_offset == "round" and rule.pipeline == "open_clip"


@pytest.mark.parametrize("change, field", [
    ({"crop_offset": "ceil"}, "crop_offset"),
    ({"pipeline": "hf-clip"}, "pipeline"),  # bilinear + round is clip-cues, not hf-clip
    ({"rgb_conversion": "after resize"}, "rgb_conversion"),
    ({"interpolation": "lanczos"}, "interpolation"),
])
def test_bad_rule_refused_naming_the_field(change, field):
    d = {**_rule("clip-cues").to_dict(), **change}
    with pytest.raises(ValueError, match=f"Preprocessing.{field}"):
        Preprocessing.from_dict(d)
    with pytest.raises(ValueError, match="unknown preprocessing pipeline"):
        Preprocessing.for_pipeline("timm", SIZE)


# ------------------------------------------------------------------------------------------------ heads carry their rule
@pytest.mark.parametrize("ckpt, pipeline", [
    ("clip_orthogonal_synthclic.ckpt", "clip-cues"),
    ("linear_probe_synthclic.ckpt", "clip-cues"),
    ("cm_antonyms_synthclic.ckpt", "hf-clip"),
])
def test_imported_paper_heads_record_their_pipeline(ckpt, pipeline):
    pytest.importorskip("torch")
    from sid_edge.build.heads import head_preprocessing, load_head

    _, cfg = load_head(clip_cues_file(ckpt))
    assert cfg.preprocessing["pipeline"] == pipeline
    rule = head_preprocessing(cfg, _rule("open_clip"))
    assert rule == _rule(pipeline)
    assert rule.to_dict()["interpolation"] == ("bilinear" if pipeline == "clip-cues" else "bicubic")
    # on another backbone (warned at export) the pipeline stays, at that backbone's input size and mean/std
    small = head_preprocessing(cfg, Preprocessing.for_pipeline("open_clip", 64, (0.5,) * 3, (0.25,) * 3))
    assert (small.pipeline, small.size, small.mean, small.std) == (pipeline, 64, (0.5,) * 3, (0.25,) * 3)


# ------------------------------------------------------------------------------------------------ export serves the head's rule
def _head_with_rule(src: Path, dst: Path, pipeline: str | None, size: int) -> Path:
    """A copy of a saved head whose head.json records ``pipeline`` (None: an old head.json without the field)."""
    import json
    import shutil

    shutil.copytree(src, dst)
    raw = json.loads((dst / "head.json").read_text())
    raw.pop("preprocessing", None)
    if pipeline is not None:
        raw["preprocessing"] = Preprocessing.for_pipeline(pipeline, size).to_dict()
    (dst / "head.json").write_text(json.dumps(raw))
    return dst


def test_export_serves_the_rule_the_heads_were_trained_with(tiny_backbone, trained_head, concept_head, tmp_path):
    """An orthogonal head recorded as clip-cues next to a concept model recorded as hf-clip: the artifact serves
    clip-cues (the detector head's), and the concept outputs' deviation from their own pipeline is measured and
    recorded; an old head.json (no rule) keeps the backbone's open_clip rule, as before; --preprocessing
    overrides."""
    pytest.importorskip("torch")
    from sid_edge.artifact.manifest import read_manifest
    from sid_edge.export import export_detector

    size = tiny_backbone.preprocessing.size
    head = _head_with_rule(trained_head, tmp_path / "head", "clip-cues", size)
    cm = _head_with_rule(concept_head, tmp_path / "cm", "hf-clip", size)
    odd = tmp_path / "odd.png"  # resized long side minus the crop size is odd: the crop offsets differ
    w = 2 * size + 6  # -> (size + 3) x size: crop offset round(1.5) = 2 vs 3 // 2 = 1
    Image.fromarray(_smooth(2 * size, w, seed=1)).save(odd)
    assert int(size * w / (2 * size)) - size == 3
    m = export_detector(head, tmp_path / "a", backbone=tiny_backbone, concept_model=cm, parity_images=[odd])
    assert m.preprocessing.pipeline == "clip-cues" and m.preprocessing.interpolation == "bilinear"
    assert m.head.to_dict()["trained_with_preprocessing"] == "clip-cues"
    dev = m.concept_model.to_dict()["preprocessing"]
    assert dev["pipeline"] == "hf-clip" and dev["served_with"] == "clip-cues" and dev["inputs"] == 3
    assert 0.0 < dev["max_abs_concept_logit_diff"] < 10.0
    assert 0.0 < dev["max_abs_concept_probability_diff"] <= 1.0
    again = read_manifest(tmp_path / "a")
    assert again.preprocessing == m.preprocessing == Preprocessing.for_pipeline(
        "clip-cues", size, tiny_backbone.preprocessing.mean, tiny_backbone.preprocessing.std)

    old = export_detector(_head_with_rule(trained_head, tmp_path / "old", None, size), tmp_path / "b",
                          backbone=tiny_backbone, vocabulary=None)
    assert old.preprocessing == tiny_backbone.preprocessing and old.preprocessing.pipeline == "open_clip"

    forced = export_detector(head, tmp_path / "c", backbone=tiny_backbone, vocabulary=None, preprocessing="hf-clip")
    assert forced.preprocessing.pipeline == "hf-clip" and forced.preprocessing.crop_offset == "floor"
    assert forced.head.to_dict()["trained_with_preprocessing"] == "clip-cues"


def test_info_states_the_pipeline(tiny_backbone, trained_head, tmp_path, capsys):
    pytest.importorskip("torch")
    from sid_edge.cli import main
    from sid_edge.export import export_detector

    head = _head_with_rule(trained_head, tmp_path / "head", "clip-cues", tiny_backbone.preprocessing.size)
    export_detector(head, tmp_path / "a", backbone=tiny_backbone, vocabulary=None)
    assert main(["info", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "preprocessing: clip-cues" in out and "bilinear" in out and "offset round" in out


def test_train_records_the_pipeline_its_features_used_and_the_cache_keys_on_it(demo_data, tmp_path, capsys):
    """`sid-edge train` extracts with the paper's pipeline by default (clip-cues for an orthogonal head) and records
    it; another --preprocessing gives another feature-cache shard (features differ per pipeline) and another record."""
    pytest.importorskip("torch")
    import json

    from sid_edge.cli import main

    common = ["--data", str(demo_data), "--clip-model", "sid-edge-tiny", "--clip-pretrained", "none", "--epochs", "2",
              "--cache-dir", str(tmp_path / "cache")]
    assert main(["train", *common, "--out", str(tmp_path / "a")]) == 0
    assert main(["train", *common, "--out", str(tmp_path / "b"), "--preprocessing", "open_clip"]) == 0
    capsys.readouterr()
    a = json.loads((tmp_path / "a" / "head.json").read_text())["preprocessing"]
    b = json.loads((tmp_path / "b" / "head.json").read_text())["preprocessing"]
    assert (a["pipeline"], a["interpolation"], a["crop_offset"]) == ("clip-cues", "bilinear", "round")
    assert (b["pipeline"], b["interpolation"]) == ("open_clip", "bicubic")
    shards = sorted((tmp_path / "cache").rglob("*.npz"))
    assert len(shards) == 2
    with np.load(shards[0]) as x, np.load(shards[1]) as y:
        assert x["pooled"].shape == y["pooled"].shape
        assert float(np.abs(x["pooled"] - y["pooled"]).max()) > 0


def test_head_json_with_a_bad_rule_is_refused_naming_the_field(trained_head, tmp_path):
    pytest.importorskip("torch")
    from sid_edge.build.heads import load_head

    head = _head_with_rule(trained_head, tmp_path / "head", "clip-cues", 64)
    import json

    raw = json.loads((head / "head.json").read_text())
    raw["preprocessing"]["crop_offset"] = "ceil"
    (head / "head.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=r"head.json: preprocessing: Preprocessing.crop_offset"):
        load_head(head)
