"""The model card of an ExpLLM model repo: README.md with the Hub's YAML metadata and the sections people look for.

Every figure on the card comes from `evaluate/run_eval.py`'s `eval_results.json` files (their `model_index` entries
become the card's `model-index`, their metrics its evaluation table); the paper's figures stand beside them, marked as
the paper's. Nothing measured is typed in.

    python -m model_card.card --model out/tiny-stage2/merged --eval out/eval-trained-label-first/eval_results.json \
        --repo-id org/expllm-tiny --output out/tiny-stage2/merged/README.md
"""

import argparse
import json
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

from dataset_builders.exp_cot_dataset.configs import CITATIONS
from modeling_expllm.vocabulary import COT_SECTIONS, EXPRESSION_LABELS, fer_messages

TEMPLATE = Path(__file__).parent / "templates" / "model_card.md"
TESTED_TRANSFORMERS = "5.20 to 5.24"  # bench/compat.py's table in bench/RESULTS.md
# The paper's Table II (accuracy %, ExpLLM), by the dataset config and label count run_eval.py uses.
PAPER_ACCURACY = {("rafdb", 7): 91.03, ("affectnet", 7): 65.93, ("affectnet", 8): 62.86}
PAPER_EXP_COT_SCORE = 0.76  # Table III, GPT-4o judge, 100 RAF-DB test samples
# Licences by where the weights come from. Vicuna v1.5 is a Llama 2 fine-tune: its weights, and weights derived from
# them, are under the Llama 2 Community License (the Hub's `llama2` id).
LICENCES = {
    "llama2": (
        "The weights derive from Vicuna-7B v1.5 and so follow the Llama 2 Community License; DINOv2 is Apache-2.0; "
        "the release's code is Apache-2.0. RAF-DB and AffectNet, the training data, are for non-commercial research "
        "under the agreements their authors ask users to sign; the Exp-CoT annotations follow the same terms."
    ),
    "apache-2.0": (
        "Code and weights are Apache-2.0 (the weights were trained here from tiny randomly initialised towers on the "
        "release's synthetic faces; no third-party weights or photographs are in them)."
    ),
}


def eval_results_of(evaluations):
    """Every result of the evaluations' `model_index` entries as huggingface_hub EvalResults, each once (the label
    figures of a label-first and a CoT-first run of the same model are the same figures)."""
    from huggingface_hub.repocard_data import model_index_to_eval_results

    results, seen = [], set()
    for evaluation in evaluations:
        for result in model_index_to_eval_results(evaluation["model_index"])[1]:
            key = (result.task_type, result.dataset_type, result.dataset_config, result.dataset_split,
                   result.metric_name, result.metric_value)  # fmt: skip
            if key not in seen:
                seen.add(key)
                results.append(result)
    return results


def public_name(name_or_path):
    """A Hub id as it is; a local folder by its name only (a card never carries a path of the machine that made it)."""
    return Path(str(name_or_path)).name if Path(str(name_or_path)).exists() else str(name_or_path)


def evaluation_table(eval_results):
    """Markdown rows of the measured figures, with the paper's beside them where it reports that setting."""
    rows = [
        "| dataset | split | labels | accuracy (label probabilities) | accuracy (official protocol) | CoT order "
        "| Exp-CoT Score | the paper's accuracy | the paper's Exp-CoT Score |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for evaluation in eval_results:
        dataset, settings = evaluation["dataset"], evaluation["settings"]
        config, labels = dataset.get("config"), len(settings["labels"])
        official = evaluation.get("fer_official")
        cot = evaluation.get("exp_cot")
        paper = PAPER_ACCURACY.get((config, labels))
        cells = [
            public_name(dataset["name_or_path"]),
            dataset["split"],
            str(labels),
            f"{100 * evaluation['fer']['accuracy']:.2f}%",
            f"{100 * official['accuracy']:.2f}%" if official else "-",
            settings.get("cot_order") or "-",
            f"{cot['exp_cot_score']:.3f} ({cot['judge']})" if cot and cot.get("exp_cot_score") is not None else "-",
            f"{paper:.2f}%" if paper is not None else "-",
            f"{PAPER_EXP_COT_SCORE:.2f} (GPT-4o judge)" if paper is not None and config == "rafdb" else "-",
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def training_text(model_dir):
    """The training recipe from the folder's `expllm_training.yaml` (written by train_sft.py), when it has one."""
    import yaml

    settings_file = Path(model_dir) / "expllm_training.yaml"
    if not settings_file.is_file():
        parent = Path(model_dir).parent / "expllm_training.yaml"  # a merged folder sits inside the training output
        settings_file = parent if parent.is_file() else None
    if settings_file is None:
        return "This folder carries no training record (`expllm_training.yaml`)."
    settings = yaml.safe_load(settings_file.read_text(encoding="utf-8"))
    script, training, model = settings["script"], settings["training"], settings["model"]
    parts = [
        f"Stage {script['stage']} of `train_sft.py` on `{public_name(script.get('dataset_name'))}`"
        + (f" (config `{script['dataset_config']}`)" if script.get("dataset_config") else ""),
        f"{training.get('num_train_epochs')} epoch(s), learning rate {training.get('learning_rate')}, "
        f"{training.get('lr_scheduler_type')} schedule, batch {training.get('per_device_train_batch_size')} x "
        f"{training.get('gradient_accumulation_steps')} accumulation",
        f"FER samples {script.get('fer_repeats')} x and CoT samples {script.get('cot_repeats')} x an epoch, loss "
        f"averaged per {script.get('loss_average', 'token')}",
    ]
    if script.get("label_first_cot_repeats"):
        parts.append(
            f"each CoT also {script['label_first_cot_repeats']} x in the official evaluation's order (the label "
            "round first), which the official training does not show"
        )
    if model.get("use_peft"):
        parts.append(
            f"LoRA r={model.get('lora_r')}, alpha={model.get('lora_alpha')} on {model.get('lora_target_modules')}"
        )
    return "; ".join(parts) + "."


def write_model_card(
    model_dir,
    eval_result_files,
    output,
    repo_id,
    model_name=None,
    base_model=("facebook/dinov2-large", "lmsys/vicuna-7b-v1.5"),
    datasets=(),
    license="llama2",
    description="",
    space_id=None,
):
    """Write the card to `output` and return the parsed `huggingface_hub.ModelCard`."""
    from transformers import AutoProcessor

    if license not in LICENCES:
        raise ValueError(f"license must be one of {list(LICENCES)}, got {license!r}")
    eval_results = []
    for path in eval_result_files:
        with open(path, encoding="utf-8") as file:
            evaluation = json.load(file)
        if "model_index" not in evaluation or "fer" not in evaluation:
            raise ValueError(f"{path} is not an eval_results.json of evaluate/run_eval.py (no model_index or fer)")
        eval_results.append(evaluation)
    model_name = model_name or repo_id.split("/")[-1]
    processor = AutoProcessor.from_pretrained(model_dir, trust_remote_code=True)
    prompt = processor.apply_chat_template(fer_messages("Happiness"))
    card_data = ModelCardData(
        license=license,
        base_model=list(base_model) or None,
        datasets=list(datasets) or None,
        pipeline_tag="image-text-to-text",
        library_name="transformers",
        tags=["facial-expression-recognition", "chain-of-thought", "action-units", "llava", "custom_code"],
        model_name=model_name,
        eval_results=eval_results_of(eval_results) or None,
    )
    notes = (
        "Measured by `evaluate/run_eval.py` (label probabilities; `--protocol official` for the official scorer: "
        "greedy answer, exact label). The paper's figures are the paper's, for its own weights and data."
    )
    card = ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE),
        model_name=model_name,
        repo_id=repo_id,
        space_id=space_id,
        description=description,
        labels=EXPRESSION_LABELS,
        cot_sections=COT_SECTIONS,
        prompt_example=prompt.replace(
            processor.image_token, f"{processor.image_token} (x {model_image_tokens(model_dir)})"
        ),
        training=training_text(model_dir),
        evaluation_table=evaluation_table(eval_results) if eval_results else "No evaluation was run for this card.",
        evaluation_notes=notes,
        transformers_range=TESTED_TRANSFORMERS,
        licences=LICENCES[license],
        citation=CITATIONS["expllm"],
    )
    Path(output).write_text(str(card), encoding="utf-8")
    return ModelCard.load(output)


def model_image_tokens(model_dir):
    with open(Path(model_dir) / "config.json", encoding="utf-8") as file:
        return json.load(file).get("image_seq_length")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="the model folder")
    parser.add_argument("--eval", nargs="*", default=[], help="eval_results.json files of evaluate/run_eval.py")
    parser.add_argument("--repo-id", required=True, help="the Hub repo the card is for")
    parser.add_argument("--output", help="where to write (default: the model folder's README.md)")
    parser.add_argument("--license", choices=list(LICENCES), default="llama2")
    parser.add_argument("--base-model", nargs="+", default=["facebook/dinov2-large", "lmsys/vicuna-7b-v1.5"])
    parser.add_argument("--dataset", nargs="*", default=[], help="Hub ids of the training datasets")
    parser.add_argument("--space-id", help="the demo Space of this model, linked from the card")
    args = parser.parse_args(argv)
    output = args.output or str(Path(args.model) / "README.md")
    write_model_card(
        args.model, args.eval, output, args.repo_id, base_model=args.base_model, datasets=args.dataset,
        license=args.license, space_id=args.space_id,
    )  # fmt: skip
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
