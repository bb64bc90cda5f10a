"""A saved ExpLLM folder is a complete Hub repo: it loads with the AutoClasses and the pipeline in a fresh Python
process where this project is not importable."""

import json
import os

import pytest
import torch
from PIL import Image

from helpers import run_isolated

LOAD_EVERYTHING = r"""
import json, sys
import pytest
import torch
from PIL import Image
from transformers import (AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor,
                          pipeline)

folder = sys.argv[1]
report = {"config": type(AutoConfig.from_pretrained(folder, trust_remote_code=True)).__name__}
report["AutoModel"] = type(AutoModel.from_pretrained(folder, trust_remote_code=True)).__name__
report["AutoModelForCausalLM"] = type(AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)).__name__
model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True)
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
report["AutoModelForImageTextToText"] = type(model).__name__
report["processor"] = [type(processor).__name__, type(processor.image_processor).__name__]
report["module"] = type(model).__module__
face = Image.new("RGB", (70, 50), (180, 120, 90))
report["probabilities"] = model.predict_expression(**processor.expression_inputs([face])).probabilities[0].tolist()
# Batched (left-padded) generation answers each prompt as it is answered alone.
faces = [face, Image.new("RGB", (40, 60), (60, 90, 200))]
prompts = [processor.apply_chat_template(messages, add_generation_prompt=True)
           for messages in (processor.fer_messages(), processor.cot_messages())]
batch = processor(images=faces, text=prompts, padding=True, return_tensors="pt")
eos = processor.tokenizer.eos_token_id

def answer(ids):  # up to the end of turn: a batch pads the rows that finished early
    return ids[: ids.index(eos) + 1] if eos in ids else ids

batched = model.generate(**batch, max_new_tokens=5, do_sample=False)[:, batch["input_ids"].shape[1]:].tolist()
batched = [answer(ids) for ids in batched]
alone = []
for image, prompt in zip(faces, prompts):
    single = processor(images=[image], text=[prompt], return_tensors="pt")
    generated = model.generate(**single, max_new_tokens=5, do_sample=False)[0, single["input_ids"].shape[1]:]
    alone.append(answer(generated.tolist()))
report["batched_equals_alone"] = batched == alone and len(set(batch["attention_mask"].sum(-1).tolist())) == 2
pipe = pipeline("image-text-to-text", model=folder, trust_remote_code=True)
question = {"type": "text", "text": "How does this face look?"}  # a free question: the template gives it a TASK
messages = [{"role": "user", "content": [{"type": "image", "image": face}, question]}]
answer = pipe(text=messages, max_new_tokens=4, return_full_text=False)
report["pipeline_answer"] = answer[0]["generated_text"]
print(json.dumps(report))
"""


def test_saved_folder_loads_with_auto_classes_and_pipeline_without_the_project(tiny_model, tmp_path):
    model, processor = tiny_model
    folder = str(tmp_path / "expllm-tiny")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)

    files = set(os.listdir(folder))
    assert {"configuration_expllm.py", "modeling_expllm.py", "processing_expllm.py", "vocabulary.py"} <= files
    assert {"image_processing_expllm.py", "model.safetensors", "chat_template.jinja"} <= files
    assert not any(name.endswith((".bin", ".pt", ".pth", ".pkl")) for name in files)  # safetensors only
    auto_map = json.load(open(os.path.join(folder, "config.json")))["auto_map"]
    assert auto_map["AutoModelForCausalLM"] == auto_map["AutoModelForImageTextToText"]

    report = json.loads(run_isolated(LOAD_EVERYTHING, folder).strip().splitlines()[-1])
    assert report["config"] == "ExpLLMConfig" and report["AutoModel"] == "ExpLLMModel"
    assert report["AutoModelForImageTextToText"] == report["AutoModelForCausalLM"] == "ExpLLMForConditionalGeneration"
    assert report["processor"] == ["ExpLLMProcessor", "ExpLLMImageProcessor"]
    assert report["module"].startswith("transformers_modules.")  # the folder's copy of the code, not the project's
    assert isinstance(report["pipeline_answer"], str) and report["pipeline_answer"]
    assert report["batched_equals_alone"]

    face = Image.new("RGB", (70, 50), (180, 120, 90))
    expected = model.predict_expression(**processor.expression_inputs([face])).probabilities[0]
    torch.testing.assert_close(torch.tensor(report["probabilities"]), expected, atol=1e-5, rtol=0)


def test_from_backbones_builds_from_local_tower_folders(tiny_backbones):
    from transformers import AutoModel

    from modeling_expllm.modeling_expllm import ExpLLMForConditionalGeneration

    vision_dir, text_dir = tiny_backbones
    model, processor = ExpLLMForConditionalGeneration.from_backbones(vision_dir, text_dir)
    pretrained_vision = AutoModel.from_pretrained(vision_dir)
    for name, tensor in pretrained_vision.state_dict().items():
        torch.testing.assert_close(model.model.vision_tower.state_dict()[name], tensor)  # towers keep their weights
    assert processor.tokenizer.convert_tokens_to_ids("<image>") == model.config.image_token_id
    assert model.get_input_embeddings().weight.shape[0] == len(processor.tokenizer) == model.lm_head.out_features
    assert processor.tokenizer.padding_side == "left" and processor.tokenizer.pad_token is not None
    assert processor.image_processor.size.height == model.config.vision_config.image_size
    assert not any(p.is_meta for p in model.parameters())


LEGACY_FOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "saved_by_0.1.0")


def test_a_folder_saved_by_release_0_1_0_loads_with_the_current_classes():
    """Weight names did not change when the model moved onto LLaVA's classes: a folder written by release 0.1.0
    (on transformers 5.23, see fixtures/saved_by_0.1.0/README.md) loads with no missing or unexpected weight and
    gives the logits and label probabilities that release recorded for the same inputs."""
    from safetensors.torch import load_file
    from transformers import PreTrainedTokenizerFast

    from modeling_expllm.image_processing_expllm import ExpLLMImageProcessor
    from modeling_expllm.modeling_expllm import ExpLLMForConditionalGeneration
    from modeling_expllm.processing_expllm import ExpLLMProcessor

    model, info = ExpLLMForConditionalGeneration.from_pretrained(LEGACY_FOLDER, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    recorded = load_file(os.path.join(LEGACY_FOLDER, "expected_outputs.safetensors"))
    inputs = {name: recorded[name] for name in ("input_ids", "attention_mask", "pixel_values")}
    with torch.no_grad():
        logits = model.eval()(**inputs).logits[:, -recorded["logits"].shape[1] :]
        candidates = {name: recorded[name] for name in ("candidate_ids", "candidate_attention_mask")}
        prediction = model.predict_expression(**inputs, **candidates)
    torch.testing.assert_close(logits, recorded["logits"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(prediction.probabilities, recorded["probabilities"], atol=1e-6, rtol=1e-5)

    # That release's chat template wrote <s> before the tokenizer added its own: the current processor refuses it.
    tokenizer = PreTrainedTokenizerFast.from_pretrained(LEGACY_FOLDER)
    image_processor = ExpLLMImageProcessor.from_pretrained(LEGACY_FOLDER)
    with open(os.path.join(LEGACY_FOLDER, "chat_template.jinja"), encoding="utf-8") as file:
        legacy_template = file.read()
    with pytest.raises(ValueError, match="adds another one"):
        ExpLLMProcessor(image_processor, tokenizer, chat_template=legacy_template)
    ExpLLMProcessor(image_processor, tokenizer)  # the current template is accepted
