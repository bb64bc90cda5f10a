"""PyTorch ExpLLM: a DINOv2 vision tower whose final-LayerNorm patch tokens pass through a two-layer GELU projector
into a Llama-family language model, which answers with an expression label or an Exp-CoT (DESIGN section 2).

Layout follows transformers' LLaVA: `ExpLLMModel` is the backbone (vision tower, projector, language model) and returns
`last_hidden_state`; `ExpLLMForConditionalGeneration` adds the `lm_head`, the loss, generation and the fast
label-probability call `predict_expression`.
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer, GenerationConfig
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache
from transformers.generation import GenerationMixin
from transformers.modeling_outputs import BaseModelOutputWithPast, ModelOutput
from transformers.modeling_utils import PreTrainedModel
from transformers.utils.generic import can_return_tuple

from .configuration_expllm import ExpLLMConfig


@dataclass
class ExpLLMModelOutputWithPast(BaseModelOutputWithPast):
    r"""
    image_hidden_states (`torch.FloatTensor` of shape `(num_images, image_seq_length, text_hidden_size)`, *optional*):
        The projected image features that replaced the image tokens.
    """

    image_hidden_states: torch.FloatTensor | None = None


@dataclass
class ExpLLMCausalLMOutputWithPast(ModelOutput):
    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    past_key_values: Cache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    image_hidden_states: torch.FloatTensor | None = None


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


class ExpLLMMultiModalProjector(nn.Module):
    """Linear(vision -> text), GELU, Linear(text -> text), as the official ExpLLM projector."""

    def __init__(self, config: ExpLLMConfig):
        super().__init__()
        vision_hidden, text_hidden = config.vision_config.hidden_size, config.text_config.hidden_size
        self.linear_1 = nn.Linear(vision_hidden, text_hidden, bias=config.multimodal_projector_bias)
        self.act = ACT2FN[config.projector_hidden_act]
        self.linear_2 = nn.Linear(text_hidden, text_hidden, bias=config.multimodal_projector_bias)

    def forward(self, image_features):
        return self.linear_2(self.act(self.linear_1(image_features)))


class ExpLLMPreTrainedModel(PreTrainedModel):
    config_class = ExpLLMConfig
    config: ExpLLMConfig
    base_model_prefix = "model"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    # The towers contribute their own layers (e.g. Dinov2Layer, LlamaDecoderLayer) when the model is built.
    _no_split_modules = ["ExpLLMMultiModalProjector"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True


class ExpLLMModel(ExpLLMPreTrainedModel):
    """The vision tower, the projector and the language model without its head."""

    _auto_class = "AutoModel"

    def __init__(self, config: ExpLLMConfig):
        super().__init__(config)
        self.vision_tower = AutoModel.from_config(config.vision_config)
        self.multi_modal_projector = ExpLLMMultiModalProjector(config)
        self.language_model = AutoModel.from_config(config.text_config)
        self.post_init()

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    def get_image_features(self, pixel_values: torch.FloatTensor, **kwargs) -> torch.FloatTensor:
        """Projected patch tokens, `(num_images, num_patches, text_hidden_size)`.

        DINOv2's `last_hidden_state` is the final-LayerNorm output laid out as [CLS, registers..., patches]; ExpLLM
        feeds the language model the normalised patches only. (Stock LLaVA reads `hidden_states[layer]`, which in
        DINOv2 is taken before that LayerNorm.)
        """
        patch_size = self.config.vision_config.patch_size
        num_patches = (pixel_values.shape[-2] // patch_size) * (pixel_values.shape[-1] // patch_size)
        pixel_values = pixel_values.to(self.vision_tower.dtype)
        vision_outputs = self.vision_tower(pixel_values=pixel_values, return_dict=True)
        patch_tokens = vision_outputs.last_hidden_state[:, -num_patches:]
        return self.multi_modal_projector(patch_tokens)

    def image_token_mask(self, input_ids, inputs_embeds):
        """Where the image tokens are, `(batch, seq)`; found by embedding when only `inputs_embeds` is given."""
        if input_ids is not None:
            return input_ids == self.config.image_token_id
        image_token_embedding = self.get_input_embeddings()(
            torch.tensor(self.config.image_token_id, device=inputs_embeds.device)
        )
        return (inputs_embeds == image_token_embedding).all(-1)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> ExpLLMModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)

        image_features = None
        image_mask = self.image_token_mask(input_ids, inputs_embeds)
        num_image_tokens = int(image_mask.sum())
        if pixel_values is not None:
            image_features = self.get_image_features(pixel_values)
            num_features = image_features.shape[0] * image_features.shape[1]
            if num_image_tokens != num_features:
                raise ValueError(
                    f"the text has {num_image_tokens} image tokens but the images give {num_features} image features "
                    f"({image_features.shape[0]} images x {image_features.shape[1]} patches); build the text with the "
                    "processor, which expands each <image> to one token per patch"
                )
            image_features = image_features.to(inputs_embeds.device, inputs_embeds.dtype)
            inputs_embeds = inputs_embeds.masked_scatter(image_mask.unsqueeze(-1), image_features)
        elif num_image_tokens and past_key_values is None:
            raise ValueError(f"the text has {num_image_tokens} image tokens but no pixel_values were given")

        outputs = self.language_model(
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        return ExpLLMModelOutputWithPast(
            last_hidden_state=outputs.last_hidden_state,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_hidden_states=image_features,
        )


class ExpLLMForConditionalGeneration(ExpLLMPreTrainedModel, GenerationMixin):
    """ExpLLM with its language-modelling head: training loss, generation and label probabilities."""

    _auto_class = "AutoModelForImageTextToText"
    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}

    def __init__(self, config: ExpLLMConfig):
        super().__init__(config)
        self.model = ExpLLMModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    def get_image_features(self, pixel_values: torch.FloatTensor, **kwargs) -> torch.FloatTensor:
        return self.model.get_image_features(pixel_values, **kwargs)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> ExpLLMCausalLMOutputWithPast:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            Target token ids; positions set to -100 (instructions, image tokens, padding) carry no loss. The shift
            by one happens inside the loss.
        logits_to_keep (`int` or `torch.Tensor`, *optional*):
            Compute logits for the last `logits_to_keep` positions only (0 = all); generation keeps just the last.
        """
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        kept = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, kept, :])

        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **kwargs
            )
        return ExpLLMCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_hidden_states=outputs.image_hidden_states,
        )

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

        The prompt and every candidate answer go through the model as one sequence per image. A 4D attention mask lets
        each candidate's tokens see the prompt and the earlier tokens of the same candidate only, so the candidates
        share the prompt's computation instead of each repeating it. A candidate's score is the sum of its tokens'
        log-probabilities (label, then end of turn); the scores are normalised over the candidates.

        Args:
            input_ids / attention_mask / pixel_values: the left-padded label-question prompts and their images.
            candidate_ids (`torch.LongTensor` of shape `(num_labels, label_length)`): each label's answer tokens,
                right-padded; `candidate_attention_mask` marks the real ones.
            candidate_labels (`list[str]`, *optional*): the label names, returned as they are.
        """
        if self.config.text_config._attn_implementation.startswith("flash"):
            raise ValueError("predict_expression needs a custom attention mask: load the model with sdpa or eager")
        device = input_ids.device
        batch_size, prompt_length = input_ids.shape
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        prompt_mask = attention_mask.to(device=device, dtype=torch.bool)
        candidate_ids = candidate_ids.to(device)
        candidate_mask = candidate_attention_mask.to(device=device, dtype=torch.bool)
        num_candidates, candidate_length = candidate_ids.shape

        # Tokens fed after the prompt: every candidate but its last token, which is only ever a target.
        fed_length = candidate_length - 1
        fed_ids = candidate_ids[:, :fed_length].reshape(1, -1).expand(batch_size, -1)
        sequence = torch.cat([input_ids, fed_ids], dim=1)
        total_length = sequence.shape[1]

        # Positions: the prompt counts only its real tokens (it is left-padded); each candidate restarts after it.
        prompt_positions = (prompt_mask.long().cumsum(-1) - 1).clamp(min=0)
        offsets = torch.arange(fed_length, device=device).repeat(num_candidates)
        candidate_positions = prompt_mask.sum(-1, keepdim=True) + offsets
        position_ids = torch.cat([prompt_positions, candidate_positions], dim=1)

        # Who may attend to whom: causal over the real prompt tokens; candidate tokens see the real prompt and their
        # own earlier tokens. Every position also sees itself, so padding rows are never empty.
        allowed = torch.zeros(batch_size, total_length, total_length, dtype=torch.bool, device=device)
        causal = torch.ones(prompt_length, prompt_length, dtype=torch.bool, device=device).tril()
        allowed[:, :prompt_length, :prompt_length] = causal & prompt_mask[:, None, :]
        allowed[:, prompt_length:, :prompt_length] = prompt_mask[:, None, :]
        owner = torch.arange(num_candidates, device=device).repeat_interleave(fed_length)
        same_candidate = (owner[:, None] == owner[None, :]) & (offsets[None, :] <= offsets[:, None])
        allowed[:, prompt_length:, prompt_length:] = same_candidate & candidate_mask[:, :fed_length].reshape(1, 1, -1)
        allowed |= torch.eye(total_length, dtype=torch.bool, device=device)
        dtype = self.get_input_embeddings().weight.dtype
        additive_mask = torch.zeros(batch_size, 1, total_length, total_length, dtype=dtype, device=device)
        additive_mask.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)

        hidden_states = self.model(
            input_ids=sequence,
            pixel_values=pixel_values,
            attention_mask=additive_mask,
            position_ids=position_ids,
            use_cache=False,
        ).last_hidden_state

        # The first token of every candidate is predicted at the prompt's last position ...
        first_log_probs = self.lm_head(hidden_states[:, prompt_length - 1]).float().log_softmax(-1)
        log_likelihoods = first_log_probs[:, candidate_ids[:, 0]]
        # ... and token j > 0 of candidate c at the position where its token j - 1 was fed.
        if fed_length > 0:
            fed_log_probs = self.lm_head(hidden_states[:, prompt_length:]).float().log_softmax(-1)
            fed_log_probs = fed_log_probs.view(batch_size, num_candidates, fed_length, -1)
            targets = candidate_ids[:, 1:].unsqueeze(0).unsqueeze(-1).expand(batch_size, -1, -1, 1)
            target_log_probs = fed_log_probs.gather(-1, targets).squeeze(-1)
            log_likelihoods = log_likelihoods + (target_log_probs * candidate_mask[:, 1:]).sum(-1)
        return ExpressionPrediction(
            probabilities=log_likelihoods.softmax(-1), log_likelihoods=log_likelihoods, labels=candidate_labels
        )

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
        projector_device = model.lm_head.weight.device
        model.model.multi_modal_projector = ExpLLMMultiModalProjector(config).to(projector_device, dtype=dtype)
        model._init_weights(model.model.multi_modal_projector.linear_1)
        model._init_weights(model.model.multi_modal_projector.linear_2)
        model.generation_config = GenerationConfig(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            do_sample=False,  # greedy, as the official evaluation
            max_new_tokens=256,
        )
        model.config.text_config.pad_token_id = tokenizer.pad_token_id

        image_size = config.vision_config.image_size
        image_processor = ExpLLMImageProcessor(size={"height": image_size, "width": image_size})
        processor = ExpLLMProcessor(
            image_processor=image_processor, tokenizer=tokenizer, patch_size=config.vision_config.patch_size
        )
        return model, processor


__all__ = ["ExpLLMPreTrainedModel", "ExpLLMModel", "ExpLLMForConditionalGeneration"]
