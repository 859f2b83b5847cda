"""Shared fixtures: the tiny random-weight CLIP, a trained head, an exported artifact, real photographs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# ../shared beside the checkout (/work/main -> /work/shared); SID_EDGE_SHARED points elsewhere (git worktrees).
SHARED = Path(os.environ.get("SID_EDGE_SHARED") or Path(__file__).resolve().parents[2] / "shared")
CLIP_CUES_FIXTURES = SHARED / "fixtures" / "clip-cues"
CLIP_CUES_SAMPLES = SHARED / "samples" / "clip-cues"


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    # Never touch the user's cache (feature shards, default detector) from tests.
    os.environ["SID_EDGE_CACHE"] = str(tmp_path_factory.mktemp("sid-edge-cache"))


def clip_cues_file(name: str) -> Path:
    """A file from ../shared/fixtures/clip-cues, or skip the test when the shared folder is absent."""
    p = CLIP_CUES_FIXTURES / name
    if not p.is_file():
        pytest.skip(f"{p} not present (../shared is optional)")
    return p


@pytest.fixture(scope="session")
def tiny_backbone():
    from sid_edge.build.backbone import TINY_CLIP_MODEL, load_backbone

    import torch

    torch.manual_seed(0)
    return load_backbone(TINY_CLIP_MODEL, "none")


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> Path:
    from sid_edge.build.demo_data import write_demo_dataset

    return write_demo_dataset(tmp_path_factory.mktemp("demo") / "train", crops_per_photo=2, n_rendered=16)


@pytest.fixture(scope="session")
def photo_dir(tmp_path_factory) -> Path:
    from sid_edge.build.demo_data import write_photo_folder

    return write_photo_folder(tmp_path_factory.mktemp("photos"))


@pytest.fixture(scope="session")
def trained_head(tiny_backbone, demo_features, tmp_path_factory) -> Path:
    """A head trained through the library on the demo data with the tiny backbone."""
    from sid_edge.build.heads import HeadConfig, save_head
    from sid_edge.build.training import TrainConfig, train_head

    feats, labels = demo_features
    head, report = train_head(feats.pooled, labels, TrainConfig(k=4))
    cfg = HeadConfig(kind="orthogonal", k=4, feature_dim=tiny_backbone.feature_dim,
                     backbone=tiny_backbone.identity.to_dict(), training=report.to_dict())
    return save_head(head, cfg, tmp_path_factory.mktemp("head") / "head")


@pytest.fixture(scope="session")
def artifact(tiny_backbone, trained_head, tmp_path_factory) -> Path:
    from sid_edge.export import export_detector

    out = tmp_path_factory.mktemp("artifact") / "detector"
    export_detector(trained_head, out, backbone=tiny_backbone)
    return out


@pytest.fixture(scope="session")
def plain_artifact(tiny_backbone, trained_head, tmp_path_factory) -> Path:
    """An artifact without a vocabulary: only logit, p_synthetic, head_activations, image_embedding."""
    from sid_edge.export import export_detector

    out = tmp_path_factory.mktemp("plain-artifact") / "detector"
    export_detector(trained_head, out, backbone=tiny_backbone, vocabulary=None)
    return out


@pytest.fixture(scope="session")
def demo_features(tiny_backbone, demo_data):
    """(Features, labels) of the demo data with the tiny backbone (the feature cache makes this shared)."""
    import numpy as np

    from sid_edge.tools.datasets import read_labelled_images
    from sid_edge.build.features import extract_features

    items = read_labelled_images(demo_data)
    feats = extract_features(tiny_backbone, [it.path for it in items])
    return feats, np.array([items[i].label for i in feats.kept])


@pytest.fixture(scope="session")
def concept_directions(tiny_backbone):
    """The packaged vocabulary embedded by the tiny text tower: (concepts, directions [C,E])."""
    from sid_edge.build.concept_directions import embed_vocabulary
    from sid_edge.build.vocabulary import load_vocabulary

    concepts = load_vocabulary()
    return concepts, embed_vocabulary(tiny_backbone, concepts)


@pytest.fixture(scope="session")
def concept_head(tiny_backbone, demo_features, concept_directions, tmp_path_factory) -> Path:
    """A concept bottleneck model trained through the library on the demo data, saved as a head directory."""
    from sid_edge.build.concept_model import vocabulary_block
    from sid_edge.build.heads import concept_head_config, save_head
    from sid_edge.build.training import ConceptTrainConfig, train_concept_model

    feats, labels = demo_features
    concepts, directions = concept_directions
    model, report = train_concept_model(feats.embedding, labels, directions, ConceptTrainConfig(max_epochs=20))
    cfg = concept_head_config(model, vocabulary_block(concepts, "{}", "photographic.csv"),
                              tiny_backbone.identity.to_dict(), training=report.to_dict())
    return save_head(model, cfg, tmp_path_factory.mktemp("concept-head") / "head")


@pytest.fixture(scope="session")
def concept_artifact(tiny_backbone, trained_head, concept_head, tmp_path_factory) -> Path:
    """The orthogonal head's artifact with the concept model's outputs next to it."""
    from sid_edge.export import export_detector

    out = tmp_path_factory.mktemp("concept-artifact") / "detector"
    export_detector(trained_head, out, backbone=tiny_backbone, concept_model=concept_head)
    return out


# --- precision variants -----------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def synthclic_dir(tmp_path_factory) -> Path:
    """A small SynthCLIC-shaped dataset in the hub's parquet layout (data/<split>-00000-of-00001.parquet)."""
    from sid_edge.build.demo_data import FIDELITY_FIXTURE_PAIRS, write_synthclic_parquet

    return write_synthclic_parquet(tmp_path_factory.mktemp("synthclic"), FIDELITY_FIXTURE_PAIRS)


@pytest.fixture(scope="session")
def probe_artifact(tiny_backbone, synthclic_dir, tmp_path_factory) -> Path:
    """An FP32 artifact: the tiny backbone + a probe head fit on the parquet fixture's train split."""
    from sid_edge.tools.datasets import read_labelled_images
    from sid_edge.build.demo_data import fit_probe_head
    from sid_edge.export import export_detector
    from sid_edge.build.heads import save_head

    head, cfg = fit_probe_head(tiny_backbone, read_labelled_images(synthclic_dir, split="train"))
    head_dir = save_head(head, cfg, tmp_path_factory.mktemp("probe") / "head")
    out = tmp_path_factory.mktemp("probe-artifact") / "detector"
    export_detector(head_dir, out, backbone=tiny_backbone)
    return out


@pytest.fixture(scope="session")
def precision_artifact(probe_artifact, synthclic_dir, tmp_path_factory) -> Path:
    """``probe_artifact`` with FP16 and INT8 (default calibration) variants and their fidelity report."""
    import shutil

    from sid_edge.calibration.variants import add_precision_variants

    out = tmp_path_factory.mktemp("precisions") / "detector"
    shutil.copytree(probe_artifact, out)
    add_precision_variants(out, ["fp32", "fp16", "int8"], calibration_data=synthclic_dir, calibration_size=64)
    return out
