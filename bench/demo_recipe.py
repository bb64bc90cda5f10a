"""The demo's training recipe, one variant at a time: what made the tiny model explain (issue 15).

    make demo && OMP_NUM_THREADS=1 python bench/demo_recipe.py --out out --variant before --variant demo

Each variant trains a fresh tiny ExpLLM exactly as `demo.py`'s step 5 does (new random towers, stage 0, train_sft.py
stages 1 and 2) on the demo's engine dataset in `--out` (its `exp-cot` folder: 1,400 training faces, 400 held-out
faces from another engine run), then scores it with `evaluate/run_eval.py` in both CoT orders, as the demo does. One
table row per variant: accuracy (label probabilities), the official protocol's, and per CoT order the Exp-CoT Score
(lexicon judge), the share of CoTs with all three sections, no AU index and at most 130 words, and the mean Jaccard
index of the Key Observations' action units against the reference's. The variants run one after another in one process
per step, one torch thread each; timings move with whatever else the machine runs.
"""

import argparse
import json
import os
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

RANDOM_ORDER = ["--train_sampling_strategy", "random"]
# The paper's LoRA targets, which configs/tiny_cpu.yaml had before it put LoRA on every linear layer.
QV = ["--lora_target_modules", "q_proj", "v_proj"]
ALL_LINEAR = ["--lora_target_modules", "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# name: (language-model sizes over demo.TINY, stage-0 steps, label-first transcripts in stage 0, stage-2 arguments).
# "before" is the recipe before issue 15; "demo" is configs/tiny_cpu.yaml and demo.py as they are now.
VARIANTS = {
    "before": ({}, 120, False, [*QV, "--label_first_cot_repeats", "0", "--cot_repeats", "1", *RANDOM_ORDER]),
    "larger-lm": (
        {"text_hidden_size": 128, "text_layers": 4},
        600,
        True,
        [*QV, "--label_first_cot_repeats", "0", "--cot_repeats", "1", *RANDOM_ORDER],
    ),
    "both-orders": ({}, 600, True, [*QV, "--label_first_cot_repeats", "1", "--cot_repeats", "1", *RANDOM_ORDER]),
    "both-orders-grouped": ({}, 600, True, [*QV, "--label_first_cot_repeats", "1", "--cot_repeats", "1"]),
    "qv-cot2": ({}, 600, True, [*QV, "--cot_repeats", "2"]),
    "all-linear-cot2": ({}, 600, True, [*ALL_LINEAR, "--cot_repeats", "2"]),
    "all-linear-r16": ({}, 600, True, [*ALL_LINEAR, "--cot_repeats", "2", "--lora_r", "16", "--lora_alpha", "32"]),
    "all-linear-r32": ({}, 600, True, [*ALL_LINEAR, "--cot_repeats", "2", "--lora_r", "32", "--lora_alpha", "64"]),
    "full-stage2": ({}, 600, True, ["--use_peft", "false", "--learning_rate", "1e-3", "--cot_repeats", "2"]),
    "qv-cot3": ({}, 600, True, [*QV, "--cot_repeats", "3"]),
    "all-linear-cot4": ({}, 600, True, [*ALL_LINEAR, "--cot_repeats", "4"]),
    "demo": ({}, None, True, []),
}


def run_variant(name, out, records, dataset_folder):
    import demo
    from expllm_testing.tiny import save_tiny_backbones

    sizes, steps, label_first, stage2_args = VARIANTS[name]
    folder = os.path.join(out, "bench-recipe", name)
    started = time.time()
    cots = [cot["text"] for cot in records["cot"]]
    backbones = save_tiny_backbones(os.path.join(folder, "tiny_backbones"), extra_texts=cots, **{**demo.TINY, **sizes})
    model, training_seconds = demo.train(folder, backbones, records, dataset_folder, steps, label_first, stage2_args)
    row = {"variant": name, "training_s": round(training_seconds)}
    for order in ("label-first", "cot-first"):
        results, _ = demo.evaluate_model(model, dataset_folder, folder, "trained", order)
        cot = results["exp_cot"]
        row["accuracy"] = results["fer"]["accuracy"]
        row.setdefault("official", results.get("fer_official", {}).get("accuracy"))
        row[order] = {
            "exp_cot": round(cot["exp_cot_score"], 3),
            "valid_form": cot["form"]["valid_form"],
            "with_all_sections": cot["form"]["with_all_sections"],
            "au_jaccard": round(cot["form"]["au_jaccard"], 3),
        }
    row["seconds"] = round(time.time() - started)
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="out", help="a demo output folder (its exp-cot dataset is used)")
    parser.add_argument("--variant", action="append", choices=sorted(VARIANTS), help="default: all, in order")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from dataset_builders.exp_cot_dataset import load_exp_cot

    dataset_folder = os.path.join(args.out, "exp-cot")
    records = load_exp_cot(dataset_folder, "synthetic")["train"]
    rows = [run_variant(name, args.out, records, dataset_folder) for name in args.variant or list(VARIANTS)]
    print(
        "\n| variant | accuracy | official | Exp-CoT label-first / CoT-first | valid form | AU Jaccard | training s |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        first, second = row["label-first"], row["cot-first"]
        print(
            f"| {row['variant']} | {row['accuracy']:.3f} | {row['official']:.3f} | {first['exp_cot']:.3f} / "
            f"{second['exp_cot']:.3f} | {first['valid_form']:.1%} / {second['valid_form']:.1%} | "
            f"{first['au_jaccard']:.3f} / {second['au_jaccard']:.3f} | {row['training_s']} |"
        )
    with open(os.path.join(args.out, "bench-recipe", "results.json"), "w") as file:
        json.dump(rows, file, indent=1)


if __name__ == "__main__":
    main()
