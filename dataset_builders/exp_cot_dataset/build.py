"""Build the Exp-CoT publish folder, and push it to the Hub when asked.

    # the project's synthetic faces, after `python -m dataset_builders.exp_cot synthetic --output out/exp_cot`
    python -m dataset_builders.exp_cot_dataset --synthetic-run out/exp_cot --output out/exp-cot

    # the paper's corpus from the official annotation files, annotations only (what may be published)
    python -m dataset_builders.exp_cot_dataset --official anno_json/ --full --output out/exp-cot

    # the same with your licensed copies' images embedded (a private or gated repository only)
    python -m dataset_builders.exp_cot_dataset --official anno_json/ --rafdb /data/RAF-DB --affectnet /data/AffectNet \
        --embed-images --output out/exp-cot-private --push-to-hub me/exp-cot-private --private --push

The folder is exactly what gets uploaded, and `load_dataset(<folder>, "<config>")` loads it as users will load the
Hub copy:

    README.md               the dataset card (YAML: configs, features, split sizes, licence; prose; citations)
    label_distribution.png  labels per config and split
    exp_cot_build.json      what the build read and wrote (no local paths)
    <config>/<split>-NNNNN-of-MMMMM.parquet   for rafdb, affectnet, synthetic and conversations (`all` reads rafdb's
                            and affectnet's shards)

Records of RAF-DB or AffectNet come from engine runs (`--rafdb-run`), official annotation files (`--official`) or,
without either, the dataset's own label file (`--rafdb ROOT`); `--rafdb ROOT` also gives the images to check (and,
with `--embed-images`, to embed). Pushing is a dry run that lists the files unless `--push` is given; the token comes
from HF_TOKEN or `huggingface-cli login` and is never written anywhere.
"""

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from datasets.exceptions import DatasetGenerationError

from ..exp_cot.sources import EXPECTED_COUNTS, SPLITS, declared_split
from .card import CHART, CONFIG_ORDER, folder_statistics, train_splits_without_cots, write_dataset_card
from .configs import (
    LICENSED_DATASETS,
    RECORD_DATASETS,
    ImageFilesError,
    RecordInput,
    survey_inputs,
    write_parquet_config,
)

MANIFEST = "exp_cot_build.json"
PROBLEMS_FILE = "image_problems.txt"  # written next to the folder's files when images are missing; never uploaded
EXPECTED_TRAINING_PAIRS = sum(EXPECTED_COUNTS[dataset]["train"] for dataset in LICENSED_DATASETS)  # 49,824
# The official annotation files, by dataset; for RAF-DB's test split the file with AUs and CoTs comes first.
OFFICIAL_FILES = {
    "rafdb": (("rafdb_train.json",), ("rafdb_emo_au_val_mini_description.json", "rafdb_valid.json")),
    "affectnet": (
        ("Affectnet_kaggle_train-sample-affectnet.json",),
        ("Affectnet_kaggle_valid-sample-affectnet.json",),
    ),
}


class RedistributionError(ValueError):
    """Licensed images would reach a repository that is neither private nor gated."""


# ---------------------------------------------------------------------------------------------------------------------
# Inputs


def official_dataset_of(path):
    """ "rafdb" or "affectnet", from an official annotation file's name; None when the name says neither."""
    lower = Path(path).name.lower()
    return "rafdb" if lower.startswith("rafdb") else "affectnet" if "affectnet" in lower else None


def official_files(paths):
    """{dataset: [annotation files]} from files and folders of official annotation files.

    In a folder, one file per dataset and split: a `*_mini_description.json` file (AUs and CoTs; the release has the
    RAF-DB test split's, `rafdb_emo_au_val_mini_description.json`, and whoever has the train splits' can add them, in
    the same format) before the label-only files of OFFICIAL_FILES.
    """
    found = {}
    for path in map(Path, paths):
        if path.is_dir():
            described = {}
            for file in sorted(path.glob("*_mini_description.json")):
                dataset, split = official_dataset_of(file), declared_split(file)
                if dataset is not None and split is not None:
                    described.setdefault((dataset, split), file)
            chosen = []
            for dataset, splits in OFFICIAL_FILES.items():
                for split, names in zip(SPLITS, splits):  # the described file, else the first name the folder has
                    present = [path / name for name in names if (path / name).is_file()]
                    if (dataset, split) in described:
                        chosen.append((dataset, described[dataset, split]))
                    elif present:
                        chosen.append((dataset, present[0]))
            if not chosen:
                known = ", ".join(name for splits in OFFICIAL_FILES.values() for names in splits for name in names)
                raise FileNotFoundError(f"{path} holds none of the official annotation files ({known})")
        elif path.is_file():
            dataset = official_dataset_of(path)
            if dataset is None:
                raise ValueError(f"{path}: cannot tell from its name whether it annotates RAF-DB or AffectNet")
            chosen = [(dataset, path)]
        else:
            raise FileNotFoundError(f"annotation file or folder {path} not found")
        for dataset, file in chosen:
            found.setdefault(dataset, []).append(str(file))
    return found


def gather_inputs(*, rafdb=None, affectnet=None, official=(), runs=None, synthetic_images=None, embed_images=False,
                  annotations_only=False):  # fmt: skip
    """The RecordInputs of a build.

    For RAF-DB and AffectNet, records come from the engine runs (`runs[dataset]`) and official files given, or, with
    neither, from the dataset's own label file under its root. The root (`rafdb`, `affectnet`) gives the images, which
    are checked, and embedded only with `embed_images`. Synthetic faces come from engine runs; their images (the run's
    images/synthetic folder unless `synthetic_images`) are embedded unless `annotations_only`.
    """
    if embed_images and annotations_only:
        raise ValueError("--embed-images and --annotations-only contradict each other")
    runs = runs or {}
    unknown = set(runs) - set(RECORD_DATASETS)
    if unknown:
        raise ValueError(f"engine runs given for unknown datasets {sorted(unknown)}; known: {RECORD_DATASETS}")
    roots, by_dataset, inputs = {"rafdb": rafdb, "affectnet": affectnet}, official_files(official), []
    for dataset in LICENSED_DATASETS:
        root = roots[dataset]
        if root is not None and not Path(root).is_dir():
            raise NotADirectoryError(f"{dataset} folder {root} not found")
        embed = embed_images and root is not None
        given = [RecordInput(dataset, "engine", str(run), root, embed) for run in runs.get(dataset, ())]
        given += [RecordInput(dataset, "official", file, root, embed) for file in by_dataset.get(dataset, ())]
        if not given and root is not None:
            given = [RecordInput(dataset, "layout", str(root), str(root), embed)]
        inputs += given
    if embed_images and not any(i.embed_images for i in inputs):
        raise ValueError("--embed-images embeds RAF-DB / AffectNet images: give their folders (--rafdb, --affectnet)")
    for run in runs.get("synthetic", ()):
        images = synthetic_images or (Path(run) / "images" / "synthetic")
        images = str(images) if Path(images).is_dir() else None
        if synthetic_images is not None and images is None:
            raise NotADirectoryError(f"synthetic image folder {synthetic_images} not found")
        if images is None and not annotations_only:
            print(f"warning: synthetic run {run} has no images/synthetic folder: its records are built without images")
        inputs.append(
            RecordInput("synthetic", "engine", str(run), images, images is not None and not annotations_only)
        )
    if not inputs:
        raise ValueError("no records to build from: give engine runs, official annotation files or dataset folders")
    return inputs


# ---------------------------------------------------------------------------------------------------------------------
# The folder


def clear_build_outputs(folder):
    """Remove what an earlier build wrote into `folder` (and nothing else), so that no stale shard survives."""
    for name in (*CONFIG_ORDER, "README.md", CHART, MANIFEST, PROBLEMS_FILE):
        path = folder / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def build_publish_folder(output, inputs, *, configs=None, max_shard_size="256MB", full=False, repo_id=None,
                         progress=True):  # fmt: skip
    """Check every input, write the configs' shards, the manifest and the card into `output`. Returns the manifest.

    `configs`: the configs to write (default: every record config the inputs give, and conversations).

    `full`: the paper's build. Every split must have its full size (12,271 / 3,068 RAF-DB, 37,553 / 4,000 AffectNet),
    `all`'s train split must hold 49,824 records, and those made by engine runs must all carry their CoT.
    """
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    clear_build_outputs(output)
    try:
        _, inputs = survey_inputs(inputs, check_images=True, strict_counts=full, progress=progress)
    except ImageFilesError as error:
        (output / PROBLEMS_FILE).write_text("\n".join(error.problems) + "\n", encoding="utf-8")
        raise ImageFilesError(error.problems, listing=output / PROBLEMS_FILE) from None
    present = [dataset for dataset in RECORD_DATASETS if any(i.dataset == dataset for i in inputs)]
    unknown = set(configs or ()) - {*present, "conversations"}
    if unknown:
        raise ValueError(f"no input gives records of the config(s) {sorted(unknown)}; the inputs give {present}")
    rows = {}
    for config in configs or [*present, "conversations"]:
        print(f"writing the {config} config", file=sys.stderr)
        rows[config] = write_parquet_config(
            config, inputs, output, max_shard_size=max_shard_size, strict_counts=full, progress=progress
        )
    statistics = folder_statistics(output)
    for config, records in train_splits_without_cots(statistics):
        print(
            f"WARNING: the {config} train split has {records:,} records and no CoT: training on it teaches labels "
            "alone. Run the Exp-CoT Engine on the training images or give the official *_mini_description.json train "
            "files to add them (the dataset card says so at its top).",
            file=sys.stderr,
        )
    if full:
        check_full_build(statistics, inputs)
    manifest = {
        "configs": rows,
        "cot_pairs": {
            dataset: {split: counts["cot"] for split, counts in statistics[dataset].items()}
            for dataset in present
            if dataset in statistics
        },
        "embedded_images": {
            dataset: any(i.embed_images for i in inputs if i.dataset == dataset) for dataset in present
        },
        "inputs": [{"dataset": i.dataset, "kind": i.kind, "name": Path(i.path).name} for i in inputs],
        "full_build": full,
    }
    (output / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    write_dataset_card(output, inputs, repo_id=repo_id)
    return manifest


def check_full_build(statistics, inputs):
    """The paper's corpus: 12,271 + 37,553 = 49,824 training records, each with its CoT where an engine made them."""
    missing = [dataset for dataset in LICENSED_DATASETS if dataset not in statistics]
    if missing:
        raise ValueError(f"a full build needs both RAF-DB and AffectNet; missing {missing}")
    train = sum(statistics[dataset]["train"]["rows"] for dataset in LICENSED_DATASETS)
    if train != EXPECTED_TRAINING_PAIRS:
        raise ValueError(f"the full build has {train:,} training records in `all`, not {EXPECTED_TRAINING_PAIRS:,}")
    for dataset in LICENSED_DATASETS:
        if any(i.dataset == dataset and i.kind == "engine" for i in inputs):
            counts = statistics[dataset]["train"]
            if counts["cot"] != counts["rows"]:
                raise ValueError(
                    f"{dataset} train: {counts['cot']:,} of {counts['rows']:,} records have a CoT; the engine left "
                    f"{counts['rows'] - counts['cot']:,} without one (run it again with --retry-failed)"
                )


# ---------------------------------------------------------------------------------------------------------------------
# Publishing


def files_to_publish(folder):
    """(path relative to the folder, bytes) of every file that goes to the Hub: the card, the chart, the manifest and
    the configs' shards. Anything else in the folder (scratch space, image_problems.txt, a user's notes) stays."""
    folder = Path(folder)
    paths = [folder / name for name in ("README.md", CHART, MANIFEST)]
    paths += sorted(path for config in CONFIG_ORDER for path in (folder / config).glob("*.parquet"))
    return [(path.relative_to(folder).as_posix(), path.stat().st_size) for path in sorted(paths) if path.is_file()]


def embedded_licensed_images(folder):
    """The licensed datasets whose images the folder embeds, from its manifest and its shards' image columns."""
    manifest_path = Path(folder) / MANIFEST
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path} not found: {folder} is not a folder this builder wrote")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    statistics = folder_statistics(folder)
    embedded = {d for d, flag in manifest["embedded_images"].items() if flag and d in LICENSED_DATASETS}
    # The shards themselves have the last word: a record config with images embeds them (and so do the conversations
    # made from the same inputs).
    embedded |= {d for d in LICENSED_DATASETS if any(c["images"] for c in statistics.get(d, {}).values())}
    return sorted(embedded)


def push_folder(folder, repo_id, *, private=False, gated=False, revision=None, push=False, token=None):
    """Upload the folder to the dataset repository `repo_id` with `huggingface_hub`; without `push`, only list what
    would be uploaded (nothing touches the network). Returns the (path, bytes) list.

    A folder embedding RAF-DB or AffectNet images goes only to a private repository (`private`) or to a gated one the
    user names as such (`gated`); with `push` the repository's real state is checked before any upload.
    """
    folder = Path(folder)
    files = files_to_publish(folder)
    licensed = embedded_licensed_images(folder)
    total = sum(size for _, size in files)
    where = f"{repo_id}{f'@{revision}' if revision else ''} ({'private' if private else 'public or gated'})"
    print(f"{len(files)} files, {total / 1e6:.1f} MB, for the dataset repository {where}:", file=sys.stderr)
    for name, size in files:
        print(f"  {name}  {size:,} bytes", file=sys.stderr)
    if licensed and not (private or gated):
        raise RedistributionError(
            f"{folder} embeds {' and '.join(licensed)} images, which may not be redistributed: push it only to a "
            "private repository (--private) or a gated one (--gated), or rebuild it without --embed-images"
        )
    if not push:
        print("dry run: nothing uploaded (add --push to upload)", file=sys.stderr)
        return files

    from huggingface_hub import HfApi

    api = HfApi(token=token)  # None: HF_TOKEN or the stored login
    if private or not licensed:
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    if licensed:  # an existing repository keeps its visibility whatever create_repo was told: look
        info = api.repo_info(repo_id, repo_type="dataset")
        if not (info.private or info.gated):
            raise RedistributionError(
                f"{repo_id} is public and not gated: it may not receive {' and '.join(licensed)} images"
            )
    if revision:
        api.create_branch(repo_id, repo_type="dataset", branch=revision, exist_ok=True)
    commit = api.upload_folder(
        repo_id=repo_id, repo_type="dataset", folder_path=str(folder), revision=revision,
        allow_patterns=[name for name, _ in files], commit_message="Exp-CoT dataset: Parquet shards and card",
    )  # fmt: skip
    print(f"uploaded: {commit.commit_url}", file=sys.stderr)
    return files


# ---------------------------------------------------------------------------------------------------------------------
# Command line


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m dataset_builders.exp_cot_dataset",
        description="Build the Exp-CoT Parquet configs and dataset card into a folder; optionally push it to the Hub.",
    )
    parser.add_argument("--output", default="out/exp-cot", help="publish folder (default out/exp-cot)")
    records = parser.add_argument_group("records")
    records.add_argument(
        "--rafdb", help="RAF-DB folder (basic layout): images, and labels when nothing else gives them"
    )
    records.add_argument(
        "--affectnet", help="AffectNet Kaggle folder: images, and labels when nothing else gives them"
    )
    records.add_argument("--official", nargs="+", default=[], metavar="PATH",
                         help="official ExpLLM annotation files, or folders of them")  # fmt: skip
    for dataset in RECORD_DATASETS:
        records.add_argument(f"--{dataset}-run", action="append", default=[], metavar="RUN",
                             help=f"an Exp-CoT Engine output folder of {dataset} records (repeatable)")  # fmt: skip
    records.add_argument("--synthetic-images", help="synthetic faces folder (default <run>/images/synthetic)")
    images = parser.add_argument_group("images")
    images.add_argument("--embed-images", action="store_true",
                        help="embed RAF-DB / AffectNet images (private or gated repositories only)")  # fmt: skip
    images.add_argument("--annotations-only", action="store_true", help="embed no image, not even synthetic ones")
    build = parser.add_argument_group("build")
    build.add_argument("--configs", nargs="+", choices=[*RECORD_DATASETS, "conversations"],
                       help="write only these configs (default: all the inputs give)")  # fmt: skip
    build.add_argument("--full", action="store_true", help="require the paper's full counts (49,824 training pairs)")
    build.add_argument("--max-shard-size", default="256MB", help="Arrow bytes per Parquet shard (default 256MB)")
    build.add_argument("--no-progress", action="store_true", help="no progress bars")
    hub = parser.add_argument_group("Hub")
    hub.add_argument("--push-to-hub", metavar="REPO", help="dataset repository id, e.g. my-org/exp-cot")
    hub.add_argument("--private", action="store_true", help="create the repository private")
    hub.add_argument("--gated", action="store_true", help="the repository is gated (checked before uploading)")
    hub.add_argument("--revision", help="branch to push to (created if missing)")
    hub.add_argument("--push", action="store_true", help="really upload; without it the push is a dry run")
    hub.add_argument("--repo-id", help="repository id the card's snippets use (default: --push-to-hub's)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        inputs = gather_inputs(
            rafdb=args.rafdb, affectnet=args.affectnet, official=args.official,
            runs={dataset: getattr(args, f"{dataset}_run") for dataset in RECORD_DATASETS},
            synthetic_images=args.synthetic_images, embed_images=args.embed_images,
            annotations_only=args.annotations_only,
        )  # fmt: skip
        if any(i.embed_images and i.dataset in LICENSED_DATASETS for i in inputs) and not args.push_to_hub:
            print(
                "note: this folder embeds RAF-DB / AffectNet images; keep it to yourself or push it to a private or "
                "gated repository only",
                file=sys.stderr,
            )
        manifest = build_publish_folder(
            args.output, inputs, configs=args.configs, max_shard_size=args.max_shard_size, full=args.full,
            repo_id=args.repo_id or args.push_to_hub, progress=not args.no_progress,
        )  # fmt: skip
        for config, splits in manifest["configs"].items():
            print(f"{config}: " + ", ".join(f"{split} {rows:,}" for split, rows in splits.items()), file=sys.stderr)
        print(f"wrote {os.path.abspath(args.output)}", file=sys.stderr)
        if args.push_to_hub:
            push_folder(
                args.output, args.push_to_hub, private=args.private, gated=args.gated, revision=args.revision,
                push=args.push,
            )  # fmt: skip
    except DatasetGenerationError as error:  # `datasets` wraps what went wrong while writing; show that
        print(f"error: {error.__cause__ or error}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
