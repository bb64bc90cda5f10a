"""ExpLLM processor: the image processor and the tokenizer, the official conversation format as chat template with
`{% generation %}` markers (so assistant-only loss masks come from
`apply_chat_template(..., return_assistant_tokens_mask=True)`), `<image>` expanded to one token per image patch, and
the inputs of the fast label-probability call.
"""

import json

import torch
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin

from .vocabulary import (
    COT_TASK,
    EXPRESSION_LABELS,
    FER_QUESTION,
    FER_TASK,
    SYSTEM_PROMPT,
    cot_messages,
    fer_messages,
    label_first_cot_messages,
)


def _literal(text):
    """A Python string as a Jinja string literal (Jinja reads the same escapes as JSON writes)."""
    return json.dumps(text)


# The official ExpLLM layout (DESIGN section 9), which the paper's model was trained on:
#
#     {system}\nImage: {image tokens}\nTASK: {task}\nUSER: {question}\nASSISTANT: {answer}</s>TASK: ...
#
# The image line follows the system text, once per image of the conversation, wherever the image part sits in the
# messages. Every user turn is introduced by a TASK line: a message with role "task" sets it for the next user turn;
# without one, the label question gets the label task and any other question (the step-by-step question, or a free
# question asked through `pipeline("image-text-to-text")`) the analysis task, since it asks for a description.
# Message contents may be strings or TRL-style lists of {"type": "image"} / {"type": "text", "text": ...} parts. Only
# the assistant answers and their end-of-turn token sit inside {% generation %}: they are what training puts loss on.
# The template writes no <s>: the tokenizer adds it, once, wherever text becomes ids (the processor's __call__ and
# apply_chat_template(tokenize=True) alike), so training and inference see the same tokens.
DEFAULT_CHAT_TEMPLATE = (
    "{%- macro render(content) -%}"
    "{%- if content is string -%}{{ content }}"
    "{%- else -%}{%- for part in content if part['type'] == 'text' -%}{{ part['text'] }}{%- endfor -%}"
    "{%- endif -%}"
    "{%- endmacro -%}"
    "{%- set state = namespace(images=0, task=none) -%}"
    "{%- for message in messages if message['content'] is not string -%}"
    "{%- for part in message['content'] if part['type'] == 'image' -%}{%- set state.images = state.images + 1 -%}"
    "{%- endfor -%}{%- endfor -%}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{{- render(messages[0]['content']) -}}{%- set turns = messages[1:] -%}"
    "{%- else -%}{{- " + _literal(SYSTEM_PROMPT) + " -}}{%- set turns = messages -%}{%- endif -%}"
    "{{- '\\n' -}}"
    "{%- for _ in range(state.images) -%}{{- 'Image: ' + image_token + '\\n' -}}{%- endfor -%}"
    "{%- for message in turns -%}"
    "{%- if message['role'] == 'task' -%}{%- set state.task = render(message['content']) -%}"
    "{%- elif message['role'] == 'user' -%}"
    "{%- set question = render(message['content']) -%}"
    "{%- if state.task is none -%}"
    "{%- set state.task = "
    + _literal(FER_TASK)
    + " if question | trim == "
    + _literal(FER_QUESTION)
    + " else "
    + _literal(COT_TASK)
    + " -%}"
    "{%- endif -%}"
    "{{- 'TASK: ' + state.task + '\\n' + 'USER: ' + question + '\\n' -}}{%- set state.task = none -%}"
    "{%- elif message['role'] == 'assistant' -%}{{- 'ASSISTANT: ' -}}"
    "{%- generation -%}{{- render(message['content']) + eos_token -}}{%- endgeneration -%}"
    "{%- else -%}"
    "{{- raise_exception('roles must be system (first), task, user or assistant, got ' + message['role']) -}}"
    "{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"
)


class ExpLLMProcessor(ProcessorMixin):
    r"""
    Constructs an ExpLLM processor from an [`ExpLLMImageProcessor`] and a tokenizer.

    Args:
        image_processor ([`ExpLLMImageProcessor`]): pads, resizes and normalises faces.
        tokenizer ([`PreTrainedTokenizerBase`]): the language model's tokenizer, with the image token added.
        chat_template (`str`, *optional*): defaults to the official ExpLLM format above.
        image_token (`str`, *optional*, defaults to `"<image>"`): placeholder for one image in the text.
        patch_size (`int`, *optional*, defaults to 14): the vision tower's patch size; an image becomes
            (height / patch_size) x (width / patch_size) image tokens.

    Conversations are lists of messages with roles `system` (optional, first), `task`, `user` and `assistant`; the
    template writes them in the official layout. The label and step-by-step questions are the official ones
    (`fer_messages`, `cot_messages`). A free question, e.g. through `pipeline("image-text-to-text")`, needs no TASK of
    its own: it is introduced by the analysis task ("Expression analysis involves providing a detailed analysis of
    the face."), the one under which the model learned to describe a face in words; a `{"role": "task"}` message
    just before it chooses another.
    """

    _auto_class = "AutoProcessor"

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        chat_template=None,
        image_token="<image>",
        patch_size=14,
        **kwargs,
    ):
        self.image_token = image_token
        self.patch_size = patch_size
        super().__init__(image_processor, tokenizer, chat_template=chat_template or DEFAULT_CHAT_TEMPLATE, **kwargs)
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        if self.image_token_id is None or self.image_token_id == tokenizer.unk_token_id:
            raise ValueError(f"the tokenizer has no {image_token!r} token; add it as a special token first")
        self.check_single_bos()

    def check_single_bos(self):
        """Raise if a rendered conversation would start with two <s>: one written by the chat template and one added
        by the tokenizer (the templates of release 0.1.0 wrote it). The model never saw that at training."""
        bos_id = self.tokenizer.bos_token_id
        if bos_id is None:
            return
        prompt = self.apply_chat_template(self.fer_messages(), add_generation_prompt=True)
        ids = self.tokenizer(prompt)["input_ids"]
        if ids[:2] == [bos_id, bos_id]:
            raise ValueError(
                f"the chat template writes {self.tokenizer.bos_token!r} and the tokenizer adds another one; use a "
                "template without it (the default ExpLLM template: pass chat_template=DEFAULT_CHAT_TEMPLATE)"
            )

    def replace_image_token(self, image_inputs, image_idx, **kwargs):
        height, width = image_inputs["pixel_values"][image_idx].shape[-2:]
        return self.image_token * ((height // self.patch_size) * (width // self.patch_size))

    def apply_chat_template(self, conversation, chat_template=None, **kwargs):
        # The template writes the image placeholder with the processor's own image token.
        kwargs.setdefault("image_token", self.image_token)
        return super().apply_chat_template(conversation, chat_template=chat_template, **kwargs)

    # ----------------------------------------------------------------------------------------------------------------
    # Conversations of the release: one FER round, or a CoT round followed by the label round (DESIGN section 6).

    def fer_messages(self, label=None):
        """The label question about one image, with the answer when `label` is given."""
        return fer_messages(label)

    def cot_messages(self, cot=None, label=None):
        """The step-by-step question; with `cot` its answer, and with `label` too, the label round after it."""
        return cot_messages(cot, label)

    def label_first_cot_messages(self, label, cot=None):
        """The official CoT evaluation: the label round answered with `label`, then the step-by-step question."""
        return label_first_cot_messages(label, cot)

    # ----------------------------------------------------------------------------------------------------------------
    # Inputs of `ExpLLMForConditionalGeneration.predict_expression`

    def label_token_ids(self, labels=EXPRESSION_LABELS):
        """Token ids of each label as the assistant's whole answer (label then end of turn), right-padded.

        They are what the chat template puts after the generation prompt, computed by tokenising the prompt with and
        without the answer, so that scoring a label and training on it see exactly the same tokens.
        """
        prompt = self.apply_chat_template(self.fer_messages(), add_generation_prompt=True)
        prompt_ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        candidates = []
        for label in labels:
            full = self.apply_chat_template(self.fer_messages(label))
            full_ids = self.tokenizer(full, add_special_tokens=False)["input_ids"]
            if full_ids[: len(prompt_ids)] != prompt_ids or len(full_ids) == len(prompt_ids):
                raise ValueError(
                    f"the tokenizer merges the answer {label!r} into the generation prompt; label scoring needs the "
                    "prompt to end on a token boundary"
                )
            candidates.append(full_ids[len(prompt_ids) :])
        longest = max(len(ids) for ids in candidates)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        candidate_ids = torch.full((len(candidates), longest), pad_id, dtype=torch.long)
        candidate_attention_mask = torch.zeros((len(candidates), longest), dtype=torch.long)
        for row, ids in enumerate(candidates):
            candidate_ids[row, : len(ids)] = torch.tensor(ids)
            candidate_attention_mask[row, : len(ids)] = 1
        return candidate_ids, candidate_attention_mask

    def expression_inputs(self, images, labels=EXPRESSION_LABELS):
        """Everything `model.predict_expression(**inputs)` needs to score `labels` for each image, in one batch."""
        labels = list(labels)
        unknown = [label for label in labels if label not in EXPRESSION_LABELS]
        if unknown or not labels:
            raise ValueError(f"labels must be a non-empty subset of {EXPRESSION_LABELS}, got unknown {unknown}")
        images = list(images) if isinstance(images, (list, tuple)) else [images]
        prompt = self.apply_chat_template(self.fer_messages(), add_generation_prompt=True)
        inputs = self(images=images, text=[prompt] * len(images), padding=True, return_tensors="pt")
        candidate_ids, candidate_attention_mask = self.label_token_ids(labels)
        # Label names pass through the model untouched, so its output says which probability is which label.
        return BatchFeature(
            {
                **inputs,
                "candidate_ids": candidate_ids,
                "candidate_attention_mask": candidate_attention_mask,
                "candidate_labels": labels,
            }
        )


__all__ = ["ExpLLMProcessor"]
