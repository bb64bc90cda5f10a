"""ExpLLM as Hugging Face remote code: configuration, model, image processor and processor.

`ExpLLMForConditionalGeneration.save_pretrained` copies the module files into the saved folder, so that
`AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True)` works where this package is
not installed.
"""

from .configuration_expllm import ExpLLMConfig
from .image_processing_expllm import ExpLLMImageProcessor
from .modeling_expllm import ExpLLMForConditionalGeneration, ExpLLMModel, ExpLLMPreTrainedModel
from .processing_expllm import ExpLLMProcessor

__all__ = [
    "ExpLLMConfig",
    "ExpLLMForConditionalGeneration",
    "ExpLLMImageProcessor",
    "ExpLLMModel",
    "ExpLLMPreTrainedModel",
    "ExpLLMProcessor",
]
