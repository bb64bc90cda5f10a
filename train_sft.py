"""
Train ExpLLM with TRL's SFTTrainer (DESIGN section 6), on one GPU, many GPUs or nodes through DeepSpeed ZeRO, or on a
CPU with the tiny config.

Stage 1, the projector alone on image-caption pairs (LLaVA's pretrain layout: chat.json + images):

    accelerate launch --config_file configs/accelerate/zero2.yaml train_sft.py --config configs/stage1_cc3m.yaml

Stage 2, LoRA on the query and value projections of both towers plus the whole projector, on FER and CoT
conversations mixed 0.75:0.25 (the Exp-CoT dataset's record config or its `conversations` view):

    accelerate launch --config_file configs/accelerate/zero2.yaml train_sft.py --config configs/stage2_rafdb.yaml
    accelerate launch --config_file configs/accelerate/zero2.yaml train_sft.py --config configs/stage2_affectnet.yaml

A tiny model on this CPU (what `make demo` runs after giving the tiny towers a head start, see demo.py), stage 1
then stage 2, one torch thread per process:

    OMP_NUM_THREADS=1 python train_sft.py --config configs/tiny_cpu.yaml --stage 1 --vision_model V --text_model T \
        --dataset_name out/pretrain/chat.json --image_folder out/pretrain --output_dir out/tiny-stage1
    OMP_NUM_THREADS=1 python train_sft.py --config configs/tiny_cpu.yaml --stage 2 \
        --model_name_or_path out/tiny-stage1 --dataset_name out/exp-cot --dataset_config synthetic \
        --output_dir out/tiny-stage2 --merge_lora

Any field of the three argument groups below can be set in the YAML file or on the command line.
"""

import json
import os
from dataclasses import asdict, dataclass, field

import torch
import yaml
from transformers import AutoModelForImageTextToText, AutoProcessor, TrainerCallback
from trl import ModelConfig, SFTConfig, SFTTrainer, TrlParser, get_peft_config

from dataset_builders.exp_cot_dataset import load_exp_cot, with_local_images
from modeling_expllm.modeling_expllm import ExpLLMForConditionalGeneration
from training.data import (
    ExpLLMCollator,
    FaceAugmentation,
    caption_source,
    check_images,
    check_lengths,
    expression_source,
    llava_pretrain_source,
    mix_fer_and_cot,
    training_dataset,
)


@dataclass
class ScriptArguments:
    stage: int = field(default=2, metadata={"help": "1: projector only on captions; 2: LoRA + projector on FER/CoT."})
    vision_model: str | None = field(default=None, metadata={"help": "DINOv2 Hub id or folder (with text_model)."})
    text_model: str | None = field(default=None, metadata={"help": "Causal LM Hub id or folder (with vision_model)."})
    dataset_name: str = field(default=None, metadata={"help": "Dataset folder or Hub id, or a LLaVA chat.json."})
    dataset_config: str | None = field(default=None, metadata={"help": "e.g. rafdb, affectnet, all, conversations."})
    dataset_train_split: str = field(default="train")
    image_folder: str | None = field(default=None, metadata={"help": "Images of a LLaVA chat.json (stage 1)."})
    caption_column: str = field(default="caption", metadata={"help": "Caption column of a datasets caption set."})
    rafdb_root: str | None = field(default=None, metadata={"help": "Your RAF-DB folder (annotation-only rows)."})
    affectnet_root: str | None = field(default=None, metadata={"help": "Your AffectNet folder (annotation-only)."})
    cot_ratio: float = field(default=0.25, metadata={"help": "Share of CoT samples in the epoch (paper: 0.25)."})
    augment: bool = field(default=True, metadata={"help": "Official augmentations on stage-2 training images."})
    overlong: str = field(default="error", metadata={"help": "Sequences over max_length: 'error' or 'drop'."})
    check_images: bool = field(default=True, metadata={"help": "Open every image before training."})
    merge_lora: bool = field(default=False, metadata={"help": "At the end, also save a merged remote-code model."})
    max_train_samples: int | None = field(
        default=None,
        metadata={"help": "Use only the first N records (images) of the dataset, with all their samples."},
    )


class AugmentationEpoch(TrainerCallback):
    """Tells the collator the epoch, which seeds the augmentations (a resumed run redraws the same ones)."""

    def __init__(self, collator):
        self.collator = collator

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.collator.epoch = int(state.epoch or 0)


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


def load_training_source(script_args):
    """The rows and the listing of samples of one epoch, as `datasets.Dataset`s read lazily."""
    if script_args.dataset_name is None:
        raise ValueError("give --dataset_name")
    if script_args.dataset_name.endswith(".json"):
        folder = script_args.image_folder or os.path.dirname(script_args.dataset_name)
        source, entries = llava_pretrain_source(script_args.dataset_name, folder)
    else:
        dataset = load_exp_cot(
            script_args.dataset_name, script_args.dataset_config, split=script_args.dataset_train_split
        )
        if script_args.rafdb_root or script_args.affectnet_root:
            # The published RAF-DB / AffectNet rows carry no images (they may not be redistributed): join your copies.
            dataset = with_local_images(dataset, rafdb=script_args.rafdb_root, affectnet=script_args.affectnet_root)
        if script_args.stage == 1:
            source, entries = caption_source(dataset, caption_column=script_args.caption_column)
        else:
            source, entries = expression_source(dataset)
    if script_args.max_train_samples is not None:
        # Records, not listing entries: cutting the mixed listing would keep FER samples and drop every CoT one.
        entries = [entry for entry in entries if entry[0] < script_args.max_train_samples]
    if script_args.stage == 2:
        entries = mix_fer_and_cot(entries, script_args.cot_ratio)
    return training_dataset(source, entries)


def count_parameters(model):
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


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


def main(script_args, training_args, model_args):
    check_distributed_setup(training_args)
    if script_args.stage not in (1, 2):
        raise ValueError(f"--stage must be 1 or 2, got {script_args.stage}")
    # The collator builds every batch from the raw rows, so the trainer must neither prepare nor prune them.
    training_args.remove_unused_columns = False
    training_args.dataset_kwargs = {"skip_prepare_dataset": True}
    if "tensorboard" in (training_args.report_to or []):
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            print("tensorboard is not installed: not logging to it (pip install tensorboard)")
            training_args.report_to = [name for name in training_args.report_to if name != "tensorboard"]

    model, processor, base = load_model(script_args, model_args, training_args.output_dir)
    train_dataset = load_training_source(script_args)
    if script_args.check_images:
        check_images(train_dataset, processor)
    train_dataset = check_lengths(train_dataset, processor, training_args.max_length, script_args.overlong)

    peft_config = None
    if script_args.stage == 1:
        for name, parameter in model.named_parameters():
            parameter.requires_grad = name.startswith("model.multi_modal_projector.")
    else:
        peft_config = get_peft_config(model_args)
        if peft_config is None:
            print("stage 2 without LoRA (use_peft false): every parameter trains")

    augmentation = FaceAugmentation() if script_args.stage == 2 and script_args.augment else None
    collator = ExpLLMCollator(processor, training_args.max_length, augmentation, seed=training_args.seed)
    trainer = SFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        processing_class=processor,
        data_collator=collator,
        peft_config=peft_config,
        callbacks=[AugmentationEpoch(collator)],
    )
    if trainer.is_deepspeed_enabled:
        stage, processes = trainer.accelerator.state.deepspeed_plugin.zero_stage, trainer.accelerator.num_processes
        print(f"DeepSpeed ZeRO stage {stage} on {processes} process(es)")
    trainable, total = count_parameters(trainer.model)
    print(
        f"stage {script_args.stage}: {trainable:,} trainable parameters of {total:,} ({100 * trainable / total:.2f}%)"
    )

    result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()
    if trainer.accelerator.is_main_process:
        processor.save_pretrained(training_args.output_dir)
        settings = {"script": asdict(script_args), "model": asdict(model_args), "training": training_args.to_dict()}
        with open(os.path.join(training_args.output_dir, "expllm_training.yaml"), "w") as file:
            yaml.safe_dump(json.loads(json.dumps(settings, default=str)), file, sort_keys=False)
        if script_args.merge_lora and peft_config is not None:
            merged = merge_adapter(base, training_args.output_dir, os.path.join(training_args.output_dir, "merged"))
            print(f"merged model saved to {merged}")
    trainer.accelerator.wait_for_everyone()


if __name__ == "__main__":
    parser = TrlParser((ScriptArguments, SFTConfig, ModelConfig))
    main(*parser.parse_args_and_config())
