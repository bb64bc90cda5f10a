"""Convert the official ExpLLM checkpoint (the paper's weights, `starhiking/ExpLLM`, saved by transformers 4.31) into
this release's format, so that it loads with `AutoModelForImageTextToText`, `AutoProcessor` and `pipeline`:

    python -m modeling_expllm.convert_official_checkpoint --input_dir ExpLLM --output_dir out/expllm-official
    python -m modeling_expllm.convert_official_checkpoint --input_dir ExpLLM --output_dir out/expllm-lo --lora adapter

The official folder holds `pytorch_model*.bin` (pickles: read with `torch.load(weights_only=True)` only, which refuses
any pickle that would run code), `config.json` and the tokenizer. Its model class is never built (its `__init__`
opens files named in the config). DESIGN section 9 has the facts this file relies on:

- DINOv2 keys in the original DINOv2 layout, attention fused (`qkv` = query, key, value rows), position embeddings for
  518 px: interpolated here once, the official way (bicubic, scale factor (grid + 0.1) / 37), to the 224 px grid,
  and saved with a 224 px vision config, so transformers' DINOv2 never interpolates again;
- LoRA of both towers saved unmerged: merged into the query and value weights (`--lora merge`, the default), or
  written as a PEFT adapter on top of the unmerged weights (`--lora adapter`, into `OUTPUT/adapter`);
- the image token `<im_patch>` (id 32,000) has no embedding row in the official model, which splices image features
  in before the lookup; LLaVA looks the id up first, so the embeddings and `lm_head` grow by one row, and the
  generation config suppresses that token (the model never answers with it, and label probabilities ignore it);
- the official preprocessing (OpenCV bilinear resize) and conversation format, set on the saved processor.

The conversion streams: the shards are memory-mapped, every key and shape is checked before anything is written, and
each output shard is written as soon as its tensors are ready, so memory stays within about twice the largest input
shard (bench/convert_official.py measures it). A killed run resumes: finished output shards are kept.
"""

import argparse
import json
import math
import os
import re
import shutil

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

# Fields of the official config.json that are not LlamaConfig's (they describe the official training run).
OFFICIAL_FIELDS = (
    "llama_path",
    "dino_path",
    "lora_vision_r",
    "lora_vision_alpha",
    "lora_vision_dropout",
    "lora_vision_enable",
    "lora_llm_r",
    "lora_llm_alpha",
    "lora_llm_dropout",
    "lora_llm_enable",
    "crop_size",
    "num_patches",
    "im_patch_token",
)
CONFIG_BOOKKEEPING = ("model_type", "architectures", "transformers_version", "_name_or_path", "torch_dtype", "dtype")
OFFICIAL_IMAGE_TOKEN = "<im_patch>"
DINOV2_HEAD_DIM = 64  # every DINOv2 size (S, B, L, g) has 64-dimensional attention heads
OFFICIAL_MAX_NEW_TOKENS = 100  # the official evaluation's generation limit
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Buffers some Llama checkpoints carry; transformers recomputes them, so they are read past, not refused.
IGNORED_KEYS = re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")


# ---------------------------------------------------------------------------------------------------------------------
# Reading the official folder


def read_official_config(input_dir):
    """The official config.json, checked for the fields the conversion needs."""
    path = os.path.join(input_dir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{input_dir} has no config.json: is it the official ExpLLM checkpoint folder?")
    with open(path, encoding="utf-8") as file:
        config = json.load(file)
    needed = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")
    needed += ("crop_size", "lora_vision_enable", "lora_llm_enable")
    missing = [name for name in needed if name not in config]
    if missing:
        raise ValueError(f"{path} lacks the field(s) {missing} of the official ExpLLM config")
    for tower in ("vision", "llm"):
        if config[f"lora_{tower}_enable"]:
            for field in (f"lora_{tower}_r", f"lora_{tower}_alpha"):
                if not isinstance(config.get(field), (int, float)) or config[field] <= 0:
                    raise ValueError(f"{path}: {field} must be a positive number, got {config.get(field)!r}")
    return config


class OfficialCheckpoint:
    """The official weight files, opened lazily and memory-mapped: a shard's tensors are read from disk only when
    used, and `close` hands its pages back."""

    def __init__(self, input_dir):
        self.input_dir = input_dir
        index = os.path.join(input_dir, "pytorch_model.bin.index.json")
        single = os.path.join(input_dir, "pytorch_model.bin")
        if os.path.isfile(index):
            with open(index, encoding="utf-8") as file:
                weight_map = json.load(file).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise ValueError(f"{index} has no 'weight_map'")
            self.shard_files = list(dict.fromkeys(weight_map.values()))
            absent = [name for name in self.shard_files if not os.path.isfile(os.path.join(input_dir, name))]
            if absent:
                raise FileNotFoundError(f"{index} names shard(s) missing from {input_dir}: {absent}")
        elif os.path.isfile(single):
            self.shard_files = ["pytorch_model.bin"]
        else:
            raise FileNotFoundError(f"{input_dir} has neither pytorch_model.bin nor pytorch_model.bin.index.json")
        self._open = {}
        # Where each key really is, read from the shards themselves (an index may be stale).
        self.key_shard, self.shapes = {}, {}
        for name in self.shard_files:
            for key, tensor in self.shard(name).items():
                if key in self.key_shard:
                    raise ValueError(f"{key} is stored twice, in {self.key_shard[key]} and {name}")
                self.key_shard[key], self.shapes[key] = name, tuple(tensor.shape)
            self.close(name)

    def shard(self, name):
        if name not in self._open:
            self._open[name] = load_official_shard(os.path.join(self.input_dir, name))
        return self._open[name]

    def tensor(self, key):
        return self.shard(self.key_shard[key])[key]

    def close(self, name=None):
        for shard in [name] if name else list(self._open):
            self._open.pop(shard, None)

    def largest_shard_bytes(self):
        return max(os.path.getsize(os.path.join(self.input_dir, name)) for name in self.shard_files)


def load_official_shard(path):
    """One official shard as a dict of tensors, with `torch.load(weights_only=True)`: a pickle that would build
    anything but tensors and plain containers is refused, never run."""
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as error:
        if "mmap" not in str(error):
            raise ValueError(f"cannot read {path} as a PyTorch checkpoint: {error}") from error
        state_dict = torch.load(path, map_location="cpu", weights_only=True)  # the pre-1.6 format cannot be mapped
    except Exception as error:  # weights_only raises UnpicklingError for code, others for broken files
        raise ValueError(
            f"refusing {path}: it is not a plain tensor checkpoint that torch.load(weights_only=True) can read "
            f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
        ) from error
    if not isinstance(state_dict, dict) or not all(isinstance(t, torch.Tensor) for t in state_dict.values()):
        raise ValueError(f"refusing {path}: it does not hold a dict of tensors")
    return state_dict


# ---------------------------------------------------------------------------------------------------------------------
# What the official checkpoint must hold, and what each release tensor is made of


class Layout:
    """The sizes of the official model, read from its config and from the shapes of a few tensors, and the shape every
    official key must have."""

    def __init__(self, config, shapes, vision_num_heads=None):
        def shape_of(key, rank):
            if key not in shapes:
                raise ValueError(f"the checkpoint has no {key}, which every official ExpLLM checkpoint holds")
            if len(shapes[key]) != rank:
                raise ValueError(f"{key} has shape {list(shapes[key])}, expected {rank} dimensions")
            return shapes[key]

        self.vision_hidden = shape_of("vision_model.cls_token", 3)[-1]
        self.patch_size = shape_of("vision_model.patch_embed.proj.weight", 4)[-1]
        self.vision_mlp = shape_of("vision_model.blocks.0.mlp.fc1.weight", 2)[0]
        positions = shape_of("vision_model.pos_embed", 3)[1] - 1
        self.source_grid = math.isqrt(positions)
        if self.source_grid**2 != positions:
            raise ValueError(f"vision_model.pos_embed holds {positions} patch positions, not a square grid")
        self.vision_layers = 1 + max(int(k.split(".")[2]) for k in shapes if k.startswith("vision_model.blocks."))
        self.vision_heads = vision_num_heads or self.vision_hidden // DINOV2_HEAD_DIM
        if self.vision_heads <= 0 or self.vision_hidden % self.vision_heads:
            raise ValueError(
                f"cannot split the vision width {self.vision_hidden} into {self.vision_heads} heads: "
                "pass --vision_num_heads"
            )
        self.crop_size = config["crop_size"]
        if self.crop_size % self.patch_size:
            raise ValueError(f"crop_size {self.crop_size} is not a multiple of the patch size {self.patch_size}")
        self.grid = self.crop_size // self.patch_size

        self.hidden = config["hidden_size"]
        self.layers = config["num_hidden_layers"]
        self.heads = config["num_attention_heads"]
        self.kv_heads = config.get("num_key_value_heads") or self.heads
        self.head_dim = config.get("head_dim") or self.hidden // self.heads
        self.intermediate = config["intermediate_size"]
        self.vocab = config["vocab_size"]
        self.vision_lora = int(config["lora_vision_r"]) if config["lora_vision_enable"] else 0
        self.vision_lora_scale = config["lora_vision_alpha"] / config["lora_vision_r"] if self.vision_lora else 0.0
        self.llm_lora = int(config["lora_llm_r"]) if config["lora_llm_enable"] else 0
        self.llm_lora_scale = config["lora_llm_alpha"] / config["lora_llm_r"] if self.llm_lora else 0.0

    def expected_shapes(self):
        """Every key of the official checkpoint and its shape."""
        D, F, H = self.vision_hidden, self.vision_mlp, self.hidden
        shapes = {
            "vision_model.cls_token": (1, 1, D),
            "vision_model.mask_token": (1, D),
            "vision_model.pos_embed": (1, self.source_grid**2 + 1, D),
            "vision_model.patch_embed.proj.weight": (D, 3, self.patch_size, self.patch_size),
            "vision_model.patch_embed.proj.bias": (D,),
            "vision_model.norm.weight": (D,),
            "vision_model.norm.bias": (D,),
            "mm_projector.0.weight": (H, D),
            "mm_projector.0.bias": (H,),
            "mm_projector.2.weight": (H, H),
            "mm_projector.2.bias": (H,),
            "model.embed_tokens.weight": (self.vocab, H),
            "model.norm.weight": (H,),
            "lm_head.weight": (self.vocab, H),
        }
        for i in range(self.vision_layers):
            block = f"vision_model.blocks.{i}"
            for norm in ("norm1", "norm2"):
                shapes.update({f"{block}.{norm}.weight": (D,), f"{block}.{norm}.bias": (D,)})
            shapes.update({f"{block}.attn.qkv.weight": (3 * D, D), f"{block}.attn.qkv.bias": (3 * D,)})
            shapes.update({f"{block}.attn.proj.weight": (D, D), f"{block}.attn.proj.bias": (D,)})
            shapes.update({f"{block}.ls1.gamma": (D,), f"{block}.ls2.gamma": (D,)})
            shapes.update({f"{block}.mlp.fc1.weight": (F, D), f"{block}.mlp.fc1.bias": (F,)})
            shapes.update({f"{block}.mlp.fc2.weight": (D, F), f"{block}.mlp.fc2.bias": (D,)})
            if self.vision_lora:
                for part in ("q", "v"):
                    shapes[f"{block}.attn.lora_A_{part}"] = (self.vision_lora, D)
                    shapes[f"{block}.attn.lora_B_{part}"] = (D, self.vision_lora)
        q_out, kv_out = self.heads * self.head_dim, self.kv_heads * self.head_dim
        for i in range(self.layers):
            layer = f"model.layers.{i}"
            shapes[f"{layer}.input_layernorm.weight"] = (H,)
            shapes[f"{layer}.post_attention_layernorm.weight"] = (H,)
            projections = {"q_proj": (q_out, H), "k_proj": (kv_out, H), "v_proj": (kv_out, H), "o_proj": (H, q_out)}
            for name, shape in projections.items():
                shapes[f"{layer}.self_attn.{name}.weight"] = shape
            shapes[f"{layer}.mlp.gate_proj.weight"] = (self.intermediate, H)
            shapes[f"{layer}.mlp.up_proj.weight"] = (self.intermediate, H)
            shapes[f"{layer}.mlp.down_proj.weight"] = (H, self.intermediate)
            if self.llm_lora:
                for name in ("q_proj", "v_proj"):
                    shapes[f"{layer}.self_attn.{name}.lora_A"] = (self.llm_lora, H)
                    shapes[f"{layer}.self_attn.{name}.lora_B"] = (projections[name][0], self.llm_lora)
        return shapes


def check_keys(shapes, expected, input_dir):
    """Refuse a checkpoint with missing, unexpected or mis-shaped keys, listing them."""
    found = {key: shape for key, shape in shapes.items() if not IGNORED_KEYS.fullmatch(key)}
    missing = [key for key in expected if key not in found]
    unexpected = [key for key in found if key not in expected]
    misshaped = [
        f"{k} {list(found[k])} (expected {list(v)})" for k, v in expected.items() if k in found and found[k] != v
    ]
    problems = [(missing, "missing"), (unexpected, "unexpected"), (misshaped, "mis-shaped")]
    if any(keys for keys, _ in problems):
        lines = [f"{input_dir} is not an official ExpLLM checkpoint this converter can read:"]
        for keys, what in problems:
            if keys:
                shown = ", ".join(keys[:10]) + (f" and {len(keys) - 10} more" if len(keys) > 10 else "")
                lines.append(f"  {len(keys)} {what} key(s): {shown}")
        raise ValueError("\n".join(lines))


def interpolate_position_embeddings(pos_embed, source_grid, grid):
    """The official DINOv2 interpolation of the patch position embeddings, done once: bicubic with the scale factor
    (grid + 0.1) / source_grid (not a target size, which transformers' DINOv2 uses and which lands slightly
    elsewhere), in float32. The CLS embedding is kept as it is."""
    cls_embedding, patch_embeddings = pos_embed[:, :1].float(), pos_embed[:, 1:].float()
    dim = patch_embeddings.shape[-1]
    patch_embeddings = patch_embeddings.reshape(1, source_grid, source_grid, dim).permute(0, 3, 1, 2)
    scale = (grid + 0.1) / source_grid
    patch_embeddings = torch.nn.functional.interpolate(
        patch_embeddings, scale_factor=(scale, scale), mode="bicubic", align_corners=False
    )
    if tuple(patch_embeddings.shape[-2:]) != (grid, grid):
        raise ValueError(f"interpolating {source_grid}x{source_grid} positions gave {patch_embeddings.shape[-2:]}")
    patch_embeddings = patch_embeddings.permute(0, 2, 3, 1).reshape(1, grid * grid, dim)
    return torch.cat([cls_embedding, patch_embeddings], dim=1)


def with_lora(weight, lora_a, lora_b, scale):
    """A linear weight with its LoRA merged in: the layer computes x @ W.T + x @ A.T @ B.T * scale."""
    return weight.float() + (lora_b.float() @ lora_a.float()) * scale


class Recipe:
    """One tensor of the release's checkpoint: its name, shape, the official keys it is made of and how."""

    def __init__(self, name, shape, sources, build=lambda tensor: tensor):
        self.name, self.shape, self.sources, self.build = name, tuple(shape), list(sources), build


def conversion_recipes(layout, merge_lora):
    """The release's tensors, each from its official sources (with `merge_lora`, the LoRA tensors too)."""
    D, H = layout.vision_hidden, layout.hidden
    expected = layout.expected_shapes()
    recipes = [
        Recipe("model.vision_tower.embeddings.cls_token", (1, 1, D), ["vision_model.cls_token"]),
        Recipe("model.vision_tower.embeddings.mask_token", (1, D), ["vision_model.mask_token"]),
        Recipe(
            "model.vision_tower.embeddings.position_embeddings",
            (1, layout.grid**2 + 1, D),
            ["vision_model.pos_embed"],
            lambda pos: interpolate_position_embeddings(pos, layout.source_grid, layout.grid),
        ),
    ]
    for part in ("weight", "bias"):
        target = f"model.vision_tower.embeddings.patch_embeddings.projection.{part}"
        shape = (D, 3, layout.patch_size, layout.patch_size) if part == "weight" else (D,)
        recipes.append(Recipe(target, shape, [f"vision_model.patch_embed.proj.{part}"]))

    def qkv_slice(index, part, lora_key=None):
        rows = slice(index * D, (index + 1) * D)
        if lora_key is None or part == "bias":
            return lambda qkv, *_: qkv[rows]
        return lambda qkv, a, b: with_lora(qkv[rows], a, b, layout.vision_lora_scale)

    for i in range(layout.vision_layers):
        official, release = f"vision_model.blocks.{i}", f"model.vision_tower.encoder.layer.{i}"
        for part in ("weight", "bias"):
            shape = (D, D) if part == "weight" else (D,)
            for index, (name, lora) in enumerate((("query", "q"), ("key", None), ("value", "v"))):
                sources = [f"{official}.attn.qkv.{part}"]
                merged = lora if merge_lora and layout.vision_lora and part == "weight" else None
                if merged:
                    sources += [f"{official}.attn.lora_A_{merged}", f"{official}.attn.lora_B_{merged}"]
                target = f"{release}.attention.attention.{name}.{part}"
                recipes.append(Recipe(target, shape, sources, qkv_slice(index, part, merged)))
        renames = {
            "norm1": "norm1",
            "attn.proj": "attention.output.dense",
            "norm2": "norm2",
            "mlp.fc1": "mlp.fc1",
            "mlp.fc2": "mlp.fc2",
        }
        for source, target in renames.items():
            for part in ("weight", "bias"):
                key = f"{official}.{source}.{part}"
                recipes.append(Recipe(f"{release}.{target}.{part}", expected[key], [key]))
        for source, target in (("ls1.gamma", "layer_scale1.lambda1"), ("ls2.gamma", "layer_scale2.lambda1")):
            recipes.append(Recipe(f"{release}.{target}", (D,), [f"{official}.{source}"]))
    for part in ("weight", "bias"):
        recipes.append(Recipe(f"model.vision_tower.layernorm.{part}", (D,), [f"vision_model.norm.{part}"]))
    for source, target in (("0", "linear_1"), ("2", "linear_2")):
        for part in ("weight", "bias"):
            key = f"mm_projector.{source}.{part}"
            recipes.append(Recipe(f"model.multi_modal_projector.{target}.{part}", expected[key], [key]))

    # The language model: its keys move under model.language_model; embeddings and lm_head gain the image token's row.
    recipes.append(
        Recipe("model.language_model.embed_tokens.weight", (layout.vocab + 1, H), ["model.embed_tokens.weight"],
               lambda embed: torch.cat([embed, embed.float().mean(0, keepdim=True).to(embed.dtype)]))
    )  # fmt: skip
    for i in range(layout.layers):
        layer = f"model.layers.{i}"
        for key in [k for k in expected if k.startswith(layer + ".")]:
            if key.endswith((".lora_A", ".lora_B")):
                continue
            sources, build = [key], (lambda tensor: tensor)
            projection = key.rsplit(".", 2)[-2]
            if merge_lora and layout.llm_lora and projection in ("q_proj", "v_proj"):
                stem = key[: -len(".weight")]
                sources += [f"{stem}.lora_A", f"{stem}.lora_B"]
                build = lambda weight, a, b: with_lora(weight, a, b, layout.llm_lora_scale)  # noqa: E731
            recipes.append(Recipe("model.language_model." + key[len("model.") :], expected[key], sources, build))
    recipes.append(Recipe("model.language_model.norm.weight", (H,), ["model.norm.weight"]))
    # The image token's logit row is zero; the generation config suppresses the token anyway.
    recipes.append(
        Recipe("lm_head.weight", (layout.vocab + 1, H), ["lm_head.weight"],
               lambda head: torch.cat([head, head.new_zeros(1, head.shape[1])]))
    )  # fmt: skip
    return recipes


def adapter_tensors(layout):
    """With `--lora adapter`: the official LoRA tensors under the names PEFT gives a LoRA on the release's model
    (`lora_A` [r, in], `lora_B` [out, r], the same convention as the official code)."""
    names = {}
    for i in range(layout.vision_layers if layout.vision_lora else 0):
        for part, module in (("q", "q_proj"), ("v", "v_proj")):
            stem = f"base_model.model.model.vision_tower.encoder.layer.{i}.attention.{module}"
            names[f"{stem}.lora_A.weight"] = f"vision_model.blocks.{i}.attn.lora_A_{part}"
            names[f"{stem}.lora_B.weight"] = f"vision_model.blocks.{i}.attn.lora_B_{part}"
    for i in range(layout.layers if layout.llm_lora else 0):
        for module in ("q_proj", "v_proj"):
            stem = f"base_model.model.model.language_model.layers.{i}.self_attn.{module}"
            names[f"{stem}.lora_A.weight"] = f"model.layers.{i}.self_attn.{module}.lora_A"
            names[f"{stem}.lora_B.weight"] = f"model.layers.{i}.self_attn.{module}.lora_B"
    return names


def adapter_config(layout, official_config, base_model_name_or_path):
    """PEFT's LoRA config for the official adapters: both towers' query and value projections, each with its rank
    and alpha (the vision tower's by pattern when they differ from the language model's)."""
    from peft import LoraConfig

    llm_r, llm_alpha = official_config.get("lora_llm_r", 8), official_config.get("lora_llm_alpha", 16)
    vision_r, vision_alpha = official_config.get("lora_vision_r", 8), official_config.get("lora_vision_alpha", 16)
    vision_modules = r"model\.vision_tower\.encoder\.layer\.\d+\.attention\.(q_proj|v_proj)"
    text_modules = r"model\.language_model\.layers\.\d+\.self_attn\.(q_proj|v_proj)"
    towers = [pattern for pattern, on in ((vision_modules, layout.vision_lora), (text_modules, layout.llm_lora)) if on]
    return LoraConfig(
        r=int(llm_r if layout.llm_lora else vision_r),
        lora_alpha=llm_alpha if layout.llm_lora else vision_alpha,
        lora_dropout=official_config.get("lora_llm_dropout", 0.05),
        target_modules="|".join(f"({pattern})" for pattern in towers),
        rank_pattern={vision_modules: int(vision_r)} if layout.vision_lora and layout.llm_lora else {},
        alpha_pattern={vision_modules: vision_alpha} if layout.vision_lora and layout.llm_lora else {},
        base_model_name_or_path=base_model_name_or_path,
    )


# ---------------------------------------------------------------------------------------------------------------------
# Writing the release's folder


def release_config(layout, official_config, dtype_name):
    """The ExpLLMConfig of the converted model: a 224 px DINOv2 and the official Llama, plus the image token."""
    from transformers import Dinov2Config, LlamaConfig

    from .configuration_expllm import ExpLLMConfig

    if layout.vision_mlp % layout.vision_hidden:
        raise ValueError(f"the vision MLP width {layout.vision_mlp} is not a multiple of {layout.vision_hidden}")
    vision_config = Dinov2Config(
        hidden_size=layout.vision_hidden,
        num_hidden_layers=layout.vision_layers,
        num_attention_heads=layout.vision_heads,
        mlp_ratio=layout.vision_mlp // layout.vision_hidden,
        image_size=layout.crop_size,
        patch_size=layout.patch_size,
        layer_norm_eps=1e-6,
        dtype=dtype_name,
    )
    llama_fields = {
        key: value
        for key, value in official_config.items()
        if key not in OFFICIAL_FIELDS + CONFIG_BOOKKEEPING and not key.startswith("_")
    }
    if llama_fields.get("rope_scaling") is None:  # 4.31 wrote a null; transformers 5 reads rope_parameters
        llama_fields.pop("rope_scaling", None)
    text_config = LlamaConfig(**{**llama_fields, "vocab_size": layout.vocab + 1, "dtype": dtype_name})
    text_config.tie_word_embeddings = False
    config = ExpLLMConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_id=layout.vocab,
        projector_hidden_act="gelu",
        multimodal_projector_bias=True,
        tie_word_embeddings=False,
    )
    config.dtype = dtype_name
    config.architectures = ["ExpLLMForConditionalGeneration"]
    return config


def release_processor(input_dir, layout):
    """The official tokenizer (with `<im_patch>` at the id after the vocabulary), the official preprocessing and the
    official conversation format."""
    from transformers import AutoTokenizer

    from .image_processing_expllm import ExpLLMImageProcessor
    from .processing_expllm import ExpLLMProcessor

    tokenizer = AutoTokenizer.from_pretrained(input_dir, padding_side="left")
    if OFFICIAL_IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_tokens([OFFICIAL_IMAGE_TOKEN], special_tokens=True)
    image_token_id = tokenizer.convert_tokens_to_ids(OFFICIAL_IMAGE_TOKEN)
    if image_token_id != layout.vocab:
        raise ValueError(
            f"the tokenizer in {input_dir} gives {OFFICIAL_IMAGE_TOKEN} the id {image_token_id}; the official model "
            f"has {layout.vocab} embeddings and its image token right after them"
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token  # as the official training pads
    image_processor = ExpLLMImageProcessor(
        size={"height": layout.crop_size, "width": layout.crop_size}, resize_with="opencv"
    )
    return ExpLLMProcessor(image_processor, tokenizer, image_token=OFFICIAL_IMAGE_TOKEN, patch_size=layout.patch_size)


def plan_shards(recipes, dtype, max_shard_bytes):
    """Group the recipes, in order, into output shards of at most `max_shard_bytes` (a larger tensor alone)."""
    shards, current, size = [], [], 0
    for recipe in recipes:
        nbytes = math.prod(recipe.shape) * dtype.itemsize
        if current and size + nbytes > max_shard_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(recipe)
        size += nbytes
    return shards + [current] if current else shards


def shard_is_complete(path, recipes):
    """A shard a killed run finished: it opens and holds exactly the planned tensors."""
    try:
        with safe_open(path, "pt") as file:
            return set(file.keys()) == {recipe.name for recipe in recipes}
    except Exception:
        return False


def write_weights(checkpoint, recipes, output_dir, dtype, max_shard_bytes, description="weights"):
    """Build and write the release's tensors shard by shard; returns the safetensors index's weight map."""
    # Follow the official files' order, so each input shard is read once and can be let go before the next one.
    position = {key: n for n, key in enumerate(checkpoint.key_shard)}
    recipes = sorted(recipes, key=lambda recipe: position[recipe.sources[0]])
    shards = plan_shards(recipes, dtype, max_shard_bytes)
    weight_map, total_size = {}, 0
    progress = tqdm(total=len(recipes), desc=description, unit="tensor")
    for number, shard in enumerate(shards, start=1):
        name = f"model-{number:05d}-of-{len(shards):05d}.safetensors" if len(shards) > 1 else "model.safetensors"
        path = os.path.join(output_dir, name)
        if not shard_is_complete(path, shard):  # resumed runs keep what they finished
            tensors = {}
            for recipe in shard:
                tensor = recipe.build(*[checkpoint.tensor(key) for key in recipe.sources])
                if tuple(tensor.shape) != recipe.shape:
                    raise RuntimeError(f"{recipe.name} came out {list(tensor.shape)}, expected {list(recipe.shape)}")
                tensors[recipe.name] = tensor.to(dtype).contiguous()
                progress.update()
            save_file(tensors, path + ".partial", metadata={"format": "pt"})
            os.replace(path + ".partial", path)
            del tensors
        else:
            progress.update(len(shard))
        # Input shards are not needed again once the output has moved past them.
        still_needed = {checkpoint.key_shard[key] for later in shards[number:] for r in later for key in r.sources}
        for shard_file in checkpoint.shard_files:
            if shard_file not in still_needed:
                checkpoint.close(shard_file)
        for recipe in shard:
            weight_map[recipe.name] = name
            total_size += math.prod(recipe.shape) * dtype.itemsize
    progress.close()
    return weight_map, total_size


def convert_official_checkpoint(
    input_dir,
    output_dir,
    lora="merge",
    dtype="bfloat16",
    max_shard_size=None,
    vision_num_heads=None,
    push_to_hub=None,
    overwrite=False,
):
    """Convert the official checkpoint in `input_dir` into a release folder in `output_dir` (see the module docstring).

    Args:
        lora: "merge" folds both towers' LoRA into the weights; "adapter" keeps the base weights unmerged and writes
            the LoRA as a PEFT adapter in `output_dir/adapter`.
        dtype: "bfloat16" (the official language model's), "float16" or "float32".
        max_shard_size: bytes per output shard; by default a quarter of the largest input shard, which keeps the
            conversion's memory below twice that shard.
        vision_num_heads: the DINOv2's attention heads, if not width / 64 (true of every DINOv2 size).
        push_to_hub: a Hub repo id to upload the folder to (token from the environment, e.g. HF_TOKEN).
        overwrite: replace `output_dir` if it exists and holds anything (refused otherwise).

    Returns the output folder.
    """
    from transformers import GenerationConfig
    from transformers.dynamic_module_utils import custom_object_save

    from .modeling_expllm import ExpLLMForConditionalGeneration

    if lora not in ("merge", "adapter"):
        raise ValueError(f"lora must be 'merge' or 'adapter', got {lora!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    if os.path.isdir(output_dir) and os.listdir(output_dir) and not overwrite:
        raise FileExistsError(f"{output_dir} exists and is not empty: choose another folder or pass --overwrite")
    official_config = read_official_config(input_dir)
    checkpoint = OfficialCheckpoint(input_dir)
    layout = Layout(official_config, checkpoint.shapes, vision_num_heads)
    check_keys(checkpoint.shapes, layout.expected_shapes(), input_dir)
    config = release_config(layout, official_config, dtype)
    processor = release_processor(input_dir, layout)

    # Written into a side folder and moved into place at the end: an output folder is always complete, and a killed
    # run started again with the same settings keeps the shards it finished.
    settings = {
        "input_dir": os.path.abspath(input_dir),
        "lora": lora,
        "dtype": dtype,
        "max_shard_size": max_shard_size,
    }
    partial = os.path.abspath(output_dir).rstrip(os.sep) + ".partial"
    settings_file = os.path.join(partial, "conversion_settings.json")
    previous = None
    if os.path.isfile(settings_file):
        with open(settings_file, encoding="utf-8") as file:
            previous = file.read()
    if os.path.isdir(partial) and previous != json.dumps(settings):
        shutil.rmtree(partial)  # another conversion's leftovers
    os.makedirs(partial, exist_ok=True)
    with open(settings_file, "w", encoding="utf-8") as file:
        file.write(json.dumps(settings))

    max_shard_bytes = max_shard_size or max(checkpoint.largest_shard_bytes() // 4, 1 << 20)
    recipes = conversion_recipes(layout, merge_lora=lora == "merge")
    weight_map, total_size = write_weights(checkpoint, recipes, partial, DTYPES[dtype], max_shard_bytes)
    if len(set(weight_map.values())) > 1:
        with open(os.path.join(partial, "model.safetensors.index.json"), "w", encoding="utf-8") as file:
            json.dump({"metadata": {"total_size": total_size}, "weight_map": weight_map}, file, indent=2)

    if lora == "adapter":
        adapter_dir = os.path.join(partial, "adapter")
        os.makedirs(adapter_dir, exist_ok=True)
        tensors = {name: checkpoint.tensor(key).float().contiguous() for name, key in adapter_tensors(layout).items()}
        save_file(tensors, os.path.join(adapter_dir, "adapter_model.safetensors"), metadata={"format": "pt"})
        base = push_to_hub or os.path.abspath(output_dir)
        adapter_config(layout, official_config, base).save_pretrained(adapter_dir)
    checkpoint.close()

    config.save_pretrained(partial)
    custom_object_save(ExpLLMForConditionalGeneration, partial)
    processor.save_pretrained(partial)
    GenerationConfig(
        bos_token_id=processor.tokenizer.bos_token_id,
        eos_token_id=processor.tokenizer.eos_token_id,
        pad_token_id=processor.tokenizer.pad_token_id,
        do_sample=False,  # greedy, as the official evaluation
        max_new_tokens=OFFICIAL_MAX_NEW_TOKENS,
        suppress_tokens=[config.image_token_id],
    ).save_pretrained(partial)
    os.remove(settings_file)
    if os.path.isdir(output_dir):
        shutil.rmtree(output_dir)
    os.replace(partial, output_dir)

    if push_to_hub:
        from huggingface_hub import HfApi

        api = HfApi()  # reads the token from HF_TOKEN / the login cache; it is never printed
        api.create_repo(push_to_hub, exist_ok=True)
        api.upload_folder(repo_id=push_to_hub, folder_path=output_dir, commit_message="Convert the official ExpLLM")
    return output_dir


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input_dir", required=True, help="the official checkpoint folder (e.g. starhiking/ExpLLM)")
    parser.add_argument("--output_dir", required=True, help="where the release's folder is written")
    parser.add_argument("--lora", choices=("merge", "adapter"), default="merge")
    parser.add_argument("--dtype", choices=list(DTYPES), default="bfloat16")
    parser.add_argument("--max_shard_size", type=int, help="bytes per output shard (default: input shard / 4)")
    parser.add_argument("--vision_num_heads", type=int, help="DINOv2 attention heads (default: width / 64)")
    parser.add_argument("--push_to_hub", metavar="REPO_ID", help="upload the converted folder to this Hub repo")
    parser.add_argument("--overwrite", action="store_true", help="replace --output_dir if it is not empty")
    args = parser.parse_args(argv)
    output = convert_official_checkpoint(
        args.input_dir,
        args.output_dir,
        lora=args.lora,
        dtype=args.dtype,
        max_shard_size=args.max_shard_size,
        vision_num_heads=args.vision_num_heads,
        push_to_hub=args.push_to_hub,
        overwrite=args.overwrite,
    )
    print(f"converted {args.input_dir} -> {output} (lora {args.lora}, {args.dtype})")


if __name__ == "__main__":
    main()
