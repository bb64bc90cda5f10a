"""How fast do stage-2 steps run, with this project's collator and with TRL's stock VLM recipe, in one run?

For one model config, random weights, LoRA r=8 on q/v of both towers plus the projector (the stage-2 recipe), it runs
`SFTTrainer` for a few steps twice on the same synthetic FER and CoT conversations (3:1):

  ours   ExpLLMCollator: the loss on assistant answers only, images and prompts masked (what train_sft.py uses);
  stock  TRL's DataCollatorForVisionLanguageModeling with its defaults (no custom settings): the loss on every token.

and prints, after the warm-up steps, samples/s, tokens/s (image tokens included), peak memory and, on a GPU, the model
FLOPs utilisation, with the ratio ours / stock. A step is timed from the end of the one before to its own end, so
that it includes the batch's loading and collation. Each run is a process of its own, with a freshly built model (no
trained projector or memory peak carries over), and the runs alternate ours, stock, stock, ours... (`--rounds`), so
that a slow start or a busy machine does not favour one side; the medians are compared.

    python bench/train_throughput.py                      # tiny towers, on this CPU
    python bench/train_throughput.py --size 7b --batch-size 8 --peak-tflops 989   # ViT-L/14 + Llama-7B, bf16, GPU

`--size 7b` is the paper's model shape (ExpLLMConfig's defaults: DINOv2 ViT-L/14 at 224 px, a Llama-2-7B-shaped LM)
with random weights, so it needs no download; the tokenizer is the tiny in-process one (vocabulary sizes differ, the
work per token does not). MFU counts 2N FLOPs per token forward, 2N backward through the frozen weights and
2N_trainable for the LoRA and projector gradients, N being the parameter count (attention's own FLOPs left out).
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import TrainerCallback
from trl import SFTConfig, SFTTrainer
from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

from dataset_builders.exp_cot.offline_writer import refine, write_description
from dataset_builders.exp_cot.synthetic_faces import generate_faces
from expllm_testing.tiny import save_tiny_backbones
from modeling_expllm.configuration_expllm import ExpLLMConfig
from modeling_expllm.modeling_expllm import ExpLLMForConditionalGeneration
from modeling_expllm.vocabulary import cot_messages, fer_messages
from training.collator import ExpLLMCollator


def build_model(size, folder, device, dtype):
    """(model, processor) of the asked size; the processor's image size matches the vision tower's."""
    image_size = 56 if size == "tiny" else 224
    backbones = save_tiny_backbones(folder, image_size=image_size, patch_size=14)
    model, processor = ExpLLMForConditionalGeneration.from_backbones(*backbones)
    if size == "7b":
        tokenizer = processor.tokenizer
        config = ExpLLMConfig(image_token_id=tokenizer.convert_tokens_to_ids("<image>"))
        config.text_config.pad_token_id = tokenizer.pad_token_id
        with torch.device(device):
            model = ExpLLMForConditionalGeneration(config).to(dtype)
    return model.to(device), processor


def conversations(count, image_size):
    """Synthetic faces with FER one-round and CoT two-round conversations, three FER to one CoT."""
    rows = []
    for index, face in enumerate(generate_faces(count, seed=5, size=image_size)):
        if index % 4 == 3:
            messages = cot_messages(refine(write_description(face.au), face.au, face.label), face.label)
        else:
            messages = fer_messages(face.label)
        rows.append({"images": [face.image], "messages": messages})
    return rows


class StepTimer(TrainerCallback):
    """The time each step ends, and the trainer's count of non-padding tokens seen (image tokens included)."""

    def __init__(self, device):
        self.device, self.ends, self.tokens = device, [], []

    def on_step_end(self, args, state, control, **kwargs):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.ends.append(time.perf_counter())
        self.tokens.append(state.num_input_tokens_seen)


def peak_memory_gib(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux; this run's process alone


def run(name, model, processor, rows, collator, args, device, output_dir):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    timer = StepTimer(device)
    training_args = SFTConfig(
        output_dir=os.path.join(output_dir, name),
        per_device_train_batch_size=args.batch_size,
        max_steps=args.warmup + args.steps,
        learning_rate=1e-4,
        logging_steps=10**6,
        save_strategy="no",
        report_to=[],
        bf16=device.type == "cuda",
        use_cpu=device.type == "cpu",
        gradient_checkpointing=args.gradient_checkpointing,
        remove_unused_columns=False,
        dataset_kwargs={"skip_prepare_dataset": True},
        dataloader_num_workers=args.workers,
        include_num_input_tokens_seen="non_padding",
        disable_tqdm=True,
        seed=0,
    )
    lora = LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.05, target_modules=["q_proj", "v_proj"],
        modules_to_save=["multi_modal_projector"],
    )  # fmt: skip
    trainer = SFTTrainer(
        model=model,
        args=training_args,
        train_dataset=Dataset.from_list(rows),
        processing_class=processor,
        data_collator=collator,
        peft_config=lora,
        callbacks=[timer],
    )
    trainer.train()
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in trainer.model.parameters())
    # Whole steps: from the end of the last warm-up step to the end of the last measured one, loading included.
    first, last = args.warmup - 1, args.warmup + args.steps - 1
    seconds = timer.ends[last] - timer.ends[first]
    tokens = timer.tokens[last] - timer.tokens[first]
    result = {
        "samples_per_s": args.steps * args.batch_size / seconds,
        "tokens_per_s": tokens / seconds,
        "peak_memory_gib": peak_memory_gib(device),
        "seconds_per_step": seconds / args.steps,
    }
    if device.type == "cuda":
        flops_per_token = 4 * total + 2 * trainable
        result["mfu"] = flops_per_token * result["tokens_per_s"] / (args.peak_tflops * 1e12)
    return result


def measure_one(args):
    """One run in this process: build the model, train with `args.collator`, print the figures as a JSON line."""
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if device.type == "cpu":
        torch.set_num_threads(1)  # at tiny sizes one thread beside the collation worker is fastest on 2 cores
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        model, processor = build_model(args.size, os.path.join(folder, "backbones"), device, dtype)
        image_size = processor.image_processor.size.height
        rows = conversations((args.warmup + args.steps) * args.batch_size, image_size)
        collator = {"ours": ExpLLMCollator, "stock": DataCollatorForVisionLanguageModeling}[args.collator](processor)
        parameters = sum(p.numel() for p in model.parameters())
        result = run(args.collator, model, processor, rows, collator, args, device, folder)
    print(json.dumps({"parameters": parameters, **result}))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=("tiny", "7b"), default="tiny")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20, help="measured steps")
    parser.add_argument("--warmup", type=int, default=5, help="steps before measuring")
    parser.add_argument("--workers", type=int, default=1, help="dataloader workers")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each collator, in the order ABBA ABBA...")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="the GPU's dense bf16 peak (H100 SXM: 989)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--collator", choices=("ours", "stock"), help=argparse.SUPPRESS)  # one run, in a child process
    args = parser.parse_args()
    if args.warmup < 1 or args.steps < 1 or args.rounds < 1:
        parser.error("--warmup, --steps and --rounds must be at least 1")
    if args.collator is not None:
        measure_one(args)
        return

    order = [
        name for round_ in range(args.rounds) for name in (("ours", "stock") if round_ % 2 == 0 else ("stock", "ours"))
    ]
    options = [f"--{key.replace('_', '-')}={value}" for key, value in vars(args).items()
               if key not in ("collator", "gradient_checkpointing", "rounds")]  # fmt: skip
    options += ["--gradient-checkpointing"] if args.gradient_checkpointing else []
    print(f"{args.size} on {args.device}, batch {args.batch_size}, {args.steps} steps measured after {args.warmup}; "
          f"runs: {' '.join(order)}")  # fmt: skip
    runs = {"ours": [], "stock": []}
    for name in order:
        child = subprocess.run(
            [sys.executable, __file__, *options, f"--collator={name}"], capture_output=True, text=True
        )
        if child.returncode != 0:  # the stock recipe may not run on this model at all: say why, go on
            print(f"{name}: failed:\n{child.stderr[-2000:]}")
            continue
        result = json.loads(child.stdout.strip().splitlines()[-1])
        runs[name].append(result)
        print(f"{name}: " + ", ".join(f"{key} {value:.4g}" for key, value in result.items()))
    medians = {
        name: {key: statistics.median(result[key] for result in results) for key in results[0]}
        for name, results in runs.items()
        if results
    }
    for name, median in medians.items():
        print(
            f"{name} (median of {len(runs[name])}): "
            + ", ".join(f"{key} {value:.4g}" for key, value in median.items())
        )
    if len(medians) == 2:
        ratios = {key: medians["ours"][key] / medians["stock"][key] for key in medians["ours"] if key != "parameters"}
        print("ours / stock: " + ", ".join(f"{key} {value:.2f}x" for key, value in ratios.items()))


if __name__ == "__main__":
    main()
