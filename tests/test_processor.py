import io

import numpy as np
import pytest
import torch
from PIL import Image

from modeling_expllm.image_processing_expllm import ExpLLMImageProcessor
from modeling_expllm.vocabulary import COT_QUESTION

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711])


def normalised(rgb):
    return (np.array(rgb) / 255.0 - CLIP_MEAN) / CLIP_STD


def test_pads_to_square_with_the_mean_colour_then_resizes():
    processor = ExpLLMImageProcessor()
    wide_red = Image.new("RGB", (300, 100), (255, 0, 0))
    pixels = processor(wide_red, return_tensors="pt")["pixel_values"][0].numpy()
    assert pixels.shape == (3, 224, 224)
    np.testing.assert_allclose(pixels[:, 5, 112], 0.0, atol=0.02)  # padding band above the image: mean colour
    np.testing.assert_allclose(pixels[:, 112, 112], normalised((255, 0, 0)), atol=0.02)  # content kept, not cropped
    np.testing.assert_allclose(pixels[:, 112, 2], normalised((255, 0, 0)), atol=0.05)  # full width kept


def encoded(image, fmt="PNG"):
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def image_inputs(tmp_path):
    """One of every input kind a user may pass, named for the test id."""
    rgb = Image.new("RGB", (64, 48), (10, 200, 30))
    path = tmp_path / "face.jpg"
    rgb.save(path)
    palette = Image.new("P", (20, 30))
    palette.putpalette([255, 0, 0] * 256)
    return {
        "rgb": rgb,
        "grayscale": Image.new("L", (50, 80), 128),
        "rgba_transparent": Image.new("RGBA", (64, 64), (0, 0, 0, 0)),
        "palette": palette,
        "cmyk": Image.new("CMYK", (40, 40), (0, 255, 255, 0)),
        "sixteen_bit": Image.fromarray(np.full((20, 20), 40000, dtype=np.uint16)),
        "binary": Image.new("1", (16, 16), 1),
        "huge": Image.new("RGB", (4000, 3000), (1, 2, 3)),
        "tiny": Image.new("RGB", (1, 1), (255, 255, 255)),
        "numpy_hw": np.zeros((20, 30), dtype=np.uint8),
        "numpy_hwc": np.full((20, 30, 3), 255, dtype=np.uint8),
        "numpy_hwc_alpha": np.zeros((20, 30, 4), dtype=np.uint8),
        "numpy_chw_float": np.random.default_rng(0).random((3, 40, 40)),
        "torch_chw": torch.rand(3, 32, 32),
        "path_str": str(path),
        "path_object": path,
        "png_bytes": encoded(rgb),
        "datasets_dict": {"bytes": encoded(rgb), "path": None},
    }


def test_accepts_every_image_kind(tmp_path):
    processor = ExpLLMImageProcessor(size={"height": 56, "width": 56})
    inputs = image_inputs(tmp_path)
    pixels = processor(list(inputs.values()), return_tensors="pt")["pixel_values"]
    assert pixels.shape == (len(inputs), 3, 56, 56)
    assert torch.isfinite(pixels).all()
    index = list(inputs).index("rgba_transparent")
    torch.testing.assert_close(pixels[index], torch.zeros(3, 56, 56), atol=0.02, rtol=0)  # transparency -> mean


def bad_inputs(tmp_path):
    text_file = tmp_path / "notes.jpg"
    text_file.write_text("this is not an image")
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(encoded(Image.new("RGB", (200, 200), (9, 9, 9)), "JPEG")[:300])
    return [
        (str(tmp_path / "missing.png"), FileNotFoundError, "missing.png"),
        (str(text_file), ValueError, "notes.jpg"),
        (str(truncated), ValueError, "cut.jpg"),
        (b"definitely not an image", ValueError, "bytes"),
        (42, TypeError, "int"),
        (None, TypeError, "NoneType"),
        ({"text": "hello"}, TypeError, "dict"),
        (np.zeros((5, 5, 7), dtype=np.uint8), ValueError, r"shape \(5, 5, 7\)"),
        (np.zeros((2, 3, 4, 5), dtype=np.uint8), ValueError, r"shape \(2, 3, 4, 5\)"),
        (np.zeros((0, 5), dtype=np.uint8), ValueError, r"shape \(0, 5\)"),
        (np.full((4, 4), 2.0), ValueError, "0..1"),
        (np.full((4, 4), np.nan), ValueError, "NaN"),
        (np.zeros((4, 4), dtype=np.complex64), ValueError, "complex64"),
    ]


def test_bad_images_raise_clear_errors_naming_them(tmp_path):
    processor = ExpLLMImageProcessor()
    for item, error, message in bad_inputs(tmp_path):
        with pytest.raises(error, match=message):
            processor([Image.new("RGB", (8, 8)), item])


def test_processor_expands_one_image_token_per_patch(tiny_model):
    model, processor = tiny_model
    prompt = processor.apply_chat_template(processor.fer_messages(), add_generation_prompt=True)
    assert prompt.count("<image>") == 1 and prompt.endswith("ASSISTANT:")
    batch = processor(images=[Image.new("RGB", (30, 90))], text=[prompt], return_tensors="pt")
    assert (batch["input_ids"] == model.config.image_token_id).sum() == model.config.image_seq_length == 16
    # More images than image tokens: transformers' processor refuses it from 5.23 on, the model's placeholder check
    # before; either way it is a ValueError that names the images, never a silent mismatch.
    with pytest.raises(ValueError, match="[Ii]mage"):
        model(**processor(images=[Image.new("RGB", (8, 8))] * 2, text=[prompt], return_tensors="pt"))


# The official format, written out as DESIGN section 9 gives it (not built from the release's constants), so that a
# change of any string or separator fails here.
OFFICIAL_FER_ROUND = (
    "TASK: Expression recognition involves identifying the emotional state of a person in a given image.\n"
    "USER: What is the expression of the person in the image? Please provide the expression label.\n"
    "ASSISTANT:"
)
OFFICIAL_COT_ROUND = (
    "TASK: Expression analysis involves providing a detailed analysis of the face. \n"
    "USER: Can you analysis the facial expression step-by-step in the provided image? "
    "Provide a detailed description.\n"
    "ASSISTANT:"
)
OFFICIAL_HEAD = "You are a helpful face analysis assistant. \nImage: <image>\n"


def test_the_chat_template_writes_the_official_conversation_format(tiny_model):
    from modeling_expllm.vocabulary import turn

    _, processor = tiny_model
    render = processor.apply_chat_template
    assert render(processor.fer_messages("Anger")) == OFFICIAL_HEAD + OFFICIAL_FER_ROUND + " Anger</s>"
    assert render(processor.fer_messages(), add_generation_prompt=True) == OFFICIAL_HEAD + OFFICIAL_FER_ROUND
    cot_sample = OFFICIAL_HEAD + OFFICIAL_COT_ROUND + " Brows down.</s>" + OFFICIAL_FER_ROUND + " Anger</s>"
    assert render(processor.cot_messages("Brows down.", "Anger")) == cot_sample
    label_first = OFFICIAL_HEAD + OFFICIAL_FER_ROUND + " Anger</s>" + OFFICIAL_COT_ROUND
    assert render(processor.label_first_cot_messages("Anger"), add_generation_prompt=True) == label_first
    # A free question gets the analysis task; a task message chooses another; a system message replaces the default.
    free = [turn("user", "Why does this face look tense?", with_image=True)]
    assert render(free, add_generation_prompt=True) == (
        OFFICIAL_HEAD + "TASK: Expression analysis involves providing a detailed analysis of the face. \n"
        "USER: Why does this face look tense?\nASSISTANT:"
    )
    chosen = [turn("system", "Be brief. "), turn("task", "Count the faces.")]
    chosen.append(turn("user", "How many?", with_image=True))
    assert render(chosen, add_generation_prompt=True) == (
        "Be brief. \nImage: <image>\nTASK: Count the faces.\nUSER: How many?\nASSISTANT:"
    )
    with pytest.raises(Exception, match="roles must be"):
        render([turn("narrator", "Once upon a time")])


def test_chat_template_marks_only_answers_for_loss(tiny_model):
    _, processor = tiny_model
    conversation = processor.cot_messages("Brows are lowered.", "Anger")
    conversation[0]["content"][0]["image"] = Image.new("RGB", (20, 20))
    encoded_batch = processor.apply_chat_template(
        [conversation], tokenize=True, return_dict=True, return_assistant_tokens_mask=True, return_tensors="pt"
    )
    answer_ids = encoded_batch["input_ids"][0][encoded_batch["assistant_masks"][0].bool()]
    eos = processor.tokenizer.eos_token
    assert processor.tokenizer.decode(answer_ids).replace(" ", "") == f"Browsarelowered.{eos}Anger{eos}"


def test_inference_prompts_are_the_training_tokens_up_to_the_answer(tiny_model):
    """One <s>, and the same ids at inference as at training: the label question, the CoT question and the
    label-first CoT question (the official evaluation order) are each tokenised by the processor exactly as the
    training collator tokenises the same conversation up to its answer."""
    from training.collator import ExpLLMCollator

    _, processor = tiny_model
    face = Image.new("RGB", (50, 70), (120, 80, 60))
    cot = "**Key Observations:** brows lowered."
    cot_turn = [{"role": "user", "content": [{"type": "text", "text": COT_QUESTION}]}]
    cot_answer = [{"role": "assistant", "content": [{"type": "text", "text": cot}]}]
    # (prompt, training conversation, which of its answers the prompt asks for)
    cases = {
        "label question": (processor.fer_messages(), processor.fer_messages("Anger"), 0),
        "CoT question": (processor.cot_messages(), processor.cot_messages(cot, "Anger"), 0),
        "label-first CoT": (
            processor.fer_messages("Anger") + cot_turn,
            processor.fer_messages("Anger") + cot_turn + cot_answer,
            1,
        ),
    }
    bos = processor.tokenizer.bos_token_id
    for name, (prompt_messages, training_messages, answer) in cases.items():
        prompt = processor.apply_chat_template(prompt_messages, add_generation_prompt=True)
        inference_ids = processor(images=[face], text=[prompt], return_tensors="pt")["input_ids"][0].tolist()
        batch = ExpLLMCollator(processor)([{"images": [face], "messages": training_messages}])
        training_ids, supervised = batch["input_ids"][0].tolist(), (batch["labels"][0] != -100).tolist()
        answer_starts = [i for i in range(len(supervised)) if supervised[i] and (i == 0 or not supervised[i - 1])]
        assert inference_ids.count(bos) == 1 and inference_ids[0] == bos, name
        assert inference_ids == training_ids[: answer_starts[answer]], name


def test_a_template_that_writes_bos_is_refused(tiny_model):
    """Release 0.1.0's template wrote <s> and the tokenizer added a second one; such a processor is an error."""
    from modeling_expllm.processing_expllm import DEFAULT_CHAT_TEMPLATE, ExpLLMProcessor

    _, processor = tiny_model
    with pytest.raises(ValueError, match="adds another one"):
        template = "{{ bos_token }}" + DEFAULT_CHAT_TEMPLATE
        ExpLLMProcessor(processor.image_processor, processor.tokenizer, chat_template=template)


def test_opencv_resize_gives_the_official_pixels(tmp_path):
    """resize_with="opencv" (what the converter sets) is the official preprocessing to the last bit: pad with
    (123, 117, 104), cv2.resize bilinear to 224, CLIP normalisation. It survives save/load; a bad value is named."""
    cv2 = pytest.importorskip("cv2", reason="resize_with='opencv' needs OpenCV, which this environment lacks")

    pixels = np.random.default_rng(0).integers(0, 256, (90, 70, 3), dtype=np.uint8)
    processor = ExpLLMImageProcessor(resize_with="opencv")
    got = processor(Image.fromarray(pixels), return_tensors="pt")["pixel_values"][0].numpy()
    canvas = np.empty((90, 90, 3), dtype=np.uint8)
    canvas[:] = (123, 117, 104)
    canvas[:, 10:80] = pixels
    official = cv2.resize(canvas, (224, 224), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(got, normalised(official).transpose(2, 0, 1), atol=1e-5)
    assert processor.mean_colour == (123, 117, 104)
    processor.save_pretrained(tmp_path)
    assert ExpLLMImageProcessor.from_pretrained(tmp_path).resize_with == "opencv"
    default = ExpLLMImageProcessor()(Image.fromarray(pixels), return_tensors="pt")["pixel_values"][0].numpy()
    assert np.abs(default - got).max() > 0.05  # PIL's bicubic is a different filter: the option matters
    with pytest.raises(ValueError, match="resize_with must be one of"):
        ExpLLMImageProcessor(resize_with="magic")(Image.fromarray(pixels))
