"""Token-averaged against conversation-averaged loss in stage 2 of the demo's tiny model.

    make demo && python bench/loss_average.py [--out out]

Runs `train_sft.py` stage 2 twice from the demo's stage-1 model on the demo's synthetic dataset, with the tiny CPU
recipe and `--loss_average token` (TRL's default, the official training) or `conversation`, then scores both on the
400 held-out faces with the label probabilities (`predict_expression`) and with greedy answers judged exactly. In the
official conversation format a CoT answer is about a hundred times as many tokens as a label answer, and the two
averages give the labels very different weights.
"""

import argparse
import os
import subprocess
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def held_out_accuracy(model_folder, dataset_folder, count):
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from dataset_builders.exp_cot_dataset import load_exp_cot
    from modeling_expllm.vocabulary import EXPRESSION_LABELS

    model = AutoModelForImageTextToText.from_pretrained(model_folder, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(model_folder, trust_remote_code=True)
    test = load_exp_cot(dataset_folder, "synthetic")["test"].select(range(count))
    truth = [EXPRESSION_LABELS[label] for label in test["label"]]
    by_probability, by_answer = 0, 0
    prompt = processor.apply_chat_template(processor.fer_messages(), add_generation_prompt=True)
    with torch.inference_mode():
        for start in range(0, count, 16):
            images = list(test.select(range(start, min(start + 16, count)))["image"])
            labels = truth[start : start + len(images)]
            prediction = model.predict_expression(**processor.expression_inputs(images))
            best = [prediction.labels[i] for i in prediction.probabilities.argmax(-1).tolist()]
            by_probability += sum(b == t for b, t in zip(best, labels))
            inputs = processor(images=images, text=[prompt] * len(images), padding=True, return_tensors="pt")
            generated = model.generate(**inputs, max_new_tokens=8, do_sample=False)
            answers = processor.batch_decode(generated[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
            by_answer += sum(a.strip() == t for a, t in zip(answers, labels))
    return by_probability / count, by_answer / count


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="out", help="the demo's output folder")
    parser.add_argument("--test-faces", type=int, default=400)
    args = parser.parse_args()
    sys.path.insert(0, REPO_ROOT)
    stage1, dataset = os.path.join(args.out, "tiny-stage1"), os.path.join(args.out, "exp-cot")
    if not (os.path.isdir(stage1) and os.path.isdir(dataset)):
        raise SystemExit(f"{stage1} and {dataset} come from `make demo`: run it first")
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    for average in ("token", "conversation"):
        output = os.path.join(args.out, f"bench-loss-{average}")
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "train_sft.py", "--config", "configs/tiny_cpu.yaml", "--report_to", "none",
             "--disable_tqdm", "true", "--stage", "2", "--model_name_or_path", stage1, "--dataset_name", dataset,
             "--dataset_config", "synthetic", "--output_dir", output, "--merge_lora", "--loss_average", average],
            cwd=REPO_ROOT, env=environment, check=True, capture_output=True,
        )  # fmt: skip
        seconds = time.perf_counter() - started
        probability, answer = held_out_accuracy(os.path.join(output, "merged"), dataset, args.test_faces)
        print(
            f"--loss_average {average:<12}: held-out accuracy {probability:.1%} (label probabilities), "
            f"{answer:.1%} (greedy answer, exact label); stage 2 took {seconds:.0f} s"
        )


if __name__ == "__main__":
    main()
