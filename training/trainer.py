"""TRL's SFTTrainer with one ExpLLM option: how the loss averages over the supervised tokens.

TRL averages over every answer token of the batch. A CoT answer has about 200 tokens and a label answer 2 or 3, so with
the paper's 3:1 listing of FER and CoT samples nearly all of the gradient comes from the CoTs, and a small model
learns to write them long before it learns to read the label off the image (on the demo's tiny model: 21% held-out
accuracy after a stage 2 that reaches 98% on FER samples alone; bench/RESULTS.md). `loss_average="conversation"`
averages each conversation's answer tokens first and then the conversations, so that every sample of the listing
weighs the same, as the listing's ratio intends.
"""

from trl import SFTTrainer

LOSS_AVERAGES = ("token", "conversation")


class ExpLLMSFTTrainer(SFTTrainer):
    def __init__(self, *args, loss_average="token", **kwargs):
        if loss_average not in LOSS_AVERAGES:
            raise ValueError(f"loss_average must be one of {LOSS_AVERAGES}, got {loss_average!r}")
        super().__init__(*args, **kwargs)
        if loss_average == "conversation" and (self.args.label_smoothing_factor or self.args.loss_type != "nll"):
            raise ValueError("loss_average 'conversation' works with the plain nll loss only (no label smoothing)")
        self.loss_average = loss_average

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.loss_average == "token":
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        # TRL's fused LM head gives each next-token target's log-probability (zero where the label is -100) without
        # building the logits. The loss is a micro-batch mean, as TRL's own without `num_items_in_batch`: the trainer
        # then divides it by the accumulation steps and DDP averages it across processes, as for the token average.
        # (TRL's entropy and token-accuracy logs come from its own loss path and are not written in this mode.)
        outputs = model(**inputs, use_cache=False, fused_lm_head=True)
        answer_tokens = outputs.label_mask.sum(-1)
        per_conversation = -outputs.log_probs.sum(-1) / answer_tokens.clamp(min=1)
        has_answer = answer_tokens > 0
        loss = per_conversation[has_answer].mean() if has_answer.any() else outputs.log_probs.sum() * 0.0
        return (loss, outputs) if return_outputs else loss
