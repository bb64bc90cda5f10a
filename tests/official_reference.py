"""An independent reference implementation of the official ExpLLM forward pass, for checking the project's model
against checkpoints in the official layout (see `expllm_testing.official_checkpoint`).

Written only from the documented facts of the official checkpoint and code (DESIGN.md section 9), in plain torch:
nothing from `modeling_expllm`, the transformers modeling classes or peft, so that a shared mistake cannot hide.
Everything runs in float32, without caches, one image per call. Slow by design; tiny checkpoints only.
"""

import json
import math
import os

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer

SYSTEM = "You are a helpful face analysis assistant. "
FER_TASK = "Expression recognition involves identifying the emotional state of a person in a given image."
FER_QUESTION = "What is the expression of the person in the image? Please provide the expression label."
COT_TASK = "Expression analysis involves providing a detailed analysis of the face. "
COT_QUESTION = (
    "Can you analysis the facial expression step-by-step in the provided image? Provide a detailed description."
)
IMAGE_TOKEN = "<im_patch>"
PAD_COLOUR = (123, 117, 104)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _load_weights(folder):
    index = os.path.join(folder, "pytorch_model.bin.index.json")
    if os.path.exists(index):
        with open(index) as f:
            paths = sorted({os.path.join(folder, name) for name in json.load(f)["weight_map"].values()})
    else:
        paths = [os.path.join(folder, "pytorch_model.bin")]
    weights = {}
    for path in paths:
        weights.update(torch.load(path, map_location="cpu", weights_only=True))
    return {key: value.float() for key, value in weights.items()}


def _rms_norm(x, weight, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def _rotate_half(x):
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


class OfficialReference:
    def __init__(self, folder):
        with open(os.path.join(folder, "config.json")) as f:
            self.config = json.load(f)
        self.w = _load_weights(folder)
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.image_token_id = self.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        self.crop_size = self.config["crop_size"]
        self.patch_size = self.w["vision_model.patch_embed.proj.weight"].shape[-1]
        self.num_patches = (self.crop_size // self.patch_size) ** 2

    # ---- inputs -------------------------------------------------------------------------------------------------
    def preprocess(self, image):
        """Pad to a centred square with the official colour, resize with cv2 on uint8, scale, CLIP-normalise."""
        rgb = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image, dtype=np.uint8)
        height, width = rgb.shape[:2]
        side = max(height, width)
        square = np.empty((side, side, 3), dtype=np.uint8)
        square[:] = PAD_COLOUR
        top, left = (side - height) // 2, (side - width) // 2
        square[top : top + height, left : left + width] = rgb
        resized = cv2.resize(square, (self.crop_size, self.crop_size), interpolation=cv2.INTER_LINEAR)
        pixels = (resized.astype(np.float32) / 255.0 - np.float32(CLIP_MEAN)) / np.float32(CLIP_STD)
        return torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0).contiguous()

    def prompt(self, rounds, add_generation_prompt=False):
        """The official string: system line, image line, then each (task, question, answer) round ending in </s>;
        with `add_generation_prompt` the last round's answer is left out and the string ends with `ASSISTANT:`."""
        text = SYSTEM + "\nImage: " + IMAGE_TOKEN * self.num_patches + "\n"
        for number, (task, question, answer) in enumerate(rounds, start=1):
            text += f"TASK: {task}\nUSER: {question}\nASSISTANT:"
            if not (add_generation_prompt and number == len(rounds)):
                text += f" {answer}</s>"
        return text

    # ---- vision tower and projector -----------------------------------------------------------------------------
    def _position_embeddings(self, grid):
        pos = self.w["vision_model.pos_embed"]
        stored = math.isqrt(pos.shape[1] - 1)
        if grid == stored:  # DINOv2 uses the stored table as is when the grid matches
            return pos
        patch_pos = pos[:, 1:].reshape(1, stored, stored, -1).permute(0, 3, 1, 2)
        scale = (grid + 0.1) / stored  # DINO's +0.1 keeps floor(stored * scale) == grid despite rounding
        patch_pos = F.interpolate(patch_pos, scale_factor=(scale, scale), mode="bicubic", align_corners=False)
        assert patch_pos.shape[-2:] == (grid, grid)
        return torch.cat([pos[:, :1], patch_pos.permute(0, 2, 3, 1).reshape(1, grid * grid, -1)], dim=1)

    def image_features(self, pixel_values):
        w, v = self.w, "vision_model."
        scaling = self.config["lora_vision_alpha"] / self.config["lora_vision_r"]
        x = F.conv2d(pixel_values, w[v + "patch_embed.proj.weight"], w[v + "patch_embed.proj.bias"], self.patch_size)
        grid = x.shape[-1]
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat([w[v + "cls_token"].expand(x.shape[0], -1, -1), x], dim=1) + self._position_embeddings(grid)
        dim = x.shape[-1]
        heads = dim // 64  # DINOv2's head dim is 64 at every size
        layers = len({k.split(".")[2] for k in w if k.startswith(v + "blocks.")})
        for i in range(layers):
            b = f"{v}blocks.{i}."
            h = F.layer_norm(x, (dim,), w[b + "norm1.weight"], w[b + "norm1.bias"], eps=1e-6)
            qkv = F.linear(h, w[b + "attn.qkv.weight"], w[b + "attn.qkv.bias"])
            q, k, val = qkv.split(dim, dim=-1)
            q = q + h @ w[b + "attn.lora_A_q"].T @ w[b + "attn.lora_B_q"].T * scaling
            val = val + h @ w[b + "attn.lora_A_v"].T @ w[b + "attn.lora_B_v"].T * scaling
            q, k, val = (t.unflatten(-1, (heads, dim // heads)).transpose(1, 2) for t in (q, k, val))
            attention = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dim // heads), dim=-1)
            h = (attention @ val).transpose(1, 2).flatten(2)
            x = x + w[b + "ls1.gamma"] * F.linear(h, w[b + "attn.proj.weight"], w[b + "attn.proj.bias"])
            h = F.layer_norm(x, (dim,), w[b + "norm2.weight"], w[b + "norm2.bias"], eps=1e-6)
            h = F.gelu(F.linear(h, w[b + "mlp.fc1.weight"], w[b + "mlp.fc1.bias"]))
            x = x + w[b + "ls2.gamma"] * F.linear(h, w[b + "mlp.fc2.weight"], w[b + "mlp.fc2.bias"])
        x = F.layer_norm(x, (dim,), w[v + "norm.weight"], w[v + "norm.bias"], eps=1e-6)[:, 1:]  # CLS dropped
        x = F.gelu(F.linear(x, w["mm_projector.0.weight"], w["mm_projector.0.bias"]))
        return F.linear(x, w["mm_projector.2.weight"], w["mm_projector.2.bias"])

    # ---- language model -----------------------------------------------------------------------------------------
    def _llama(self, embeddings):
        c, w = self.config, self.w
        eps, heads = c["rms_norm_eps"], c["num_attention_heads"]
        kv_heads = c.get("num_key_value_heads") or heads
        head_dim = c["hidden_size"] // heads
        scaling = c["lora_llm_alpha"] / c["lora_llm_r"]
        theta = c.get("rope_theta") or (c.get("rope_parameters") or {}).get("rope_theta") or 10000.0
        seq = embeddings.shape[1]
        inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        angles = torch.arange(seq, dtype=torch.float32)[:, None] * inv_freq[None]
        cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()
        causal = torch.full((seq, seq), float("-inf")).triu(1)

        x = embeddings
        for i in range(c["num_hidden_layers"]):
            p = f"model.layers.{i}."
            h = _rms_norm(x, w[p + "input_layernorm.weight"], eps)
            q = h @ w[p + "self_attn.q_proj.weight"].T
            q = q + h @ w[p + "self_attn.q_proj.lora_A"].T @ w[p + "self_attn.q_proj.lora_B"].T * scaling
            k = h @ w[p + "self_attn.k_proj.weight"].T
            val = h @ w[p + "self_attn.v_proj.weight"].T
            val = val + h @ w[p + "self_attn.v_proj.lora_A"].T @ w[p + "self_attn.v_proj.lora_B"].T * scaling
            q = q.unflatten(-1, (heads, head_dim)).transpose(1, 2)
            k, val = (t.unflatten(-1, (kv_heads, head_dim)).transpose(1, 2) for t in (k, val))
            k, val = (t.repeat_interleave(heads // kv_heads, dim=1) for t in (k, val))
            q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
            attention = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(head_dim) + causal, dim=-1)
            x = x + (attention @ val).transpose(1, 2).flatten(2) @ w[p + "self_attn.o_proj.weight"].T
            h = _rms_norm(x, w[p + "post_attention_layernorm.weight"], eps)
            gated = F.silu(h @ w[p + "mlp.gate_proj.weight"].T) * (h @ w[p + "mlp.up_proj.weight"].T)
            x = x + gated @ w[p + "mlp.down_proj.weight"].T
        return _rms_norm(x, w["model.norm.weight"], eps) @ w["lm_head.weight"].T

    def _logits_from_ids(self, image, ids):
        is_image = ids[0] == self.image_token_id
        if int(is_image.sum()) != self.num_patches:
            raise ValueError(f"expected {self.num_patches} {IMAGE_TOKEN} tokens, got {int(is_image.sum())}")
        embeddings = self.w["model.embed_tokens.weight"][ids.masked_fill(is_image[None], 0)]
        embeddings[0, is_image] = self.image_features(self.preprocess(image))[0]  # in order, never the embedding
        return self._llama(embeddings)

    def logits(self, image, prompt):
        """float32 [1, seq, vocab] for the tokenised prompt (<s> added by the tokenizer)."""
        with torch.no_grad():
            return self._logits_from_ids(image, self.tokenizer(prompt, return_tensors="pt")["input_ids"])

    def generate(self, image, prompt, max_new_tokens=100):
        """Greedy decoding without a cache, stopping at </s>: (decoded new text, new ids including </s> if reached)."""
        ids = self.tokenizer(prompt, return_tensors="pt")["input_ids"]
        new_ids = []
        with torch.no_grad():
            for _ in range(max_new_tokens):
                next_id = int(self._logits_from_ids(image, ids)[0, -1].argmax())
                new_ids.append(next_id)
                if next_id == self.tokenizer.eos_token_id:
                    break
                ids = torch.cat([ids, torch.tensor([[next_id]])], dim=1)
        return self.tokenizer.decode(new_ids, skip_special_tokens=True).strip(), new_ids

    def label_probabilities(self, image, labels, rounds_before=()):
        """Softmax over `labels` of each answer's summed log-probability (its tokens and </s>) after the FER prompt."""
        prompt = self.prompt([*rounds_before, (FER_TASK, FER_QUESTION, None)], add_generation_prompt=True)
        prompt_ids = self.tokenizer(prompt)["input_ids"]
        scores = []
        with torch.no_grad():
            for label in labels:
                ids = self.tokenizer(prompt + " " + label + "</s>")["input_ids"]
                if ids[: len(prompt_ids)] != prompt_ids:
                    raise ValueError(f"the prompt's tokens are not a prefix of the prompt with answer {label!r}")
                log_probs = self._logits_from_ids(image, torch.tensor([ids]))[0].log_softmax(-1)
                answer = torch.tensor(ids[len(prompt_ids) :])
                scores.append(log_probs[len(prompt_ids) - 1 : len(ids) - 1].gather(1, answer[:, None]).sum())
        return torch.softmax(torch.stack(scores), dim=0)
