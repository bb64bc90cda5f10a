"""The parts of `train_sft.py` that are ExpLLM's own: refusing a DeepSpeed setup the machine cannot run, building or
loading the model, the stage-1 freeze, the epoch callback of the augmentations, and merging the LoRA adapter."""

import os

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, TrainerCallback

from modeling_expllm.modeling_expllm import ExpLLMForConditionalGeneration


def check_distributed_setup(training_args):
    """Refuse, before loading anything, a DeepSpeed setup this machine cannot run."""
    plugin = getattr(training_args, "deepspeed_plugin", None)
    if plugin is None:
        return
    try:
        import deepspeed  # noqa: F401
    except ImportError as error:
        raise RuntimeError(
            "a DeepSpeed config was given but deepspeed is not installed: pip install expllm[deepspeed]"
        ) from error
    if not torch.cuda.is_available():
        if training_args.fp16:
            raise RuntimeError("DeepSpeed on CPU cannot train in fp16; use bf16 or fp32 (drop --fp16)")
        if plugin.zero_stage == 3:
            raise RuntimeError(
                "DeepSpeed ZeRO-3 needs GPUs; on a CPU use configs/accelerate/zero2.yaml or no DeepSpeed"
            )
        if torch.distributed.is_available() and not torch.distributed.is_gloo_available():
            raise RuntimeError("DeepSpeed on CPU needs torch.distributed's gloo backend, which this torch lacks")


def load_model(script_args, model_args, output_dir):
    """(model, processor, base folder): built from two towers, or loaded from an ExpLLM folder (e.g. stage 1's)."""
    dtype = getattr(torch, model_args.dtype) if model_args.dtype not in (None, "auto") else None
    if script_args.vision_model or script_args.text_model:
        if not (script_args.vision_model and script_args.text_model) or model_args.model_name_or_path:
            raise ValueError("give both --vision_model and --text_model, or --model_name_or_path, not a mix")
        model, processor = ExpLLMForConditionalGeneration.from_backbones(
            script_args.vision_model, script_args.text_model, dtype=dtype
        )
        base = os.path.join(output_dir, "base_model")  # kept so that an adapter can be merged into it later
        if int(os.environ.get("RANK", "0")) == 0:
            model.save_pretrained(base)
            processor.save_pretrained(base)
        return model, processor, base
    if not model_args.model_name_or_path:
        raise ValueError("give --model_name_or_path (an ExpLLM folder or Hub id) or --vision_model and --text_model")
    source = model_args.model_name_or_path
    model = AutoModelForImageTextToText.from_pretrained(
        source, dtype=dtype, attn_implementation=model_args.attn_implementation, trust_remote_code=True
    )
    processor = AutoProcessor.from_pretrained(source, trust_remote_code=True)
    return model, processor, source


def train_projector_only(model):
    """Stage 1: every weight frozen but the projector's."""
    for name, parameter in model.named_parameters():
        parameter.requires_grad = name.startswith("model.multi_modal_projector.")


def count_parameters(model):
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


class AugmentationEpoch(TrainerCallback):
    """Tells the collator the epoch, which seeds the augmentations (a resumed run redraws the same ones)."""

    def __init__(self, collator):
        self.collator = collator

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.collator.epoch = int(state.epoch or 0)


def merge_adapter(base, adapter_dir, merged_dir, dtype=None):
    """Merge the saved LoRA adapter (and projector) into the base model and save a complete remote-code folder.

    It reads the adapter back from disk, where the trainer has already gathered ZeRO-3 shards, so it works the same
    after any DeepSpeed stage.
    """
    from peft import PeftModel

    model = AutoModelForImageTextToText.from_pretrained(base, dtype=dtype, trust_remote_code=True)
    merged = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    merged.save_pretrained(merged_dir)
    AutoProcessor.from_pretrained(adapter_dir, trust_remote_code=True).save_pretrained(merged_dir)
    return merged_dir
