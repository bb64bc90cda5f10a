"""PyTorch ExpLLM: a DINOv2 vision tower whose final-LayerNorm patch tokens pass through LLaVA's two-layer GELU
projector into a Llama-family language model, which answers with an expression label or an Exp-CoT (DESIGN section 2).

ExpLLM is transformers' LLaVA except for which image features reach the language model, so it is built on LLaVA's own
classes: the projector, the placeholder mask, the forward pass, the output classes, the cache handling, the generation
inputs and the tensor-parallel plan are LLaVA's, as they are in the installed transformers. This file adds only
- `ExpLLMModel.get_image_features`: the normalised patch tokens instead of an intermediate hidden state;
- `ExpLLMForConditionalGeneration.predict_expression`: every label's probability in one forward pass;
- `ExpLLMForConditionalGeneration.from_backbones`: a new ExpLLM from a pretrained DINOv2 and a pretrained LM.
"""

from dataclasses import dataclass

import torch
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer, GenerationConfig
from transformers.modeling_outputs import ModelOutput
from transformers.models.llava.modeling_llava import (
    LlavaForConditionalGeneration,
    LlavaModel,
    LlavaMultiModalProjector,
    LlavaPreTrainedModel,
)
from transformers.utils.generic import can_return_tuple

from .configuration_expllm import ExpLLMConfig


@dataclass
class ExpressionPrediction(ModelOutput):
    r"""
    probabilities (`torch.FloatTensor` of shape `(batch_size, num_labels)`):
        Probability of each candidate label as the model's whole answer, normalised over the candidates.
    log_likelihoods (`torch.FloatTensor` of shape `(batch_size, num_labels)`):
        Log-probability the model gives each candidate answer (label tokens and end of turn).
    labels (`list[str]`, *optional*):
        The candidate label names, in column order, passed through from the processor.
    """

    probabilities: torch.FloatTensor | None = None
    log_likelihoods: torch.FloatTensor | None = None
    labels: list[str] | None = None


class ExpLLMPreTrainedModel(LlavaPreTrainedModel):
    config_class = ExpLLMConfig
    config: ExpLLMConfig


class ExpLLMModel(ExpLLMPreTrainedModel, LlavaModel):
    """LLaVA's backbone (vision tower, projector, language model without its head), fed normalised patch tokens."""

    _auto_class = "AutoModel"  # save_pretrained copies this file beside the weights

    @can_return_tuple
    def get_image_features(
        self,
        pixel_values: torch.FloatTensor,
        vision_feature_layer: int | None = None,
        vision_feature_select_strategy: str | None = None,
        image_sizes: torch.Tensor | None = None,
        **kwargs,
    ):
        """The vision tower's output, whose `pooler_output` is the list of each image's projected patch tokens
        `(image_seq_length, text_hidden_size)`, as LLaVA's forward pass and generation expect it.

        DINOv2's `last_hidden_state` is the final-LayerNorm output laid out as [CLS, registers..., patches]; ExpLLM
        feeds the language model the normalised patches only. (LLaVA reads `hidden_states[vision_feature_layer]`,
        which in DINOv2 is taken before that LayerNorm.)
        """
        if vision_feature_layer not in (None, -1) or vision_feature_select_strategy not in (None, "default"):
            raise ValueError(
                "ExpLLM always reads the vision tower's final-LayerNorm patch tokens; got vision_feature_layer="
                f"{vision_feature_layer!r}, vision_feature_select_strategy={vision_feature_select_strategy!r}"
            )
        if image_sizes is not None:
            raise ValueError("ExpLLM takes whole square images of the vision tower's size: image_sizes must be None")
        pixel_values = pixel_values.to(self.vision_tower.dtype)
        image_outputs = self.vision_tower(pixel_values=pixel_values, return_dict=True, **kwargs)
        patch_size = self.config.vision_config.patch_size
        num_patches = (pixel_values.shape[-2] // patch_size) * (pixel_values.shape[-1] // patch_size)
        patch_tokens = image_outputs.last_hidden_state[:, -num_patches:]
        image_outputs.pooler_output = list(self.multi_modal_projector(patch_tokens))
        return image_outputs


class ExpLLMForConditionalGeneration(ExpLLMPreTrainedModel, LlavaForConditionalGeneration):
    """LLaVA with ExpLLM's backbone: training loss and generation as LLaVA's, plus one-pass label probabilities."""

    _auto_class = "AutoModelForImageTextToText"  # save_pretrained copies this file beside the weights

    def __init__(self, config: ExpLLMConfig):
        # LLaVA's __init__ builds a LlavaModel; skip it and build the same parts around ExpLLM's backbone.
        super(LlavaForConditionalGeneration, self).__init__(config)
        self.model = ExpLLMModel(config)
        self.lm_head = torch.nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    @torch.no_grad()
    def predict_expression(
        self,
        input_ids: torch.LongTensor,
        pixel_values: torch.FloatTensor,
        candidate_ids: torch.LongTensor,
        candidate_attention_mask: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        candidate_labels: list[str] | None = None,
        **kwargs,
    ) -> ExpressionPrediction:
        r"""
        Probability of each candidate label as the answer to the label question, in one forward pass: no generation,
        so there is never an unparseable answer. Build the inputs with `processor.expression_inputs(images, labels)`.

        The prompt and every candidate answer go through the model as one sequence per image, with a 4D attention
        mask (see `candidate_scoring_layout`) so that the candidates share the prompt's computation. A candidate's
        score is the sum of its tokens' log-probabilities (label, then end of turn), normalised over the candidates.

        Args:
            input_ids / attention_mask / pixel_values: the left-padded label-question prompts and their images.
            candidate_ids (`torch.LongTensor` of shape `(num_labels, label_length)`): each label's answer tokens,
                right-padded; `candidate_attention_mask` marks the real ones.
            candidate_labels (`list[str]`, *optional*): the label names, returned as they are.
        """
        if self.config.text_config._attn_implementation.startswith("flash"):
            raise ValueError("predict_expression needs a custom attention mask: load the model with sdpa or eager")
        device = input_ids.device
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        candidate_ids = candidate_ids.to(device)
        candidate_mask = candidate_attention_mask.to(device=device, dtype=torch.bool)
        batch_size, prompt_length = input_ids.shape
        num_candidates, candidate_length = candidate_ids.shape
        fed_length = candidate_length - 1  # a candidate's last token is only ever a target, never fed

        fed_ids = candidate_ids[:, :fed_length].reshape(1, -1).expand(batch_size, -1)
        position_ids, allowed = candidate_scoring_layout(attention_mask.to(torch.bool), candidate_mask)
        dtype = self.get_input_embeddings().weight.dtype
        additive_mask = torch.zeros(allowed.shape, dtype=dtype, device=device)
        additive_mask.masked_fill_(~allowed, torch.finfo(dtype).min)

        hidden_states = self.model(
            input_ids=torch.cat([input_ids, fed_ids], dim=1),
            pixel_values=pixel_values,
            attention_mask=additive_mask,
            position_ids=position_ids,
            use_cache=False,
        ).last_hidden_state

        # The first token of every candidate is predicted at the prompt's last position ...
        first_log_probs = self.answer_log_probs(hidden_states[:, prompt_length - 1])
        log_likelihoods = first_log_probs[:, candidate_ids[:, 0]]
        # ... and token j > 0 of candidate c at the position where its token j - 1 was fed.
        if fed_length > 0:
            fed_log_probs = self.answer_log_probs(hidden_states[:, prompt_length:])
            fed_log_probs = fed_log_probs.view(batch_size, num_candidates, fed_length, -1)
            targets = candidate_ids[:, 1:].unsqueeze(0).unsqueeze(-1).expand(batch_size, -1, -1, 1)
            target_log_probs = fed_log_probs.gather(-1, targets).squeeze(-1)
            log_likelihoods = log_likelihoods + (target_log_probs * candidate_mask[:, 1:]).sum(-1)
        return ExpressionPrediction(
            probabilities=log_likelihoods.softmax(-1), log_likelihoods=log_likelihoods, labels=candidate_labels
        )

    def answer_log_probs(self, hidden_states):
        """Log-probabilities of the next token, in float32, over the tokens the model can answer with: those its
        generation config suppresses (`suppress_tokens`, e.g. the image token, which is only ever an input) take no
        probability, so that label probabilities agree with what generation can produce."""
        logits = self.lm_head(hidden_states).float()
        never_generated = self.generation_config.suppress_tokens
        if never_generated:
            logits[..., torch.tensor(never_generated, device=logits.device)] = float("-inf")
        return logits.log_softmax(-1)

    @classmethod
    def from_backbones(cls, vision_model_name_or_path, text_model_name_or_path, dtype=None, **config_kwargs):
        """Build an ExpLLM from a pretrained DINOv2 and a pretrained causal LM (Hub ids or local folders).

        Adds the `<image>` token (and a padding token if the tokenizer has none) to the language model's tokenizer,
        resizes its embeddings, puts a freshly initialised projector between the towers, and returns
        `(model, processor)`, ready for stage-1 training.
        """
        from .image_processing_expllm import ExpLLMImageProcessor
        from .processing_expllm import ExpLLMProcessor

        vision_model = AutoModel.from_pretrained(vision_model_name_or_path, dtype=dtype)
        text_model = AutoModelForCausalLM.from_pretrained(text_model_name_or_path, dtype=dtype)
        # Left padding: batched generation and label scoring read each prompt's last position.
        tokenizer = AutoTokenizer.from_pretrained(text_model_name_or_path, padding_side="left")

        tokenizer.add_tokens(["<image>"], special_tokens=True)
        if tokenizer.pad_token is None:
            # LLaVA's choice for Llama tokenizers: pad with <unk>, which the model never needs to produce.
            if tokenizer.unk_token is not None:
                tokenizer.pad_token = tokenizer.unk_token
            else:
                tokenizer.add_special_tokens({"pad_token": "<pad>"})
        text_model.resize_token_embeddings(len(tokenizer))

        # The composite config holds the towers' own config objects, so attention settings stay shared with them.
        config = ExpLLMConfig(
            vision_config=vision_model.config,
            text_config=text_model.config,
            image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
            **config_kwargs,
        )
        # Build the composite on the meta device and hand it the pretrained towers: no second copy of 7B weights.
        with torch.device("meta"):
            model = cls(config)
        model.model.vision_tower = vision_model
        model.model.language_model = text_model.get_decoder()
        model.lm_head = text_model.get_output_embeddings()
        projector = LlavaMultiModalProjector(config).to(model.lm_head.weight.device, dtype=dtype)
        model._init_weights(projector.linear_1)
        model._init_weights(projector.linear_2)
        model.model.multi_modal_projector = projector
        model.generation_config = GenerationConfig(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            do_sample=False,  # greedy, as the official evaluation
            max_new_tokens=256,
            suppress_tokens=[config.image_token_id],  # a placeholder for image features, never an answer
        )
        model.config.text_config.pad_token_id = tokenizer.pad_token_id

        image_size = config.vision_config.image_size
        image_processor = ExpLLMImageProcessor(size={"height": image_size, "width": image_size})
        processor = ExpLLMProcessor(
            image_processor=image_processor, tokenizer=tokenizer, patch_size=config.vision_config.patch_size
        )
        return model, processor


def candidate_scoring_layout(prompt_mask, candidate_mask):
    """Positions and attention of one sequence per image that holds the left-padded prompt followed by every
    candidate answer but its last token, so that all candidates are scored in one forward pass.

    Args:
        prompt_mask (`torch.BoolTensor` of shape `(batch_size, prompt_length)`): the prompt's real tokens.
        candidate_mask (`torch.BoolTensor` of shape `(num_candidates, candidate_length)`): the candidates' real tokens.

    Returns:
        `position_ids` `(batch_size, total_length)`: the prompt counts only its real tokens and each candidate restarts
        right after it; `allowed` `(batch_size, 1, total_length, total_length)`: who may attend to whom, causal over
        the real prompt tokens, each candidate token seeing the real prompt and its own candidate's earlier tokens.
    """
    device = prompt_mask.device
    batch_size, prompt_length = prompt_mask.shape
    num_candidates, candidate_length = candidate_mask.shape
    fed_length = candidate_length - 1
    total_length = prompt_length + num_candidates * fed_length

    prompt_positions = (prompt_mask.long().cumsum(-1) - 1).clamp(min=0)
    offsets = torch.arange(fed_length, device=device).repeat(num_candidates)
    candidate_positions = prompt_mask.sum(-1, keepdim=True) + offsets
    position_ids = torch.cat([prompt_positions, candidate_positions], dim=1)

    allowed = torch.zeros(batch_size, total_length, total_length, dtype=torch.bool, device=device)
    causal = torch.ones(prompt_length, prompt_length, dtype=torch.bool, device=device).tril()
    allowed[:, :prompt_length, :prompt_length] = causal & prompt_mask[:, None, :]
    allowed[:, prompt_length:, :prompt_length] = prompt_mask[:, None, :]
    owner = torch.arange(num_candidates, device=device).repeat_interleave(fed_length)
    same_candidate = (owner[:, None] == owner[None, :]) & (offsets[None, :] <= offsets[:, None])
    allowed[:, prompt_length:, prompt_length:] = same_candidate & candidate_mask[:, :fed_length].reshape(1, 1, -1)
    # Every position also sees itself, so that the rows of padding tokens are never empty.
    allowed |= torch.eye(total_length, dtype=torch.bool, device=device)
    return position_ids, allowed[:, None]


__all__ = ["ExpLLMPreTrainedModel", "ExpLLMModel", "ExpLLMForConditionalGeneration"]
