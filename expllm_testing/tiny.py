"""Tiny ExpLLM parts built offline, for tests, the demo and benchmarks: a tokenizer trained in-process on the release's
own words, and randomly initialised DINOv2 / Llama checkpoints saved as ordinary Hub-style folders, which
`ExpLLMForConditionalGeneration.from_backbones` then loads exactly as it would load the real ones.
"""

import os

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import Dinov2Config, Dinov2Model, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from modeling_expllm import vocabulary

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")


def vocabulary_corpus():
    """Every word of the release's vocabulary, questions and conversation format, as training text."""
    texts = [vocabulary.SYSTEM_PROMPT, vocabulary.FER_TASK, vocabulary.FER_QUESTION, vocabulary.COT_TASK]
    texts += [vocabulary.COT_QUESTION, "Image: TASK: USER: ASSISTANT:", " ".join(vocabulary.EXPRESSION_LABELS)]
    texts += [" ".join(words) for words in vocabulary.LABEL_SYNONYMS.values()]
    texts += [f"**{header}:**" for header in vocabulary.COT_SECTIONS]
    for unit in vocabulary.ACTION_UNITS:
        texts += [unit.name, unit.part, unit.movement, " ".join(unit.part_words), " ".join(unit.movement_words)]
    texts += [" ".join(band[3]) for band in vocabulary.DEGREE_BANDS]
    return texts


def train_tokenizer(extra_texts=(), vocab_size=1024):
    """A Llama-style byte-fallback-free BPE tokenizer (metaspace pre-tokenisation, <s> prepended) trained on the
    release's vocabulary plus `extra_texts`. Deterministic for the same texts."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    alphabet = sorted(set("".join(vocabulary_corpus()) + "abcdefghijklmnopqrstuvwxyz0123456789.,;:!?'\"()-*#/\n"))
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), initial_alphabet=alphabet, show_progress=False
    )
    tokenizer.train_from_iterator(list(vocabulary_corpus()) * 4 + list(extra_texts), trainer=trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tokenizer.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def save_tiny_backbones(
    folder,
    image_size=56,
    patch_size=14,
    vision_hidden_size=32,
    vision_layers=2,
    text_hidden_size=64,
    text_layers=2,
    num_attention_heads=4,
    extra_texts=(),
    seed=0,
):
    """Save a random tiny DINOv2 to `folder/vision` and a random tiny Llama with its tokenizer to `folder/text`."""
    import torch

    torch.manual_seed(seed)
    vision_dir, text_dir = os.path.join(folder, "vision"), os.path.join(folder, "text")
    vision_config = Dinov2Config(
        hidden_size=vision_hidden_size,
        num_hidden_layers=vision_layers,
        num_attention_heads=num_attention_heads,
        mlp_ratio=2,
        image_size=image_size,
        patch_size=patch_size,
    )
    Dinov2Model(vision_config).save_pretrained(vision_dir)

    tokenizer = train_tokenizer(extra_texts)
    text_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=text_hidden_size,
        intermediate_size=2 * text_hidden_size,
        num_hidden_layers=text_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_attention_heads,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(text_config).save_pretrained(text_dir)
    tokenizer.save_pretrained(text_dir)
    return vision_dir, text_dir


def pretrain_language_model(text_dir, conversations, steps=300, batch_size=16, learning_rate=3e-3, seed=0):
    """Give the random tiny language model the head start a real one brings: a few hundred steps of next-token training
    on conversation transcripts (the image left out), so that it already speaks the format and the label words. The
    LoRA recipe of stage 2 assumes such a pretrained language model; it cannot teach a random one to talk."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from modeling_expllm.processing_expllm import DEFAULT_CHAT_TEMPLATE

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(text_dir)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.unk_token  # padding only; labels mask it out
    model = AutoModelForCausalLM.from_pretrained(text_dir)
    texts = [
        tokenizer.apply_chat_template(messages, chat_template=DEFAULT_CHAT_TEMPLATE, tokenize=False, image_token="")
        for messages in conversations
    ]
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        batch = [texts[i] for i in torch.randint(len(texts), (batch_size,), generator=generator).tolist()]
        encoded = tokenizer(batch, padding=True, return_tensors="pt")  # <s> added here, as in stage-2 training
        labels = encoded["input_ids"].masked_fill(encoded["attention_mask"] == 0, -100)
        loss = model(**encoded, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(text_dir)
    return loss.item()


def pretrain_vision_tower(
    vision_dir, images, action_units, steps=1500, batch_size=32, learning_rate=1e-3, seed=0, presence_weight=0.0
):
    """Give the random tiny DINOv2 the head start a real one brings: train it to read the 24 FEAFA action units of
    face images (a linear head on the mean of its patch tokens, dropped afterwards), so that its patch tokens describe
    the moving parts of a face in a form the language model can pool with attention. The labels are never used.
    With `presence_weight`, a second head also learns which units are present at all (binary cross-entropy, added
    with that weight): in squared error a faint unit (0.03-0.15) costs almost nothing to miss, yet a CoT names it.
    Returns the last batch's mean squared error."""
    import torch
    from transformers import Dinov2Model

    from modeling_expllm.image_processing_expllm import ExpLLMImageProcessor

    torch.manual_seed(seed)
    model = Dinov2Model.from_pretrained(vision_dir)
    size = model.config.image_size
    processor = ExpLLMImageProcessor(size={"height": size, "width": size})
    pixel_values = processor(list(images), return_tensors="pt")["pixel_values"]
    targets = torch.tensor(list(action_units), dtype=torch.float32)
    num_patches = (size // model.config.patch_size) ** 2
    head = torch.nn.Linear(model.config.hidden_size, targets.shape[1])
    # Made only when asked for, so that without it the random stream, and the tower, are what they always were.
    presence_head = torch.nn.Linear(model.config.hidden_size, targets.shape[1]) if presence_weight else None
    trained = [*model.parameters(), *head.parameters(), *(presence_head.parameters() if presence_head else ())]
    optimizer = torch.optim.AdamW(trained, lr=learning_rate)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=learning_rate, total_steps=steps, pct_start=0.1)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        batch = torch.randint(len(targets), (batch_size,), generator=generator)
        patches = model(pixel_values=pixel_values[batch]).last_hidden_state[:, -num_patches:]
        pooled = patches.mean(1)
        squared_error = torch.nn.functional.mse_loss(head(pooled), targets[batch])
        loss = squared_error
        if presence_weight:
            present = (targets[batch] > 0).float()
            presence = torch.nn.functional.binary_cross_entropy_with_logits(presence_head(pooled), present)
            loss = loss + presence_weight * presence
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
    model.save_pretrained(vision_dir)
    return squared_error.item()


def train_tiny_expression_model(folder, faces=480, steps=240, batch_size=16, learning_rate=3e-3, seed=0):
    """A tiny ExpLLM that reads the label of synthetic faces (FER only, no CoT; about 95% held out), trained in half a
    minute on a CPU, for the tests of what stands on a working model (the face analyser, its videos): head starts for
    both towers, then the projector and the language model on the label round of `faces` synthetic faces, the vision
    tower kept as its AU head start made it (training it too at this size lost 10 points). Saved to `folder`."""
    import torch

    from dataset_builders.exp_cot.synthetic_faces import generate_faces
    from modeling_expllm.modeling_expllm import ExpLLMForConditionalGeneration
    from training.collator import ExpLLMCollator

    training = list(generate_faces(faces, seed=seed + 100, size=224))
    vision_dir, text_dir = save_tiny_backbones(
        os.path.join(folder, "backbones"), image_size=56, vision_hidden_size=64, seed=seed
    )
    pretrain_vision_tower(vision_dir, [f.image for f in training], [f.au for f in training], steps=1200, seed=seed)
    pretrain_language_model(text_dir, [vocabulary.fer_messages(f.label) for f in training], steps=60, seed=seed)
    torch.manual_seed(seed)
    model, processor = ExpLLMForConditionalGeneration.from_backbones(vision_dir, text_dir)
    collator = ExpLLMCollator(processor)
    model.model.vision_tower.requires_grad_(False)
    trained = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=learning_rate, total_steps=steps, pct_start=0.1)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        batch = torch.randint(len(training), (batch_size,), generator=generator).tolist()
        rows = [{"images": [training[i].image], "messages": vocabulary.fer_messages(training[i].label)} for i in batch]
        model(**collator(rows)).loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
    model.eval()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
