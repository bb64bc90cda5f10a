"""The engine's input sources: synthetic faces and a folder of images with a label file."""

import os

import pytest
from PIL import Image

from dataset_builders.exp_cot.au_detection import OracleAUDetector
from dataset_builders.exp_cot.sources import (
    SOURCES,
    FolderSource,
    Sample,
    SyntheticSource,
    checked_au,
    checked_file_name,
    unique_samples,
)
from modeling_expllm.vocabulary import EXPRESSION_LABELS


@pytest.fixture()
def image_root(tmp_path):
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    for name in ("a.png", "b.png", "sub/c.png"):
        Image.new("RGB", (8, 8), (120, 90, 60)).save(root / name)
    return root


def test_csv_label_file_gives_canonical_labels_splits_and_paths(image_root, tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("file_name,label,split\na.png,happy,train\nb.png, Anger ,test\nsub/c.png,sorrow,\n")
    samples = list(FolderSource(image_root, labels, split="val", name="mine").samples())
    assert [(s.id, s.split, s.label) for s in samples] == [
        ("mine/a.png", "train", "Happiness"),
        ("mine/b.png", "test", "Anger"),
        ("mine/sub/c.png", "val", "Sadness"),
    ]
    assert all(s.source == "mine" for s in samples)
    assert samples[2].path == image_root / "sub" / "c.png"
    with samples[2].open_image() as image:
        assert image.size == (8, 8)


def test_text_label_file_with_comments_and_blank_lines(image_root, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("# file label\n\na.png Surprise\n./sub/c.png fearful\n")
    samples = list(FolderSource(image_root, labels).samples())
    assert [(s.file_name, s.label) for s in samples] == [("a.png", "Surprise"), ("sub/c.png", "Fear")]
    assert {s.split for s in samples} == {"train"}


@pytest.mark.parametrize(
    "line, message",
    [
        ("a.png bored", "labels.txt:2: label 'bored' is not one of"),
        ("a.png 3", "label '3' is not one of"),
        ("../outside.png Happiness", "leaves the image root"),
        ("sub/../../outside.png Happiness", "leaves the image root"),
        ("/etc/passwd Happiness", "is an absolute path"),
        ("a.png Happiness extra", "labels.txt:2: expected '<file_name> <label>'"),
    ],
)
def test_bad_label_file_lines_are_refused_naming_file_line_and_value(image_root, tmp_path, line, message):
    labels = tmp_path / "labels.txt"
    labels.write_text(f"b.png Neutral\n{line}\n")
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        list(FolderSource(image_root, labels).samples())


def test_csv_without_required_columns_and_repeated_files_are_refused(image_root, tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("image,emotion\na.png,Happiness\n")
    with pytest.raises(ValueError, match="must name columns file_name and label"):
        list(FolderSource(image_root, labels).samples())
    labels.write_text("file_name,label\na.png,Happiness\na.png,Anger\n")
    with pytest.raises(ValueError, match=r"labels.csv:3: 'a.png' is listed again \(first at .*labels.csv:2\)"):
        list(FolderSource(image_root, labels).samples())


def test_missing_root_or_label_file_is_a_clear_error(image_root, tmp_path):
    with pytest.raises(NotADirectoryError, match="nowhere"):
        FolderSource(tmp_path / "nowhere", tmp_path / "labels.csv")
    with pytest.raises(FileNotFoundError, match="labels.csv"):
        FolderSource(image_root, tmp_path / "labels.csv")


def test_a_missing_image_is_listed_not_refused(image_root, tmp_path):
    """A missing file is the engine's skipped record, not a reason to stop listing."""
    labels = tmp_path / "labels.txt"
    labels.write_text("gone.png Happiness\n")
    (sample,) = FolderSource(image_root, labels).samples()
    assert not sample.path.exists()


def test_checked_file_name_normalises_and_refuses_escapes():
    assert checked_file_name("./x/./y.png", "here") == "x/y.png"
    assert checked_file_name("x\\y.png", "here") == "x/y.png"
    for bad in ("", "  ", "C:\\faces\\a.png", "x/../../y.png"):
        with pytest.raises(ValueError, match="here"):
            checked_file_name(bad, "here")


def test_checked_au_refuses_wrong_lengths_and_values():
    assert checked_au([0] * 24, "row 1") == (0.0,) * 24
    with pytest.raises(ValueError, match="row 1: AUs must be a list of 24"):
        checked_au([0.1] * 23, "row 1")
    with pytest.raises(ValueError, match="row 2: AU 5 must be a number in"):
        checked_au([0.0] * 5 + [1.5] + [0.0] * 18, "row 2")


def test_synthetic_source_renders_faces_whose_oracle_aus_are_exact(tmp_path):
    from dataset_builders.exp_cot.synthetic_faces import generate_faces

    source = SyntheticSource(10, tmp_path / "faces", seed=3)
    samples = list(source.samples())
    faces = list(generate_faces(10, seed=3))
    assert [s.id for s in samples] == [f.id for f in faces]
    assert [s.label for s in samples] == [f.label for f in faces]
    assert set(s.label for s in samples) == set(EXPRESSION_LABELS)
    detector = OracleAUDetector()
    for sample, face in zip(samples, faces):
        assert sample.source == "synthetic" and sample.split == "train" and sample.au is None
        assert detector.detect(sample.path).au == face.au
    # Listing again reuses the files on disk and leaves no partial files behind.
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "faces").iterdir()}
    assert [s.id for s in source.samples()] == [s.id for s in samples]
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "faces").iterdir()} == before
    assert not [name for name in os.listdir(tmp_path / "faces") if "partial" in name]


def test_synthetic_source_start_continues_the_same_sequence(tmp_path):
    whole = [s.id for s in SyntheticSource(6, tmp_path / "a").samples()]
    tail = [s.id for s in SyntheticSource(3, tmp_path / "b", start=3).samples()]
    assert tail == whole[3:]


def test_unique_samples_refuses_a_repeated_id(tmp_path):
    sample = Sample("x", "s", "train", "a.png", "Happiness", tmp_path)
    with pytest.raises(ValueError, match="two samples share the id 'x'"):
        list(unique_samples([sample, sample]))


def test_every_source_has_the_command_line_hooks():
    for name, source_class in SOURCES.items():
        assert callable(source_class.add_arguments) and callable(source_class.from_arguments), name
        assert source_class.help and "\n" not in source_class.help
        assert source_class.default_au_model in ("oracle", "mediapipe")
