"""Tests for sid_edge.build.vocabulary: the packaged concept vocabulary and the torch-free CSV loader."""

from __future__ import annotations

import collections
import csv
import os
import pathlib
import re
import subprocess
import sys

import pytest

from sid_edge.build.vocabulary import Concept, concept_prompts, default_vocabulary_path, load_vocabulary

REQUIRED_CATEGORIES = (
    "colour",
    "light_exposure",
    "optics",
    "composition",
    "texture_detail",
    "noise_grain",
    "compression",
    "rendering_look",
)
ALLOWED_CATEGORIES = set(REQUIRED_CATEGORIES) | {"subject_scene"}
REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _write(path: pathlib.Path, rows: list[list[str]]) -> pathlib.Path:
    with path.open("w", encoding="utf-8", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return path


# --- the packaged vocabulary -------------------------------------------------------------------------------------


def test_default_path_is_packaged_csv():
    path = default_vocabulary_path()
    assert isinstance(path, pathlib.Path)
    assert path.is_file()
    assert path.name == "photographic.csv"
    assert path.parent.name == "vocabularies"


def test_packaged_vocabulary_header_is_exact():
    with default_vocabulary_path().open(encoding="utf-8", newline="") as fh:
        assert next(csv.reader(fh)) == ["attribute", "positive", "negative", "category"]


def test_packaged_vocabulary_loads():
    concepts = load_vocabulary()
    assert concepts == load_vocabulary(default_vocabulary_path())
    assert len(concepts) >= 100
    assert all(isinstance(c, Concept) for c in concepts)
    names = [c.name for c in concepts]
    assert len(names) == len(set(names))
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", n) for n in names), names
    for c in concepts:
        assert c.positive.strip() and c.negative.strip(), c
        assert c.positive != c.negative, c
        assert c.category in ALLOWED_CATEGORIES, c


def test_packaged_vocabulary_covers_every_category():
    counts = collections.Counter(c.category for c in load_vocabulary())
    for category in REQUIRED_CATEGORIES:
        assert counts[category] >= 8, (category, counts)


def test_packaged_vocabulary_has_prompts_with_commas_quoted():
    # At least one prompt contains a comma, proving the CSV quoting round-trips.
    assert any("," in c.positive or "," in c.negative for c in load_vocabulary())


# --- paper (clip-cues) format ------------------------------------------------------------------------------------

PAPER_HEADER = [
    "attribute_name",
    "positive",
    "negative",
    "positive_prompt",
    "negative_prompt",
    "category",
    "explanation",
]


def test_paper_format_loads(tmp_path):
    path = _write(
        tmp_path / "paper.csv",
        [
            PAPER_HEADER,
            ["glare", "strong glare", "no glare", "A picture with strong glare", "A picture with no glare", "light", "bright veiling"],
            ["grain", "coarse grain", "fine grain", "A picture with coarse, visible grain", "A picture with fine grain", "noise", ""],
            ["tilt", "tilted", "level", "A picture that is tilted", "A picture that is level", "composition", "camera roll"],
        ],
    )
    concepts = load_vocabulary(path)
    assert [c.name for c in concepts] == ["glare", "grain", "tilt"]
    assert concepts[0] == Concept("glare", "A picture with strong glare", "A picture with no glare", "light")
    assert concepts[1].positive == "A picture with coarse, visible grain"
    assert concepts[2].negative == "A picture that is level"
    assert [c.category for c in concepts] == ["light", "noise", "composition"]


def test_our_format_with_bom_whitespace_blank_lines_and_extra_columns(tmp_path):
    path = tmp_path / "ours.csv"
    path.write_text(
        "\ufeffattribute, positive ,negative,category,notes\n"
        'haze,"a photo with haze, thick",a photo with clear air, light_exposure ,x\n'
        "\n"
        "dots,a photo with dots,a photo without dots,texture_detail,\n",
        encoding="utf-8",
    )
    concepts = load_vocabulary(str(path))
    assert concepts == [
        Concept("haze", "a photo with haze, thick", "a photo with clear air", "light_exposure"),
        Concept("dots", "a photo with dots", "a photo without dots", "texture_detail"),
    ]


# --- errors ------------------------------------------------------------------------------------------------------


def test_missing_file_raises_file_not_found(tmp_path):
    path = tmp_path / "nope.csv"
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        load_vocabulary(path)


def test_missing_required_column(tmp_path):
    path = _write(tmp_path / "nocat.csv", [["attribute", "positive", "negative"], ["a", "p", "n"]])
    with pytest.raises(ValueError, match=r"nocat\.csv.*missing required column.*'category'"):
        load_vocabulary(path)


def test_missing_required_column_paper_format(tmp_path):
    path = _write(
        tmp_path / "paper_noprompt.csv",
        [["attribute_name", "positive", "negative", "negative_prompt", "category"], ["a", "p", "n", "np", "c"]],
    )
    with pytest.raises(ValueError, match=r"paper_noprompt\.csv.*missing required column.*'positive_prompt'"):
        load_vocabulary(path)


def test_empty_prompt_reports_row(tmp_path):
    path = _write(
        tmp_path / "empty_prompt.csv",
        [
            ["attribute", "positive", "negative", "category"],
            ["a", "a photo of a", "a photo without a", "colour"],
            ["b", "a photo of b", "   ", "colour"],
        ],
    )
    with pytest.raises(ValueError, match=r"empty_prompt\.csv.*empty prompt.*'negative'.*row 2") as info:
        load_vocabulary(path)
    assert "line 3" in str(info.value)


def test_empty_prompt_paper_format(tmp_path):
    path = _write(
        tmp_path / "paper_empty.csv",
        [PAPER_HEADER, ["a", "x", "y", "", "A picture without a", "colour", ""]],
    )
    with pytest.raises(ValueError, match=r"paper_empty\.csv.*empty prompt.*'positive_prompt'.*row 1"):
        load_vocabulary(path)


def test_duplicate_name(tmp_path):
    path = _write(
        tmp_path / "dupes.csv",
        [
            ["attribute", "positive", "negative", "category"],
            ["same", "p1", "n1", "optics"],
            ["other", "p2", "n2", "optics"],
            ["same", "p3", "n3", "optics"],
        ],
    )
    with pytest.raises(ValueError, match=r"dupes\.csv.*duplicate attribute name 'same'"):
        load_vocabulary(path)


def test_header_only_has_no_rows(tmp_path):
    path = _write(tmp_path / "header_only.csv", [["attribute", "positive", "negative", "category"]])
    with pytest.raises(ValueError, match=r"header_only\.csv.*no rows"):
        load_vocabulary(path)


def test_completely_empty_file(tmp_path):
    path = tmp_path / "blank.csv"
    path.write_text("", encoding="utf-8")
    with pytest.raises(ValueError, match=r"blank\.csv"):
        load_vocabulary(path)


# --- prompts -----------------------------------------------------------------------------------------------------


def test_concept_prompts_verbatim_and_template():
    concepts = [Concept("a", "pos a", "neg a", "colour"), Concept("b", "pos b", "neg b", "optics")]
    assert concept_prompts(concepts) == (["pos a", "pos b"], ["neg a", "neg b"])
    pos, neg = concept_prompts(concepts, template="{}.")
    assert pos == ["pos a.", "pos b."] and neg == ["neg a.", "neg b."]
    assert concept_prompts([]) == ([], [])
    with pytest.raises(ValueError):
        concept_prompts(concepts, template="no placeholder")


def test_concept_prompts_on_packaged_vocabulary_are_aligned():
    concepts = load_vocabulary()
    pos, neg = concept_prompts(concepts)
    assert len(pos) == len(neg) == len(concepts)
    assert pos[0] == concepts[0].positive and neg[-1] == concepts[-1].negative


# --- torch-free import -------------------------------------------------------------------------------------------


def test_import_does_not_pull_in_torch():
    code = (
        "import sys\n"
        "import sid_edge.build.vocabulary as v\n"
        "assert len(v.load_vocabulary()) >= 100\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'open_clip', 'torchvision'))\n"
        "assert not bad, bad\n"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
