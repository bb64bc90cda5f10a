import pytest
import torch
from PIL import Image

from modeling_expllm.vocabulary import EXPRESSION_LABELS, SEVEN_LABELS


def faces(count):
    """Plain coloured test images of different sizes (the model is random; content does not matter here)."""
    return [Image.new("RGB", (40 + 10 * i, 60), (40 * i % 256, 100, 200 - 20 * i)) for i in range(count)]


def fer_batch(processor, labels):
    texts = [processor.apply_chat_template(processor.fer_messages(label)) for label in labels]
    return processor(images=faces(len(labels)), text=texts, padding=True, return_tensors="pt")


def test_forward_with_labels_gives_a_loss_that_trains_every_part(tiny_model):
    model, processor = tiny_model
    model.train()
    batch = fer_batch(processor, ["Happiness", "Anger"])
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    outputs = model(**batch, labels=labels)
    assert outputs.logits.shape[:2] == batch["input_ids"].shape
    # LLaVA's outputs, as the installed transformers makes them: from 5.24 the vision tower's output, whose
    # pooler_output lists each image's projected patch tokens; before, one tensor of all images' projected tokens.
    if "image_outputs" in outputs:
        image_features = torch.cat(outputs.image_outputs.pooler_output)
    else:
        image_features = outputs.image_hidden_states
    assert image_features.shape == (2 * 16, model.config.text_config.hidden_size)
    outputs.loss.backward()
    for part in (model.model.vision_tower, model.model.multi_modal_projector, model.model.language_model):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())


def test_loss_ignores_masked_positions(tiny_model):
    model, processor = tiny_model
    batch = fer_batch(processor, ["Happiness"])
    all_masked = torch.full_like(batch["input_ids"], -100)
    one_target = all_masked.clone()
    one_target[0, -1] = batch["input_ids"][0, -1]
    with torch.no_grad():
        logits = model(**batch).logits
        loss = model(**batch, labels=one_target).loss
    expected = torch.nn.functional.cross_entropy(logits[0, -2:-1], batch["input_ids"][0, -1:])
    torch.testing.assert_close(loss, expected)


def test_image_token_mismatch_is_an_error(tiny_model):
    model, processor = tiny_model
    batch = fer_batch(processor, ["Happiness"])
    input_ids = batch["input_ids"].clone()
    first_image_token = (input_ids[0] == model.config.image_token_id).nonzero()[0, 0]
    input_ids[0, first_image_token] = processor.tokenizer.unk_token_id
    with pytest.raises(ValueError, match="Image features and image tokens do not match, tokens: 15"):
        model(input_ids=input_ids, pixel_values=batch["pixel_values"], attention_mask=batch["attention_mask"])


def test_image_features_are_the_normalised_patch_tokens(tiny_model):
    """The one place ExpLLM differs from LLaVA: the projector reads DINOv2's final-LayerNorm patch tokens."""
    model, processor = tiny_model
    pixel_values = fer_batch(processor, ["Happiness", "Anger"])["pixel_values"]
    with torch.no_grad():
        features = model.get_image_features(pixel_values=pixel_values).pooler_output
        normalised = model.model.vision_tower(pixel_values=pixel_values).last_hidden_state[:, 1:]
        expected = model.model.multi_modal_projector(normalised)
    torch.testing.assert_close(torch.stack(features), expected)
    with pytest.raises(ValueError, match="final-LayerNorm patch tokens"):
        model.get_image_features(pixel_values=pixel_values, vision_feature_layer=-2)


def test_assisted_generation_equals_greedy_generation(tiny_model):
    """Assisted decoding runs the image prompt through the main model once, then verifies the assistant's guesses
    with the cache and no pixel_values; greedy answers must not change. The assistant is a perturbed copy, so that
    some of its guesses are rejected."""
    import copy

    model, processor = tiny_model
    assistant = copy.deepcopy(model)
    with torch.no_grad():
        assistant.lm_head.weight.add_(0.5 * torch.randn_like(assistant.lm_head.weight))
    prompt = processor.apply_chat_template(processor.cot_messages(), add_generation_prompt=True)
    batch = processor(images=faces(1), text=[prompt], return_tensors="pt")
    plain = model.generate(**batch, max_new_tokens=12, do_sample=False)
    assisted = model.generate(**batch, max_new_tokens=12, do_sample=False, assistant_model=assistant)
    assert assisted.tolist() == plain.tolist()


def tiny_config(tie_word_embeddings):
    from modeling_expllm.configuration_expllm import ExpLLMConfig

    vision = {"model_type": "dinov2", "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
              "mlp_ratio": 2, "image_size": 28, "patch_size": 14}  # fmt: skip
    text = {"model_type": "llama", "vocab_size": 50, "hidden_size": 16, "intermediate_size": 32,
            "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2,
            "tie_word_embeddings": tie_word_embeddings}  # fmt: skip
    return ExpLLMConfig(vision_config=vision, text_config=text, image_token_id=49)


@pytest.mark.parametrize("tie_word_embeddings", [True, False])
def test_language_model_tying_survives_save_and_load(tmp_path, tie_word_embeddings):
    """A Llama-3.2-1B-style LM shares its input and output embeddings; the composite must keep that on save/load."""
    from modeling_expllm.modeling_expllm import ExpLLMForConditionalGeneration

    torch.manual_seed(0)
    model = ExpLLMForConditionalGeneration(tiny_config(tie_word_embeddings)).eval()
    embeddings = model.get_input_embeddings().weight
    assert (model.lm_head.weight.data_ptr() == embeddings.data_ptr()) == tie_word_embeddings
    model.save_pretrained(tmp_path)
    reloaded = ExpLLMForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert reloaded.config.tie_word_embeddings == tie_word_embeddings
    assert (reloaded.lm_head.weight.data_ptr() == reloaded.get_input_embeddings().weight.data_ptr()) == (
        tie_word_embeddings
    )
    input_ids = torch.tensor([[1, 49, 49, 49, 49, 5, 7]])
    pixel_values = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(
            reloaded(input_ids=input_ids, pixel_values=pixel_values).logits,
            model(input_ids=input_ids, pixel_values=pixel_values).logits,
        )


def test_tensor_parallel_plan_shards_the_head_with_the_language_model(tiny_model):
    """LLaVA's plan: the language model's own plan under its prefix, and the head gathered after a column split."""
    model, _ = tiny_model
    plan = model.tp_plan
    assert plan["lm_head"] == "colwise_gather_output"
    language_model_plan = model.model.language_model.config.base_model_tp_plan
    assert language_model_plan and all(plan[f"model.language_model.{key}"] == value
                                       for key, value in language_model_plan.items())  # fmt: skip


def test_batched_generation_equals_unbatched(tiny_model):
    model, processor = tiny_model
    images = faces(3)
    prompts = [
        processor.apply_chat_template(processor.fer_messages(), add_generation_prompt=True),
        processor.apply_chat_template(processor.cot_messages(), add_generation_prompt=True),
        processor.apply_chat_template(processor.cot_messages("Brows lowered.", "Anger"), add_generation_prompt=True),
    ]
    batch = processor(images=images, text=prompts, padding=True, return_tensors="pt")
    assert len(set(batch["attention_mask"].sum(-1).tolist())) == 3  # really left-padded
    generated = model.generate(**batch, max_new_tokens=6, do_sample=False)[:, batch["input_ids"].shape[1] :]
    eos = processor.tokenizer.eos_token_id

    def answer(ids):  # up to the end of turn: a batch pads the rows that finished early
        return ids[: ids.index(eos) + 1] if eos in ids else ids

    for index, (image, prompt) in enumerate(zip(images, prompts)):
        single = processor(images=[image], text=[prompt], return_tensors="pt")
        alone = model.generate(**single, max_new_tokens=6, do_sample=False)[:, single["input_ids"].shape[1] :]
        assert answer(generated[index].tolist()) == answer(alone[0].tolist())


def naive_log_likelihood(model, inputs, row, candidate):
    """Score one candidate the slow way: run prompt + answer through the model and add its tokens' log-probs, over the
    tokens generation may produce (the image token, suppressed by the generation config, is no answer)."""
    answer = inputs["candidate_ids"][candidate][inputs["candidate_attention_mask"][candidate].bool()]
    prompt = inputs["input_ids"][row][inputs["attention_mask"][row].bool()]
    sequence = torch.cat([prompt, answer])[None]
    with torch.no_grad():
        logits = model(input_ids=sequence, pixel_values=inputs["pixel_values"][row : row + 1]).logits
    assert model.generation_config.suppress_tokens == [model.config.image_token_id]
    logits[..., model.config.image_token_id] = float("-inf")
    log_probs = logits.log_softmax(-1)
    start = len(prompt) - 1
    return sum(log_probs[0, start + j, token].item() for j, token in enumerate(answer.tolist()))


@pytest.mark.parametrize("labels", [EXPRESSION_LABELS, SEVEN_LABELS, ("Anger", "Neutral")])
def test_label_probabilities_match_scoring_each_answer_separately(tiny_model, labels):
    model, processor = tiny_model
    inputs = processor.expression_inputs(faces(2), labels=labels)
    prediction = model.predict_expression(**inputs)
    assert prediction.labels == list(labels)
    assert prediction.probabilities.shape == (2, len(labels))
    torch.testing.assert_close(prediction.probabilities.sum(-1), torch.ones(2))
    for row in range(2):
        for candidate in range(len(labels)):
            expected = naive_log_likelihood(model, inputs, row, candidate)
            assert prediction.log_likelihoods[row, candidate].item() == pytest.approx(expected, abs=1e-4)


def test_label_probabilities_agree_with_the_greedy_answer_of_a_trained_model(tiny_model):
    """Overfit the model on one synthetic face per class: the most probable label of the one-pass scoring is then the
    truth, and it is also what greedy generation answers."""
    from dataset_builders.exp_cot.synthetic_faces import generate_faces
    from training.collator import ExpLLMCollator

    model, processor = tiny_model
    torch.manual_seed(0)
    labelled = list(generate_faces(len(EXPRESSION_LABELS), seed=3, size=64))
    rows = [{"images": [face.image], "messages": processor.fer_messages(face.label)} for face in labelled]
    batch = ExpLLMCollator(processor)(rows)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(120):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()

    images = [face.image for face in labelled]
    with torch.inference_mode():
        prediction = model.predict_expression(**processor.expression_inputs(images))
        prompt = processor.apply_chat_template(processor.fer_messages(), add_generation_prompt=True)
        processor.tokenizer.padding_side = "left"
        inputs = processor(images=images, text=[prompt] * len(images), padding=True, return_tensors="pt")
        generated = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    answers = processor.batch_decode(generated[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    most_probable = [prediction.labels[i] for i in prediction.probabilities.argmax(-1).tolist()]
    assert most_probable == [face.label for face in labelled]
    assert [answer.strip() for answer in answers] == most_probable
    assert prediction.probabilities.max(-1).values.min() > 0.5


def test_expression_inputs_reject_unknown_labels(tiny_model):
    _, processor = tiny_model
    with pytest.raises(ValueError, match="Joyful"):
        processor.expression_inputs(faces(1), labels=["Happiness", "Joyful"])


def test_bf16_and_gradient_checkpointing(tiny_model):
    model, processor = tiny_model
    # transformers 5.23 renamed gradient checkpointing to activation checkpointing (the old name is deprecated).
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()
    model.train()
    batch = fer_batch(processor, ["Sadness", "Fear"])
    model(**batch, labels=batch["input_ids"]).loss.backward()
    model.to(torch.bfloat16).eval()
    prediction = model.predict_expression(**processor.expression_inputs(faces(2)))
    assert torch.isfinite(prediction.probabilities).all()


def test_lora_attaches_to_query_and_value_of_both_towers(tiny_model):
    from peft import LoraConfig, get_peft_model

    model, _ = tiny_model
    config = LoraConfig(
        r=8,
        lora_alpha=16,
        lora_dropout=0.05,
        target_modules=["q_proj", "v_proj"],
        modules_to_save=["multi_modal_projector"],
    )
    peft_model = get_peft_model(model, config)
    adapted = [name for name, _ in peft_model.named_parameters() if "lora_A" in name]
    vision_layers = model.config.vision_config.num_hidden_layers
    text_layers = model.config.text_config.num_hidden_layers
    assert sum(".vision_tower." in name for name in adapted) == 2 * vision_layers
    assert sum(".language_model." in name for name in adapted) == 2 * text_layers
    assert all(name.endswith(("q_proj.lora_A.default.weight", "v_proj.lora_A.default.weight")) for name in adapted)
    trainable = {name for name, p in peft_model.named_parameters() if p.requires_grad}
    assert any("multi_modal_projector" in name for name in trainable)
    assert not any("embed_tokens" in name or "lm_head" in name for name in trainable)
