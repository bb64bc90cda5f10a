"""The Exp-CoT dataset: the RAF-DB, AffectNet and official-annotation sources, the Parquet builder, the dataset card,
joining annotation-only rows to local images, and the (dry-run) push.

Fixture folders mimic the datasets' layouts with a few images each. Their images are synthetic faces (PNG data, under
the datasets' .jpg names) so that the engine's oracle reads their AUs back: the engine really runs over the RAF-DB
layout with its offline writer, and the builder then works from its records as it would from a real run.
"""

import json
import os
import re
import socket
import warnings

import pyarrow.parquet as pq
import pytest
from datasets import load_dataset
from huggingface_hub import DatasetCard
from PIL import Image

from dataset_builders.exp_cot.__main__ import build_parser as engine_parser
from dataset_builders.exp_cot.cot_text import format_cot
from dataset_builders.exp_cot.pipeline import EngineSettings
from dataset_builders.exp_cot.records import read_jsonl
from dataset_builders.exp_cot.runner import EngineConfig, run_engine
from dataset_builders.exp_cot.sources import (
    RAFDB_CODES,
    AffectNetSource,
    OfficialJsonSource,
    PartialDatasetWarning,
    RafdbSource,
    SyntheticSource,
)
from dataset_builders.exp_cot.synthetic_faces import sample_face, save_face
from dataset_builders.exp_cot_dataset import with_local_images
from dataset_builders.exp_cot_dataset.build import (
    MANIFEST,
    RedistributionError,
    build_publish_folder,
    check_full_build,
    files_to_publish,
    gather_inputs,
    main,
    push_folder,
)
from dataset_builders.exp_cot_dataset.configs import (
    CONVERSATION_FEATURES,
    RECORD_FEATURES,
    ImageFilesError,
    RecordInput,
    survey_inputs,
    uniform_parts,
    write_parquet_config,
)
from helpers import OFFICIAL_DIR, needs_official_files
from modeling_expllm.vocabulary import (
    AU_NAMES,
    EXPRESSION_LABELS,
    SEVEN_LABELS,
    cot_messages,
    fer_messages,
    prototype_vector,
)

RAFDB_CODE_OF = {label: code for code, label in RAFDB_CODES.items()}


def quiet_engine_run(source, output, **options):
    return run_engine(source, EngineConfig(output=output, progress=False, workers=1, **options))


# ---------------------------------------------------------------------------------------------------------------------
# Fixture folders


def make_rafdb(root, train=7, test=3, happy_but_sad=False):
    """A RAF-DB basic layout: labels in RAF-DB's codes, aligned faces under their *_aligned.jpg names."""
    lines = []
    for split, count in (("train", train), ("test", test)):
        for index in range(count):
            label = SEVEN_LABELS[index % len(SEVEN_LABELS)]
            face = sample_face(seed=7, label=label, index=index + (100 if split == "test" else 0), size=64)
            name = f"{split}_{index + 1:05d}" if split == "train" else f"{split}_{index + 1:04d}"
            if happy_but_sad and split == "train" and index == 0:  # its AUs read as happiness; its label says sadness
                face.au, label = prototype_vector("Happiness"), "Sadness"
            save_face(face, root / "basic" / "Image" / "aligned" / f"{name}_aligned.jpg")
            lines.append(f"{name}.jpg {RAFDB_CODE_OF[label]}")
    labels = root / "basic" / "EmoLabel" / "list_patition_label.txt"
    labels.parent.mkdir(parents=True, exist_ok=True)
    labels.write_text("\n".join(lines) + "\n")
    return root


def make_affectnet(root, per_class=1):
    """The Kaggle AffectNet layout: class00N folders and the two CSVs, with the path prefix the CSVs were written with
    and the codes as integers (train) and as floats (valid)."""
    for split, folder, csv_name in (("train", "train_class", "train-sample-affectnet.csv"),
                                    ("valid", "val_class", "valid-sample-affectnet.csv")):  # fmt: skip
        rows = ["image,emotion"]
        for code in range(1, len(EXPRESSION_LABELS) + 1):
            for copy in range(per_class):
                number = code * 100 + copy + (50 if split == "valid" else 0)
                face = sample_face(seed=8, label=EXPRESSION_LABELS[code - 1], index=number, size=64)
                file_name = f"{folder}/class{code:03d}/image{number:07d}.jpg"
                (root / file_name).parent.mkdir(parents=True, exist_ok=True)
                face.image.save(root / file_name, format="JPEG")
                rows.append(f"../input/affectnetsample/{file_name},{code if split == 'train' else f'{code}.0'}")
        (root / csv_name).write_text("\n".join(rows) + "\n")
    return root


def my_cot(label):
    """A three-part CoT in this project's own words, in the official files' layout."""
    return format_cot(
        "The left brow is lowered a little and the lip corners move; each movement hints at one feeling.",
        f"Taken together the movements settle on {label.lower()} more than on any other expression.",
        f"The face shows {label.lower()}.",
    )


def make_official(path, entries):
    path.write_text(json.dumps(entries))
    return path


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Fixture datasets and engine runs, made once for the module."""
    root = tmp_path_factory.mktemp("datasets")
    rafdb = make_rafdb(root / "RAF-DB", happy_but_sad=True)
    affectnet = make_affectnet(root / "AffectNet")
    # The engine over the RAF-DB layout (train split): max_rounds below the reveal, so the face whose AUs contradict
    # its label is never verified and ends "failed": a record without a CoT.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PartialDatasetWarning)
        quiet_engine_run(RafdbSource(rafdb, splits=["train"]), root / "rafdb_run", au_model="oracle",
                         settings=EngineSettings(reveal_after=3, max_rounds=3))  # fmt: skip
    synthetic_train, synthetic_test = root / "synthetic_train", root / "synthetic_test"
    quiet_engine_run(SyntheticSource(6, synthetic_train / "images" / "synthetic", split="train"), synthetic_train)
    quiet_engine_run(
        SyntheticSource(3, synthetic_test / "images" / "synthetic", split="test", start=6), synthetic_test
    )
    test_entries = [
        {"file_name": f"test_{i:04d}_aligned.jpg", "emo": label, "au": prototype_vector(label),
         "description": my_cot(label)}
        for i, label in [(1, "Neutral"), (2, "Happiness"), (3, "Sadness")]
    ]  # fmt: skip
    test_entries[2]["description"] = "A face without the three headers: the brows sink and the mouth turns down."
    official = make_official(root / "rafdb_emo_au_val_mini_description.json", test_entries)
    return {"root": root, "rafdb": rafdb, "affectnet": affectnet, "rafdb_run": root / "rafdb_run",
            "synthetic_runs": [synthetic_train, synthetic_test], "official_test": official}  # fmt: skip


def build(folders, output, **options):
    """A publish folder from the fixtures, warnings about partial datasets silenced (they are tested elsewhere)."""
    arguments = {key: options.pop(key) for key in list(options) if key in ("max_shard_size", "full", "repo_id")}
    inputs = gather_inputs(**options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PartialDatasetWarning)
        build_publish_folder(output, inputs, progress=False, **arguments)
    return output


@pytest.fixture(scope="module")
def local_build(folders, tmp_path_factory):
    """The researcher's local copy: RAF-DB from the engine run plus the official test file, AffectNet from its layout,
    RAF-DB and AffectNet images embedded; the synthetic faces from two engine runs."""
    output = tmp_path_factory.mktemp("local") / "exp-cot"
    return build(
        folders, output, rafdb=str(folders["rafdb"]), affectnet=str(folders["affectnet"]),
        official=[str(folders["official_test"])],
        runs={"rafdb": [folders["rafdb_run"]], "synthetic": folders["synthetic_runs"]}, embed_images=True,
    )  # fmt: skip


@pytest.fixture(scope="module")
def public_build(folders, tmp_path_factory):
    """The public form: annotations only, RAF-DB from the official file, AffectNet from its layout."""
    output = tmp_path_factory.mktemp("public") / "exp-cot"
    return build(folders, output, affectnet=str(folders["affectnet"]), official=[str(folders["official_test"])])


# ---------------------------------------------------------------------------------------------------------------------
# Sources


def test_rafdb_source_maps_its_codes_and_names_the_aligned_images(folders):
    with pytest.warns(PartialDatasetWarning, match=r"train 7 of 12,271; test 3 of 3,068"):
        samples = list(RafdbSource(folders["rafdb"]).samples())
    assert [(s.split, s.file_name) for s in samples[:2]] == [("train", "train_00001_aligned.jpg"),
                                                             ("train", "train_00002_aligned.jpg")]  # fmt: skip
    lines = (folders["rafdb"] / "basic/EmoLabel/list_patition_label.txt").read_text().split("\n")
    for sample, line in zip(samples, lines):
        assert sample.label == RAFDB_CODES[int(line.split()[1])]  # 1 Surprise ... 7 Neutral
        assert sample.id == f"rafdb/{sample.file_name}" and sample.path.is_file()
    assert [s.split for s in samples].count("test") == 3


def test_affectnet_source_reads_the_csvs_and_publishes_val_as_test(folders):
    with pytest.warns(PartialDatasetWarning, match=r"train 8 of 37,553; test 8 of 4,000"):
        samples = list(AffectNetSource(folders["affectnet"]).samples())
    assert {s.split for s in samples} == {"train", "test"}
    for sample in samples:
        code = int(sample.file_name.split("/")[1][len("class") :])
        assert sample.label == EXPRESSION_LABELS[code - 1]
        assert sample.file_name.startswith("train_class/" if sample.split == "train" else "val_class/")
        assert sample.path.is_file()


def test_official_source_tells_dataset_and_split_from_the_file_names(folders):
    source = OfficialJsonSource(folders["official_test"])
    with pytest.warns(PartialDatasetWarning, match=r"rafdb_emo_au_val_mini_description.json: .*test 3 of 3,068"):
        entries = list(source.entries())
    assert source.name == "rafdb" and source.root is None
    assert [(s.split, s.label, s.id) for s, _ in entries][0] == ("test", "Neutral", "rafdb/test_0001_aligned.jpg")
    assert entries[0][0].au == tuple(prototype_vector("Neutral")) and entries[0][1].startswith("**Key Observations:**")
    with pytest.raises(ValueError, match="has no image folder"):
        entries[0][0].open_image()


def test_the_engine_runs_over_the_new_sources(folders):
    choices = engine_parser()._subparsers._group_actions[0].choices
    assert {"rafdb", "affectnet", "official"} <= set(choices)
    records = read_jsonl(folders["rafdb_run"] / "records.jsonl")
    assert [r["status"] for r in records].count("done") == 6
    (failed,) = [r for r in records if r["status"] != "done"]
    assert failed["id"] == "rafdb/train_00001_aligned.jpg" and failed["reason"] == "verification_failed"


def test_the_engine_command_line_reads_an_official_file_with_its_aus(folders, tmp_path):
    """The official source on the engine's command line: AUs from the file (Img2AU skipped), images from the root."""
    from dataset_builders.exp_cot.__main__ import main as engine_main

    output = tmp_path / "official_run"
    arguments = ["official", str(folders["official_test"]), "--images", str(folders["rafdb"]), "--output", str(output)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PartialDatasetWarning)
        assert engine_main([*arguments, "--no-progress", "--workers", "1"]) == 0
    records = read_jsonl(output / "records.jsonl")
    assert [r["id"] for r in records] == [f"rafdb/test_000{i}_aligned.jpg" for i in (1, 2, 3)]
    assert all(r["au_model"] == "given" and r["status"] == "done" for r in records)
    assert records[1]["au"] == prototype_vector("Happiness")


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


BAD_RAFDB_LINES = [
    ("train_00001.jpg 9", r"list_patition_label.txt:1: RAF-DB label code '9' is not one of 1-7"),
    ("val_00001.jpg 1", r"list_patition_label.txt:1: RAF-DB image name 'val_00001.jpg' starts with neither"),
    ("../train_00001.jpg 1", r"list_patition_label.txt:1: file name '../train_00001.jpg' leaves the image root"),
    ("/etc/train_1.jpg 1", r"list_patition_label.txt:1: file name '/etc/train_1.jpg' is an absolute path"),
    ("train_00001.jpg 1\ntrain_00001.jpg 2", r"list_patition_label.txt:2: 'train_00001.jpg' is listed again"),
    ("train_00001.jpg", r"list_patition_label.txt:1: expected '<image name> <label code 1-7>'"),
]


@pytest.mark.parametrize("lines, message", BAD_RAFDB_LINES)
def test_bad_rafdb_label_files_are_refused_naming_file_and_line(tmp_path, lines, message):
    write(tmp_path / "basic/EmoLabel/list_patition_label.txt", lines + "\n")
    (tmp_path / "basic/Image/aligned").mkdir(parents=True)
    with pytest.raises(ValueError, match=message):
        list(RafdbSource(tmp_path).samples())


BAD_AFFECTNET_ROWS = [
    ("train_class/class003/image1.jpg,5", r"train-sample-affectnet.csv:2: train_class/class003/image1.jpg is in "
                                          r"class003/ but its emotion code is 5"),
    ("train_class/class001/image1.jpg,9", r"affectnet.csv:2: AffectNet emotion code '9' is not one of 1-8"),
    ("train_class/class001/image1.jpg,happy", r"emotion code 'happy'"),
    ("val_class/class001/image1.jpg,1", r"train-sample-affectnet.csv:2: image 'val_class/class001/image1.jpg' of the "
                                        r"train split is not under train_class/"),
    ("train_class/class001/../../x.jpg,1", r"leaves the image root"),
]  # fmt: skip


@pytest.mark.parametrize("row, message", BAD_AFFECTNET_ROWS)
def test_bad_affectnet_rows_are_refused_naming_file_and_line(tmp_path, row, message):
    write(tmp_path / "train-sample-affectnet.csv", "image,emotion\n" + row + "\n")
    with pytest.raises(ValueError, match=message):
        list(AffectNetSource(tmp_path, splits=["train"]).samples())


BAD_OFFICIAL_ENTRIES = [
    ({"file_name": "test_0001_aligned.jpg", "emo": "Boredom"}, r"entry 0 \(test_0001_aligned.jpg\), field 'emo': "
                                                               r"label 'Boredom' is not one of"),
    ({"file_name": "test_0001_aligned.jpg", "emo": "Anger", "au": [0.1] * 23}, r"field 'au': AUs must be a list"),
    ({"file_name": "test_0001_aligned.jpg", "emo": "Anger", "au": [2.0] * 24}, r"AU 0 must be a number in \[0, 1\]"),
    ({"file_name": "../test_0001_aligned.jpg", "emo": "Anger"}, r"entry 0: file name '../test_0001_aligned.jpg'"),
    ({"file_name": "test_0001_aligned.jpg", "emo": "Anger", "description": ""}, r"field 'description': expected"),
    ({"file_name": "val_class/class002/x.jpg", "emo": "Anger"}, r"is in class002/ but its emotion code is 7"),
    # A number is no label: RAF-DB's code 1 is Surprise, the canonical index 1 Happiness.
    ({"file_name": "test_0001_aligned.jpg", "emo": 1}, r"field 'emo': label 1 is not one of .*\(numeric codes"),
    ({"file_name": "test_0001_aligned.jpg", "emo": "Contempt"}, r"Contempt is not one of RAF-DB's seven labels"),
    ({"file_name": "test_0001\n_aligned.jpg", "emo": "Anger"}, r"holds a NUL or line-break character"),
    ({"file_name": "test_0001\x00_aligned.jpg", "emo": "Anger"}, r"holds a NUL or line-break character"),
]  # fmt: skip


@pytest.mark.parametrize("entry, message", BAD_OFFICIAL_ENTRIES)
def test_bad_official_entries_are_refused_naming_file_entry_and_field(tmp_path, entry, message):
    path = make_official(tmp_path / "annotations.json", [entry])
    with pytest.raises(ValueError, match=message):
        list(OfficialJsonSource(path, dataset="affectnet" if "class" in entry["file_name"] else "rafdb").entries())


def test_an_official_file_reports_every_bad_entry_and_its_declared_split(tmp_path):
    entries = [{"file_name": "train_00001_aligned.jpg", "emo": "Fear"}, {"file_name": "test_0002_aligned.jpg",
               "emo": "Fear"}, {"file_name": "train_00003_aligned.jpg", "emo": 4}]  # fmt: skip
    path = make_official(tmp_path / "rafdb_train.json", entries)
    with pytest.raises(ValueError) as error:
        list(OfficialJsonSource(path).entries())
    message = str(error.value)
    assert "2 bad line(s)" in message
    assert "entry 1 (test_0002_aligned.jpg): a test image in a train file" in message
    assert "entry 2 (train_00003_aligned.jpg), field 'emo': label 4" in message


def test_a_cot_that_concludes_another_label_is_warned_about(tmp_path):
    from dataset_builders.exp_cot.sources import ContradictingCotWarning

    sad = format_cot("The inner brows rise and the lip corners drop.", "Together they read as sorrow.",
                     "The expression is sadness.")  # fmt: skip
    path = make_official(tmp_path / "a.json", [{"file_name": "test_0001_aligned.jpg", "emo": "Anger",
                                                "description": sad}])  # fmt: skip
    with pytest.warns(ContradictingCotWarning, match=r"1 description\(s\) conclude another label .* Sadness"):
        list(OfficialJsonSource(path).entries())


def test_a_build_without_training_cots_says_so_and_train_description_files_are_taken(tmp_path, capsys):
    from datasets import load_dataset

    sad = format_cot("The inner brows rise and the lip corners drop.", "Together they read as sorrow.",
                     "The expression is sadness.")  # fmt: skip
    labels = [{"file_name": f"train_{i:05d}_aligned.jpg", "emo": "Sadness"} for i in range(1, 4)]
    labels_only, with_cots = tmp_path / "labels_only", tmp_path / "with_cots"
    labels_only.mkdir()
    with_cots.mkdir()
    make_official(labels_only / "rafdb_train.json", labels)
    build_publish_folder(tmp_path / "out-a", gather_inputs(official=[labels_only]), configs=["rafdb"], progress=False)
    assert "WARNING: the rafdb train split has 3 records and no CoT" in capsys.readouterr().err
    card = DatasetCard.load(tmp_path / "out-a" / "README.md")
    assert card.text.lstrip().splitlines()[2].startswith("> **This copy has no training CoTs.**")

    # Whoever has the official train description files (the test file's format) gets the training CoTs from them.
    make_official(with_cots / "rafdb_train.json", labels)
    make_official(with_cots / "rafdb_emo_au_train_mini_description.json",
                  [{"file_name": f"train_{i:05d}_aligned.jpg", "emo": "Sadness", "au": [0.1] * 24, "description": sad}
                   for i in range(1, 4)])  # fmt: skip
    inputs = gather_inputs(official=[with_cots])
    assert [os.path.basename(i.path) for i in inputs] == ["rafdb_emo_au_train_mini_description.json"]
    build_publish_folder(tmp_path / "out-b", inputs, configs=["rafdb"], progress=False)
    assert "no CoT" not in capsys.readouterr().err
    train = load_dataset(str(tmp_path / "out-b"), "rafdb", split="train")
    assert all(cot["text"] for cot in train["cot"])
    assert "This copy has no training CoTs" not in (tmp_path / "out-b" / "README.md").read_text()


def test_local_images_never_join_a_name_that_leaves_the_root(tmp_path):
    from datasets import Dataset

    root = tmp_path / "RAF-DB"
    (root / "basic" / "Image" / "aligned").mkdir(parents=True)
    for name in ("../../secret.jpg", "/etc/passwd"):
        rows = Dataset.from_dict({"image": [None], "source": ["rafdb"], "file_name": [name]})
        with pytest.raises(ValueError, match="leaves the image root|absolute path"):
            with_local_images(rows, rafdb=str(root))


def test_an_official_file_listing_an_image_twice_is_refused(tmp_path):
    path = make_official(tmp_path / "a.json", [{"file_name": "train_00001_aligned.jpg", "emo": "Fear"}] * 2)
    with pytest.raises(ValueError, match=r"a.json entry 1 \(train_00001_aligned.jpg\): listed again"):
        list(OfficialJsonSource(path).entries())


def test_bad_engine_records_are_refused_naming_file_and_line(folders, tmp_path):
    lines = (folders["rafdb_run"] / "records.jsonl").read_text().splitlines()
    record = json.loads(lines[1])
    for change, message in [
        ({"label": "Boredom"}, r"records.jsonl:2, field 'label': label 'Boredom'"),
        ({"source": "synthetic"}, rf"records.jsonl:2: record '{re.escape(record['id'])}' is from source 'synthetic'"),
        ({"file_name": "/abs.jpg"}, r"records.jsonl:2: file name '/abs.jpg' is an absolute path"),
        ({"status": "done", "cot": ""}, r"records.jsonl:2: record .* is done but lacks its CoT"),
    ]:
        run = tmp_path / f"run-{len(change)}-{next(iter(change))}"
        write(run / "records.jsonl", lines[0] + "\n" + json.dumps({**record, **change}) + "\n")
        with pytest.raises(ValueError, match=message):
            survey_inputs([RecordInput("rafdb", "engine", str(run))], progress=False)
    write(tmp_path / "cut" / "records.jsonl", lines[0] + "\n" + lines[1][:40])
    with pytest.raises(ValueError, match=r"records.jsonl:2: the last line is incomplete"):
        survey_inputs([RecordInput("rafdb", "engine", str(tmp_path / "cut"))], progress=False)


def test_an_id_given_by_two_inputs_is_refused(folders, tmp_path):
    duplicate = make_official(tmp_path / "rafdb_train.json", [{"file_name": "train_00002_aligned.jpg", "emo": "Fear"}])
    inputs = [
        RecordInput("rafdb", "engine", str(folders["rafdb_run"])),
        RecordInput("rafdb", "official", str(duplicate)),
    ]
    with pytest.raises(
        ValueError, match=r"id 'rafdb/train_00002_aligned.jpg' is given twice .* first in rafdb engine"
    ):
        survey_inputs(inputs, progress=False)


def test_missing_and_broken_images_are_all_listed_never_dropped(folders, tmp_path):
    rafdb = make_rafdb(tmp_path / "RAF-DB", train=4, test=1)
    aligned = rafdb / "basic/Image/aligned"
    (aligned / "train_00002_aligned.jpg").unlink()
    (aligned / "train_00003_aligned.jpg").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    inputs = gather_inputs(rafdb=str(rafdb))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PartialDatasetWarning)
        with pytest.raises(ImageFilesError) as error:
            build_publish_folder(tmp_path / "out", inputs, progress=False)
    message = str(error.value)
    assert "2 image file(s)" in message
    assert "train_00002_aligned.jpg: missing" in message and "train_00003_aligned.jpg: not a readable image" in message
    assert (tmp_path / "out" / "image_problems.txt").read_text().count("aligned.jpg") == 2
    assert not (tmp_path / "out" / "rafdb").exists()  # nothing was written

    with pytest.warns(PartialDatasetWarning, match="train 4 of 12,271"):
        code = main(["--rafdb", str(rafdb), "--output", str(tmp_path / "cli"), "--no-progress"])
    assert code == 2


def test_a_full_build_refuses_partial_datasets_and_missing_cots(folders, tmp_path):
    inputs = gather_inputs(rafdb=str(folders["rafdb"]), affectnet=str(folders["affectnet"]))
    with (
        pytest.warns(PartialDatasetWarning),
        pytest.raises(ValueError, match=r"not the full rafdb \(train 7 of 12,271"),
    ):
        build_publish_folder(tmp_path / "full", inputs, full=True, progress=False)

    def statistics(rafdb_train, cot):
        return {
            "rafdb": {"train": {"rows": rafdb_train, "cot": cot}},
            "affectnet": {"train": {"rows": 37553, "cot": 0}},
        }

    engine_input = [RecordInput("rafdb", "engine", "run")]
    check_full_build(statistics(12271, 12271), engine_input)  # 12,271 + 37,553 = 49,824, every engine record a CoT
    with pytest.raises(ValueError, match=r"49,823 training records in `all`, not 49,824"):
        check_full_build(statistics(12270, 12270), engine_input)
    with pytest.raises(ValueError, match=r"rafdb train: 12,000 of 12,271 records have a CoT"):
        check_full_build(statistics(12271, 12000), engine_input)


def test_contradictory_or_incomplete_build_options_are_refused(folders):
    with pytest.raises(ValueError, match="contradict"):
        gather_inputs(rafdb=str(folders["rafdb"]), embed_images=True, annotations_only=True)
    with pytest.raises(ValueError, match="give their folders"):
        gather_inputs(official=[str(folders["official_test"])], embed_images=True)
    with pytest.raises(NotADirectoryError, match="rafdb folder /nowhere not found"):
        gather_inputs(rafdb="/nowhere")
    with pytest.raises(ValueError, match="no records to build from"):
        gather_inputs()


def test_the_builder_writes_the_all_config_itself(folders, tmp_path):
    inputs = [RecordInput("rafdb", "engine", str(folders["rafdb_run"])),
              RecordInput("affectnet", "layout", str(folders["affectnet"]), str(folders["affectnet"]))]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PartialDatasetWarning)
        rows = write_parquet_config("all", inputs, tmp_path, progress=False)
    assert rows == {"train": 7 + 8, "test": 8}
    assert sorted(p.name for p in (tmp_path / "all").iterdir()) == [
        "test-00000-of-00001.parquet", "train-00000-of-00001.parquet",
    ]  # fmt: skip
    train = load_dataset("parquet", data_files=str(tmp_path / "all" / "train-*.parquet"), split="train")
    assert train.features == RECORD_FEATURES and train["source"] == ["rafdb"] * 7 + ["affectnet"] * 8


# ---------------------------------------------------------------------------------------------------------------------
# The local build: every config, loaded back as users load it


def test_every_config_loads_with_the_promised_features_and_counts(local_build):
    for config in ("rafdb", "affectnet", "all", "synthetic"):
        dataset = load_dataset(str(local_build), config)
        assert dataset["train"].features == RECORD_FEATURES, config
        assert dataset["train"].features["label"].names == list(EXPRESSION_LABELS)
        assert dataset["train"].features["au"].feature.id == ", ".join(AU_NAMES)
    conversations = load_dataset(str(local_build), "conversations")
    assert conversations["train"].features == CONVERSATION_FEATURES

    counts = {config: {split: len(rows) for split, rows in load_dataset(str(local_build), config).items()}
              for config in ("rafdb", "affectnet", "all", "synthetic", "conversations")}  # fmt: skip
    assert counts["rafdb"] == {"train": 7, "test": 3}
    assert counts["affectnet"] == {"train": 8, "test": 8}  # AffectNet's val published as test
    assert counts["all"] == {"train": 15, "test": 11}
    assert counts["synthetic"] == {"train": 6, "test": 3}
    # One FER row per record; one CoT row per record with a CoT: RAF-DB train 6 of 7 (one failed), test 2 + 1 kept
    # without headers, synthetic all; AffectNet (labels only) none.
    assert counts["conversations"] == {"train": (7 + 8 + 6) + (6 + 6), "test": (3 + 8 + 3) + (3 + 3)}


def test_rows_carry_labels_aus_cots_provenance_and_images(local_build, folders):
    rafdb = load_dataset(str(local_build), "rafdb")
    names = rafdb["train"].features["label"].names
    lines = (folders["rafdb"] / "basic/EmoLabel/list_patition_label.txt").read_text().split()
    expected = {f"rafdb/{lines[i][:-4]}_aligned.jpg": RAFDB_CODES[int(lines[i + 1])] for i in range(0, len(lines), 2)}
    engine_records = {r["id"]: r for r in read_jsonl(folders["rafdb_run"] / "records.jsonl")}
    for row in rafdb["train"]:
        assert names[row["label"]] == expected[row["id"]]
        assert isinstance(row["image"], Image.Image) and row["image"].size == (64, 64)
        record = engine_records[row["id"]]
        assert row["au"] == pytest.approx(record["au"], abs=1e-6)
        if record["status"] == "done":
            assert (
                row["cot"]["text"] == record["cot"]
                and row["cot"]["conclusion"] == record["cot_sections"]["Conclusion"]
            )
            assert row["engine"] == {"model": "offline-writer", "prompt_version": record["prompt_version"],
                                     "rounds": record["rounds"], "label_revealed": False}  # fmt: skip
        else:
            assert row["cot"] == dict.fromkeys(
                ("key_observations", "overall_interpretation", "conclusion", "text"), ""
            )
            assert row["engine"] == {"model": "", "prompt_version": "", "rounds": 0, "label_revealed": False}
    test = {row["id"]: row for row in rafdb["test"]}
    official = test["rafdb/test_0002_aligned.jpg"]
    assert official["cot"]["text"] == my_cot("Happiness") and official["cot"]["key_observations"].startswith(
        "The left"
    )
    assert official["engine"]["model"] == "" and official["au"] == pytest.approx(prototype_vector("Happiness"))
    unsectioned = test["rafdb/test_0003_aligned.jpg"]["cot"]
    assert unsectioned["text"].startswith("A face without") and unsectioned["key_observations"] == ""

    affectnet = load_dataset(str(local_build), "affectnet", split="test")
    for row in affectnet:
        assert row["file_name"].startswith("val_class/") and row["au"] is None and row["cot"]["text"] == ""
        assert names[row["label"]] == EXPRESSION_LABELS[int(row["file_name"].split("/")[1][5:]) - 1]
    assert sorted(affectnet["label"]) == list(range(8))


def test_conversations_are_the_vocabulary_conversations_and_stream(local_build):
    conversations = load_dataset(str(local_build), "conversations", split="train")
    records = {row["id"]: row for row in load_dataset(str(local_build), "all", split="train")}
    records |= {row["id"]: row for row in load_dataset(str(local_build), "synthetic", split="train")}
    names = conversations.features["label"].names
    kinds = {"fer": 0, "cot": 0}
    for row in conversations:
        record, label = records[row["id"]], names[row["label"]]
        kinds[row["kind"]] += 1
        assert row["label"] == record["label"] and row["source"] == record["source"]
        expected = fer_messages(label) if row["kind"] == "fer" else cot_messages(record["cot"]["text"], label)
        assert row["messages"] == uniform_parts(expected)
        assert row["messages"][0]["content"][0] == {"type": "image", "text": None}
        assert len(row["images"]) == 1 and isinstance(row["images"][0], Image.Image)
    assert kinds == {"fer": 21, "cot": 12}

    streamed = load_dataset(str(local_build), "conversations", split="train", streaming=True)
    first = next(iter(streamed))
    assert first["messages"] == conversations[0]["messages"] and isinstance(first["images"][0], Image.Image)
    streamed_ids = [row["id"] for row in load_dataset(str(local_build), "all", split="test", streaming=True)]
    assert streamed_ids == load_dataset(str(local_build), "all", split="test")["id"]


def test_the_trainer_reads_the_conversations_config(local_build):
    from training.samples import expression_source, mix_fer_and_cot

    source, entries = expression_source(load_dataset(str(local_build), "conversations", split="train"))
    listing = mix_fer_and_cot(entries)
    # The official listing: each of the 21 records' FER sample 3 times, each of the 12 CoTs once.
    assert sum(1 for _, kind in listing if kind == "cot") == 12 and len(listing) == 21 * 3 + 12


def test_the_official_listing_keeps_every_record_whatever_the_cot_coverage():
    from collections import Counter

    from training.samples import mix_fer_and_cot

    entries = [(index, "fer") for index in range(10)] + [(index, "cot") for index in (1, 4, 7, 8)]
    listing = mix_fer_and_cot(entries)
    counts = Counter(listing)
    assert all(counts[index, "fer"] == 3 for index in range(10))  # every record, not 12 FER samples of some
    assert all(counts[index, "cot"] == 1 for index in (1, 4, 7, 8)) and len(listing) == 34
    assert mix_fer_and_cot(entries, cot_repeats=0) == [(index, "fer") for index in range(10)] * 3  # the 1:0 ablation
    assert Counter(kind for _, kind in mix_fer_and_cot(entries, fer_repeats=0)) == {"cot": 4}  # and 0:1


def test_the_card_is_counted_from_the_data(local_build):
    card = DatasetCard.load(local_build / "README.md")
    data = card.data.to_dict()
    assert data["license"] == "other" and data["size_categories"] == ["n<1K"]
    assert data["license_name"] == "exp-cot-research-only" and data["license_link"] == "LICENSE.md"
    terms = (local_build / "LICENSE.md").read_text(encoding="utf-8")
    assert "`rafdb`: RAF-DB licence" in terms and "`affectnet`: AffectNet licence" in terms
    assert "image-text-to-text" in data["task_categories"]
    configs = {entry["config_name"]: entry for entry in data["configs"]}
    assert list(configs) == ["rafdb", "affectnet", "all", "synthetic", "conversations"] and configs["all"]["default"]
    assert configs["all"]["data_files"][0] == {"split": "train", "path": ["rafdb/train-*", "affectnet/train-*"]}
    infos = {entry["config_name"]: entry for entry in data["dataset_info"]}
    for config, info in infos.items():
        for split in info["splits"]:
            assert split["num_examples"] == len(load_dataset(str(local_build), config, split=split["name"]))
    text = card.text
    for fragment in ["| `rafdb` | train | 7 | 6 | 7 |", "verification_failed", "offline-writer", "oracle", "given",
                     "AffectNet-7", "val", "0.75 : 0.25", "Li, Shan", "Mollahosseini", "Lan, Xing",
                     "| 23 | Nose Wrinkle |", "research"]:  # fmt: skip
        assert fragment in text, fragment
    assert text.index("Left Eye Close") < text.index("Right Eye Close") < text.index("Nose Wrinkle")
    with Image.open(local_build / "label_distribution.png") as chart:
        assert chart.format == "PNG" and chart.size[0] > 400
    manifest = json.loads((local_build / MANIFEST).read_text())
    assert manifest["embedded_images"] == {"rafdb": True, "affectnet": True, "synthetic": True}
    assert manifest["cot_pairs"]["rafdb"] == {"train": 6, "test": 3}


def test_shards_are_small_row_groups_and_hold_no_local_paths(local_build, folders):
    for name, _ in files_to_publish(local_build):
        path = local_build / name
        data = path.read_bytes()
        assert str(folders["root"]).encode() not in data, name  # no absolute path of this machine is published
        if name.endswith(".parquet"):
            metadata = pq.ParquetFile(path).metadata
            assert all(metadata.row_group(i).num_rows <= 100 for i in range(metadata.num_row_groups))


# ---------------------------------------------------------------------------------------------------------------------
# The public form, local images, publishing


def test_the_public_form_holds_annotations_only_and_joins_local_images(public_build, folders, tmp_path):
    records = load_dataset(str(public_build), "rafdb", split="test")
    assert records["image"] == [None] * 3
    joined = with_local_images(records, rafdb=str(folders["rafdb"]))
    assert [image.size for image in joined["image"]] == [(64, 64)] * 3
    assert joined["cot"] == records["cot"]
    streamed = with_local_images(load_dataset(str(public_build), "affectnet", split="train", streaming=True),
                                 affectnet=str(folders["affectnet"]))  # fmt: skip
    assert all(isinstance(row["image"], Image.Image) for row in streamed)
    conversations = with_local_images(
        load_dataset(str(public_build), "conversations", split="test"), rafdb=str(folders["rafdb"]),
        affectnet=str(folders["affectnet"]),
    )  # fmt: skip
    assert all(isinstance(row["images"][0], Image.Image) for row in conversations)

    with pytest.raises(ValueError, match=r"from 'rafdb': give rafdb=<its root>"):
        with_local_images(records, affectnet=str(folders["affectnet"]))
    partial = make_rafdb(tmp_path / "RAF-DB", train=1, test=2)
    with pytest.raises(FileNotFoundError, match=r"(?s)1 image\(s\) .*test_0003_aligned.jpg"):
        with_local_images(records, rafdb=str(partial))


@pytest.fixture()
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("the dry run tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_the_dry_run_lists_the_files_and_stays_offline(public_build, no_network, capsys, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_never_used_in_a_dry_run")
    files = push_folder(public_build, "someone/exp-cot", revision="v1")
    names = [name for name, _ in files]
    assert names[:2] == ["README.md", "affectnet/test-00000-of-00001.parquet"]
    assert {"label_distribution.png", MANIFEST, "conversations/train-00000-of-00001.parquet"} <= set(names)
    assert not any(name.startswith(".") or "/." in name for name in names)
    output = capsys.readouterr().err
    assert "someone/exp-cot@v1" in output and "dry run: nothing uploaded" in output
    assert "README.md" in output and "hf_never_used" not in output


def test_embedded_licensed_images_go_to_private_or_gated_repositories_only(local_build, no_network):
    with pytest.raises(
        RedistributionError, match=r"embeds affectnet and rafdb images, which may not be redistributed"
    ):
        push_folder(local_build, "someone/exp-cot")
    assert push_folder(local_build, "someone/exp-cot", private=True)
    assert push_folder(local_build, "someone/exp-cot", gated=True)


def test_the_command_line_builds_the_synthetic_config(folders, tmp_path, no_network):
    output = tmp_path / "cli"
    runs = [arg for run in folders["synthetic_runs"] for arg in ("--synthetic-run", str(run))]
    assert main([*runs, "--output", str(output), "--no-progress", "--push-to-hub", "me/exp-cot-synthetic"]) == 0
    assert sorted(p.name for p in output.iterdir()) == [
        "README.md", "conversations", MANIFEST, "label_distribution.png", "synthetic",
    ]  # fmt: skip
    card = DatasetCard.load(output / "README.md")
    assert card.data.license == "apache-2.0" and "me/exp-cot-synthetic" in card.text
    assert load_dataset(str(output), "synthetic", split="test")[0]["image"].size == (224, 224)
    # A second build into the same folder leaves no stale config behind.
    assert main([*runs[:2], "--output", str(output), "--no-progress", "--annotations-only"]) == 0
    assert load_dataset(str(output), "synthetic", split="train")["image"] == [None] * 6
    assert main(["--output", str(output)]) == 2


# ---------------------------------------------------------------------------------------------------------------------
# The paper's corpus, from the official annotation files (annotations only: no image needed)


@pytest.mark.slow
@needs_official_files
def test_the_official_files_give_the_papers_counts(tmp_path):
    output = tmp_path / "official"
    inputs = gather_inputs(official=[OFFICIAL_DIR])
    assert sorted(os.path.basename(i.path) for i in inputs) == [
        "Affectnet_kaggle_train-sample-affectnet.json", "Affectnet_kaggle_valid-sample-affectnet.json",
        "rafdb_emo_au_val_mini_description.json", "rafdb_train.json",
    ]  # fmt: skip
    manifest = build_publish_folder(output, inputs, configs=["rafdb", "affectnet"], full=True, progress=False)
    assert manifest["configs"]["rafdb"] == {"train": 12271, "test": 3068}
    assert manifest["configs"]["affectnet"] == {"train": 37553, "test": 4000}
    card = DatasetCard.load(output / "README.md")
    all_info = next(info for info in card.data.to_dict()["dataset_info"] if info["config_name"] == "all")
    assert {s["name"]: s["num_examples"] for s in all_info["splits"]} == {"train": 49824, "test": 7068}
    assert manifest["cot_pairs"]["rafdb"] == {"train": 0, "test": 3068}  # the test descriptions are the CoTs
    affectnet = load_dataset(str(output), "affectnet", split="test")
    assert sum(1 for label in affectnet["label"] if label != 7) == 3500  # AffectNet-7
