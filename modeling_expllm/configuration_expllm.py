"""ExpLLM configuration: LLaVA's configuration with a DINOv2 vision tower and a Llama-family language model.

ExpLLM differs from LLaVA in one place only, which image features reach the language model (DESIGN section 2), so its
configuration is LLaVA's with the paper's defaults and the checks that this difference needs.
"""

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig
from transformers.activations import ACT2FN
from transformers.configuration_utils import SubConfigSpec
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
from transformers.models.llava.configuration_llava import LlavaConfig

# Vision towers whose final-LayerNorm output is laid out as [CLS, registers..., patches]; ExpLLM keeps the patches.
SUPPORTED_VISION_MODEL_TYPES = ("dinov2", "dinov2_with_registers")


@strict
class ExpLLMConfig(LlavaConfig):
    r"""
    Configuration of an [`ExpLLMForConditionalGeneration`]. The defaults describe the paper's model: DINOv2 ViT-L/14 at
    224 px (16 x 16 = 256 image tokens) and a Llama-2-7B-sized language model (Vicuna-7B v1.5).

    Everything is [`LlavaConfig`]'s, with these differences:

    - `vision_config` is a DINOv2 (`model_type` "dinov2" or "dinov2_with_registers"), and `text_config` any
      decoder-only causal LM (the Llama family in practice).
    - ExpLLM feeds the language model the *final-LayerNorm output* of the patch tokens (CLS and registers dropped),
      not an intermediate hidden state, so `vision_feature_layer` is -1 and `vision_feature_select_strategy` is
      "default" and neither can be changed: any other value raises, rather than being silently ignored.
    - `image_seq_length` follows from the vision tower (one token per patch); a saved value that disagrees raises.
    - `tie_word_embeddings` follows the language model's (as in LLaVA), so a tied LM keeps its tying on save/load.

    Example:

    ```python
    >>> from modeling_expllm import ExpLLMConfig
    >>> config = ExpLLMConfig()
    >>> config.image_seq_length, config.image_token_id
    (256, 32000)
    ```"""

    model_type = "expllm"
    _auto_class = "AutoConfig"  # save_pretrained copies this file beside the weights
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(
            config_class=AutoConfig,
            model_type="dinov2",
            init_kwargs={
                "hidden_size": 1024,
                "num_hidden_layers": 24,
                "num_attention_heads": 16,
                "image_size": 224,
                "patch_size": 14,
                "layerscale_value": 1e-5,
            },
        ),
        # Vicuna's 32,000 tokens plus the <image> token.
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama", init_kwargs={"vocab_size": 32001}),
    }

    image_seq_length: int | None = None
    vision_feature_layer: int | list[int] = -1

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.check_consistency()
        image_seq_length = (self.vision_config.image_size // self.vision_config.patch_size) ** 2
        if self.image_seq_length is None:
            self.image_seq_length = image_seq_length
        elif self.image_seq_length != image_seq_length:
            raise ValueError(
                f"image_seq_length ({self.image_seq_length}) must equal the vision tower's patch count "
                f"({self.vision_config.image_size} // {self.vision_config.patch_size}) ** 2 = {image_seq_length}"
            )
        # Saved folders load with every AutoClass as remote code. `save_pretrained` records only the class that saves,
        # so the whole map is written here; the module names are the files `save_pretrained` copies beside the weights.
        if getattr(self, "auto_map", None) is None:
            self.auto_map = {
                "AutoConfig": "configuration_expllm.ExpLLMConfig",
                "AutoModel": "modeling_expllm.ExpLLMModel",
                "AutoModelForImageTextToText": "modeling_expllm.ExpLLMForConditionalGeneration",
                "AutoModelForCausalLM": "modeling_expllm.ExpLLMForConditionalGeneration",
                "AutoProcessor": "processing_expllm.ExpLLMProcessor",
            }

    def check_consistency(self):
        """Raise a `ValueError` on values that would otherwise only break later, inside a forward pass."""
        vision, text = self.vision_config, self.text_config
        if vision.model_type not in SUPPORTED_VISION_MODEL_TYPES:
            raise ValueError(
                f"vision_config.model_type must be one of {SUPPORTED_VISION_MODEL_TYPES}, got {vision.model_type!r}"
            )
        if not isinstance(vision.image_size, int) or not isinstance(vision.patch_size, int):
            raise ValueError(
                "vision_config.image_size and patch_size must be single integers (square images), got "
                f"{vision.image_size!r} and {vision.patch_size!r}"
            )
        if vision.image_size % vision.patch_size != 0:
            raise ValueError(
                f"vision_config.image_size ({vision.image_size}) must be a multiple of vision_config.patch_size "
                f"({vision.patch_size})"
            )
        if text.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or text.is_encoder_decoder:
            raise ValueError(f"text_config must describe a decoder-only causal LM, got model_type {text.model_type!r}")
        if not 0 <= self.image_token_id < text.vocab_size:
            raise ValueError(
                f"image_token_id ({self.image_token_id}) must be a token of the language model's vocabulary "
                f"(0..{text.vocab_size - 1}); add the image token to the tokenizer and resize the embeddings first"
            )
        if self.projector_hidden_act not in ACT2FN:
            raise ValueError(f"projector_hidden_act {self.projector_hidden_act!r} is not one of {sorted(ACT2FN)}")
        if self.vision_feature_layer != -1 or self.vision_feature_select_strategy != "default":
            raise ValueError(
                "ExpLLM feeds the language model the vision tower's final-LayerNorm patch tokens: "
                "vision_feature_layer must be -1 and vision_feature_select_strategy 'default', got "
                f"{self.vision_feature_layer!r} and {self.vision_feature_select_strategy!r}"
            )


__all__ = ["ExpLLMConfig"]
