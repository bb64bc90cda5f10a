"""Where the Exp-CoT Engine's inputs come from: face images with their ground-truth labels.

A source lists `Sample`s: a unique `id`, the `source` name, the `split`, the image's `file_name` relative to the
source's `root`, and the canonical `label` (any spelling a label file uses goes through
`modeling_expllm.vocabulary.normalize_label`). `sample.path` is the image file and `sample.open_image()` opens it.
A source that already knows a sample's action units (an annotation file with AUs) sets `sample.au`, and the engine
then skips Img2AU for it.

File names are checked once, here: a name that would leave the root (`..`, an absolute path) is refused with the file
and line it came from. A missing or broken image is not refused: the engine records it as a skipped sample, so one bad
file never stops a run.

To add a source, write a class with a `name`, a one-line `help`, a `default_au_model`, `samples()`, and the hooks
of the command line `add_arguments(parser)` / `from_arguments(args)`, and list it in `SOURCES`: the engine's command
line gets a sub-command for it.
"""

import csv
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from PIL import Image

from modeling_expllm.vocabulary import EXPRESSION_LABELS, NUM_ACTION_UNITS, normalize_label


@dataclass(frozen=True)
class Sample:
    """One face image to turn into an Exp-CoT pair."""

    id: str
    source: str
    split: str
    file_name: str  # relative to root, "/"-separated
    label: str  # canonical, one of EXPRESSION_LABELS
    root: Path
    au: tuple | None = None  # 24 AU intensities when the source already has them

    @property
    def path(self):
        return self.root / self.file_name

    def open_image(self):
        return Image.open(self.path)


# ---------------------------------------------------------------------------------------------------------------------
# Checks every source uses


def checked_file_name(name, where):
    """`name` as a relative POSIX path that stays inside its root; ValueError naming `where` otherwise."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{where}: empty file name")
    name = name.strip()
    windows = PureWindowsPath(name)
    if PurePosixPath(name).is_absolute() or windows.drive or windows.root:
        raise ValueError(f"{where}: file name {name!r} is an absolute path; file names are relative to the image root")
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if ".." in parts:
        raise ValueError(f"{where}: file name {name!r} leaves the image root ('..')")
    return "/".join(part for part in parts if part != ".")


def checked_label(value, where):
    """The canonical label of `value`; ValueError naming `where` and the value otherwise."""
    label = normalize_label(value)
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

    def __init__(self, count, root, seed=0, split="train", start=0):
        if not isinstance(count, int) or count < 0:
            raise ValueError(f"count must be a non-negative integer, got {count!r}")
        self.count, self.root, self.seed, self.split, self.start = count, Path(root), seed, split, start

    def samples(self) -> Iterator[Sample]:
        from dataset_builders.synthetic_faces import generate_faces, save_face

        self.root.mkdir(parents=True, exist_ok=True)
        for face in generate_faces(self.count, seed=self.seed, start=self.start):
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
        parser.add_argument("--images", help="folder for the rendered faces (default: <output>/images/synthetic)")

    @classmethod
    def from_arguments(cls, args):
        root = args.images or os.path.join(args.output, "images", "synthetic")
        return cls(args.count, root, seed=args.face_seed, split=args.split, start=args.start)


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
        rows = self._csv_rows() if self.labels_file.suffix.lower() == ".csv" else self._text_rows()
        seen = {}
        for where, row in rows:
            file_name = checked_file_name(row.get("file_name"), where)
            if file_name in seen:
                raise ValueError(f"{where}: {file_name!r} is listed again (first at {seen[file_name]})")
            seen[file_name] = where
            label = checked_label(row.get("label"), where)
            sample_id = (row.get("id") or "").strip() or f"{self.name}/{file_name}"
            split = (row.get("split") or "").strip() or self.split
            yield Sample(sample_id, self.name, split, file_name, label, self.root)

    def _csv_rows(self):
        with open(self.labels_file, newline="", encoding="utf-8-sig") as file:
            reader = csv.DictReader(file)
            missing = {"file_name", "label"} - set(reader.fieldnames or ())
            if missing:
                raise ValueError(
                    f"{self.labels_file}: the CSV header must name columns file_name and label; "
                    f"missing {sorted(missing)} in {reader.fieldnames}"
                )
            for row in reader:
                yield f"{self.labels_file}:{reader.line_num}", row

    def _text_rows(self):
        with open(self.labels_file, encoding="utf-8-sig") as file:
            for line_number, line in enumerate(file, start=1):
                fields = line.split()
                if not fields or fields[0].startswith("#"):
                    continue
                where = f"{self.labels_file}:{line_number}"
                if len(fields) != 2:
                    raise ValueError(f"{where}: expected '<file_name> <label>', got {line.strip()!r}")
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


SOURCES = {"synthetic": SyntheticSource, "folder": FolderSource}
