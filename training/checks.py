"""Checks `train_sft.py` runs before any compute: every image opens, and every sequence fits `max_length`."""

from collections import Counter

from tqdm.auto import tqdm


def check_images(dataset, processor, description="checking images"):
    """Open every image once; raise naming the first ones that fail, with how many failed in all."""
    failures = []
    for row in tqdm(dataset, desc=description, unit="sample", leave=False):
        for image in row["images"]:
            try:
                processor.image_processor.load_image(image)
            except (OSError, ValueError, TypeError) as error:
                failures.append(f"sample {row['position']} ({image_origin(image)}): {error}")
    if failures:
        shown = "\n  ".join(failures[:10])
        raise ValueError(f"{len(failures)} training images cannot be read, e.g.:\n  {shown}")


def image_origin(image):
    """Where a training image comes from, for an error message: its path, or what kind of object it is."""
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


def fitting_entries(entries, lengths, max_length, policy="error"):
    """The entries whose sequences (`lengths`, from `sequence_lengths`) fit `max_length`. Over-long ones are an error
    (default) or dropped (`policy="drop"`), never cut: truncation would cut answers or the image tokens themselves. The
    count is given per kind, and dropping every sample of a kind is said loudly."""
    if policy not in ("error", "drop"):
        raise ValueError(f"overlong policy must be 'error' or 'drop', got {policy!r}")
    if max_length is None:
        return entries
    keep = [entry for entry, length in zip(entries, lengths) if length <= max_length]
    if len(keep) == len(entries):
        return entries
    kinds = Counter(kind for _, kind in entries)
    over = Counter(kind for (_, kind), length in zip(entries, lengths) if length > max_length)
    by_kind = ", ".join(f"{kind} {over[kind]} of {kinds[kind]}" for kind in sorted(kinds))
    message = (
        f"{len(entries) - len(keep)} of {len(entries)} training sequences are longer than max_length {max_length} "
        f"(longest {max(lengths)} tokens; by kind: {by_kind})"
    )
    if policy == "error":
        raise ValueError(message + "; raise max_length or pass --overlong drop to leave them out")
    print(message + "; dropping them (--overlong drop)")
    for kind in sorted(kinds):
        if over[kind] == kinds[kind]:
            print(f"WARNING: --overlong drop removes every {kind} sample: raise max_length to keep them")
    return keep
