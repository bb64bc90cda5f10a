"""The collator of `train_sft.py`: loads (and, for training, augments) each row's image, renders the chat template and
puts loss on the assistant answers only."""

from dataclasses import dataclass

import numpy as np
import torch

from .augmentation import FaceAugmentation, mirror_sides


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
                "the length check before training (training.checks.fitting_entries) should have caught this"
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
