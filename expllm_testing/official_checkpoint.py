"""A random checkpoint in the layout of the official ExpLLM release, for testing code that reads the official weights.

The official checkpoint was saved by the Hugging Face Trainer of transformers 4.31 from the original `LocLLM`-based
training code: `pytorch_model.bin` (or `pytorch_model-0000K-of-0000N.bin` shards with `pytorch_model.bin.index.json`)
holding one flat state dict with a DINOv2 ViT built at 518 px (`vision_model.*`, fused qkv, un-merged LoRA on the
query and value parts), a two-layer GELU projector (`mm_projector.*`) and a Llama with un-merged LoRA on q_proj and
v_proj (`model.*`, `lm_head.weight`); a `config.json` of LlamaConfig fields plus the official extras (model_type
"locllm", llama_path, dino_path, lora_*, crop_size); the tokenizer with `<im_patch>` added after the LLM's vocabulary
(so its id equals the LLM's vocab_size and is never looked up in embed_tokens); and `training_args.bin`.

`save_official_checkpoint` writes a folder with exactly those names, shapes and dtypes, at any size, but every tensor
is random (seeded) and the tokenizer is the project's tiny one: nothing in it is the real weights.
"""

import json
import math
import os

import torch

from expllm_testing.tiny import train_tokenizer

IMAGE_TOKEN = "<im_patch>"

# The official prompt pieces and label words, so that the tiny tokenizer learns them as (mostly) whole words.
OFFICIAL_TEXTS = (
    "Expression recognition involves identifying the emotional state of a person in a given image.",
    "What is the expression of the person in the image? Please provide the expression label.",
    "Expression analysis involves providing a detailed analysis of the face. ",
    "Can you analysis the facial expression step-by-step in the provided image? Provide a detailed description.",
    "You are a helpful face analysis assistant. Image: TASK: USER: ASSISTANT:",
    "Neutral Happiness Sadness Surprise Fear Disgust Anger Contempt",
)


def _tensor_specs(vision, text, vision_lora_r, text_lora_r):
    """Every tensor of the official state dict as (key, shape, dtype, init), in the order `state_dict()` of the
    original model lists them: the language model first (it is the wrapped LlamaForCausalLM's own `model` and
    `lm_head`), then the vision tower and the projector added after it. Within a module its own parameters come
    before its children's, hence DINOv2's tokens before patch_embed and the attention's LoRA before qkv."""
    dim, hidden, inner = vision["dim"], text["dim"], 2 * text["dim"]
    llm = text["dtype"]
    yield "model.embed_tokens.weight", (text["vocab"], hidden), llm, "embedding"
    for i in range(text["layers"]):
        p = f"model.layers.{i}."
        for name in ("q", "k", "v", "o"):
            yield f"{p}self_attn.{name}_proj.weight", (hidden, hidden), llm, "linear"
            if name in ("q", "v"):
                yield f"{p}self_attn.{name}_proj.lora_A", (text_lora_r, hidden), torch.float32, "linear"
                yield f"{p}self_attn.{name}_proj.lora_B", (hidden, text_lora_r), torch.float32, "lora_b"
        yield f"{p}mlp.gate_proj.weight", (inner, hidden), llm, "linear"
        yield f"{p}mlp.up_proj.weight", (inner, hidden), llm, "linear"
        yield f"{p}mlp.down_proj.weight", (hidden, inner), llm, "linear"
        yield f"{p}input_layernorm.weight", (hidden,), llm, "norm"
        yield f"{p}post_attention_layernorm.weight", (hidden,), llm, "norm"
    yield "model.norm.weight", (hidden,), llm, "norm"
    yield "lm_head.weight", (text["vocab"], hidden), llm, "linear"

    f32 = torch.float32
    grid = vision["image_size"] // vision["patch_size"]
    yield "vision_model.cls_token", (1, 1, dim), f32, "token"
    yield "vision_model.pos_embed", (1, grid * grid + 1, dim), f32, "token"
    yield "vision_model.mask_token", (1, dim), f32, "token"
    patch = vision["patch_size"]
    yield "vision_model.patch_embed.proj.weight", (dim, 3, patch, patch), f32, "linear"
    yield "vision_model.patch_embed.proj.bias", (dim,), f32, "bias"
    for i in range(vision["layers"]):
        p = f"vision_model.blocks.{i}."
        yield f"{p}norm1.weight", (dim,), f32, "norm"
        yield f"{p}norm1.bias", (dim,), f32, "bias"
        for part in ("q", "v"):
            yield f"{p}attn.lora_A_{part}", (vision_lora_r, dim), f32, "linear"
            yield f"{p}attn.lora_B_{part}", (dim, vision_lora_r), f32, "lora_b"
        yield f"{p}attn.qkv.weight", (3 * dim, dim), f32, "linear"
        yield f"{p}attn.qkv.bias", (3 * dim,), f32, "bias"
        yield f"{p}attn.proj.weight", (dim, dim), f32, "linear"
        yield f"{p}attn.proj.bias", (dim,), f32, "bias"
        yield f"{p}ls1.gamma", (dim,), f32, "layer_scale"
        yield f"{p}norm2.weight", (dim,), f32, "norm"
        yield f"{p}norm2.bias", (dim,), f32, "bias"
        yield f"{p}mlp.fc1.weight", (4 * dim, dim), f32, "linear"
        yield f"{p}mlp.fc1.bias", (4 * dim,), f32, "bias"
        yield f"{p}mlp.fc2.weight", (dim, 4 * dim), f32, "linear"
        yield f"{p}mlp.fc2.bias", (dim,), f32, "bias"
        yield f"{p}ls2.gamma", (dim,), f32, "layer_scale"
    yield "vision_model.norm.weight", (dim,), f32, "norm"
    yield "vision_model.norm.bias", (dim,), f32, "bias"
    yield "mm_projector.0.weight", (hidden, dim), f32, "linear"
    yield "mm_projector.0.bias", (hidden,), f32, "bias"
    yield "mm_projector.2.weight", (hidden, hidden), f32, "linear"
    yield "mm_projector.2.bias", (hidden,), f32, "bias"


def _random_tensor(shape, dtype, init, generator):
    """Random values that keep every layer's output on the scale of its input, so that the model is not degenerate
    at any width: weights with std 1/sqrt(fan_in) (not a fixed 0.02, which would make a narrow tiny model's attention
    uniform), norms around 1, layer scales between 0.1 and 1. LoRA B is deliberately far from the zero it starts
    training at: its update is about half the size of the frozen weight's output, so that leaving LoRA out (or
    applying it twice) changes the logits clearly."""
    if init == "layer_scale":
        values = 0.1 + 0.9 * torch.rand(shape, generator=generator)
    else:
        values = torch.randn(shape, generator=generator)
        if init == "linear":
            values *= math.prod(shape[1:]) ** -0.5
        elif init == "lora_b":
            values *= 0.25 * shape[1] ** -0.5
        elif init == "norm":
            values = 1.0 + 0.1 * values
        elif init in ("bias", "token"):
            values *= 0.02
        # "embedding": unit std, the scale of the projected image features that replace some of them
    return values.to(dtype)


def _plan_shards(specs, max_shard_bytes):
    """Group the keys into shards the way the HF Trainer (transformers 4.31 `shard_checkpoint`) does: greedily in key
    order, starting a new shard when the next tensor would overflow the current one (a tensor larger than the limit
    gets a shard of its own)."""
    shards, size = [[]], 0
    for spec in specs:
        nbytes = math.prod(spec[1]) * spec[2].itemsize
        if max_shard_bytes is not None and shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += nbytes
    return shards


def save_official_checkpoint(
    folder,
    *,
    vision_hidden_size=128,
    vision_layers=2,
    image_size=518,
    patch_size=14,
    crop_size=224,
    text_hidden_size=64,
    text_layers=2,
    text_heads=4,
    vision_lora=(4, 8),
    text_lora=(4, 8),
    text_dtype=torch.float32,
    max_shard_bytes=None,
    seed=0,
):
    """Write a random checkpoint in the official ExpLLM layout into `folder` and return `folder`.

    `vision_lora` and `text_lora` are (r, alpha). The vision tower, the projector and all LoRA tensors are float32,
    the language model's weights `text_dtype` (bfloat16 in the real checkpoint). With `max_shard_bytes` the weights
    are split into Trainer-style shards plus an index (a plain `pytorch_model.bin` if everything fits one); each shard
    is generated and saved before the next one is started, so that a full-size vision tower needs little more memory
    than one shard. The same seed gives the same tensors whatever the sharding."""
    os.makedirs(folder, exist_ok=True)

    # The tokenizer first: the LLM's vocabulary is the tokenizer without <im_patch>, which is appended after it.
    tokenizer = train_tokenizer(OFFICIAL_TEXTS)
    vocab_size = len(tokenizer)
    tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)
    assert tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) == vocab_size
    tokenizer.save_pretrained(folder)

    # A LlamaConfig as transformers 4.31 wrote it (vicuna-7b-v1.5's fields: no rope_theta yet, rope_scaling null).
    config = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "hidden_act": "silu",
        "hidden_size": text_hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": 2 * text_hidden_size,
        "max_position_embeddings": 2048,
        "num_attention_heads": text_heads,
        "num_hidden_layers": text_layers,
        "num_key_value_heads": text_heads,
        "pad_token_id": tokenizer.unk_token_id,  # vicuna-7b-v1.5 pads with <unk> (id 0)
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-5,
        "rope_scaling": None,
        "tie_word_embeddings": False,
        "transformers_version": "4.31.0",
        "use_cache": True,
        "vocab_size": vocab_size,
    }
    config.update(
        model_type="locllm",
        architectures=["LocLLMModel"],
        torch_dtype=str(text_dtype).removeprefix("torch."),
        llama_path="lmsys/vicuna-7b-v1.5",
        dino_path="dinov2_vitl14_pretrain.pth",
        lora_vision_r=vision_lora[0],
        lora_vision_alpha=vision_lora[1],
        lora_vision_dropout=0.05,
        lora_vision_enable=True,
        lora_llm_r=text_lora[0],
        lora_llm_alpha=text_lora[1],
        lora_llm_dropout=0.05,
        lora_llm_enable=True,
        crop_size=crop_size,
    )
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)

    vision = {"dim": vision_hidden_size, "layers": vision_layers, "image_size": image_size, "patch_size": patch_size}
    text = {"dim": text_hidden_size, "layers": text_layers, "vocab": vocab_size, "dtype": text_dtype}
    specs = list(_tensor_specs(vision, text, vision_lora[0], text_lora[0]))
    shards = _plan_shards(specs, max_shard_bytes)

    generator = torch.Generator().manual_seed(seed)
    weight_map, total_size = {}, 0
    for number, shard in enumerate(shards, start=1):
        name = "pytorch_model.bin" if len(shards) == 1 else f"pytorch_model-{number:05d}-of-{len(shards):05d}.bin"
        state_dict = {key: _random_tensor(shape, dtype, init, generator) for key, shape, dtype, init in shard}
        torch.save(state_dict, os.path.join(folder, name))
        total_size += sum(t.numel() * t.element_size() for t in state_dict.values())
        weight_map.update(dict.fromkeys(state_dict, name))
        del state_dict  # free this shard before the next one is generated
    if len(shards) > 1:  # like the Trainer, a checkpoint that fits one shard is a plain pytorch_model.bin
        index = {"metadata": {"total_size": total_size}, "weight_map": weight_map}
        with open(os.path.join(folder, "pytorch_model.bin.index.json"), "w") as f:
            json.dump(index, f, indent=2, sort_keys=True)

    # The real file pickles a TrainingArguments object; a plain dict of a few of its fields stands in for it.
    training_args = {"learning_rate": 2e-4, "num_train_epochs": 1, "per_device_train_batch_size": 8, "bf16": True}
    torch.save(training_args, os.path.join(folder, "training_args.bin"))
    return folder


def official_checkpoint_size(folder):
    """Bytes of the weight files (`pytorch_model*.bin`) in an official-layout folder."""
    names = [n for n in os.listdir(folder) if n.startswith("pytorch_model") and n.endswith(".bin")]
    return sum(os.path.getsize(os.path.join(folder, n)) for n in names)
