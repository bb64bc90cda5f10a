"""The Exp-CoT dataset as a `datasets` builder: records of RAF-DB, AffectNet and the synthetic faces in, Parquet out.

`datasets` 4 and later no longer run loading scripts, so this builder is not what users load: it is the tool that
writes the Parquet shards the Hub copy is made of (`build_dataset.py` runs it and adds the dataset card). Users load
those shards with `load_dataset("<org>/exp-cot", "rafdb")`, or the local folder the same way.

Configs (`ExpCotBuilder.BUILDER_CONFIGS`):

    rafdb, affectnet, synthetic   one row per record (RECORD_FEATURES), splits train and test
    all                           rafdb + affectnet: the paper's 49,824 training pairs and both test sets
    conversations                 TRL-style rows (CONVERSATION_FEATURES): a FER row for every record and a CoT row for
                                  every record with a CoT

A config's records come from `RecordInput`s, one per file or folder:

    layout    the dataset's own folder (RAF-DB basic layout, AffectNet Kaggle layout): labels only
    official  an official ExpLLM annotation JSON: labels, and AUs and CoTs where the file has them
    engine    an Exp-CoT Engine output folder (records.jsonl): labels, AUs, verified CoTs and their provenance

Before anything is written every input is read once (`survey_inputs`): labels, file names, ids that appear twice, the
sizes of the splits, and, where an input has its images, every image file, so that a missing or broken one is listed
rather than dropped. Rows are then written as they are read, so the build holds one row at a time whatever the
number of records (only the set of ids seen grows, for the duplicate check).

Images: RAF-DB and AffectNet may not be redistributed, so their rows carry `image=None` (annotations only, keyed by
`file_name`; `local_images.with_local_images` joins them to a user's copy) unless an input asks to embed them. The
synthetic faces are the project's own: `build_dataset` embeds them whenever it has their folder.
"""

import io
import json
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import datasets
from PIL import Image
from tqdm.auto import tqdm

from modeling_expllm.vocabulary import (
    AU_NAMES,
    COT_SECTIONS,
    EXPRESSION_LABELS,
    NUM_ACTION_UNITS,
    cot_messages,
    fer_messages,
)

from ..exp_cot.cot_text import split_cot
from ..exp_cot.sources import (
    SPLITS,
    AffectNetSource,
    OfficialJsonSource,
    RafdbSource,
    check_split_counts,
    checked_au,
    checked_file_name,
    checked_label,
    image_root,
    listed,
)

RECORD_DATASETS = ("rafdb", "affectnet", "synthetic")
LICENSED_DATASETS = ("rafdb", "affectnet")  # their images may not be redistributed
INPUT_KINDS = ("layout", "official", "engine")
LAYOUT_SOURCES = {"rafdb": RafdbSource, "affectnet": AffectNetSource}

# ---------------------------------------------------------------------------------------------------------------------
# Features

LABEL_FEATURE = datasets.ClassLabel(names=list(EXPRESSION_LABELS))
# `datasets` keeps a feature's `id` through Parquet metadata and the card's YAML, but only on the element of a list,
# not on the list itself: the element's id names the 24 values in order.
AU_FEATURE = datasets.List(datasets.Value("float32", id=", ".join(AU_NAMES)), length=NUM_ACTION_UNITS)
COT_FIELDS = ("key_observations", "overall_interpretation", "conclusion")  # the COT_SECTIONS, as column names
COT_FEATURE = {name: datasets.Value("string") for name in (*COT_FIELDS, "text")}
ENGINE_FEATURE = {
    "model": datasets.Value("string"),
    "prompt_version": datasets.Value("string"),
    "rounds": datasets.Value("int32"),
    "label_revealed": datasets.Value("bool"),
}
RECORD_FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "image": datasets.Image(),
        "label": LABEL_FEATURE,
        "au": AU_FEATURE,
        "cot": COT_FEATURE,
        "source": datasets.Value("string"),
        "split": datasets.Value("string"),
        "file_name": datasets.Value("string"),
        "engine": ENGINE_FEATURE,
    }
)
# Every content part has both keys ({"type": "image", "text": None}): Arrow stores one struct type for all parts.
MESSAGE_FEATURE = {
    "role": datasets.Value("string"),
    "content": datasets.List({"type": datasets.Value("string"), "text": datasets.Value("string")}),
}
CONVERSATION_FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "images": datasets.List(datasets.Image()),
        "messages": datasets.List(MESSAGE_FEATURE),
        "kind": datasets.Value("string"),
        "label": LABEL_FEATURE,
        # Not needed for training; they let `with_local_images` join annotation-only rows to a local copy.
        "source": datasets.Value("string"),
        "file_name": datasets.Value("string"),
    }
)

EMPTY_COT = {name: "" for name in COT_FEATURE}
NO_ENGINE = {"model": "", "prompt_version": "", "rounds": 0, "label_revealed": False}

DESCRIPTION = (
    "Exp-CoT: face images with an expression label (one of " + ", ".join(EXPRESSION_LABELS) + "), the intensities of "
    "24 FEAFA facial action units (0..1, in the order: "
    + ", ".join(AU_NAMES)
    + ") and a three-part chain of thought ("
    + ", ".join(COT_SECTIONS)
    + ") made by the Exp-CoT Engine of ExpLLM."
)
HOMEPAGE = "https://github.com/starhiking/ExpLLM-TMM"
CITATIONS = {
    "expllm": """@article{lan2025expllm,
  title   = {{ExpLLM}: Towards Chain of Thought for Facial Expression Recognition},
  author  = {Lan, Xing and Xue, Jian and Qi, Ji and Jiang, Dongmei and Lu, Ke and Chua, Tat-Seng},
  journal = {IEEE Transactions on Multimedia},
  year    = {2025}
}""",
    "rafdb": """@inproceedings{li2017reliable,
  title     = {Reliable Crowdsourcing and Deep Locality-Preserving Learning for Expression Recognition in the Wild},
  author    = {Li, Shan and Deng, Weihong and Du, JunPing},
  booktitle = {IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2017}
}
@article{li2019reliable,
  title   = {Reliable Crowdsourcing and Deep Locality-Preserving Learning for Unconstrained Facial Expression
             Recognition},
  author  = {Li, Shan and Deng, Weihong},
  journal = {IEEE Transactions on Image Processing},
  year    = {2019}
}""",
    "affectnet": """@article{mollahosseini2017affectnet,
  title   = {{AffectNet}: A Database for Facial Expression, Valence, and Arousal Computing in the Wild},
  author  = {Mollahosseini, Ali and Hasani, Behzad and Mahoor, Mohammad H.},
  journal = {IEEE Transactions on Affective Computing},
  year    = {2017}
}""",
}


# ---------------------------------------------------------------------------------------------------------------------
# Records: what every input kind reads, in one shape


@dataclass(frozen=True)
class RecordInput:
    """One file or folder of records for one dataset.

    dataset: the config the records belong to ("rafdb", "affectnet" or "synthetic").
    kind: "layout" (the dataset's own folder), "official" (an ExpLLM annotation JSON) or "engine" (an engine run).
    path: that folder or file.
    images: the dataset's root as its users keep it (the RAF-DB folder, the AffectNet folder, the synthetic faces'
        folder); None: annotations only, no image is read. A layout input's images are its own folder.
    embed_images: write the image bytes into the shards (needs `images`).
    splits: the splits the input holds, once `survey_inputs` has read it (then a split's rows are only looked for in
        the inputs that have some); None: not known yet.
    """

    dataset: str
    kind: str
    path: str
    images: str | None = None
    embed_images: bool = False
    splits: tuple | None = None

    def __post_init__(self):
        if self.dataset not in RECORD_DATASETS:
            raise ValueError(f"dataset must be one of {RECORD_DATASETS}, got {self.dataset!r}")
        if self.kind not in INPUT_KINDS:
            raise ValueError(f"input kind must be one of {INPUT_KINDS}, got {self.kind!r}")
        if self.kind in ("layout", "official") and self.dataset not in LAYOUT_SOURCES:
            raise ValueError(f"{self.dataset} has no {self.kind} input; its records come from engine runs")
        if self.embed_images and self.images is None:
            raise ValueError(f"{self.describe()}: embedding images needs the folder they are in")

    def describe(self):
        return f"{self.dataset} {self.kind} input {self.path}"

    def image_folder(self):
        """The folder the records' file names are relative to, or None (annotations only)."""
        return None if self.images is None else image_root(self.dataset, self.images)

    def records(self):
        """(where, record) for every record, where names the file (and line) it comes from."""
        if self.kind == "engine":
            for where, line in iter_engine_records(self.path):
                yield where, record_from_engine(line, where, self.dataset)
        elif self.kind == "official":
            for sample, description in OfficialJsonSource(self.path, dataset=self.dataset).entries():
                yield f"{self.path} ({sample.file_name})", record_from_sample(sample, description)
        else:
            for sample in LAYOUT_SOURCES[self.dataset](self.path).samples():
                yield f"{self.path} ({sample.file_name})", record_from_sample(sample)


def record_from_sample(sample, description=None):
    """A record of a source's sample: its label, its AUs when the source has them, and its CoT when it comes with a
    description (an official annotation file's), split into the three sections."""
    return {
        **sample.identity(),
        "au": sample.au,
        "cot": cot_of_description(description),
        "engine": NO_ENGINE,
    }


def cot_of_description(description):
    """The cot struct of a free-text Exp-CoT: its sections, and the canonical three-part text when all three are there;
    a text without the three headers is kept as it is, with the sections it has."""
    if description is None:
        return EMPTY_COT
    sections = split_cot(description)
    text = sections.text if sections.complete else description.strip()
    bodies = (sections.key_observations, sections.overall_interpretation, sections.conclusion)
    return {**dict(zip(COT_FIELDS, bodies)), "text": text}


def iter_engine_records(run_folder):
    """(where, record) for each line of an engine run's records.jsonl, read one line at a time."""
    path = Path(run_folder) / "records.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {run_folder} is not an Exp-CoT Engine output folder")
    with open(path, "rb") as file:
        for line_number, line in enumerate(file, start=1):
            where = f"{path}:{line_number}"
            if not line.endswith(b"\n"):
                raise ValueError(f"{where}: the last line is incomplete (a run was killed); run the engine again")
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as error:
                raise ValueError(f"{where}: not a JSON line ({error})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{where}: a record must be a JSON object, got {line[:120]!r}")
            yield where, record


def record_from_engine(line, where, dataset):
    """A record of an engine output line. Only a "done" line has a CoT (and engine provenance); "skipped" and
    "failed" lines still give the sample's label (and AUs, when Img2AU got them)."""
    missing = [field for field in ("id", "source", "split", "file_name", "label", "status") if field not in line]
    if missing:
        raise ValueError(f"{where}: an engine record needs the fields {missing}")
    if line["source"] != dataset:
        raise ValueError(f"{where}: record {line['id']!r} is from source {line['source']!r}, not {dataset}")
    if line["split"] not in SPLITS:
        raise ValueError(f"{where}: split {line['split']!r} of record {line['id']!r} is not one of {SPLITS}")
    if not isinstance(line["id"], str) or not line["id"]:
        raise ValueError(f"{where}: the id must be a non-empty string, got {line['id']!r}")
    record = {
        "id": line["id"],
        "source": dataset,
        "split": line["split"],
        "file_name": checked_file_name(line["file_name"], where),
        "label": checked_label(line["label"], f"{where}, field 'label'"),
        "au": checked_au(line["au"], f"{where}, field 'au'") if line.get("au") is not None else None,
        "cot": EMPTY_COT,
        "engine": NO_ENGINE,
    }
    if line["status"] in ("skipped", "failed"):
        return record
    if line["status"] != "done":
        raise ValueError(f"{where}: status {line['status']!r} is not one of done, skipped, failed")
    sections, text = line.get("cot_sections") or {}, line.get("cot")
    bodies = [sections.get(header) for header in COT_SECTIONS]
    if not isinstance(text, str) or not text.strip() or not all(isinstance(b, str) and b.strip() for b in bodies):
        raise ValueError(f"{where}: record {line['id']!r} is done but lacks its CoT text or one of its sections")
    record["cot"] = {**dict(zip(COT_FIELDS, bodies)), "text": text}
    record["engine"] = {
        "model": str(line.get("model") or ""),
        "prompt_version": str(line.get("prompt_version") or ""),
        "rounds": int(line.get("rounds") or 0),
        "label_revealed": bool(line.get("label_revealed")),
    }
    return record


# ---------------------------------------------------------------------------------------------------------------------
# Rows


def record_row(record, image):
    """A row of a record config."""
    return {
        "id": record["id"],
        "image": image,
        "label": record["label"],
        "au": None if record["au"] is None else list(record["au"]),
        "cot": record["cot"],
        "source": record["source"],
        "split": record["split"],
        "file_name": record["file_name"],
        "engine": record["engine"],
    }


def conversation_rows(record, image):
    """(kind, row) of the conversations config: the FER sample of a record, then its CoT sample when it has a CoT. The
    FER:CoT mix of training (0.75:0.25) is the trainer's to apply, by sampling, not by repeating rows here."""
    label = record["label"]
    common = {"id": record["id"], "images": [image], "label": label}
    extra = {"source": record["source"], "file_name": record["file_name"]}
    yield "fer", {**common, "messages": uniform_parts(fer_messages(label)), "kind": "fer", **extra}
    if record["cot"]["text"]:
        messages = uniform_parts(cot_messages(record["cot"]["text"], label))
        yield "cot", {**common, "messages": messages, "kind": "cot", **extra}


def uniform_parts(messages):
    """The messages with every content part as {"type", "text"} (text None for an image part)."""
    return [
        {
            "role": message["role"],
            "content": [{"type": part["type"], "text": part.get("text")} for part in message["content"]],
        }
        for message in messages
    ]


def image_problem(folder, file_name):
    """Why the image at folder/file_name cannot be used ("<path>: missing", ...), or None when it opens and decodes."""
    path = Path(folder) / file_name
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return f"{path}: missing"
    except OSError as error:
        return f"{path}: unreadable ({error.strerror or error})"
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        return f"{path}: not a readable image ({type(error).__name__}: {error})"
    return None


class ImageFilesError(ValueError):
    """Images that records name but that are missing or broken; `problems` lists every one."""

    def __init__(self, problems, listing=None, shown=20):
        self.problems = list(problems)
        where = f"\n(every one is listed in {listing})" if listing else ""
        super().__init__(
            f"{len(self.problems)} image file(s) named by the records cannot be used (no record is dropped silently: "
            f"restore the files, or leave their records out of the inputs):{listed(self.problems, shown)}{where}"
        )


def survey_inputs(inputs, *, check_images=True, strict_counts=False, progress=True):
    """Read every input once and check it: records (labels, file names), ids given twice, and each image of an input
    that has its folder. Raises on the first bad record, and with the list of every bad image; warns (or, with
    `strict_counts`, raises) when a dataset's splits are not full size.

    Returns ({(dataset, split): records}, the inputs with their `splits` filled in).
    """
    counts, first_input, problems, input_splits = Counter(), {}, [], [set() for _ in inputs]
    for number, record_input in enumerate(inputs):
        folder = record_input.image_folder() if check_images else None
        records = tqdm(record_input.records(), desc=f"checking {record_input.dataset} {record_input.kind}",
                       unit=" records", disable=not progress, leave=False)  # fmt: skip
        for where, record in records:
            if record["id"] in first_input:
                previous = inputs[first_input[record["id"]]].describe()
                raise ValueError(f"{where}: id {record['id']!r} is given twice (again here, first in {previous})")
            first_input[record["id"]] = number
            counts[(record_input.dataset, record["split"])] += 1
            input_splits[number].add(record["split"])
            if folder is not None:
                problem = image_problem(folder, record["file_name"])
                if problem is not None:
                    problems.append(problem)
    if problems:
        raise ImageFilesError(problems)
    for dataset in dict.fromkeys(record_input.dataset for record_input in inputs):
        where = ", ".join(i.describe() for i in inputs if i.dataset == dataset)
        check_split_counts(dataset, {split: counts[(dataset, split)] for split in SPLITS}, where, strict=strict_counts)
    surveyed = [replace(i, splits=tuple(s for s in SPLITS if s in found)) for i, found in zip(inputs, input_splits)]
    return counts, surveyed


# ---------------------------------------------------------------------------------------------------------------------
# The builder


@dataclass
class ExpCotConfig(datasets.BuilderConfig):
    """A config of the Exp-CoT builder.

    record_datasets: the datasets whose records the config holds.
    conversations: rows are TRL conversations (CONVERSATION_FEATURES) rather than records.
    inputs: RecordInputs of every dataset of the build; the config reads those of its own datasets.
    strict_counts: a split that is not full size is an error, not a warning (the paper's full build).
    check_images: read every image once before writing (unless the inputs come surveyed already).
    """

    record_datasets: tuple = ()
    conversations: bool = False
    inputs: tuple = ()
    strict_counts: bool = False
    check_images: bool = True
    progress: bool = True


class ExpCotBuilder(datasets.GeneratorBasedBuilder):
    """Writes the Exp-CoT configs from `RecordInput`s: `ExpCotBuilder(config_name="rafdb", inputs=(...))`."""

    VERSION = datasets.Version("1.0.0")
    BUILDER_CONFIG_CLASS = ExpCotConfig
    BUILDER_CONFIGS = [
        ExpCotConfig(name="rafdb", record_datasets=("rafdb",), description="RAF-DB records"),
        ExpCotConfig(
            name="affectnet", record_datasets=("affectnet",), description="AffectNet (Kaggle subset) records"
        ),
        ExpCotConfig(name="all", record_datasets=("rafdb", "affectnet"), description="RAF-DB and AffectNet records"),
        ExpCotConfig(name="synthetic", record_datasets=("synthetic",), description="the project's synthetic faces"),
        ExpCotConfig(
            name="conversations",
            record_datasets=RECORD_DATASETS,
            conversations=True,
            description="FER and CoT training conversations of every record",
        ),  # fmt: skip
    ]

    def _info(self):
        return datasets.DatasetInfo(
            description=DESCRIPTION,
            features=CONVERSATION_FEATURES if self.config.conversations else RECORD_FEATURES,
            homepage=HOMEPAGE,
            citation="\n".join(CITATIONS.values()),
        )

    def _inputs(self):
        inputs = [i for i in self.config.inputs if i.dataset in self.config.record_datasets]
        if not inputs:
            raise ValueError(
                f"the {self.config.name} config holds records of {', '.join(self.config.record_datasets)}, "
                "but no input gives any"
            )
        return inputs

    def _split_generators(self, dl_manager):
        inputs = self._inputs()
        if any(record_input.splits is None for record_input in inputs):
            _, inputs = survey_inputs(
                inputs, check_images=self.config.check_images, strict_counts=self.config.strict_counts,
                progress=self.config.progress,
            )  # fmt: skip
        splits = [split for split in SPLITS if any(split in record_input.splits for record_input in inputs)]
        return [datasets.SplitGenerator(name=split, gen_kwargs={"split": split, "inputs": inputs}) for split in splits]

    def _generate_examples(self, split, inputs):
        for record_input in inputs:
            if split not in record_input.splits:
                continue
            folder = record_input.image_folder() if record_input.embed_images else None
            for _, record in record_input.records():
                if record["split"] != split:
                    continue
                image = None
                if folder is not None:  # the path kept is the relative file name: no local path is published
                    image = {"bytes": (folder / record["file_name"]).read_bytes(), "path": record["file_name"]}
                if self.config.conversations:
                    for kind, row in conversation_rows(record, image):
                        yield f"{record['id']}#{kind}", row
                else:
                    yield record["id"], record_row(record, image)


def write_parquet_config(config_name, inputs, folder, *, max_shard_size="256MB", strict_counts=False,
                         check_images=True, progress=True):  # fmt: skip
    """Build one config into `folder/<config>/<split>-NNNNN-of-MMMMM.parquet` (replacing what was there).

    Rows go to Parquet as they are generated, in row groups of `writer batch` rows (100 when images are embedded,
    1000 otherwise) and shards of at most `max_shard_size` of Arrow data, which keeps memory flat and lets
    `load_dataset(..., streaming=True)` read a shard group by group. Inputs that come out of `survey_inputs` are not
    surveyed again. Returns {split: number of rows}.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    embeds = any(i.embed_images for i in inputs)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".build-") as scratch:
        builder = ExpCotBuilder(
            config_name=config_name,
            inputs=tuple(inputs),
            strict_counts=strict_counts,
            check_images=check_images,
            progress=progress,
            cache_dir=os.path.join(scratch, "cache"),
            writer_batch_size=100 if embeds else 1000,
        )
        output = os.path.join(scratch, "output")
        builder.download_and_prepare(
            output, file_format="parquet", max_shard_size=max_shard_size, download_mode="force_redownload",
            verification_mode="no_checks",
        )  # fmt: skip
        target = folder / config_name
        if target.exists():
            shutil.rmtree(target)
        target.mkdir()
        rows = {}
        for split, split_info in builder.info.splits.items():
            shards = sorted(Path(output).glob(f"{builder.dataset_name}-{split}*.parquet"))
            for index, shard in enumerate(shards):
                os.replace(shard, target / f"{split}-{index:05d}-of-{len(shards):05d}.parquet")
            rows[split] = split_info.num_examples
    return rows
