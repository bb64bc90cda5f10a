import pytest

from modeling_expllm.configuration_expllm import ExpLLMConfig


def test_defaults_describe_the_paper_model():
    config = ExpLLMConfig()
    assert config.model_type == "expllm"
    assert config.vision_config.model_type == "dinov2" and config.vision_config.hidden_size == 1024
    assert config.text_config.model_type == "llama" and config.text_config.hidden_size == 4096
    assert config.image_seq_length == 256  # 224 / 14 = 16 patches a side
    assert config.projector_hidden_act == "gelu"


def test_round_trip_through_dict_keeps_sub_configs():
    config = ExpLLMConfig(vision_config={"model_type": "dinov2", "hidden_size": 64, "num_attention_heads": 4})
    restored = ExpLLMConfig(**config.to_dict())
    assert restored.vision_config.hidden_size == 64
    assert restored.to_dict() == config.to_dict()


def test_auto_map_names_every_auto_class():
    auto_map = ExpLLMConfig().auto_map
    for auto_class in ("AutoConfig", "AutoModel", "AutoModelForImageTextToText", "AutoModelForCausalLM"):
        assert auto_class in auto_map


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"image_token_id": 40000}, "image_token_id (40000)"),
        ({"image_token_id": -1}, "image_token_id (-1)"),
        ({"vision_config": {"model_type": "dinov2", "image_size": 100, "patch_size": 14}}, "multiple of"),
        ({"vision_config": {"model_type": "clip_vision_model"}}, "clip_vision_model"),
        ({"text_config": {"model_type": "t5"}}, "decoder-only causal LM"),
        ({"projector_hidden_act": "nope"}, "projector_hidden_act 'nope'"),
    ],
)
def test_inconsistent_values_raise_value_errors(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ExpLLMConfig(**kwargs)
