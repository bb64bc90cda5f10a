"""Training samples for `train_sft.py`: which conversation each sample of an epoch makes of which dataset row.

A source is a `datasets.Dataset` plus entries (row index, kind): stage 1 makes caption samples (LLaVA's pretrain layout
or any image-caption dataset), stage 2 FER and CoT samples (the Exp-CoT dataset's record configs or its `conversations`
view), mixed 0.75:0.25. Nothing is decoded until the collator asks for a row.

A training row is TRL's conversational vision format, `{"images": [image], "messages": [...], "position": int}`, where
the image is anything `ExpLLMImageProcessor.load_image` reads (PIL image, path, bytes, `datasets` image dict) and
`position`, the row's place in the epoch listing, seeds its augmentation so that a resumed run sees the same pixels.
"""

import json
import os
import warnings

from datasets import Dataset

from dataset_builders.exp_cot_dataset import load_exp_cot, with_local_images
from modeling_expllm.vocabulary import EXPRESSION_LABELS, cot_messages, fer_messages, label_first_cot_messages, turn

from .checks import check_images, fitting_entries, sequence_lengths

# The instruction of a stage-1 caption sample when the source gives none (LLaVA's layout brings its own). The chat
# template introduces it with the analysis task, as any question that asks for a description.
CAPTION_QUESTION = "Describe this face briefly."


def llava_pretrain_source(chat_json, image_folder):
    """Stage-1 captions in LLaVA's pretrain layout: `chat.json` (id, image, human/gpt conversations) + images."""
    with open(chat_json, encoding="utf-8") as file:
        entries = json.load(file)
    rows = []
    for number, entry in enumerate(entries):
        where = f"{chat_json} entry {number} (id {entry.get('id')!r})"
        if "image" not in entry or not entry.get("conversations"):
            raise ValueError(f"{where} needs 'image' and 'conversations'")
        messages = []
        for exchange in entry["conversations"]:
            role = {"human": "user", "gpt": "assistant"}.get(exchange.get("from"))
            if role is None:
                raise ValueError(f"{where}: turn 'from' must be 'human' or 'gpt', got {exchange.get('from')!r}")
            content = [{"type": "text", "text": exchange["value"].replace("<image>", "").strip()}]
            if role == "user" and not messages:
                content.insert(0, {"type": "image", "text": None})
            messages.append({"role": role, "content": content})
        rows.append({"images": [os.path.join(image_folder, entry["image"])], "messages": messages})
    return Dataset.from_list(rows), [(index, "caption") for index in range(len(rows))]


def caption_source(dataset, image_column="image", caption_column="caption"):
    """Stage-1 captions from any `datasets` image-caption dataset."""
    missing = [name for name in (image_column, caption_column) if name not in dataset.column_names]
    if missing:
        raise ValueError(f"the caption dataset has no column(s) {missing}; its columns are {dataset.column_names}")
    dataset = dataset.rename_columns({image_column: "image", caption_column: "caption"})
    return dataset, [(index, "caption") for index in range(len(dataset))]


def expression_source(dataset):
    """Stage-2 samples: from the `conversations` view (images, messages, kind) as they are, or from a record config
    (image, label, cot) a FER sample for every record and a CoT sample for every record with a CoT."""
    columns = dataset.column_names
    if {"images", "messages"} <= set(columns):
        kinds = dataset["kind"] if "kind" in columns else ["fer"] * len(dataset)
        return dataset, list(enumerate(kinds))
    missing = [name for name in ("image", "label") if name not in columns]
    if missing:
        raise ValueError(
            "the training dataset needs either 'images' + 'messages' (the conversations view) or 'image' + 'label' "
            f"(+ 'cot') columns; it lacks {missing} (columns: {columns})"
        )
    entries = [(index, "fer") for index in range(len(dataset))]
    if "cot" in columns:
        entries += [(index, "cot") for index, cot in enumerate(dataset["cot"]) if cot and cot.get("text")]
    return dataset, entries


class NoCotWarning(UserWarning):
    """Stage 2 was asked for CoT samples and the training data has none: it trains on labels alone."""


# The kind of a CoT sample asked in the official evaluation's order: the label round first, then the CoT round. The
# official training lists CoT samples CoT-first only; `--label_first_cot_repeats` adds these (training_rows).
LABEL_FIRST_COT = "cot_label_first"


def mix_fer_and_cot(entries, fer_repeats=3, cot_repeats=1, label_first_cot_repeats=0):
    """The epoch listing, as the official one: every record's FER sample `fer_repeats` times and every CoT sample
    `cot_repeats` times (the paper's 3 and 1: CoT is 0.25 of the samples when every record has a CoT; with fewer CoTs
    the share follows from the data, and every record still gets its FER samples). Other kinds appear once.
    `fer_repeats=0` or `cot_repeats=0` are the paper's 0:1 and 1:0 ablations. `label_first_cot_repeats` (0 in the
    official training) adds every CoT sample that many times again in the label-first order the official evaluation
    asks in."""
    repeats = (("fer_repeats", fer_repeats), ("cot_repeats", cot_repeats))
    for name, value in repeats + (("label_first_cot_repeats", label_first_cot_repeats),):
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a whole number >= 0, got {value!r}")
    cot = [entry for entry in entries if entry[1] == "cot"]
    fer = [entry for entry in entries if entry[1] == "fer"]
    other = [entry for entry in entries if entry[1] not in ("fer", "cot")]
    if cot_repeats and not cot:
        warnings.warn(
            f"the training data has {len(fer):,} FER samples and no CoT sample: stage 2 trains on labels alone, "
            f"whatever --cot_repeats {cot_repeats} asks for (build the dataset with CoTs: engine runs or the official "
            "*_mini_description.json train files)",
            NoCotWarning,
            2,
        )
    label_first = [(index, LABEL_FIRST_COT) for index, _ in cot]
    listing = fer * fer_repeats + cot * cot_repeats + label_first * label_first_cot_repeats + other
    if not listing:
        raise ValueError("the training data has no samples")
    return listing


def first_records(source, entries, count):
    """The entries of the first `count` records (images), all of their samples kept: a record config's rows are
    records; a conversations view's rows are samples, grouped by their record `id`."""
    if count is None:
        return entries
    keys = source["id"] if "messages" in source.column_names and "id" in source.column_names else None
    record_of = (lambda index: index) if keys is None else keys.__getitem__
    chosen = set(list(dict.fromkeys(record_of(index) for index, _ in entries))[:count])  # first seen, in order
    return [entry for entry in entries if record_of(entry[0]) in chosen]


def training_dataset(source, listing, lengths=None):
    """The `datasets.Dataset` the trainer iterates: one row per listing entry, built from `source` when read, as
    `{"images", "messages", "position"}`. With `lengths` (tokens per entry) it also has a plain `length` column, which
    the trainer's length-grouped sampler reads without building any row."""
    columns = {
        "source_index": [entry[0] for entry in listing],
        "kind": [entry[1] for entry in listing],
        "position": list(range(len(listing))),
    }
    if lengths is not None:
        columns["length"] = lengths
    built = list(columns)[:3]
    return Dataset.from_dict(columns).with_transform(
        lambda batch: training_rows(source, batch), columns=built, output_all_columns=True
    )


def training_rows(source, batch):
    """The rows of one batch of listing entries, built from the source's records."""
    rows = {"images": [], "messages": [], "position": batch["position"]}
    for index, kind in zip(batch["source_index"], batch["kind"]):
        record = source[index]
        if "messages" in record:
            images, messages = record["images"], record["messages"]
            if kind == LABEL_FIRST_COT:
                messages = label_round_first(messages)
        elif kind == "caption":
            images = [record["image"]]
            messages = [turn("user", CAPTION_QUESTION, with_image=True), turn("assistant", record["caption"])]
        else:
            label = label_name(record["label"], source.features["label"], record.get("id", index))
            images = [record["image"]]
            if kind == "fer":
                messages = fer_messages(label)
            elif kind == LABEL_FIRST_COT:
                messages = label_first_cot_messages(label, record["cot"]["text"])
            else:
                messages = cot_messages(record["cot"]["text"], label)
        rows["images"].append(images)
        rows["messages"].append(messages)
    return rows


def label_round_first(messages):
    """A two-round CoT conversation (CoT round, then label round) with its rounds swapped, the image kept in the first
    user turn: the order of `label_first_cot_messages`."""
    if len(messages) != 4 or [m["role"] for m in messages] != ["user", "assistant"] * 2:
        raise ValueError(
            "a label-first CoT sample needs a two-round CoT conversation (user, assistant, user, assistant)"
        )
    image = [part for part in messages[0]["content"] if part.get("type") == "image"]
    cot_question = dict(messages[0], content=[part for part in messages[0]["content"] if part.get("type") != "image"])
    label_question = dict(messages[2], content=image + list(messages[2]["content"]))
    return [label_question, messages[3], cot_question, messages[1]]


def label_name(label, feature, record_id):
    """A canonical label from a ClassLabel id or a label string."""
    name = feature.int2str(label) if hasattr(feature, "int2str") else label
    if name not in EXPRESSION_LABELS:
        raise ValueError(f"record {record_id!r} has label {name!r}, not one of {EXPRESSION_LABELS}")
    return name


def read_source(script_args, split, fresh=True):
    """(source, entries) of one split: captions for stage 1, FER and CoT samples for stage 2, not yet mixed. `fresh`:
    rebuild the `datasets` cache of a local folder (one process of a launch does; the others read what it built)."""
    if script_args.dataset_name is None:
        raise ValueError("give --dataset_name")
    if script_args.dataset_name.endswith(".json"):
        if split != script_args.dataset_train_split:
            raise ValueError("a LLaVA chat.json has no test split: evaluate stage 1 on a dataset folder or Hub id")
        folder = script_args.image_folder or os.path.dirname(script_args.dataset_name)
        return llava_pretrain_source(script_args.dataset_name, folder)
    options = {} if fresh else {"download_mode": "reuse_dataset_if_exists"}
    dataset = load_exp_cot(script_args.dataset_name, script_args.dataset_config, split=split, **options)
    if script_args.rafdb_root or script_args.affectnet_root:
        # The published RAF-DB / AffectNet rows carry no images (they may not be redistributed): join your copies.
        dataset = with_local_images(dataset, rafdb=script_args.rafdb_root, affectnet=script_args.affectnet_root)
    if script_args.stage == 1:
        return caption_source(dataset, caption_column=script_args.caption_column)
    return expression_source(dataset)


def load_training_samples(script_args, split, processor, max_length, fresh=True, with_lengths=False):
    """The samples of one epoch of `split` as a `datasets.Dataset` read lazily, checked before any compute: the
    first `max_train_samples` records, every image readable, every sequence within `max_length` (checked per kind,
    before the FER and CoT samples are mixed), then mixed for stage 2. `with_lengths`: with a `length` column, for
    `--train_sampling_strategy group_by_length`."""
    source, entries = read_source(script_args, split, fresh)
    entries = first_records(source, entries, script_args.max_train_samples)
    if script_args.check_images:
        check_images(training_dataset(source, entries), processor)
    # Every sequence is measured once: for the length check and for the length-grouped sampler.
    measured = max_length is not None or with_lengths
    length_of = dict(zip(entries, sequence_lengths(training_dataset(source, entries), processor))) if measured else {}
    entries = fitting_entries(entries, [length_of.get(entry) for entry in entries], max_length, script_args.overlong)
    if script_args.stage == 2:
        entries = mix_fer_and_cot(
            entries, script_args.fer_repeats, script_args.cot_repeats, script_args.label_first_cot_repeats
        )
    if not with_lengths:
        return training_dataset(source, entries)
    # A label-first CoT sample has the tokens of its CoT-first one in another order.
    lengths = [length_of[(index, "cot" if kind == LABEL_FIRST_COT else kind)] for index, kind in entries]
    return training_dataset(source, entries, lengths)
