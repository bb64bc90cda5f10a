"""Memory and speed of the official checkpoint converter on a synthetic checkpoint of real-sized parts.

    python bench/convert_official.py [--vision-layers 24] [--text-layers 8] [--shard-mb 400]

Writes a random checkpoint in the official layout (`expllm_testing.official_checkpoint`): a full DINOv2 ViT-L/14
(1024 wide, 24 blocks, fp32, 518 px position embeddings) and a narrower Llama (1024 wide, bf16) so that it stays
above 1 GB without taking the disk of a 7B model, sharded like the Trainer. Then converts it in a fresh process per
LoRA mode and output dtype and prints, measured in that process: the peak resident memory over the process's own
baseline after its imports, as a ratio to the largest input shard (the converter's promise: below 2), and the
conversion's time and throughput.
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child(input_dir, output_dir, lora, dtype):
    """Runs in a fresh process: baseline after the imports, then the conversion, then the peak."""
    import torch  # noqa: F401  (the baseline counts the libraries, not the conversion)

    from modeling_expllm.convert_official_checkpoint import convert_official_checkpoint

    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    started = time.perf_counter()
    convert_official_checkpoint(input_dir, output_dir, lora=lora, dtype=dtype)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"baseline": baseline, "peak": peak, "seconds": seconds}))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vision-layers", type=int, default=24)
    parser.add_argument("--text-layers", type=int, default=8)
    parser.add_argument("--text-hidden", type=int, default=1024)
    parser.add_argument("--shard-mb", type=int, default=400)
    parser.add_argument("--child", nargs=4, metavar=("INPUT", "OUTPUT", "LORA", "DTYPE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, REPO_ROOT)  # run as a script: the project's packages sit beside bench/
    if args.child:
        return child(*args.child)

    import torch

    from expllm_testing.official_checkpoint import official_checkpoint_size, save_official_checkpoint

    work = tempfile.mkdtemp(prefix="convert-bench-")
    try:
        source = os.path.join(work, "official")
        started = time.perf_counter()
        save_official_checkpoint(
            source,
            vision_hidden_size=1024,
            vision_layers=args.vision_layers,
            text_hidden_size=args.text_hidden,
            text_layers=args.text_layers,
            text_heads=args.text_hidden // 128,
            text_dtype=torch.bfloat16,
            max_shard_bytes=args.shard_mb * 1_000_000,
        )
        shards = [name for name in os.listdir(source) if name.startswith("pytorch_model") and name.endswith(".bin")]
        largest = max(os.path.getsize(os.path.join(source, name)) for name in shards)
        total = official_checkpoint_size(source)
        print(
            f"synthetic official checkpoint: {total / 1e9:.2f} GB in {len(shards)} shard(s), largest "
            f"{largest / 1e6:.0f} MB (written in {time.perf_counter() - started:.1f} s)"
        )
        # bfloat16 is the default output; float32 writes as many bytes as it reads, the harder case for memory.
        for lora, dtype in (("merge", "bfloat16"), ("adapter", "bfloat16"), ("merge", "float32")):
            output = os.path.join(work, f"converted-{lora}-{dtype}")
            result = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--child", source, output, lora, dtype],
                capture_output=True,
                text=True,
                cwd=REPO_ROOT,
                check=True,
            )
            measured = json.loads(result.stdout.strip().splitlines()[-1])
            grown = measured["peak"] - measured["baseline"]
            written = sum(
                os.path.getsize(os.path.join(output, name))
                for name in os.listdir(output)
                if name.endswith(".safetensors")
            )
            print(
                f"--lora {lora} --dtype {dtype}: peak memory over the baseline {grown / 1e6:.0f} MB = "
                f"{grown / largest:.2f} x the largest input shard; {measured['seconds']:.1f} s, "
                f"{total / 1e6 / measured['seconds']:.0f} MB/s read, {written / 1e9:.2f} GB of safetensors written"
            )
            shutil.rmtree(output)
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
