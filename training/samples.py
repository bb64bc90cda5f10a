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

import numpy as np
from datasets import Dataset

from dataset_builders.exp_cot_dataset import load_exp_cot, with_local_images
from modeling_expllm.vocabulary import EXPRESSION_LABELS, cot_messages, fer_messages

# The instruction of a stage-1 caption sample when the source gives none (LLaVA's layout brings its own).
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
        for turn in entry["conversations"]:
            role = {"human": "user", "gpt": "assistant"}.get(turn.get("from"))
            if role is None:
                raise ValueError(f"{where}: turn 'from' must be 'human' or 'gpt', got {turn.get('from')!r}")
            content = [{"type": "text", "text": turn["value"].replace("<image>", "").strip()}]
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


def mix_fer_and_cot(entries, cot_ratio=0.25, seed=0):
    """The epoch listing: every CoT sample once and FER samples cycled so that CoT makes up `cot_ratio` of it.

    With one CoT per record and the default 0.25 this is the official listing, the FER set three times and the CoT set
    once. Without CoT samples (or with `cot_ratio` 0) it is the other samples once; with `cot_ratio` 1, CoT only.
    """
    if not 0.0 <= cot_ratio <= 1.0:
        raise ValueError(f"cot_ratio must be in [0, 1], got {cot_ratio}")
    cot = [entry for entry in entries if entry[1] == "cot"]
    other = [entry for entry in entries if entry[1] != "cot"]
    if not cot or cot_ratio == 0.0:
        listing = other
    elif cot_ratio == 1.0 or not other:
        listing = cot
    else:
        other_count = round(len(cot) * (1.0 - cot_ratio) / cot_ratio)
        order = np.random.default_rng(seed).permutation(len(other))
        listing = [other[order[i % len(other)]] for i in range(other_count)] + cot
    if not listing:
        raise ValueError("the training data has no samples")
    return listing


def training_dataset(source, listing):
    """The `datasets.Dataset` the trainer iterates: one row per listing entry, built from `source` when read, as
    `{"images", "messages", "position"}`."""
    index = Dataset.from_dict(
        {
            "source_index": [entry[0] for entry in listing],
            "kind": [entry[1] for entry in listing],
            "position": list(range(len(listing))),
        }
    )
    return index.with_transform(lambda batch: training_rows(source, batch))


def training_rows(source, batch):
    """The rows of one batch of listing entries, built from the source's records."""
    rows = {"images": [], "messages": [], "position": batch["position"]}
    for index, kind in zip(batch["source_index"], batch["kind"]):
        record = source[index]
        if "messages" in record:
            images, messages = record["images"], record["messages"]
        elif kind == "caption":
            images, messages = [record["image"]], fer_messages(record["caption"], question=CAPTION_QUESTION)
        else:
            label = label_name(record["label"], source.features["label"], record.get("id", index))
            images = [record["image"]]
            messages = fer_messages(label) if kind == "fer" else cot_messages(record["cot"]["text"], label)
        rows["images"].append(images)
        rows["messages"].append(messages)
    return rows


def label_name(label, feature, record_id):
    """A canonical label from a ClassLabel id or a label string."""
    name = feature.int2str(label) if hasattr(feature, "int2str") else label
    if name not in EXPRESSION_LABELS:
        raise ValueError(f"record {record_id!r} has label {name!r}, not one of {EXPRESSION_LABELS}")
    return name


def load_training_samples(script_args, split, seed=0):
    """The samples of one epoch of `split` (rows and listing), as a `datasets.Dataset` read lazily: captions for
    stage 1, FER and CoT samples mixed `script_args.cot_ratio` for stage 2."""
    if script_args.dataset_name is None:
        raise ValueError("give --dataset_name")
    if script_args.dataset_name.endswith(".json"):
        if split != script_args.dataset_train_split:
            raise ValueError("a LLaVA chat.json has no test split: evaluate stage 1 on a dataset folder or Hub id")
        folder = script_args.image_folder or os.path.dirname(script_args.dataset_name)
        source, entries = llava_pretrain_source(script_args.dataset_name, folder)
    else:
        dataset = load_exp_cot(script_args.dataset_name, script_args.dataset_config, split=split)
        if script_args.rafdb_root or script_args.affectnet_root:
            # The published RAF-DB / AffectNet rows carry no images (they may not be redistributed): join your copies.
            dataset = with_local_images(dataset, rafdb=script_args.rafdb_root, affectnet=script_args.affectnet_root)
        if script_args.stage == 1:
            source, entries = caption_source(dataset, caption_column=script_args.caption_column)
        else:
            source, entries = expression_source(dataset)
    if script_args.max_train_samples is not None:
        # Records, not listing entries: cutting the mixed listing would keep FER samples and drop every CoT one.
        entries = [entry for entry in entries if entry[0] < script_args.max_train_samples]
    if script_args.stage == 2:
        entries = mix_fer_and_cot(entries, script_args.cot_ratio, seed=seed)
    return training_dataset(source, entries)
