"""ExpLLM configuration: a DINOv2 vision tower, a two-layer GELU projector and a Llama-family causal LM."""

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig
from transformers.activations import ACT2FN
from transformers.configuration_utils import PreTrainedConfig, SubConfigSpec
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

# Vision towers whose final-LayerNorm output is laid out as [CLS, registers..., patches]; ExpLLM keeps the patches.
SUPPORTED_VISION_MODEL_TYPES = ("dinov2", "dinov2_with_registers")


@strict
class ExpLLMConfig(PreTrainedConfig):
    r"""
    Configuration of an [`ExpLLMForConditionalGeneration`]. The defaults describe the paper's model: DINOv2 ViT-L/14 at
    224 px (16 x 16 = 256 image tokens) and a Llama-2-7B-sized language model (Vicuna-7B v1.5).

    Args:
        vision_config (`dict` or `PreTrainedConfig`, *optional*):
            Config of the vision tower; any DINOv2 size (`model_type` "dinov2" or "dinov2_with_registers").
        text_config (`dict` or `PreTrainedConfig`, *optional*):
            Config of the language model; any decoder-only causal LM type (Llama family in practice).
        image_token_id (`int`, *optional*, defaults to 32000):
            Id of the `<image>` placeholder; the processor expands it to `image_seq_length` tokens.
        projector_hidden_act (`str`, *optional*, defaults to `"gelu"`):
            Activation between the projector's two linear layers.
        multimodal_projector_bias (`bool`, *optional*, defaults to `True`):
            Whether the projector's linear layers have biases.

    Example:

    ```python
    >>> from modeling_expllm.configuration_expllm import ExpLLMConfig
    >>> config = ExpLLMConfig()
    >>> config.image_seq_length
    256
    ```"""

    model_type = "expllm"
    _auto_class = "AutoConfig"
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

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    image_token_id: int = 32000
    projector_hidden_act: str = "gelu"
    multimodal_projector_bias: bool = True
    tie_word_embeddings: bool = False

    @property
    def image_seq_length(self):
        """Number of image tokens: one per patch of the vision tower's input (CLS and registers are dropped)."""
        return (self.vision_config.image_size // self.vision_config.patch_size) ** 2

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
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
        self.check_consistency()

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


__all__ = ["ExpLLMConfig"]
