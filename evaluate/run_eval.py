"""Evaluate an ExpLLM model on a facial-expression dataset: FER accuracy and, with --cot, the Exp-CoT Score.

    python evaluate/run_eval.py --model out/expllm --dataset out/expllm-data --config rafdb --split test \
        --labels 7 --batch-size 16 --cot --output-dir out/eval

The model is a saved folder or a Hub id (loaded with the AutoClasses and trust_remote_code); the dataset a folder or
Hub id with an `image` column, a `label` column (ClassLabel, names or ids) and, for --cot, a `cot` column (a struct
with the full text in `text`, or a string). FER predictions come from `model.predict_expression` (the argmax of the
label probabilities, --fer-mode probabilities, the default) or from greedy generation of the answer to the label
question (--fer-mode generate), which the official protocol scores strictly: the answer must be exactly a label name.
With --cot the model also answers the step-by-step question in the same conversation, after its label answer
(label-first, the official order) or before it (--cot-order cot-first), and the CoTs are graded against the dataset's
reference CoTs by `evaluate/exp_cot_score` (lexicon judge by default, --judge openai for the paper's LLM judge).
Their form is checked too (`exp_cot.form`): the share with all three sections, without an AU index ("AU 12"), within
130 words, and the mean Jaccard index between the action units the generated and the reference Key Observations
describe (read by the project's CoT parser, `find_au_mentions`).

--protocol official adds the official scorer beside the release's figures: greedy generation of the single label
round, at most 100 new tokens, an answer counts only if it is exactly the label after stripping, and CoTs asked
label-first. This is how the paper's table was measured (`fer_official` in eval_results.json).

Written to --output-dir: eval_results.json (metrics, per-sample predictions, the model's and the data's revisions,
the judge), confusion_matrix.png and model_index.yaml (the `model-index` entry of the model card).

This is a script, not a module: `evaluate/` must not be a package (it would shadow the `evaluate` library), so there
is no console entry point; run it with `python evaluate/run_eval.py`.
"""

import argparse
import hashlib
import json
import os
import subprocess
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from dataset_builders.exp_cot.cot_text import AU_NUMBER, key_observation_units, split_cot
from modeling_expllm.convert_official_checkpoint import OFFICIAL_MAX_NEW_TOKENS
from modeling_expllm.vocabulary import COT_MAX_WORDS

METRICS_DIR = Path(__file__).resolve().parent
FER_MODES = ("probabilities", "generate")
COT_ORDERS = ("label-first", "cot-first")
PROTOCOLS = ("release", "official")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Evaluate an ExpLLM model: FER accuracy and the Exp-CoT Score.")
    parser.add_argument("--model", required=True, help="model folder or Hub id")
    parser.add_argument("--model-revision", help="Hub revision of the model")
    parser.add_argument("--model-name", help="name in the model-index entry (default: the model's folder name or id)")
    parser.add_argument("--dataset", required=True, help="dataset folder or Hub id")
    parser.add_argument("--config", help="dataset configuration (e.g. rafdb, affectnet)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--dataset-revision", help="Hub revision of the dataset")
    parser.add_argument("--dataset-id", help="Hub id naming the dataset in the model-index (default: --dataset)")
    parser.add_argument(
        "--labels", type=int, choices=(7, 8), default=8, help="label set: 7 (RAF-DB, AffectNet-7) or 8"
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-samples", type=int, help="evaluate only the first N records (after label filtering)")
    parser.add_argument("--fer-mode", choices=FER_MODES, default="probabilities")
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        help="tokens generated for a label answer (default 16; 100 with --protocol official)",
    )
    parser.add_argument("--cot", action="store_true", help="also generate CoTs and score them against the references")
    parser.add_argument("--cot-order", choices=COT_ORDERS, help="default label-first, the official order")
    parser.add_argument(
        "--protocol", choices=PROTOCOLS, default="release", help="official: also score as the official code does"
    )
    parser.add_argument("--max-cot-tokens", type=int, default=256, help="tokens generated for a CoT")
    parser.add_argument("--judge", choices=("lexicon", "openai"), default="lexicon")
    parser.add_argument("--judge-model", help="the openai judge's model (a dated snapshot; default gpt-4o-2024-08-06)")
    parser.add_argument("--judge-base-url", help="OpenAI-compatible endpoint of the judge (default $OPENAI_BASE_URL)")
    parser.add_argument("--judge-cache", help="the judge's response cache file (default in ~/.cache/expllm)")
    parser.add_argument("--output-dir", required=True)
    args = parser.parse_args(argv)
    if args.protocol == "official":
        if args.cot_order == "cot-first":
            parser.error("--protocol official asks CoTs label-first; drop --cot-order cot-first")
        if args.max_new_tokens not in (None, OFFICIAL_MAX_NEW_TOKENS):
            parser.error(f"--protocol official generates at most {OFFICIAL_MAX_NEW_TOKENS} tokens for a label answer")
    args.cot_order = args.cot_order or "label-first"
    if args.max_new_tokens is None:
        args.max_new_tokens = OFFICIAL_MAX_NEW_TOKENS if args.protocol == "official" else 16
    for name in ("batch_size", "max_new_tokens", "max_cot_tokens"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.max_samples is not None and args.max_samples < 1:
        parser.error(f"--max-samples must be at least 1, got {args.max_samples}")
    return args


# ---------------------------------------------------------------------------------------------------------------------
# Revisions: which exact model and data the figures belong to


def _git_revision(folder):
    """The commit of a folder that is the root of its own git work tree (a cloned Hub repo), '-dirty' if changed."""

    def git(*command):
        return subprocess.run(["git", "-C", folder, *command], capture_output=True, text=True, check=True).stdout

    try:
        if os.path.realpath(git("rev-parse", "--show-toplevel").strip()) != os.path.realpath(folder):
            return None
        commit = git("rev-parse", "HEAD").strip()
        return commit + ("-dirty" if git("status", "--porcelain").strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def content_hash(paths, root=None):
    """SHA-256 over files' relative names and bytes, in sorted order."""
    digest = hashlib.sha256()
    files = sorted(Path(path) for path in paths)
    for path in tqdm(files, desc="hashing", leave=False, disable=len(files) < 20):
        digest.update(str(path.relative_to(root) if root else path.name).encode() + b"\0")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def folder_revision(folder):
    """(revision, how it was found) of a local folder: its git commit, else a hash of its files."""
    commit = _git_revision(folder)
    if commit is not None:
        return commit, "git"
    files = [path for path in Path(folder).rglob("*") if path.is_file() and ".git" not in path.parts]
    return content_hash(files, root=folder), "content-sha256"


def model_revision(name_or_path, model):
    if os.path.isdir(name_or_path):
        return folder_revision(name_or_path)
    # transformers records the commit of the Hub snapshot it loaded.
    return getattr(model.config, "_commit_hash", None), "hub"


def dataset_revision(name_or_path, dataset, revision):
    if os.path.isdir(name_or_path):
        return folder_revision(name_or_path)
    try:
        from huggingface_hub import HfApi

        return HfApi().dataset_info(name_or_path, revision=revision).sha, "hub"
    except Exception:  # offline, or a private repo without a token: fall back to the files that were read
        files = [entry["filename"] for entry in dataset.cache_files]
        return (content_hash(files), "content-sha256") if files else (revision, "requested")


# ---------------------------------------------------------------------------------------------------------------------
# Data


def load_records(args):
    """The dataset split, its labels as canonical names, and the reference CoT texts (None without a `cot` column)."""
    import datasets

    from dataset_builders.exp_cot_dataset import load_exp_cot
    from modeling_expllm.vocabulary import EXPRESSION_LABELS, SEVEN_LABELS

    dataset = load_exp_cot(args.dataset, args.config, split=args.split, revision=args.dataset_revision)
    where = f"{args.dataset}" + (f" ({args.config})" if args.config else "") + f" split {args.split!r}"
    for column in ("image", "label"):
        if column not in dataset.column_names:
            raise ValueError(f"{where} has no {column!r} column; its columns are {dataset.column_names}")
    labels = read_labels(dataset, where)
    label_set = SEVEN_LABELS if args.labels == 7 else EXPRESSION_LABELS
    # AffectNet-7 is the validation set without Contempt: records outside the label set are dropped, and counted.
    kept = [i for i, label in enumerate(labels) if label in label_set]
    dropped = len(labels) - len(kept)
    if args.max_samples is not None:
        kept = kept[: args.max_samples]
    if not kept:
        raise ValueError(f"{where}: no record has a label in {label_set}")
    dataset = dataset.select(kept)
    # An annotations-only copy (RAF-DB and AffectNet images may not be redistributed) has records without images.
    stored = dataset.cast_column("image", datasets.Image(decode=False))["image"]
    missing = [i for i, image in enumerate(stored) if not image or not (image.get("bytes") or image.get("path"))]
    if missing:
        names = list(dataset.select(missing[:3])["file_name"]) if "file_name" in dataset.column_names else missing[:3]
        raise ValueError(
            f"{where}: {len(missing)} of the {len(kept)} records to evaluate have no image (first: {names}); "
            "evaluate a copy built with the images embedded"
        )
    references = None
    if args.cot:
        if "cot" not in dataset.column_names:
            raise ValueError(f"{where} has no 'cot' column: --cot needs the reference CoT of each record")
        references = [reference_text(value, where, i) for i, value in zip(kept, dataset["cot"])]
    return dataset, [labels[i] for i in kept], references, {"dropped_outside_labels": dropped}


def read_labels(dataset, where):
    """Every record's label as a canonical name: from ClassLabel names, label strings (synonyms mapped) or ids in the
    canonical order."""
    import datasets

    from modeling_expllm.vocabulary import EXPRESSION_LABELS, normalize_label

    feature = dataset.features["label"]
    values = dataset["label"]
    if isinstance(feature, datasets.ClassLabel):
        names = [normalize_label(name) for name in feature.names]
        unknown = [name for name, label in zip(feature.names, names) if label is None]
        if unknown:
            raise ValueError(f"{where}: the label names {unknown} are not expression labels ({EXPRESSION_LABELS})")
        values = [names[value] if value is not None and value >= 0 else None for value in values]
    labels = []
    for index, value in enumerate(values):
        label = normalize_label(value)
        if label is None:
            raise ValueError(f"{where}: record {index} has label {value!r}, which is not an expression label")
        labels.append(label)
    return labels


def reference_text(value, where, index):
    """A record's reference CoT as one text: the `text` of a `cot` struct (or its three parts formatted), or a
    string. Empty when the record has none."""
    from dataset_builders.exp_cot.cot_text import format_cot

    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        if (value.get("text") or "").strip():
            return value["text"]
        parts = [value.get(name) or "" for name in ("key_observations", "overall_interpretation", "conclusion")]
        return format_cot(*parts) if all(part.strip() for part in parts) else ""
    raise ValueError(f"{where}: record {index} has a 'cot' of type {type(value).__name__}; expected a struct or text")


# ---------------------------------------------------------------------------------------------------------------------
# Inference


def load_model(args):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = AutoModelForImageTextToText.from_pretrained(
        args.model, revision=args.model_revision, trust_remote_code=True, dtype=dtype
    )
    processor = AutoProcessor.from_pretrained(args.model, revision=args.model_revision, trust_remote_code=True)
    processor.tokenizer.padding_side = "left"  # batched generation continues every prompt from its last position
    return model.to(device).eval(), processor, device, dtype


def _rgb(images):
    return [image.convert("RGB") for image in images]


def _batches(count, size, description):
    starts = range(0, count, size)
    for start in tqdm(starts, desc=description, total=len(starts)):
        yield slice(start, min(start + size, count))


@torch.inference_mode()
def predict_probabilities(model, processor, dataset, label_set, batch_size, device, dtype):
    """Each record's probability for each label of the set, from one forward pass per batch."""
    rows = []
    for batch in _batches(len(dataset), batch_size, "FER (probabilities)"):
        inputs = processor.expression_inputs(_rgb(dataset[batch]["image"]), label_set).to(device)
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
        prediction = model.predict_expression(**inputs)
        rows += [dict(zip(prediction.labels, row)) for row in prediction.probabilities.float().tolist()]
    return rows


@torch.inference_mode()
def generate(model, processor, images, conversations, max_new_tokens, device, dtype):
    """Greedy answers of the model to one conversation per image."""
    prompts = [processor.apply_chat_template(messages, add_generation_prompt=True) for messages in conversations]
    inputs = processor(images=_rgb(images), text=prompts, padding=True, return_tensors="pt").to(device)
    inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    new_tokens = output[:, inputs["input_ids"].shape[1] :]
    return [answer.strip() for answer in processor.batch_decode(new_tokens, skip_special_tokens=True)]


def generate_answers(model, processor, dataset, batch_size, max_new_tokens, device, dtype):
    """The model's greedy answer to the label question, per record."""
    answers = []
    for batch in _batches(len(dataset), batch_size, "FER (generate)"):
        images = dataset[batch]["image"]
        conversations = [processor.fer_messages() for _ in images]
        answers += generate(model, processor, images, conversations, max_new_tokens, device, dtype)
    return answers


def generate_cots(model, processor, dataset, indices, args, device, dtype):
    """(CoT, label answer) per record of `indices`, both asked in one conversation in the order chosen."""
    from modeling_expllm.vocabulary import FER_QUESTION, turn

    cots, label_answers = [], []
    for batch in _batches(len(indices), args.batch_size, f"CoT ({args.cot_order})"):
        images = dataset.select(indices[batch])["image"]
        if args.cot_order == "label-first":  # the official order: the label answer, then the analysis
            first = [processor.fer_messages() for _ in images]
            labels = generate(model, processor, images, first, args.max_new_tokens, device, dtype)
            second = [processor.label_first_cot_messages(label) for label in labels]
            texts = generate(model, processor, images, second, args.max_cot_tokens, device, dtype)
        else:
            first = [processor.cot_messages() for _ in images]
            texts = generate(model, processor, images, first, args.max_cot_tokens, device, dtype)
            second = [processor.cot_messages(text) + [turn("user", FER_QUESTION)] for text in texts]
            labels = generate(model, processor, images, second, args.max_new_tokens, device, dtype)
        cots += texts
        label_answers += labels
    return cots, label_answers


# ---------------------------------------------------------------------------------------------------------------------
# Outputs


def save_confusion_matrix(fer, path, title):
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server
    import matplotlib.pyplot as plt

    counts = fer["confusion_matrix"]
    rows, columns = fer["labels"], fer["labels"] + ["(other)"]
    # Colour by the share of each true class, so that rare classes are as readable as common ones.
    shares = [[count / max(1, sum(row)) for count in row] for row in counts]
    figure, axes = plt.subplots(figsize=(1.1 * len(columns) + 2, 0.9 * len(rows) + 2))
    axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for i, row in enumerate(counts):
        for j, count in enumerate(row):
            axes.text(j, i, str(count), ha="center", va="center", color="white" if shares[i][j] > 0.5 else "black")
    axes.set_xticks(range(len(columns)), columns, rotation=45, ha="right")
    axes.set_yticks(range(len(rows)), rows)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def model_index(args, results):
    """The model card's `model-index` entry (huggingface_hub's format) for these results."""
    from huggingface_hub import EvalResult
    from huggingface_hub.repocard_data import eval_results_to_model_index

    dataset = results["dataset"]
    # A local folder is best named by the Hub id it is published as (--dataset-id); without one, by the folder's name:
    # a model card never carries a path of the machine the evaluation ran on.
    dataset_id = args.dataset_id or (
        os.path.basename(os.path.normpath(args.dataset)) if os.path.isdir(args.dataset) else args.dataset
    )
    common = {
        "dataset_type": dataset_id,
        "dataset_name": os.path.basename(os.path.normpath(dataset_id)) + (f" ({args.config})" if args.config else ""),
        "dataset_config": args.config,
        "dataset_split": args.split,
        "dataset_revision": dataset["revision"],
    }
    fer = results["fer"]
    mode = f"{args.labels} classes, {args.fer_mode}"
    entries = [
        EvalResult(
            task_type="image-classification",
            task_name="Facial Expression Recognition",
            **common,
            metric_type=metric_type,
            metric_name=f"{name} ({mode})",
            metric_value=round(100 * fer[key], 2),
            metric_args=metric_args,
        )
        for metric_type, name, key, metric_args in (
            ("accuracy", "Accuracy %", "accuracy", None),
            ("balanced_accuracy", "Balanced accuracy %", "balanced_accuracy", None),
            ("f1", "Macro F1 %", "macro_f1", {"average": "macro"}),
        )
    ]
    official = results.get("fer_official")
    if official is not None:
        entries.append(
            EvalResult(
                task_type="image-classification",
                task_name="Facial Expression Recognition",
                **common,
                metric_type="accuracy",
                metric_name=f"Accuracy % ({args.labels} classes, official protocol: greedy, exact label)",
                metric_value=round(100 * official["accuracy"], 2),
            )
        )
    cot = results.get("exp_cot")
    if cot is not None and cot["exp_cot_score"] is not None:
        entries.append(
            EvalResult(
                task_type="image-text-to-text",
                task_name="Exp-CoT generation",
                **common,
                metric_type="exp_cot_score",
                metric_name=f"Exp-CoT Score ({cot['judge']}, {args.cot_order})",
                metric_value=round(cot["exp_cot_score"], 4),
            )
        )
    name = args.model_name or os.path.basename(os.path.normpath(args.model))
    return eval_results_to_model_index(name, entries)


def _versions():
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("expllm", "torch", "transformers", "datasets", "evaluate"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = None
    return found


# ---------------------------------------------------------------------------------------------------------------------


def evaluate_fer(args, model, processor, dataset, labels, label_set, samples, fer_metric, device, dtype):
    """FER metrics of the evaluated records, per-sample predictions written into `samples`."""
    results = {}
    if args.fer_mode == "probabilities":
        probabilities = predict_probabilities(model, processor, dataset, label_set, args.batch_size, device, dtype)
        predictions = [max(row, key=row.get) for row in probabilities]
        fer = fer_metric.compute(predictions=predictions, references=labels, labels=label_set)
        for sample, row in zip(samples, probabilities):
            sample["probabilities"] = row
    else:
        predictions = generate_answers(model, processor, dataset, args.batch_size, args.max_new_tokens, device, dtype)
        # The official protocol: only an answer that is exactly a label name counts. The lenient reading (synonyms,
        # free text) is kept beside it.
        fer = fer_metric.compute(predictions=predictions, references=labels, labels=label_set, strict=True)
        lenient = fer_metric.compute(predictions=predictions, references=labels, labels=label_set)
        results["fer_lenient"] = {key: value for key, value in lenient.items() if key != "parsed_predictions"}
        for sample, answer in zip(samples, predictions):
            sample["answer"] = answer
    for sample, predicted in zip(samples, fer["parsed_predictions"]):
        sample["prediction"] = predicted
        sample["correct"] = predicted == sample["label"]
    results["fer"] = {key: value for key, value in fer.items() if key != "parsed_predictions"}
    return results


def evaluate_official(args, model, processor, dataset, labels, label_set, samples, fer_metric, device, dtype):
    """The official scorer: the greedy answer to the single label round (at most 100 new tokens) counts only if it is
    exactly the label after stripping."""
    answers = generate_answers(model, processor, dataset, args.batch_size, args.max_new_tokens, device, dtype)
    fer = fer_metric.compute(predictions=answers, references=labels, labels=label_set, strict=True)
    for sample, answer, predicted in zip(samples, answers, fer["parsed_predictions"]):
        sample["official"] = {"answer": answer, "correct": predicted == sample["label"]}
    return {key: value for key, value in fer.items() if key != "parsed_predictions"}


def cot_form(generated, reference):
    """One generated CoT against the Format Refinement's rules, and the Jaccard index between the action units its
    Key Observations describe and those of the reference's (sides count: the left and the right brow are two units;
    degrees do not, the Exp-CoT Score grades them). Two texts that describe no unit agree fully. The rules are the
    Format Refinement's (DESIGN section 5): three sections, no AU numbers such as "AU 12", at most COT_MAX_WORDS."""
    units, reference_units = key_observation_units(generated), key_observation_units(reference)
    union, words = units | reference_units, len(generated.split())
    return {
        "all_sections": split_cot(generated).complete,
        "au_index": AU_NUMBER.search(generated) is not None,
        "words": words,
        "within_word_limit": words <= COT_MAX_WORDS,
        "au_jaccard": len(units & reference_units) / len(union) if union else 1.0,
    }


def summarize_form(forms):
    """Shares of the CoTs that meet each rule and all of them, and the mean AU Jaccard index."""
    count = len(forms)
    valid = [f["all_sections"] and not f["au_index"] and f["within_word_limit"] for f in forms]
    return {
        "with_all_sections": sum(f["all_sections"] for f in forms) / count,
        "without_au_index": sum(not f["au_index"] for f in forms) / count,
        "within_word_limit": sum(f["within_word_limit"] for f in forms) / count,
        "valid_form": sum(valid) / count,
        "mean_words": sum(f["words"] for f in forms) / count,
        "au_jaccard": sum(f["au_jaccard"] for f in forms) / count,
    }


def evaluate_cots(args, model, processor, dataset, labels, references, label_set, samples, fer_metric, device, dtype):
    """The Exp-CoT Score of the records with a reference CoT, per-sample CoTs written into `samples`."""
    import evaluate

    indices = [i for i, text in enumerate(references) if text.strip()]
    if not indices:
        raise ValueError(f"{args.dataset}: none of the evaluated records has a reference CoT to score against")
    cots, label_answers = generate_cots(model, processor, dataset, indices, args, device, dtype)
    options = {"judge": args.judge}
    if args.judge == "lexicon":
        options["reference_labels"] = [labels[i] for i in indices]
    else:
        options.update(judge_model=args.judge_model, base_url=args.judge_base_url, cache_file=args.judge_cache)
        options = {key: value for key, value in options.items() if value is not None}
    cot_metric = evaluate.load(str(METRICS_DIR / "exp_cot_score"))
    scored = cot_metric.compute(predictions=cots, references=[references[i] for i in indices], **options)
    in_conversation = fer_metric.compute(
        predictions=label_answers, references=[labels[i] for i in indices], labels=label_set, strict=True
    )
    cot = {key: value for key, value in scored.items() if key != "per_sample"}
    cot["records_without_reference"] = len(references) - len(indices)
    cot["label_accuracy_in_cot_conversation"] = in_conversation["accuracy"]
    forms = [cot_form(text, references[i]) for i, text in zip(indices, cots)]
    cot["form"] = summarize_form(forms)
    for i, text, answer, scores, form in zip(indices, cots, label_answers, scored["per_sample"], forms):
        samples[i]["cot"] = {
            "generated": text,
            "reference": references[i],
            "label_answer": answer,
            "scores": scores,
            "form": form,
        }
    return cot


def write_outputs(args, results, output_dir):
    import yaml

    with open(output_dir / "eval_results.json", "w", encoding="utf-8") as handle:
        json.dump(results, handle, indent=2, ensure_ascii=False)
    title = f"{os.path.basename(os.path.normpath(args.model))} on {args.config or args.dataset} {args.split}"
    save_confusion_matrix(results["fer"], output_dir / "confusion_matrix.png", title)
    with open(output_dir / "model_index.yaml", "w", encoding="utf-8") as handle:
        yaml.safe_dump({"model-index": results["model_index"]}, handle, sort_keys=False, allow_unicode=True)


def print_summary(args, results, output_dir):
    fer = results["fer"]
    print(
        f"FER ({args.fer_mode}, {args.labels} labels, {results['dataset']['num_evaluated']} records): accuracy "
        f"{fer['accuracy']:.4f}, balanced {fer['balanced_accuracy']:.4f}, macro F1 {fer['macro_f1']:.4f}, "
        f"unparseable {fer['unparseable']}"
    )
    if "fer_official" in results:
        official = results["fer_official"]
        print(
            f"FER (official protocol: greedy, at most {args.max_new_tokens} new tokens, exact label): accuracy "
            f"{official['accuracy']:.4f}, not exactly a label {official['unparseable']}"
        )
    if "exp_cot" in results:
        cot = results["exp_cot"]
        print(
            f"Exp-CoT Score ({cot['judge']}, {cot['num_judged']}/{cot['num_samples']} judged): {cot['exp_cot_score']}"
            f" (K {cot['key_observations']}, O {cot['overall_interpretation']}, C {cot['conclusion']})"
        )
        form = cot["form"]
        print(
            f"CoT form ({args.cot_order}): {form['with_all_sections']:.1%} with all three sections, "
            f"{form['without_au_index']:.1%} without an AU index, {form['within_word_limit']:.1%} within "
            f"{COT_MAX_WORDS} words (mean {form['mean_words']:.0f}), {form['valid_form']:.1%} all three; Key "
            f"Observations' AUs against the reference's: mean Jaccard {form['au_jaccard']:.3f}"
        )
    print(f"wrote {output_dir / 'eval_results.json'}, confusion_matrix.png, model_index.yaml")


def main(argv=None):
    args = parse_args(argv)
    import evaluate

    from modeling_expllm.vocabulary import EXPRESSION_LABELS, SEVEN_LABELS

    if args.cot and args.judge == "openai" and not os.environ.get("OPENAI_API_KEY"):
        # Before any inference: the judge comes last. No --api-key option: a key on a command line ends up in logs.
        raise SystemExit("--judge openai needs the judge's API key in OPENAI_API_KEY")
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    label_set = list(SEVEN_LABELS if args.labels == 7 else EXPRESSION_LABELS)
    dataset, labels, references, counts = load_records(args)
    model, processor, device, dtype = load_model(args)
    fer_metric = evaluate.load(str(METRICS_DIR / "fer_accuracy"))
    started = time.perf_counter()

    # Whole columns, not rows: a row would decode its image too.
    identity = {key: dataset[key] for key in ("file_name", "source") if key in dataset.column_names}
    samples = [
        {"index": i, "label": label, **{key: values[i] for key, values in identity.items()}}
        for i, label in enumerate(labels)
    ]
    scores = evaluate_fer(args, model, processor, dataset, labels, label_set, samples, fer_metric, device, dtype)
    if args.protocol == "official":
        scores["fer_official"] = evaluate_official(
            args, model, processor, dataset, labels, label_set, samples, fer_metric, device, dtype
        )
    if args.cot:
        scores["exp_cot"] = evaluate_cots(
            args, model, processor, dataset, labels, references, label_set, samples, fer_metric, device, dtype
        )

    revision, revision_source = model_revision(args.model, model)
    data_revision, data_revision_source = dataset_revision(args.dataset, dataset, args.dataset_revision)
    results = {
        "model": {"name_or_path": args.model, "revision": revision, "revision_source": revision_source},
        "dataset": {
            "name_or_path": args.dataset,
            "config": args.config,
            "split": args.split,
            "revision": data_revision,
            "revision_source": data_revision_source,
            "num_evaluated": len(samples),
            **counts,
        },
        "settings": {
            "labels": label_set,
            "fer_mode": args.fer_mode,
            "strict": args.fer_mode == "generate",
            "protocol": args.protocol,
            "max_new_tokens": args.max_new_tokens,
            "batch_size": args.batch_size,
            "max_samples": args.max_samples,
            "device": device,
            "dtype": str(dtype).removeprefix("torch."),
            "cot": args.cot,
            "cot_order": args.cot_order if args.cot else None,
            "judge": scores["exp_cot"]["judge"] if args.cot else None,
        },
        **scores,
        "seconds": round(time.perf_counter() - started, 2),
        "versions": _versions(),
        "samples": samples,
    }
    results["model_index"] = model_index(args, results)
    write_outputs(args, results, output_dir)
    print_summary(args, results, output_dir)
    return results


if __name__ == "__main__":
    main()
