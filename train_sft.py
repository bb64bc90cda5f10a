"""
Train ExpLLM with TRL's SFTTrainer (DESIGN section 6), on one GPU, many GPUs or nodes through DeepSpeed ZeRO, or on a
CPU with the tiny config.

Stage 1, the projector alone on image-caption pairs (LLaVA's pretrain layout: chat.json + images):

    accelerate launch --config_file configs/accelerate/zero2.yaml train_sft.py --config configs/stage1_cc3m.yaml

Stage 2, LoRA on the query and value projections of both towers plus the whole projector, on FER and CoT
conversations listed as the official code lists them, every record's FER sample 3 times and every CoT once (0.75:0.25
when every record has a CoT), from the Exp-CoT dataset's record config or its `conversations` view:

    accelerate launch --config_file configs/accelerate/zero2.yaml train_sft.py --config configs/stage2_rafdb.yaml
    accelerate launch --config_file configs/accelerate/zero2.yaml train_sft.py --config configs/stage2_affectnet.yaml

Add `--eval_strategy steps --eval_steps N` to also report the loss on `--dataset_test_split` (default "test").

A tiny model on this CPU (what `make demo` runs after giving the tiny towers a head start, see demo.py), stage 1
then stage 2, one torch thread per process. Unlike the official training, configs/tiny_cpu.yaml also lists every CoT
sample label-first, the order the official evaluation asks in (`--label_first_cot_repeats 1`; the paper-size configs
keep 0): a 7B language model answers the CoT question after a label round it never saw in training, the tiny one
does not. It also lists each CoT three times CoT-first, puts LoRA on every linear layer (the paper's is on q/v only),
and batches samples of similar lengths (`--train_sampling_strategy group_by_length`).

    OMP_NUM_THREADS=1 python train_sft.py --config configs/tiny_cpu.yaml --stage 1 --vision_model V --text_model T \
        --dataset_name out/pretrain/chat.json --image_folder out/pretrain --output_dir out/tiny-stage1
    OMP_NUM_THREADS=1 python train_sft.py --config configs/tiny_cpu.yaml --stage 2 \
        --model_name_or_path out/tiny-stage1 --dataset_name out/exp-cot --dataset_config synthetic \
        --output_dir out/tiny-stage2 --merge_lora

Any field of the three argument groups (TRL's ScriptArguments with the fields below, SFTConfig, ModelConfig) can be set
in the YAML file or on the command line.
"""

import json
import os
from dataclasses import asdict, dataclass, field

import trl
import yaml
from transformers import set_seed
from trl import ModelConfig, SFTConfig, TrlParser, get_peft_config

from training.augmentation import FaceAugmentation
from training.collator import ExpLLMCollator
from training.samples import load_training_samples
from training.setup import (
    AugmentationEpoch,
    check_distributed_setup,
    count_parameters,
    load_model,
    merge_adapter,
    train_projector_only,
)
from training.trainer import ExpLLMSFTTrainer


@dataclass
class ScriptArguments(trl.ScriptArguments):
    """TRL's script arguments (dataset_name, dataset_config, dataset_train_split, dataset_test_split) and ExpLLM's."""

    stage: int = field(default=2, metadata={"help": "1: projector only on captions; 2: LoRA + projector on FER/CoT."})
    vision_model: str | None = field(default=None, metadata={"help": "DINOv2 Hub id or folder (with text_model)."})
    text_model: str | None = field(default=None, metadata={"help": "Causal LM Hub id or folder (with vision_model)."})
    image_folder: str | None = field(default=None, metadata={"help": "Images of a LLaVA chat.json (stage 1)."})
    caption_column: str = field(default="caption", metadata={"help": "Caption column of a datasets caption set."})
    rafdb_root: str | None = field(default=None, metadata={"help": "Your RAF-DB folder (annotation-only rows)."})
    affectnet_root: str | None = field(default=None, metadata={"help": "Your AffectNet folder (annotation-only)."})
    fer_repeats: int = field(default=3, metadata={"help": "Times each record's FER sample is in an epoch (paper: 3)."})
    cot_repeats: int = field(default=1, metadata={"help": "Times each CoT sample is in an epoch (paper: 1)."})
    label_first_cot_repeats: int = field(
        default=0,
        metadata={"help": "Times each CoT sample is also in an epoch label round first, the official evaluation's "
                  "order (official training: 0, CoT-first only)."},
    )  # fmt: skip
    loss_average: str = field(
        default="token",
        metadata={
            "help": "token: every answer token weighs the same (TRL's, the official); conversation: every sample."
        },
    )
    augment: bool = field(default=True, metadata={"help": "Official augmentations on stage-2 training images."})
    overlong: str = field(default="error", metadata={"help": "Sequences over max_length: 'error' or 'drop'."})
    check_images: bool = field(default=True, metadata={"help": "Open every image before training."})
    merge_lora: bool = field(default=False, metadata={"help": "At the end, also save a merged remote-code model."})
    max_train_samples: int | None = field(
        default=None,
        metadata={"help": "Use only the first N records (images) of the dataset, with all their samples."},
    )


def main(script_args, training_args, model_args):
    # ----------------------------------------------------------------------------------------------------------------
    # Arguments, refused before anything loads when they cannot work
    check_distributed_setup(training_args)
    if script_args.stage not in (1, 2):
        raise ValueError(f"--stage must be 1 or 2, got {script_args.stage}")
    if script_args.dataset_streaming:
        raise ValueError("--dataset_streaming is not supported: the epoch listing mixes samples across the dataset")
    # The collator builds every batch from the raw rows, so the trainer must neither prepare nor prune them.
    training_args.remove_unused_columns = False
    training_args.dataset_kwargs = {"skip_prepare_dataset": True}
    if "tensorboard" in (training_args.report_to or []):
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            print("tensorboard is not installed: not logging to it (pip install tensorboard)")
            training_args.report_to = [name for name in training_args.report_to if name != "tensorboard"]

    # ----------------------------------------------------------------------------------------------------------------
    # Model, processor and data. The data is read on each machine's main process first: it rebuilds the `datasets`
    # cache of a local folder, and the other processes then read that cache instead of rebuilding it at the same time.
    # Seeded before the model is built, as transformers' example scripts do: stage 1's fresh parts (the projector,
    # the `<image>` token's rows) then start the same way on every run of the same --seed.
    set_seed(training_args.seed)
    model, processor, base = load_model(script_args, model_args, training_args.output_dir)
    with training_args.main_process_first(desc="reading the training data"):
        fresh = training_args.local_process_index == 0

        # Length-grouped batches pad a label answer's sample to another short one, not to a CoT's length.
        grouped = training_args.train_sampling_strategy == "group_by_length"

        def samples(split):
            return load_training_samples(script_args, split, processor, training_args.max_length, fresh, grouped)

        train_dataset = samples(script_args.dataset_train_split)
        eval_dataset = samples(script_args.dataset_test_split) if training_args.eval_strategy != "no" else None
        if training_args.world_size > 1:
            how = "rebuilt the cache" if fresh else "read the cache the main process built"
            print(f"process {training_args.process_index}: training data ready ({how})", flush=True)

    # ----------------------------------------------------------------------------------------------------------------
    # Training
    peft_config = None
    if script_args.stage == 1:
        train_projector_only(model)
    else:
        peft_config = get_peft_config(model_args)
        if peft_config is None:
            print("stage 2 without LoRA (use_peft false): every parameter trains")
    augmentation = FaceAugmentation() if script_args.stage == 2 and script_args.augment else None
    collator = ExpLLMCollator(processor, training_args.max_length, augmentation, seed=training_args.seed)
    trainer = ExpLLMSFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=processor,
        data_collator=collator,
        peft_config=peft_config,
        callbacks=[AugmentationEpoch(collator)],
        loss_average=script_args.loss_average,
    )
    if trainer.is_deepspeed_enabled:
        stage, processes = trainer.accelerator.state.deepspeed_plugin.zero_stage, trainer.accelerator.num_processes
        print(f"DeepSpeed ZeRO stage {stage} on {processes} process(es)")
    trainable, total = count_parameters(trainer.model)
    print(
        f"stage {script_args.stage}: {trainable:,} trainable parameters of {total:,} ({100 * trainable / total:.2f}%)"
    )
    result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)

    # ----------------------------------------------------------------------------------------------------------------
    # Saving: the adapter (or model), the processor, the settings, and with --merge_lora a merged remote-code folder
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
