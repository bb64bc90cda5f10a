"""The official checkpoint converter, proven without the real weights: tiny checkpoints in the official layout
(`expllm_testing.official_checkpoint`: random weights, non-zero LoRA in both towers, 518 px position embeddings, the
official config fields) are converted, loaded through the AutoClasses in a fresh process without the project, and
compared with `official_reference.py`, an independent forward of the official model written from DESIGN section 9."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from official_reference import COT_QUESTION, COT_TASK, FER_QUESTION, FER_TASK, OfficialReference
from PIL import Image
from safetensors.torch import load_file

from expllm_testing.official_checkpoint import save_official_checkpoint
from helpers import REPO_ROOT, run_isolated
from modeling_expllm.convert_official_checkpoint import convert_official_checkpoint
from modeling_expllm.vocabulary import EXPRESSION_LABELS

GENERATED_TOKENS = 12


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """A sharded tiny official checkpoint, converted with merged LoRA (by the function) and as a PEFT adapter (by the
    command line)."""
    root = tmp_path_factory.mktemp("official")
    source = save_official_checkpoint(str(root / "official"), max_shard_bytes=1_000_000, seed=3)
    merged = convert_official_checkpoint(source, str(root / "merged"), dtype="float32")
    command = [sys.executable, "-m", "modeling_expllm.convert_official_checkpoint", "--input_dir", source]
    command += ["--output_dir", str(root / "adapter"), "--lora", "adapter", "--dtype", "float32"]
    subprocess.run(command, check=True, cwd=REPO_ROOT, capture_output=True)
    return {"source": source, "merge": merged, "adapter": str(root / "adapter"), "root": root}


def face(seed=0, size=(100, 80)):
    """A random non-square RGB image: padding, resizing and every pixel matter."""
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


# Loads a converted folder the way a Hub user does (AutoClasses, trust_remote_code; PEFT for the adapter) and writes
# the logits of two prompts, the label probabilities and greedy generations to a safetensors file.
USER_SCRIPT = r"""
import json, sys
import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import AutoModelForImageTextToText, AutoProcessor

folder, lora, image_path, out_path, tokens = sys.argv[1:6]
model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32).eval()
if lora == "adapter":
    from peft import PeftModel
    model = PeftModel.from_pretrained(model, folder + "/adapter").eval()
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
image = Image.open(image_path)
fer = processor.apply_chat_template(processor.fer_messages(), add_generation_prompt=True)
label_first = processor.label_first_cot_messages("Happiness")
label_first = processor.apply_chat_template(label_first, add_generation_prompt=True)
results, texts = {}, {"fer_prompt": fer, "label_first_prompt": label_first}
with torch.no_grad():
    for name, prompt in (("fer", fer), ("label_first", label_first)):
        inputs = processor(images=[image], text=[prompt], return_tensors="pt")
        results[name + "_logits"] = model(**inputs).logits
        generated = model.generate(**inputs, max_new_tokens=int(tokens), do_sample=False)
        results[name + "_generated"] = generated[0, inputs["input_ids"].shape[1]:]
    inputs = processor.expression_inputs([image])
    results["probabilities"] = model.predict_expression(**inputs).probabilities[0]
save_file({k: v.contiguous() for k, v in results.items()}, out_path)
print(json.dumps(texts))
"""


@pytest.mark.parametrize("lora", ["merge", "adapter"])
def test_converted_model_matches_the_official_forward(official, lora, tmp_path):
    image_path = tmp_path / "face.png"
    face().save(image_path)
    out_path = tmp_path / "outputs.safetensors"
    texts = json.loads(
        run_isolated(USER_SCRIPT, official[lora], lora, str(image_path), str(out_path), str(GENERATED_TOKENS))
    )
    outputs = load_file(str(out_path))
    reference = OfficialReference(official["source"])
    image = Image.open(image_path)
    patches = "<im_patch>" * 256
    prompts = {
        "fer": reference.prompt([(FER_TASK, FER_QUESTION, None)], add_generation_prompt=True),
        "label_first": reference.prompt(
            [(FER_TASK, FER_QUESTION, "Happiness"), (COT_TASK, COT_QUESTION, None)], add_generation_prompt=True
        ),
    }
    for name, prompt in prompts.items():
        # The processor writes the official string (one image token, expanded to 256 when tokenised) ...
        assert texts[name + "_prompt"].replace("<im_patch>", patches) == prompt
        # ... and the model computes the official logits from it (the extra column is the image token's).
        expected = reference.logits(image, prompt)
        logits = outputs[name + "_logits"]
        assert logits.shape[:2] == expected.shape[:2] and logits.shape[-1] == expected.shape[-1] + 1
        assert (logits[..., : expected.shape[-1]] - expected).abs().max() <= 1e-4, name
        # Greedy generation gives the same tokens (up to and including </s>).
        _, reference_ids = reference.generate(image, prompt, max_new_tokens=GENERATED_TOKENS)
        generated = outputs[name + "_generated"].tolist()
        eos = reference.tokenizer.eos_token_id
        generated = generated[: generated.index(eos) + 1] if eos in generated else generated
        assert generated == list(reference_ids), name
    expected_probabilities = reference.label_probabilities(image, list(EXPRESSION_LABELS))
    torch.testing.assert_close(outputs["probabilities"], expected_probabilities, atol=1e-5, rtol=1e-4)


def test_lora_matters_in_both_towers(official):
    """The test checkpoint's LoRA changes the vision tower's and the language model's weights: a converter that
    dropped it would fail the comparison above."""
    weights = {}
    for name in os.listdir(official["merge"]):
        if name.endswith(".safetensors"):
            weights.update(load_file(os.path.join(official["merge"], name)))
    source = {}
    for name in os.listdir(official["source"]):
        if name.endswith(".bin") and name != "training_args.bin":
            source.update(torch.load(os.path.join(official["source"], name), weights_only=True))
    query = weights["model.vision_tower.encoder.layer.0.attention.attention.query.weight"]
    dim = query.shape[0]
    assert (query - source["vision_model.blocks.0.attn.qkv.weight"][:dim]).abs().max() > 1e-2
    key = weights["model.vision_tower.encoder.layer.0.attention.attention.key.weight"]
    torch.testing.assert_close(key, source["vision_model.blocks.0.attn.qkv.weight"][dim : 2 * dim])
    text_query = weights["model.language_model.layers.1.self_attn.v_proj.weight"]
    assert (text_query - source["model.layers.1.self_attn.v_proj.weight"]).abs().max() > 1e-2


def test_saved_folder_has_the_official_settings(official):
    folder = official["merge"]
    with open(os.path.join(folder, "config.json")) as file:
        config = json.load(file)
    image_token_id = config["image_token_index"]
    assert config["vision_config"]["image_size"] == 224 and image_token_id == config["text_config"]["vocab_size"] - 1
    with open(os.path.join(folder, "generation_config.json")) as file:
        generation = json.load(file)
    assert generation["do_sample"] is False and generation["max_new_tokens"] == 100
    assert generation["suppress_tokens"] == [image_token_id]
    with open(os.path.join(folder, "processor_config.json")) as file:
        processor = json.load(file)
    assert processor["image_processor"]["resize_with"] == "opencv" and processor["image_token"] == "<im_patch>"
    assert not [name for name in os.listdir(folder) if name.endswith((".bin", ".pt", ".pth"))]  # safetensors only
    with pytest.raises(FileExistsError, match="not empty"):  # a finished folder is never replaced unasked
        convert_official_checkpoint(official["source"], folder)
    with open(os.path.join(official["adapter"], "adapter", "adapter_config.json")) as file:
        adapter = json.load(file)
    assert adapter["peft_type"] == "LORA" and adapter["r"] == 4 and adapter["lora_alpha"] == 8


def state_dict_of(folder):
    return torch.load(os.path.join(folder, "pytorch_model.bin"), weights_only=True)


def test_a_checkpoint_with_a_renamed_key_is_refused_naming_it(official, tmp_path):
    source = save_official_checkpoint(str(tmp_path / "renamed"), seed=1)
    weights = state_dict_of(source)
    weights["vision_model.blocks.1.attn.qkv_fused.weight"] = weights.pop("vision_model.blocks.1.attn.qkv.weight")
    weights["model.layers.0.mlp.up_proj.weight"] = weights["model.layers.0.mlp.up_proj.weight"][:, :-1]
    torch.save(weights, os.path.join(source, "pytorch_model.bin"))
    with pytest.raises(ValueError) as error:
        convert_official_checkpoint(source, str(tmp_path / "out"))
    message = str(error.value)
    assert "1 missing key(s): vision_model.blocks.1.attn.qkv.weight" in message
    assert "1 unexpected key(s): vision_model.blocks.1.attn.qkv_fused.weight" in message
    assert "1 mis-shaped key(s): model.layers.0.mlp.up_proj.weight [128, 63] (expected [128, 64])" in message
    assert not (tmp_path / "out").exists()


class RunsCode:
    """A pickle payload that runs a shell command when unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    source = save_official_checkpoint(str(tmp_path / "evil"), seed=2)
    weights = state_dict_of(source)
    marker = tmp_path / "code_ran"
    torch.save({**weights, "payload": RunsCode(marker)}, os.path.join(source, "pytorch_model.bin"))
    with pytest.raises(ValueError, match="refusing .*pytorch_model.bin"):
        convert_official_checkpoint(source, str(tmp_path / "out"))
    assert not marker.exists() and not (tmp_path / "out").exists()
