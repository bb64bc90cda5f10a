"""Training data for `train_sft.py`: conversation rows for stage 1 (captions) and stage 2 (FER + CoT), the official
face augmentations without torchvision, the collator that masks everything but the answers, and the checks that run
before any compute.

A training row is TRL's conversational vision format, `{"images": [image], "messages": [...], "position": int}`, where
the image is anything `ExpLLMImageProcessor.load_image` reads (PIL image, path, bytes, `datasets` image dict) and
`position`, the row's place in the epoch listing, seeds its augmentation so that a resumed run sees the same pixels.
"""

import json
import math
import os
import re
from dataclasses import dataclass, field

import numpy as np
import torch
from datasets import Dataset
from PIL import Image, ImageEnhance
from tqdm.auto import tqdm

from modeling_expllm.vocabulary import EXPRESSION_LABELS, cot_messages, fer_messages

# The instruction of a stage-1 caption sample when the source gives none (LLaVA's layout brings its own).
CAPTION_QUESTION = "Describe this face briefly."


# ---------------------------------------------------------------------------------------------------------------------
# Sources: a `datasets.Dataset` plus entries (row index, kind) saying which conversation each training sample makes of
# which row. Nothing is decoded until the collator asks for a row.


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
    return index.with_transform(lambda batch: conversation_rows(source, batch))


def conversation_rows(source, batch):
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


# ---------------------------------------------------------------------------------------------------------------------
# Official augmentations (DESIGN section 2), in PIL and torch


@dataclass
class FaceAugmentation:
    """Horizontal flip, colour jitter, small rotation and random resized crop on the PIL image, then random erasing
    on the normalised pixels. Every draw comes from the generator it is given, so it is reproducible."""

    flip_probability: float = 0.5
    brightness: float = 0.25
    contrast: float = 0.25
    saturation: float = 0.25
    hue: float = 0.1
    rotation_degrees: float = 5.0
    crop_scale: tuple = (0.8, 1.0)
    crop_ratio: tuple = (3 / 4, 4 / 3)
    erase_probability: float = 0.25
    erase_scale: tuple = (0.02, 0.2)
    fill: tuple = field(default=(123, 117, 104))  # the CLIP mean colour, which normalises to zero

    def augment_image(self, image, rng):
        """The augmented image and whether it was mirrored (then left and right swap in the text too)."""
        flipped = bool(rng.random() < self.flip_probability)
        if flipped:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        image = ImageEnhance.Brightness(image).enhance(rng.uniform(1 - self.brightness, 1 + self.brightness))
        image = ImageEnhance.Contrast(image).enhance(rng.uniform(1 - self.contrast, 1 + self.contrast))
        image = ImageEnhance.Color(image).enhance(rng.uniform(1 - self.saturation, 1 + self.saturation))
        image = shift_hue(image, rng.uniform(-self.hue, self.hue))
        angle = rng.uniform(-self.rotation_degrees, self.rotation_degrees)
        image = image.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=self.fill)
        return self.random_resized_crop(image, rng), flipped

    def random_resized_crop(self, image, rng):
        width, height = image.size
        for _ in range(10):  # rejection sampling, as the usual RandomResizedCrop
            area = width * height * rng.uniform(*self.crop_scale)
            ratio = math.exp(rng.uniform(math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1])))
            crop_width, crop_height = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
            if 0 < crop_width <= width and 0 < crop_height <= height:
                left = int(rng.integers(0, width - crop_width + 1))
                top = int(rng.integers(0, height - crop_height + 1))
                return image.crop((left, top, left + crop_width, top + crop_height))
        return image

    def erase(self, pixel_values, rng):
        """Random erasing on one normalised image `(channels, height, width)`: a rectangle set to zero (the mean)."""
        if rng.random() >= self.erase_probability:
            return pixel_values
        _, height, width = pixel_values.shape
        area = height * width * rng.uniform(*self.erase_scale)
        ratio = math.exp(rng.uniform(math.log(0.3), math.log(3.3)))
        erase_height = min(height, max(1, round(math.sqrt(area * ratio))))
        erase_width = min(width, max(1, round(math.sqrt(area / ratio))))
        top = int(rng.integers(0, height - erase_height + 1))
        left = int(rng.integers(0, width - erase_width + 1))
        pixel_values = pixel_values.clone()
        pixel_values[:, top : top + erase_height, left : left + erase_width] = 0.0
        return pixel_values


def shift_hue(image, fraction):
    """Rotate the hue of an RGB image by `fraction` of the colour wheel."""
    if fraction == 0.0:
        return image
    hue, saturation, value = image.convert("HSV").split()
    hue = hue.point(lambda h: (h + round(fraction * 255)) % 256)
    return Image.merge("HSV", (hue, saturation, value)).convert("RGB")


_SIDES = re.compile(r"\b(left|right|Left|Right|LEFT|RIGHT)\b")


def mirror_sides(messages):
    """The messages of a mirrored image: "left" and "right" swap, since CoTs name the subject's own side."""
    swap = {"left": "right", "right": "left", "Left": "Right", "Right": "Left", "LEFT": "RIGHT", "RIGHT": "LEFT"}

    def mirrored(part):
        if part.get("type") != "text" or not part.get("text"):
            return part
        return dict(part, text=_SIDES.sub(lambda match: swap[match.group(1)], part["text"]))

    return [dict(message, content=[mirrored(part) for part in message["content"]]) for message in messages]


# ---------------------------------------------------------------------------------------------------------------------
# The collator


@dataclass
class ExpLLMCollator:
    """Builds a batch from conversation rows: loads (and, for training, augments) each image, renders the chat
    template, and sets `labels` to -100 everywhere except the assistant answers and their end-of-turn tokens — so the
    system prompt, the questions, every image token and the padding carry no loss."""

    processor: object
    max_length: int | None = None
    augmentation: FaceAugmentation | None = None
    seed: int = 0
    epoch: int = 0  # set at each epoch start by a callback, so augmentations differ between epochs

    def __call__(self, rows):
        conversations, generators = [], []
        for row in rows:
            generator = np.random.default_rng([self.seed, self.epoch, row.get("position", 0)])
            image = self.processor.image_processor.load_image(row["images"][0])
            messages = row["messages"]
            if self.augmentation is not None:
                image, flipped = self.augmentation.augment_image(image, generator)
                if flipped:
                    messages = mirror_sides(messages)
            conversations.append(with_image(messages, image))
            generators.append(generator)
        batch = self.processor.apply_chat_template(
            conversations,
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=True,
            processor_kwargs={"padding": True, "padding_side": "right"},
            return_tensors="pt",
        )
        if self.max_length is not None and batch["input_ids"].shape[1] > self.max_length:
            raise ValueError(
                f"a batch is {batch['input_ids'].shape[1]} tokens long, over max_length {self.max_length}; "
                "check_lengths should have caught this before training"
            )
        labels = batch["input_ids"].masked_fill(batch.pop("assistant_masks") == 0, -100)
        pixel_values = batch["pixel_values"]
        if self.augmentation is not None:
            pixel_values = torch.stack([self.augmentation.erase(p, g) for p, g in zip(pixel_values, generators)])
        return {
            "input_ids": batch["input_ids"],
            "attention_mask": batch["attention_mask"],
            "pixel_values": pixel_values,
            "labels": labels,
        }


def with_image(messages, image):
    """A copy of the messages whose (first) image part carries the image itself."""
    placed, result = False, []
    for message in messages:
        content = []
        for part in message["content"]:
            if part.get("type") == "image" and not placed:
                part, placed = {"type": "image", "image": image}, True
            content.append({key: value for key, value in part.items() if value is not None})
        result.append({"role": message["role"], "content": content})
    if not placed:
        raise ValueError("a training conversation has no image part in its first user turn")
    return result


# ---------------------------------------------------------------------------------------------------------------------
# Checks before any compute


def check_images(dataset, processor, description="checking images"):
    """Open every image once; raise naming the first ones that fail, with how many failed in all."""
    failures = []
    for row in tqdm(dataset, desc=description, unit="sample", leave=False):
        for image in row["images"]:
            try:
                processor.image_processor.load_image(image)
            except (OSError, ValueError, TypeError) as error:
                failures.append(f"sample {row['position']} ({describe_image(image)}): {error}")
    if failures:
        shown = "\n  ".join(failures[:10])
        raise ValueError(f"{len(failures)} training images cannot be read, e.g.:\n  {shown}")


def describe_image(image):
    if isinstance(image, str):
        return image
    if isinstance(image, dict):
        return image.get("path") or "<embedded image>"
    return getattr(image, "filename", "") or type(image).__name__


def sequence_lengths(dataset, processor):
    """Token count of each sample as the model sees it (each image counts its expanded image tokens)."""
    size = processor.image_processor.size
    image_tokens = (size.height // processor.patch_size) * (size.width // processor.patch_size)
    lengths = []
    for start in tqdm(range(0, len(dataset), 256), desc="measuring lengths", unit="batch", leave=False):
        rows = dataset[start : start + 256]
        texts = [processor.apply_chat_template(messages) for messages in rows["messages"]]
        ids = processor.tokenizer(texts)["input_ids"]  # with <s>, which the tokenizer adds as in the collator
        lengths += [len(i) + (image_tokens - 1) * len(images) for i, images in zip(ids, rows["images"])]
    return lengths


def check_lengths(dataset, processor, max_length, policy="error"):
    """The samples that fit `max_length`. Over-long samples are an error (default) or dropped (`policy="drop"`),
    never cut: truncation would cut answers or the image tokens themselves."""
    if policy not in ("error", "drop"):
        raise ValueError(f"overlong policy must be 'error' or 'drop', got {policy!r}")
    if max_length is None:
        return dataset
    lengths = sequence_lengths(dataset, processor)
    keep = [position for position, length in enumerate(lengths) if length <= max_length]
    if len(keep) == len(lengths):
        return dataset
    message = (
        f"{len(lengths) - len(keep)} of {len(lengths)} training sequences are longer than max_length {max_length} "
        f"(longest {max(lengths)} tokens)"
    )
    if policy == "error":
        raise ValueError(message + "; raise max_length or pass --overlong drop to leave them out")
    print(message + "; dropping them (--overlong drop)")
    return dataset.select(keep)
