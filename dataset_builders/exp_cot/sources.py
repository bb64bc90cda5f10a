"""Where the Exp-CoT Engine's inputs come from: face images with their ground-truth labels.

A source lists `Sample`s: a unique `id`, the `source` name, the `split`, the image's `file_name` relative to the
source's `root`, and the canonical `label` (any spelling a label file uses goes through
`modeling_expllm.vocabulary.normalize_label`). `sample.path` is the image file and `sample.open_image()` opens it.
A source that already knows a sample's action units (an annotation file with AUs) sets `sample.au`, and the engine
then skips Img2AU for it.

File names are checked once, here: a name that would leave the root (`..`, an absolute path) is refused with the file
and line it came from. A missing or broken image is not refused: the engine records it as a skipped sample, so one bad
file never stops a run.

The datasets of the paper have sources of their own: `RafdbSource` (RAF-DB's basic layout), `AffectNetSource` (the
Kaggle AffectNet subset) and `OfficialJsonSource` (the official ExpLLM annotation files, which may carry AUs and CoTs).
Their file names are those of the official files, relative to the dataset's image folder (`image_root`), and their
ids are `<dataset>/<file_name>`, so a record made from any of them names the same image. They check what they read:
label codes, repeated images, and the sizes of the splits (`check_split_counts` warns, with the numbers, when a copy is
partial). AffectNet's val split is published as the test split.

To add a source, write a class with a `name`, a one-line `help`, a `default_au_model`, `samples()`, and the hooks
of the command line `add_arguments(parser)` / `from_arguments(args)`, and list it in `SOURCES`: the engine's command
line gets a sub-command for it.
"""

import csv
import io
import json
import os
import re
import stat
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from PIL import Image

from modeling_expllm.vocabulary import EXPRESSION_LABELS, NUM_ACTION_UNITS, normalize_label

from .cot_text import conclusion_label


@dataclass(frozen=True)
class Sample:
    """One face image to turn into an Exp-CoT pair."""

    id: str
    source: str
    split: str
    file_name: str  # relative to root, "/"-separated
    label: str  # canonical, one of EXPRESSION_LABELS
    root: Path | None  # None when the source has no images (annotations only)
    au: tuple | None = None  # 24 AU intensities when the source already has them

    def identity(self):
        """The fields that name a sample in every record made of it."""
        return {
            "id": self.id,
            "source": self.source,
            "split": self.split,
            "file_name": self.file_name,
            "label": self.label,
        }

    @property
    def path(self):
        if self.root is None:  # an annotation file read without its images
            raise ValueError(f"sample {self.id!r} has no image folder: give the source the dataset's image root")
        return self.root / self.file_name

    def open_image(self):
        return Image.open(self.path)

    def image_problem(self):
        """Why the image must not be opened, or None: a path that is no regular file (a FIFO or a device named .jpg
        would block its reader forever) or a link that leads out of the image root. A missing file is left to the AU
        detector, which reports it as unreadable."""
        path = self.path
        try:
            mode = os.stat(path).st_mode  # through links
        except FileNotFoundError:
            return None
        except OSError as error:
            return f"{self.file_name}: cannot be read ({error})"
        root, target = os.path.realpath(self.root), os.path.realpath(path)
        if os.path.commonpath([root, target]) != root:
            return f"{self.file_name}: a link to {target}, outside the image root {root}; refused"
        if not stat.S_ISREG(mode):
            return f"{self.file_name}: not a regular file (a FIFO, device or folder); refused"
        return None


# ---------------------------------------------------------------------------------------------------------------------
# Checks every source uses


# A name that is already a clean relative POSIX path: no drive or backslash, no empty, "." or ".." part. Most names
# are; they skip the slower pathlib checks below (which dominate reading a 40k-entry annotation file otherwise).
_PLAIN_FILE_NAME = re.compile(r"(?!\.{1,2}(?:/|\Z))[^/\\:]+(?:/(?!\.{1,2}(?:/|\Z))[^/\\:]+)*")


def checked_file_name(name, where):
    """`name` as a relative POSIX path that stays inside its root; ValueError naming `where` otherwise."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{where}: empty file name")
    name = name.strip()
    if any(character in name for character in "\0\n\r"):
        raise ValueError(f"{where}: file name {name!r} holds a NUL or line-break character")
    if _PLAIN_FILE_NAME.fullmatch(name):
        return name
    windows = PureWindowsPath(name)
    if PurePosixPath(name).is_absolute() or windows.drive or windows.root:
        raise ValueError(f"{where}: file name {name!r} is an absolute path; file names are relative to the image root")
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if ".." in parts:
        raise ValueError(f"{where}: file name {name!r} leaves the image root ('..')")
    return "/".join(part for part in parts if part != ".")


def checked_label(value, where):
    """The canonical label of a label name or synonym; ValueError naming `where` and the value otherwise. Numbers are
    refused: codes differ between datasets (RAF-DB's 1 is Surprise, the canonical index 1 Happiness)."""
    label = normalize_label(value) if isinstance(value, str) else None
    if label is None:
        raise ValueError(
            f"{where}: label {value!r} is not one of {', '.join(EXPRESSION_LABELS)} or a synonym "
            "(numeric codes differ between datasets, so they are not accepted here)"
        )
    return label


def checked_au(values, where):
    """A tuple of 24 AU intensities in [0, 1]; ValueError naming `where` otherwise."""
    if not isinstance(values, list | tuple) or len(values) != NUM_ACTION_UNITS:
        raise ValueError(f"{where}: AUs must be a list of {NUM_ACTION_UNITS} numbers, got {values!r:.200}")
    for index, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
            raise ValueError(f"{where}: AU {index} must be a number in [0, 1], got {value!r}")
    return tuple(float(value) for value in values)


def listed(problems, shown=20):
    """The first `shown` problems, one an indented line, and how many more there are."""
    more = f"\n  ... and {len(problems) - shown} more" if len(problems) > shown else ""
    return "\n  " + "\n  ".join(problems[:shown]) + more


class LineProblems:
    """The bad lines (or entries) of one label or annotation file, raised together once the whole file is read, so
    that a user fixes the file in one go rather than one line per attempt."""

    def __init__(self, path):
        self.path = path
        self.problems = []

    def note(self, error):
        self.problems.append(str(error))

    def raise_if_any(self):
        if self.problems:
            raise ValueError(f"{self.path}: {len(self.problems)} bad line(s):{listed(self.problems)}")


def read_text(path):
    """A label or annotation file's text; a file that is not UTF-8 (a UTF-16 export, say) is named in the error."""
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{path}: not UTF-8 text ({error.reason} at byte {error.start}); save the file as UTF-8"
        ) from None


def unique_samples(samples):
    """The samples, refusing a second sample with an id already seen (each id gets exactly one record)."""
    seen = {}
    for sample in samples:
        if sample.id in seen:
            raise ValueError(f"two samples share the id {sample.id!r}: {seen[sample.id]} and {sample.file_name}")
        seen[sample.id] = sample.file_name
        yield sample


# ---------------------------------------------------------------------------------------------------------------------
# Synthetic faces


class SyntheticSource:
    """The project's synthetic faces (`synthetic_faces.generate_faces`), rendered into `root` as PNGs that carry their
    AUs, so that the oracle detector reads back the exact ground truth. A face already on disk is not written again."""

    name = "synthetic"
    help = "the project's synthetic faces, drawn from AU vectors (the oracle reads the AUs back exactly)"
    default_au_model = "oracle"

    def __init__(self, count, root, seed=0, split="train", start=0, size=224):
        if not isinstance(count, int) or count < 0:
            raise ValueError(f"count must be a non-negative integer, got {count!r}")
        self.count, self.root, self.seed, self.split, self.start = count, Path(root), seed, split, start
        self.size = size

    def samples(self) -> Iterator[Sample]:
        from dataset_builders.exp_cot.synthetic_faces import generate_faces, save_face

        self.root.mkdir(parents=True, exist_ok=True)
        for face in generate_faces(self.count, seed=self.seed, start=self.start, size=self.size):
            file_name = f"{face.id}.png"
            path = self.root / file_name
            if not path.exists():
                # Written under another name and renamed: a kill never leaves a half-written face behind.
                partial = path.with_name(f".{file_name}.partial")
                save_face(face, partial)
                os.replace(partial, path)
            yield Sample(face.id, self.name, self.split, file_name, face.label, self.root)

    @staticmethod
    def add_arguments(parser):
        parser.add_argument("--count", type=int, default=64, help="number of faces (default 64)")
        parser.add_argument("--face-seed", type=int, default=0, help="seed of the faces (default 0)")
        parser.add_argument("--start", type=int, default=0, help="index of the first face (default 0)")
        parser.add_argument("--split", default="train")
        parser.add_argument("--face-size", type=int, default=224, help="side of the rendered faces in pixels")
        parser.add_argument("--images", help="folder for the rendered faces (default: <output>/images/synthetic)")

    @classmethod
    def from_arguments(cls, args):
        root = args.images or os.path.join(args.output, "images", "synthetic")
        return cls(args.count, root, seed=args.face_seed, split=args.split, start=args.start, size=args.face_size)


# ---------------------------------------------------------------------------------------------------------------------
# A folder of images with a label file


class FolderSource:
    """Images under `root`, labelled by a file of one of two kinds:

    - CSV with a header: columns `file_name` and `label` are required, `split` and `id` optional;
    - anything else: lines `<file_name> <label>` separated by white space; blank lines and lines starting with # are
      skipped (a file name with spaces needs the CSV form).

    File names are relative to `root`. Labels are names or synonyms ("happy", "Anger"). Ids are `<name>/<file_name>`
    unless the CSV gives them.
    """

    help = "a folder of images with a label file (CSV, or '<file_name> <label>' lines)"
    default_au_model = "mediapipe"

    def __init__(self, root, labels_file, split="train", name="folder"):
        self.root, self.labels_file, self.split, self.name = Path(root), Path(labels_file), split, name
        if not self.root.is_dir():
            raise NotADirectoryError(f"image root {self.root} is not a folder")
        if not self.labels_file.is_file():
            raise FileNotFoundError(f"label file {self.labels_file} not found")

    def samples(self) -> Iterator[Sample]:
        text = read_text(self.labels_file)
        rows = self._csv_rows(text) if self.labels_file.suffix.lower() == ".csv" else self._text_rows(text)
        problems, seen_files, seen_ids = LineProblems(self.labels_file), {}, {}
        for where, row in rows:
            try:
                if isinstance(row, ValueError):
                    raise row
                file_name = checked_file_name(row.get("file_name"), where)
                if file_name in seen_files:
                    raise ValueError(f"{where}: {file_name!r} is listed again (first at {seen_files[file_name]})")
                label = checked_label(row.get("label"), where)
                sample_id = (row.get("id") or "").strip() or f"{self.name}/{file_name}"
                if sample_id in seen_ids:
                    raise ValueError(f"{where}: id {sample_id!r} is given again (first at {seen_ids[sample_id]})")
            except ValueError as error:
                problems.note(error)
                continue
            seen_files[file_name] = seen_ids[sample_id] = where
            split = (row.get("split") or "").strip() or self.split
            yield Sample(sample_id, self.name, split, file_name, label, self.root)
        problems.raise_if_any()

    def _csv_rows(self, text):
        reader = csv.DictReader(io.StringIO(text, newline=""))
        missing = {"file_name", "label"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(
                f"{self.labels_file}: the CSV header must name columns file_name and label; "
                f"missing {sorted(missing)} in {reader.fieldnames}"
            )
        for row in reader:
            yield f"{self.labels_file}:{reader.line_num}", row

    def _text_rows(self, text):
        for line_number, line in enumerate(text.splitlines(), start=1):
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            where = f"{self.labels_file}:{line_number}"
            if len(fields) != 2:
                yield where, ValueError(f"{where}: expected '<file_name> <label>', got {line.strip()!r}")
            else:
                yield where, {"file_name": fields[0], "label": fields[1]}

    @staticmethod
    def add_arguments(parser):
        parser.add_argument("root", help="folder the file names are relative to")
        parser.add_argument("--labels", required=True, help="label file: CSV (file_name,label[,split,id]) or lines")
        parser.add_argument("--split", default="train", help="split of rows that do not name one (default train)")
        parser.add_argument("--name", default="folder", help="source name in the records (default folder)")

    @classmethod
    def from_arguments(cls, args):
        return cls(args.root, args.labels, split=args.split, name=args.name)


# ---------------------------------------------------------------------------------------------------------------------
# The datasets of the paper: how big they are, and the check of what a source read

SPLITS = ("train", "test")
# Samples per split of the full datasets as the paper uses them (DESIGN section 3); AffectNet's val is the test split.
EXPECTED_COUNTS = {"rafdb": {"train": 12271, "test": 3068}, "affectnet": {"train": 37553, "test": 4000}}


class PartialDatasetWarning(UserWarning):
    """A source holds another number of samples than the full dataset: fine for a try-out, not the paper's build."""


def check_split_counts(dataset, counts, where, splits=SPLITS, strict=False):
    """Compare the samples per split read from `where` with the full dataset's; warn with the numbers when they differ,
    or raise ValueError with `strict`. Datasets without known sizes pass."""
    expected = EXPECTED_COUNTS.get(dataset)
    if expected is None:
        return
    differences = [
        f"{split} {counts.get(split, 0):,} of {expected[split]:,}"
        for split in splits
        if counts.get(split, 0) != expected[split]
    ]
    if not differences:
        return
    message = f"{where}: not the full {dataset} ({'; '.join(differences)} samples)"
    if strict:
        raise ValueError(message)
    warnings.warn(f"{message}; a partial copy does for a try-out, not for the paper's build", PartialDatasetWarning, 2)


def _checked_splits(splits):
    splits = tuple(splits)
    unknown = [split for split in splits if split not in SPLITS]
    if unknown or not splits:
        raise ValueError(f"splits must be some of {SPLITS}, got {splits!r}")
    return splits


# ---------------------------------------------------------------------------------------------------------------------
# RAF-DB

RAFDB_LABEL_FILE = "basic/EmoLabel/list_patition_label.txt"  # sic: the dataset's own spelling
RAFDB_IMAGE_FOLDER = "basic/Image/aligned"
# RAF-DB's own label codes, which are not in the canonical order.
RAFDB_CODES = {1: "Surprise", 2: "Fear", 3: "Disgust", 4: "Happiness", 5: "Sadness", 6: "Anger", 7: "Neutral"}


class RafdbSource:
    """RAF-DB's basic layout: `basic/EmoLabel/list_patition_label.txt` lines `train_00001.jpg 5` (codes 1..7 in
    RAFDB_CODES) and the aligned faces `basic/Image/aligned/train_00001_aligned.jpg`. The split is the name's prefix.

    File names are the aligned images' names relative to `basic/Image/aligned` (`train_00001_aligned.jpg`, as in the
    official annotation files); ids are `rafdb/<file_name>`.
    """

    name = "rafdb"
    help = "RAF-DB basic: EmoLabel/list_patition_label.txt and the aligned faces (train and test splits)"
    default_au_model = "mediapipe"

    def __init__(self, root, splits=SPLITS):
        self.dataset_root = Path(root)
        self.labels_file = self.dataset_root / RAFDB_LABEL_FILE
        self.root = self.image_root(root)
        self.splits = _checked_splits(splits)
        if not self.labels_file.is_file():
            raise FileNotFoundError(f"RAF-DB label file {self.labels_file} not found (expected the basic layout)")
        if not self.root.is_dir():
            raise NotADirectoryError(f"RAF-DB image folder {self.root} not found (expected the basic layout)")

    @staticmethod
    def image_root(root):
        """The folder RAF-DB file names are relative to, under the dataset's root."""
        return Path(root) / RAFDB_IMAGE_FOLDER

    def samples(self) -> Iterator[Sample]:
        counts, seen, problems = Counter(), {}, LineProblems(self.labels_file)
        for line_number, line in enumerate(read_text(self.labels_file).splitlines(), start=1):
            fields = line.split()
            if not fields:
                continue
            where = f"{self.labels_file}:{line_number}"
            try:
                if len(fields) != 2:
                    raise ValueError(f"{where}: expected '<image name> <label code 1-7>', got {line.strip()!r}")
                name = checked_file_name(fields[0], where)
                if name in seen:
                    raise ValueError(f"{where}: {name!r} is listed again (first at line {seen[name]})")
                split, label = rafdb_split(name, where), rafdb_label(fields[1], where)
            except ValueError as error:
                problems.note(error)
                continue
            seen[name] = line_number
            counts[split] += 1
            if split in self.splits:
                file_name = rafdb_aligned_name(name)
                yield Sample(f"{self.name}/{file_name}", self.name, split, file_name, label, self.root)
        problems.raise_if_any()
        check_split_counts(self.name, counts, str(self.labels_file), self.splits)

    @staticmethod
    def add_arguments(parser):
        parser.add_argument("root", help="the RAF-DB folder (holding basic/EmoLabel and basic/Image/aligned)")
        parser.add_argument("--splits", nargs="+", choices=SPLITS, default=list(SPLITS), help="default: both")

    @classmethod
    def from_arguments(cls, args):
        return cls(args.root, splits=args.splits)


def rafdb_split(name, where):
    """The split ("train" or "test") a RAF-DB image name belongs to, from its prefix."""
    for split in SPLITS:
        if name.startswith(f"{split}_") and "/" not in name:
            return split
    raise ValueError(f"{where}: RAF-DB image name {name!r} starts with neither 'train_' nor 'test_'")


def rafdb_aligned_name(name):
    """`train_00001.jpg` -> `train_00001_aligned.jpg`, the aligned face the label file's name stands for."""
    stem, suffix = os.path.splitext(name)
    return name if stem.endswith("_aligned") else f"{stem}_aligned{suffix}"


def rafdb_label(code, where):
    try:
        return RAFDB_CODES[int(code)]
    except (ValueError, KeyError):
        codes = ", ".join(f"{number} {label}" for number, label in RAFDB_CODES.items())
        raise ValueError(f"{where}: RAF-DB label code {code!r} is not one of 1-7 ({codes})") from None


# ---------------------------------------------------------------------------------------------------------------------
# AffectNet (the Kaggle subset the paper uses)

AFFECTNET_LABEL_FILES = {"train": "train-sample-affectnet.csv", "test": "valid-sample-affectnet.csv"}
AFFECTNET_IMAGE_FOLDERS = {"train": "train_class", "test": "val_class"}


class AffectNetSource:
    """The Kaggle AffectNet subset: `train-sample-affectnet.csv` / `valid-sample-affectnet.csv` (columns `image`, the
    path of a file under `train_class/` or `val_class/` with whatever prefix the CSV was written with, and `emotion`,
    1..8) and the images `train_class/class00N/*.jpg`, `val_class/class00N/*.jpg`, where code N is canonical label N-1.

    The val split is published as the test split. File names are relative to the AffectNet folder
    (`train_class/class006/image0034330.jpg`, as in the official annotation files); ids are `affectnet/<file_name>`.
    A row whose class folder disagrees with its emotion code is refused.
    """

    name = "affectnet"
    help = "AffectNet's Kaggle subset: *-sample-affectnet.csv with train_class/ and val_class/ (val = test split)"
    default_au_model = "mediapipe"

    def __init__(self, root, splits=SPLITS):
        self.root = self.image_root(root)
        self.splits = _checked_splits(splits)
        if not self.root.is_dir():
            raise NotADirectoryError(f"AffectNet folder {self.root} not found")
        for split in self.splits:
            if not (self.root / AFFECTNET_LABEL_FILES[split]).is_file():
                raise FileNotFoundError(f"AffectNet label file {self.root / AFFECTNET_LABEL_FILES[split]} not found")

    @staticmethod
    def image_root(root):
        """The folder AffectNet file names are relative to: the dataset's root itself."""
        return Path(root)

    def samples(self) -> Iterator[Sample]:
        counts, seen = Counter(), {}
        for split in self.splits:
            labels_file = self.root / AFFECTNET_LABEL_FILES[split]
            problems = LineProblems(labels_file)
            reader = csv.DictReader(io.StringIO(read_text(labels_file), newline=""))
            missing = {"image", "emotion"} - set(reader.fieldnames or ())
            if missing:
                raise ValueError(
                    f"{labels_file}: the CSV header must name columns image and emotion; "
                    f"missing {sorted(missing)} in {reader.fieldnames}"
                )
            for row in reader:
                where = f"{labels_file}:{reader.line_num}"
                try:
                    file_name = affectnet_file_name(row["image"], split, where)
                    if file_name in seen:
                        raise ValueError(f"{where}: {file_name!r} is listed again (first at {seen[file_name]})")
                    label = affectnet_label(row["emotion"], file_name, where)
                except ValueError as error:
                    problems.note(error)
                    continue
                seen[file_name] = where
                counts[split] += 1
                yield Sample(f"{self.name}/{file_name}", self.name, split, file_name, label, self.root)
            problems.raise_if_any()
        check_split_counts(self.name, counts, str(self.root), self.splits)

    @staticmethod
    def add_arguments(parser):
        parser.add_argument("root", help="the AffectNet folder (holding the two CSVs, train_class/ and val_class/)")
        parser.add_argument("--splits", nargs="+", choices=SPLITS, default=list(SPLITS), help="default: both")

    @classmethod
    def from_arguments(cls, args):
        return cls(args.root, splits=args.splits)


def affectnet_file_name(value, split, where):
    """The part of a CSV `image` path from its split folder on: `train_class/class001/image0000005.jpg`."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: empty image path")
    parts = value.strip().replace("\\", "/").split("/")
    folder = AFFECTNET_IMAGE_FOLDERS[split]
    if folder not in parts:
        raise ValueError(f"{where}: image {value!r} of the {split} split is not under {folder}/")
    file_name = checked_file_name("/".join(parts[parts.index(folder) :]), where)
    if file_name.count("/") != 2:
        raise ValueError(f"{where}: image {value!r} is not {folder}/class00N/<file>")
    return file_name


def affectnet_label(code, file_name, where):
    """The canonical label of an emotion code 1..8 ("6" or "6.0"), which must match the file's class00N folder."""
    try:
        number = float(code)
    except (TypeError, ValueError):
        number = None
    if number is None or not number.is_integer() or not 1 <= number <= len(EXPRESSION_LABELS):
        raise ValueError(f"{where}: AffectNet emotion code {code!r} is not one of 1-{len(EXPRESSION_LABELS)}")
    number = int(number)
    folder = file_name.split("/")[1]
    if folder != f"class{number:03d}":
        raise ValueError(f"{where}: {file_name} is in {folder}/ but its emotion code is {number} (class{number:03d})")
    return EXPRESSION_LABELS[number - 1]


# ---------------------------------------------------------------------------------------------------------------------
# The official ExpLLM annotation files

OFFICIAL_DATASETS = ("rafdb", "affectnet")
IMAGE_ROOTS = {"rafdb": RafdbSource.image_root, "affectnet": AffectNetSource.image_root}


def image_root(dataset, root):
    """The folder a dataset's file names are relative to, given the dataset's root as its users keep it."""
    return IMAGE_ROOTS.get(dataset, Path)(root)


class ContradictingCotWarning(UserWarning):
    """An annotation file holds CoTs whose Conclusion names another label than the entry's."""


def declared_split(json_file):
    """The split an official file's name declares: "train" (`rafdb_train.json`), "test" (`..._val_...`, `valid-...`,
    `test`), or None when the name says neither."""
    words = re.split(r"[^a-z]+", Path(json_file).stem.lower())
    if "train" in words:
        return "train"
    if {"val", "valid", "validation", "test"} & set(words):
        return "test"
    return None


def official_dataset_and_split(file_name):
    """(dataset, split) of a file name of the official files: `train_00001_aligned.jpg` is RAF-DB train,
    `val_class/class003/image0003861.jpg` is AffectNet test; None for any other name."""
    parts = file_name.split("/")  # a checked file name: "/"-separated, no empty parts
    if len(parts) == 3 and parts[0] in AFFECTNET_IMAGE_FOLDERS.values():
        return "affectnet", next(split for split, folder in AFFECTNET_IMAGE_FOLDERS.items() if folder == parts[0])
    if len(parts) == 1:
        for split in SPLITS:
            if file_name.startswith(f"{split}_"):
                return "rafdb", split
    return None


class OfficialJsonSource:
    """An official ExpLLM annotation file: a JSON list of `{"file_name", "emo"[, "au"][, "description"]}` entries
    (`rafdb_train.json`, `Affectnet_kaggle_valid-sample-affectnet.json`, `rafdb_emo_au_val_mini_description.json`...).

    The dataset and each entry's split follow from the file names (`train_00001_aligned.jpg` is RAF-DB train,
    `val_class/...` AffectNet test). `au` (24 FEAFA intensities) becomes the sample's AUs, so the engine skips Img2AU;
    `entries()` also gives each `description` (an Exp-CoT) for the dataset builder. `root` is the dataset's folder (the
    RAF-DB or AffectNet root, as for their own sources); without it the samples have no images (annotations only).
    """

    help = "an official ExpLLM annotation JSON (file_name, emo[, au, description]) with the dataset's image root"
    default_au_model = "mediapipe"

    def __init__(self, json_file, root=None, dataset=None):
        self.json_file = Path(json_file)
        if not self.json_file.is_file():
            raise FileNotFoundError(f"annotation file {self.json_file} not found")
        if dataset is not None and dataset not in OFFICIAL_DATASETS:
            raise ValueError(f"dataset must be one of {OFFICIAL_DATASETS}, got {dataset!r}")
        text = read_text(self.json_file)
        try:
            self._entries = json.loads(text)
        except ValueError as error:
            raise ValueError(f"{self.json_file}: not a JSON file ({error})") from None
        if not isinstance(self._entries, list) or not self._entries:
            raise ValueError(f"{self.json_file}: expected a non-empty JSON list of annotation entries")
        self.name = dataset or self._dataset_of_first_entry()
        self.declared_split = declared_split(self.json_file)
        self.root = None if root is None else image_root(self.name, root)
        if self.root is not None and not self.root.is_dir():
            raise NotADirectoryError(f"image folder {self.root} of {self.json_file} not found")

    def _dataset_of_first_entry(self):
        entry = self._entries[0]
        name = entry.get("file_name") if isinstance(entry, dict) else None
        found = official_dataset_and_split(name) if isinstance(name, str) else None
        if found is None:
            raise ValueError(
                f"{self.json_file} entry 0: cannot tell the dataset from file name {name!r}; "
                f"give it ({' or '.join(OFFICIAL_DATASETS)})"
            )
        return found[0]

    def entries(self) -> Iterator[tuple[Sample, str | None]]:
        """(sample, description or None) for every entry, checked; every bad entry is reported, together."""
        seen, counts, problems, contradictions = {}, Counter(), LineProblems(self.json_file), []
        for index, entry in enumerate(self._entries):
            try:
                sample, description = self._checked_entry(index, entry, seen)
            except ValueError as error:
                problems.note(error)
                continue
            concluded = conclusion_label(description) if description is not None else None
            if concluded not in (None, sample.label):
                contradictions.append(f"entry {index} ({sample.file_name}) concludes {concluded}")
            seen[sample.file_name] = index
            counts[sample.split] += 1
            yield sample, description
        problems.raise_if_any()
        if contradictions:
            warnings.warn(
                f"{self.json_file}: {len(contradictions)} description(s) conclude another label than their 'emo' "
                f"(e.g. {'; '.join(contradictions[:3])}): training on them teaches the model to contradict itself",
                ContradictingCotWarning,
                2,
            )
        check_split_counts(self.name, counts, str(self.json_file), tuple(counts))

    def _checked_entry(self, index, entry, seen):
        where = f"{self.json_file} entry {index}"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected an object with file_name and emo, got {entry!r:.120}")
        file_name = checked_file_name(entry.get("file_name"), where)
        where = f"{where} ({file_name})"
        found = official_dataset_and_split(file_name)
        if found is None or found[0] != self.name:
            raise ValueError(f"{where}: not a file name of {self.name} (train/test split unknown)")
        declared = self.declared_split
        if declared is not None and found[1] != declared:
            raise ValueError(f"{where}: a {found[1]} image in a {declared} file (the file's name says {declared})")
        if file_name in seen:
            raise ValueError(f"{where}: listed again (first as entry {seen[file_name]})")
        label = checked_label(entry.get("emo"), f"{where}, field 'emo'")
        if self.name == "rafdb" and label not in RAFDB_CODES.values():
            raise ValueError(f"{where}, field 'emo': {label} is not one of RAF-DB's seven labels")
        if self.name == "affectnet":  # the class folder names the label too; both must agree
            affectnet_label(EXPRESSION_LABELS.index(label) + 1, file_name, f"{where}, field 'emo' ({label})")
        au = checked_au(entry["au"], f"{where}, field 'au'") if entry.get("au") is not None else None
        description = entry.get("description")
        if description is not None and (not isinstance(description, str) or not description.strip()):
            raise ValueError(f"{where}, field 'description': expected non-empty text, got {description!r:.120}")
        sample = Sample(f"{self.name}/{file_name}", self.name, found[1], file_name, label, self.root, au=au)
        return sample, description

    def samples(self) -> Iterator[Sample]:
        for sample, _ in self.entries():
            yield sample

    def records(self, required=()) -> list[dict]:
        """Every entry, checked, as `{"file_name", "emo", "au", "description"}` (canonical label, AUs as a list; None
        where absent). `required` names the optional fields every entry must have, e.g. `("au", "description")`."""
        records = []
        for sample, description in self.entries():
            au = None if sample.au is None else list(sample.au)
            record = {"file_name": sample.file_name, "emo": sample.label, "au": au, "description": description}
            missing = [field for field in required if record[field] is None]
            if missing:
                raise ValueError(f"{self.json_file}: {sample.file_name} has no {' and no '.join(missing)}")
            records.append(record)
        return records

    @staticmethod
    def add_arguments(parser):
        parser.add_argument("json_file", help="the annotation file (a JSON list of file_name, emo[, au, description])")
        parser.add_argument("--images", required=True, help="the dataset's folder: the RAF-DB or AffectNet root")
        parser.add_argument("--dataset", choices=OFFICIAL_DATASETS, help="default: told by the file names")

    @classmethod
    def from_arguments(cls, args):
        return cls(args.json_file, root=args.images, dataset=args.dataset)


SOURCES = {
    "synthetic": SyntheticSource,
    "folder": FolderSource,
    "rafdb": RafdbSource,
    "affectnet": AffectNetSource,
    "official": OfficialJsonSource,
}
