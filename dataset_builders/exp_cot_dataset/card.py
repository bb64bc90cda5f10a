"""The dataset card of a publish folder: README.md (YAML metadata + prose) and label_distribution.png.

Every number on the card is counted from what the folder holds and from the inputs it was built from, never typed in:

- `folder_statistics` reads the Parquet shards column by column (labels, CoT presence, engine provenance, embedded
  images), one row group at a time;
- `engine_statistics` reads the engine runs' records.jsonl line by line (statuses and their reasons, AU models,
  verification pass rates, label reveals, rounds);
- `card_metadata` turns them into the YAML the Hub and `load_dataset` read: configs and their data files, features and
  split sizes (`dataset_info`), licence, task categories, size category;
- `write_dataset_card` renders templates/exp_cot_card.md with `huggingface_hub.DatasetCard` and draws the chart.
"""

import re
from collections import Counter
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
from huggingface_hub import DatasetCard, DatasetCardData
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from modeling_expllm.vocabulary import AU_NAMES, COT_SECTIONS, EXPRESSION_LABELS

from ..exp_cot.sources import SPLITS
from .configs import (
    CITATIONS,
    CONVERSATION_FEATURES,
    LICENSED_DATASETS,
    RECORD_DATASETS,
    RECORD_FEATURES,
    iter_engine_records,
)

TEMPLATE = Path(__file__).parent / "templates" / "exp_cot_card.md"
CHART = "label_distribution.png"
# Configs in the order the card lists them; `all` holds no shards of its own (it reads rafdb's and affectnet's).
CONFIG_ORDER = ("rafdb", "affectnet", "all", "synthetic", "conversations")
LICENCES = {
    "rafdb": "RAF-DB licence: non-commercial research only, under the agreement its authors ask users to sign",
    "affectnet": "AffectNet licence: research use under the agreement its authors ask users to sign",
    "synthetic": "the project's own faces, under the project's licence (Apache-2.0)",
}
DEFAULT_REPO_ID = "<org>/exp-cot"
LICENSE_FILE = "LICENSE.md"  # the card's `license_link` when RAF-DB or AffectNet rows make the licence "other"


# ---------------------------------------------------------------------------------------------------------------------
# Counting


def _new_split_counts():
    return {
        "rows": 0, "bytes": 0, "download_bytes": 0, "files": 0, "labels": Counter(), "cot": 0, "cot_unsectioned": 0,
        "images": 0, "au": 0, "label_revealed": 0, "rounds": Counter(), "models": Counter(),
        "prompt_versions": Counter(), "kinds": Counter(), "sources": Counter(),
    }  # fmt: skip


def _value_counts(array):
    return Counter({item["values"]: item["counts"] for item in pc.value_counts(array).to_pylist()})


def folder_statistics(folder):
    """{config: {split: counts}} over the Parquet shards `folder/<config>/<split>-*.parquet`."""
    statistics = {}
    for config_folder in [Path(folder) / config for config in CONFIG_ORDER if (Path(folder) / config).is_dir()]:
        for shard in sorted(config_folder.glob("*.parquet")):
            split = shard.name.split("-")[0]
            counts = statistics.setdefault(config_folder.name, {}).setdefault(split, _new_split_counts())
            parquet = pq.ParquetFile(shard, pre_buffer=False)  # pre-buffering would read whole column chunks
            counts["rows"] += parquet.metadata.num_rows
            counts["bytes"] += sum(
                parquet.metadata.row_group(i).total_byte_size for i in range(parquet.num_row_groups)
            )
            counts["download_bytes"] += shard.stat().st_size
            counts["files"] += 1
            names = set(parquet.schema_arrow.names)
            if "messages" in names:
                _count_conversations(parquet, counts)
            else:
                _count_records(parquet, counts)
    return statistics


def train_splits_without_cots(statistics):
    """[(config, rows)] of the record configs whose train split has records but not one CoT: trained on, they teach
    labels alone, whatever `--cot_repeats` asks for. (The official annotation files on hand carry CoTs for RAF-DB's
    test split only.)"""
    return [
        (config, splits["train"]["rows"])
        for config, splits in statistics.items()
        if config in ("rafdb", "affectnet", "synthetic")
        and "train" in splits
        and splits["train"]["rows"] > 0
        and splits["train"]["cot"] == 0
    ]


def _row_groups(parquet, columns):
    """The shard one row group at a time (the writer's batch of rows), so that counting holds one group in memory."""
    for index in range(parquet.num_row_groups):
        yield from parquet.read_row_group(index, columns=columns, use_threads=False).to_batches()


def _count_records(parquet, counts):
    columns = ["label", "source", "image.path", "au", "cot.text", "cot.key_observations", "engine"]
    for batch in _row_groups(parquet, columns):
        counts["labels"] += _value_counts(batch.column("label"))
        counts["sources"] += _value_counts(batch.column("source"))
        counts["images"] += len(batch) - batch.column("image").field("path").null_count
        counts["au"] += len(batch) - batch.column("au").null_count
        text, key_observations = batch.column("cot").field("text"), batch.column("cot").field("key_observations")
        has_cot = pc.greater(pc.utf8_length(text), 0)
        counts["cot"] += pc.sum(has_cot).as_py() or 0
        unsectioned = pc.and_(has_cot, pc.equal(pc.utf8_length(key_observations), 0))
        counts["cot_unsectioned"] += pc.sum(unsectioned).as_py() or 0
        engine = batch.column("engine")
        counts["label_revealed"] += pc.sum(engine.field("label_revealed")).as_py() or 0
        rounds = engine.field("rounds")
        counts["rounds"] += _value_counts(pc.filter(rounds, pc.greater(rounds, 0)))
        for field, key in (("model", "models"), ("prompt_version", "prompt_versions")):
            values = engine.field(field)
            counts[key] += _value_counts(pc.filter(values, pc.greater(pc.utf8_length(values), 0)))


def _count_conversations(parquet, counts):
    for batch in _row_groups(parquet, ["label", "kind", "source", "images.list.element.path"]):
        counts["labels"] += _value_counts(batch.column("label"))
        counts["kinds"] += _value_counts(batch.column("kind"))
        counts["sources"] += _value_counts(batch.column("source"))
        counts["images"] += len(batch) - pc.list_flatten(batch.column("images")).field("path").null_count


def engine_statistics(run_folders):
    """What the engine runs did, from their records: statuses and reasons, models, AU models, verification."""
    statistics = {
        "records": 0, "status": Counter(), "reasons": Counter(), "backends": Counter(), "models": Counter(),
        "prompt_versions": Counter(), "au_models": Counter(), "verified": 0, "passed": 0, "passed_first_round": 0,
        "label_revealed": 0, "rounds": Counter(),
    }  # fmt: skip
    for run_folder in run_folders:
        for _, record in iter_engine_records(run_folder):
            statistics["records"] += 1
            status = record.get("status")
            statistics["status"][status] += 1
            if status in ("skipped", "failed"):
                statistics["reasons"][f"{status}: {record.get('reason') or 'unknown'}"] += 1
            for field, key in (("backend", "backends"), ("model", "models"), ("prompt_version", "prompt_versions")):
                if record.get(field):
                    statistics[key][record[field]] += 1
            if record.get("au_model"):
                statistics["au_models"][record["au_model"]] += 1
            rounds_log = record.get("rounds_log") or []
            if rounds_log:  # the sample reached Result Verification
                statistics["verified"] += 1
                statistics["passed"] += any(log.get("passed") for log in rounds_log)
                statistics["passed_first_round"] += bool(rounds_log[0].get("passed"))
            if status == "done":
                statistics["label_revealed"] += bool(record.get("label_revealed"))
                statistics["rounds"][int(record.get("rounds") or 0)] += 1
    return statistics


# ---------------------------------------------------------------------------------------------------------------------
# YAML metadata


def config_files(statistics):
    """{config: {split: [data file patterns]}} of the configs the folder has; `all` reads rafdb's and affectnet's."""
    configs = {}
    for config in CONFIG_ORDER:
        parts = ("rafdb", "affectnet") if config == "all" else (config,)
        present = [part for part in parts if part in statistics]
        if config == "all" and len(present) < 2:
            continue  # `all` is both datasets; with one of them it would only repeat it
        splits = {}
        for split in SPLITS:
            patterns = [f"{part}/{split}-*" for part in present if split in statistics[part]]
            if patterns:
                splits[split] = patterns
        if splits:
            configs[config] = splits
    return configs


def merged_split_counts(statistics, config):
    """{split: counts} of a config; `all` adds up rafdb and affectnet."""
    if config != "all":
        return statistics[config]
    merged = {}
    for part in ("rafdb", "affectnet"):
        for split, counts in statistics[part].items():
            total = merged.setdefault(split, _new_split_counts())
            for key, value in counts.items():
                total[key] += value
    return merged


def size_category(rows):
    for bound, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if rows < bound:
            return name
    return "1M<n<10M"


def card_metadata(statistics, configs):
    """The card's YAML: what `load_dataset` reads (configs, data files, features, split sizes), and the Hub's tags."""
    licensed = any(dataset in statistics for dataset in LICENSED_DATASETS)
    config_entries, info_entries = [], []
    for config, splits in configs.items():
        entry = {"config_name": config, "data_files": [{"split": s, "path": p} for s, p in splits.items()]}
        if config == ("all" if "all" in configs else next(iter(configs))):
            entry["default"] = True
        config_entries.append(entry)
        counts = merged_split_counts(statistics, config)
        features = CONVERSATION_FEATURES if config == "conversations" else RECORD_FEATURES
        info_entries.append(
            {
                "config_name": config,
                "features": features._to_yaml_list(),
                "splits": [
                    {"name": s, "num_bytes": counts[s]["bytes"], "num_examples": counts[s]["rows"]} for s in splits
                ],
                "download_size": sum(counts[s]["download_bytes"] for s in splits),
                "dataset_size": sum(counts[s]["bytes"] for s in splits),
            }
        )
    records = sum(
        counts["rows"] for name in RECORD_DATASETS if name in statistics for counts in statistics[name].values()
    )
    return DatasetCardData(
        pretty_name="Exp-CoT",
        language=["en"],
        license="other" if licensed else "apache-2.0",
        license_name="exp-cot-research-only" if licensed else None,
        license_link=LICENSE_FILE if licensed else None,  # written beside the card (write_license)
        task_categories=["image-text-to-text", "image-classification"],
        tags=["facial-expression-recognition", "action-units", "chain-of-thought"],
        size_categories=[size_category(records)],
        configs=config_entries,
        dataset_info=info_entries,
    )


# ---------------------------------------------------------------------------------------------------------------------
# Chart and prose


def plot_label_distribution(statistics, path):
    """A bar chart of the labels of every record config, train and test side by side."""
    datasets = [name for name in RECORD_DATASETS if name in statistics]
    figure = Figure(figsize=(4.2 * len(datasets), 3.6), layout="constrained")
    for position, dataset in enumerate(datasets):
        axes = figure.add_subplot(1, len(datasets), position + 1)
        splits = [split for split in SPLITS if split in statistics[dataset]]
        width = 0.8 / len(splits)
        for offset, split in enumerate(splits):
            labels = statistics[dataset][split]["labels"]
            x = [index + (offset - (len(splits) - 1) / 2) * width for index in range(len(EXPRESSION_LABELS))]
            axes.bar(x, [labels.get(index, 0) for index in range(len(EXPRESSION_LABELS))], width, label=split)
        axes.set_xticks(range(len(EXPRESSION_LABELS)), EXPRESSION_LABELS, rotation=45, ha="right")
        axes.set_title(dataset)
        axes.set_ylabel("records")
        axes.yaxis.set_major_locator(MaxNLocator(integer=True))
        axes.legend(fontsize="small")
    figure.savefig(path, dpi=110)
    return path


def markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows])


def _percent(part, whole):
    return f"{part / whole:.1%}" if whole else "-"


def _listing(counter):
    return ", ".join(f"{name} ({count:,})" for name, count in counter.most_common()) or "-"


def write_dataset_card(folder, inputs, repo_id=None):
    """Write README.md and label_distribution.png into a publish folder built from `inputs` (the RecordInputs)."""
    folder = Path(folder)
    statistics = folder_statistics(folder)
    if not statistics:
        raise ValueError(f"{folder} holds no Parquet shards: build the configs first")
    configs = config_files(statistics)
    engine = engine_statistics([i.path for i in inputs if i.kind == "engine"])
    datasets = [name for name in RECORD_DATASETS if name in statistics]
    plot_label_distribution(statistics, folder / CHART)

    config_rows = []
    for config in configs:
        counts = merged_split_counts(statistics, config)
        for split in configs[config]:
            split_counts = counts[split]
            cot = split_counts["kinds"]["cot"] if config == "conversations" else split_counts["cot"]
            config_rows.append([f"`{config}`", split, f"{split_counts['rows']:,}", f"{cot:,}",
                                f"{split_counts['images']:,}"])  # fmt: skip
    label_rows = [
        [f"`{dataset}`", split]
        + [f"{statistics[dataset][split]['labels'].get(i, 0):,}" for i in range(len(EXPRESSION_LABELS))]
        + [f"{statistics[dataset][split]['rows']:,}"]
        for dataset in datasets
        for split in SPLITS
        if split in statistics[dataset]
    ]
    kinds = {(i.dataset, i.kind) for i in inputs}
    unsectioned = sum(c["cot_unsectioned"] for d in datasets for c in statistics[d].values())
    embedded = {d: sum(c["images"] for c in statistics[d].values()) for d in datasets}
    card = DatasetCard.from_template(
        card_metadata(statistics, configs),
        template_path=str(TEMPLATE),
        repo_id=repo_id or DEFAULT_REPO_ID,
        configs=list(configs),
        datasets=datasets,
        licensed=[d for d in datasets if d in LICENSED_DATASETS],
        embedded=embedded,
        config_table=markdown_table(["config", "split", "rows", "CoT", "embedded images"], config_rows),
        label_table=markdown_table(["config", "split", *EXPRESSION_LABELS, "total"], label_rows),
        chart=CHART,
        official_inputs=sorted(d for d, kind in kinds if kind == "official"),
        layout_inputs=sorted(d for d, kind in kinds if kind == "layout"),
        engine_inputs=sorted(d for d, kind in kinds if kind == "engine"),
        engine=engine,
        engine_models=_listing(engine["models"]),
        engine_backends=_listing(engine["backends"]),
        engine_prompts=_listing(engine["prompt_versions"]),
        engine_au_models=_listing(engine["au_models"]),
        engine_statuses=_listing(engine["status"]),
        engine_reasons=_listing(engine["reasons"]),
        engine_rounds=", ".join(f"{r} round(s): {n:,}" for r, n in sorted(engine["rounds"].items())) or "-",
        pass_rate=_percent(engine["passed"], engine["verified"]),
        first_round_rate=_percent(engine["passed_first_round"], engine["verified"]),
        reveal_rate=_percent(engine["label_revealed"], engine["status"]["done"]),
        unsectioned=unsectioned,
        conversation_counts=statistics.get("conversations"),
        train_without_cot=[f"`{config}` ({rows:,} records)" for config, rows in train_splits_without_cots(statistics)],
        labels=EXPRESSION_LABELS,
        au_names=list(enumerate(AU_NAMES)),
        cot_sections=COT_SECTIONS,
        licences=LICENCES,
        citations=[CITATIONS["expllm"]] + [CITATIONS[d] for d in datasets if d in CITATIONS],
    )
    # The template's conditional blocks leave runs of blank lines behind; one blank line is what markdown needs.
    card = DatasetCard(re.sub(r"\n{3,}", "\n\n", card.content))
    card.save(folder / "README.md")
    licensed = [d for d in datasets if d in LICENSED_DATASETS]
    if licensed:  # the card's `license: other` links to these terms
        write_license(folder / LICENSE_FILE, licensed)
    return card


def write_license(path, licensed):
    """The terms behind the card's `license: other`: the Hub links it from the licence badge."""
    terms = "\n".join(f"- `{dataset}`: {LICENCES[dataset]}." for dataset in licensed)
    path.write_text(
        "# Exp-CoT: terms of use (exp-cot-research-only)\n\n"
        "This dataset holds annotations of faces from datasets whose authors grant access under their own terms:\n\n"
        f"{terms}\n\n"
        "The labels, action-unit intensities and chains of thought describe those faces and may be used under the "
        "same terms only: non-commercial research, no redistribution of the images, no identification of the "
        "people shown. The images are not part of the public dataset; get them from the datasets' authors. The "
        "release's code and its synthetic faces are Apache-2.0.\n",
        encoding="utf-8",
    )
