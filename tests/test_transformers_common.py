"""transformers' own common model and configuration tests (`ModelTesterMixin`, `ConfigTester`) run against ExpLLM,
with a model tester written in the manner of transformers' LLaVA tester: tiny configs built in memory.

The suite comes from the sdist of the installed transformers (`python tests/transformers_suite.py`, which `make test`
runs). A common test that does not apply to ExpLLM is skipped below with its reason, as transformers' own model tests
do; every other one must pass.
"""

import importlib
import os
import sys
import unittest

import pytest
import torch

from transformers_suite import PACKAGE, suite_folder

if not os.path.isdir(os.path.join(suite_folder(), PACKAGE)):
    pytest.skip(
        f"transformers' common tests are not unpacked in {suite_folder()}: run `python tests/transformers_suite.py` "
        "(make test does)",
        allow_module_level=True,
    )
sys.path.insert(0, suite_folder())
common = importlib.import_module(f"{PACKAGE}.test_modeling_common")
ConfigTester = importlib.import_module(f"{PACKAGE}.test_configuration_common").ConfigTester

from modeling_expllm.configuration_expllm import ExpLLMConfig  # noqa: E402
from modeling_expllm.modeling_expllm import ExpLLMForConditionalGeneration, ExpLLMModel  # noqa: E402


class ExpLLMModelTester:
    """Tiny DINOv2 + Llama configs and inputs whose first `num_image_tokens` tokens are the image placeholder."""

    def __init__(self, parent, batch_size=3, text_length=7, image_token_id=0, pad_token_id=1):
        self.parent = parent
        self.batch_size = batch_size
        self.image_token_id = image_token_id
        self.pad_token_id = pad_token_id
        self.vision_config = {
            "model_type": "dinov2",
            "image_size": 8,
            "patch_size": 2,
            "num_channels": 3,
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "mlp_ratio": 2,
            "initializer_range": 0.02,
            # DINOv2's mask token serves masked-image pretraining only (bool_masked_pos), which ExpLLM never does:
            # it would be the one weight without a gradient in the training tests.
            "use_mask_token": False,
        }
        self.text_config = {
            "model_type": "llama",
            "vocab_size": 99,
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 512,
            "initializer_range": 0.02,
            "pad_token_id": pad_token_id,
        }
        # Names the common tests read from the tester.
        self.num_image_tokens = (self.vision_config["image_size"] // self.vision_config["patch_size"]) ** 2
        self.seq_length = text_length + self.num_image_tokens
        self.encoder_seq_length = self.seq_length
        self.num_hidden_layers = self.text_config["num_hidden_layers"]
        self.hidden_size = self.text_config["hidden_size"]
        self.num_attention_heads = self.text_config["num_attention_heads"]
        self.vocab_size = self.text_config["vocab_size"]
        self.is_training = True

    def get_config(self):
        return ExpLLMConfig(
            vision_config=self.vision_config, text_config=self.text_config, image_token_id=self.image_token_id
        )

    def prepare_config_and_inputs_for_common(self):
        config = self.get_config()
        size = self.vision_config["image_size"]
        pixel_values = common.floats_tensor([self.batch_size, 3, size, size])
        input_ids = common.ids_tensor([self.batch_size, self.seq_length], self.vocab_size - 2) + 2
        input_ids[:, : self.num_image_tokens] = self.image_token_id
        attention_mask = torch.ones_like(input_ids)
        return config, {"pixel_values": pixel_values, "input_ids": input_ids, "attention_mask": attention_mask}


class ExpLLMCommonModelTest(common.ModelTesterMixin, unittest.TestCase):
    all_model_classes = (ExpLLMModel, ExpLLMForConditionalGeneration)
    _is_composite = True
    # The check that `_init_weights` covers every weight is skipped for files without a copyright year of 2023 or later
    # (transformers' proxy for a model's age); ExpLLM's files carry none, and the check applies: run it.
    test_can_init_all_missing_weights_before_2023 = True

    def setUp(self):
        self.model_tester = ExpLLMModelTester(self)
        self.config_tester = ConfigTester(
            self,
            config_class=ExpLLMConfig,
            has_text_modality=False,
            common_properties=["image_token_id", "image_seq_length"],
        )

    def test_config(self):
        self.config_tester.run_common_tests()

    # transformers tells a head (which trains on token labels) from a base model (no loss) by the class name in its
    # static auto-model name tables, which list no remote-code model. These overrides say what those tables would:
    # ExpLLMForConditionalGeneration is an image-text-to-text head, ExpLLMModel a base model, so the training tests run
    # on the head only, as they do for LLaVA.
    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        inputs = super()._prepare_for_class(inputs_dict, model_class, return_labels=return_labels)
        if return_labels and model_class is ExpLLMForConditionalGeneration:
            batch_size, seq_length = self.model_tester.batch_size, self.model_tester.seq_length
            inputs["labels"] = torch.zeros((batch_size, seq_length), dtype=torch.long, device=common.torch_device)
        return inputs

    def test_training(self):
        self.all_model_classes = (ExpLLMForConditionalGeneration,)
        super().test_training()

    def test_training_gradient_checkpointing(self):
        self.all_model_classes = (ExpLLMForConditionalGeneration,)
        super().test_training_gradient_checkpointing()

    def test_training_gradient_checkpointing_use_reentrant_false(self):
        self.all_model_classes = (ExpLLMForConditionalGeneration,)
        super().test_training_gradient_checkpointing_use_reentrant_false()

    def test_training_gradient_checkpointing_use_reentrant_true(self):
        self.all_model_classes = (ExpLLMForConditionalGeneration,)
        super().test_training_gradient_checkpointing_use_reentrant_true()

    @unittest.skip(
        "transformers' GenerationTesterMixin is in tests/generation/, which the sdist does not ship; ExpLLM's "
        "generation (batched, assisted, pipeline) is tested in tests/test_modeling.py and tests/test_remote_code.py"
    )
    def test_generation_tester_mixin_inheritance(self):
        pass
