"""The evaluation runner end to end: a tiny random ExpLLM saved as a model folder, a synthetic dataset folder of the
release's shape (Parquet + README configs), and the three outputs."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from helpers import REPO_ROOT
from modeling_expllm.vocabulary import EXPRESSION_LABELS, SEVEN_LABELS

RUNNER = os.path.join(REPO_ROOT, "evaluate", "run_eval.py")


def load_runner():
    spec = importlib.util.spec_from_file_location("run_eval", RUNNER)
    runner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner)
    return runner


def write_dataset(
    folder, count, *, config="synthetic", label_column="class", cot_column="struct", empty_cot=(), images=True
):
    """A dataset folder like the release's: `<config>/test-00000-of-00001.parquet` and a README whose YAML lists the
    config. Faces are synthetic, their reference CoTs written by the offline writer. `label_column`: "class"
    (ClassLabel), "words" (label strings, some synonyms) or "missing"; `cot_column`: "struct", "text" or "missing";
    records in `empty_cot` have no CoT; `images=False` leaves every image out, as an annotations-only copy does."""
    import datasets

    from dataset_builders.exp_cot.cot_text import split_cot
    from dataset_builders.exp_cot.offline_writer import refine, write_description
    from dataset_builders.exp_cot.synthetic_faces import generate_faces

    faces = list(generate_faces(count, seed=11, size=64))
    cots = [
        "" if i in empty_cot else refine(write_description(face.au), face.au, face.label)
        for i, face in enumerate(faces)
    ]
    columns = {
        "image": [face.image if images else None for face in faces],
        "au": [face.au for face in faces],
        "source": ["synthetic"] * count,
        "split": ["test"] * count,
        "file_name": [f"{face.id}.png" for face in faces],
    }
    features = {
        "image": datasets.Image(),
        "au": datasets.Sequence(datasets.Value("float32"), length=24),
        "source": datasets.Value("string"),
        "split": datasets.Value("string"),
        "file_name": datasets.Value("string"),
    }
    if label_column == "class":
        columns["label"] = [EXPRESSION_LABELS.index(face.label) for face in faces]
        features["label"] = datasets.ClassLabel(names=list(EXPRESSION_LABELS))
    elif label_column == "words":
        spoken = {"Happiness": "happy", "Sadness": "sad", "Anger": "angry", "Surprise": "surprised"}
        columns["label"] = [spoken.get(face.label, face.label) for face in faces]
        features["label"] = datasets.Value("string")
    if cot_column == "struct":
        parts = [split_cot(cot) for cot in cots]
        columns["cot"] = [
            {"key_observations": p.key_observations, "overall_interpretation": p.overall_interpretation,
             "conclusion": p.conclusion, "text": cot}
            for p, cot in zip(parts, cots)
        ]  # fmt: skip
        features["cot"] = {name: datasets.Value("string") for name in columns["cot"][0]}
    elif cot_column == "text":
        columns["cot"] = cots
        features["cot"] = datasets.Value("string")
    dataset = datasets.Dataset.from_dict(columns).cast(datasets.Features(features))
    os.makedirs(os.path.join(folder, config), exist_ok=True)
    dataset.to_parquet(os.path.join(folder, config, "test-00000-of-00001.parquet"))
    with open(os.path.join(folder, "README.md"), "w") as handle:
        handle.write(
            f"---\nconfigs:\n- config_name: {config}\n  data_files:\n  - split: test\n"
            f"    path: {config}/test-*.parquet\n---\n# Synthetic faces for the evaluation tests\n"
        )
    return faces


@pytest.fixture(scope="module")
def model_folder(tiny_backbones, tmp_path_factory):
    import torch

    from modeling_expllm.modeling_expllm import ExpLLMForConditionalGeneration

    torch.manual_seed(0)
    model, processor = ExpLLMForConditionalGeneration.from_backbones(*tiny_backbones)
    folder = str(tmp_path_factory.mktemp("models") / "expllm-tiny")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def dataset_folder(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("data") / "expllm-synthetic")
    faces = write_dataset(folder, 16, empty_cot={3})
    return folder, faces


def run_script(arguments, cwd):
    """The runner as users run it: a script in a fresh interpreter, offline, from another directory."""
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, RUNNER, *arguments], capture_output=True, text=True, cwd=cwd, env=environment, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow  # a fresh interpreter imports torch, transformers and evaluate: most of its time
def test_probabilities_seven_labels_and_label_first_cots(model_folder, dataset_folder, tmp_path):
    import torch
    import yaml
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    folder, faces = dataset_folder
    output = tmp_path / "eval"
    stdout = run_script(
        ["--model", model_folder, "--dataset", folder, "--config", "synthetic", "--labels", "7", "--batch-size", "8",
         "--cot", "--max-new-tokens", "4", "--max-cot-tokens", "12", "--output-dir", str(output)],
        cwd=str(tmp_path),
    )  # fmt: skip
    assert "FER (probabilities, 7 labels, 14 records): accuracy" in stdout
    assert sorted(os.listdir(output)) == ["confusion_matrix.png", "eval_results.json", "model_index.yaml"]
    results = json.loads((output / "eval_results.json").read_text())

    # Contempt faces are not part of a 7-class evaluation: dropped and counted.
    kept = [face for face in faces if face.label in SEVEN_LABELS]
    assert results["dataset"]["num_evaluated"] == len(kept) == 14
    assert results["dataset"]["dropped_outside_labels"] == 2
    fer = results["fer"]
    assert results["settings"]["fer_mode"] == "probabilities" and results["settings"]["labels"] == list(SEVEN_LABELS)
    for key in ("accuracy", "balanced_accuracy", "macro_f1"):
        assert 0.0 <= fer[key] <= 1.0
    assert fer["unparseable"] == 0 and sum(map(sum, fer["confusion_matrix"])) == 14
    assert len(fer["confusion_matrix"]) == 7 and len(fer["confusion_matrix"][0]) == 8
    samples = results["samples"]
    assert [sample["label"] for sample in samples] == [face.label for face in kept]
    assert samples[0]["file_name"] == f"{kept[0].id}.png"
    for sample in samples:
        assert set(sample["probabilities"]) == set(SEVEN_LABELS)
        assert sum(sample["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
        assert sample["prediction"] == max(sample["probabilities"], key=sample["probabilities"].get)
        assert sample["correct"] == (sample["prediction"] == sample["label"])
    assert fer["accuracy"] == pytest.approx(sum(sample["correct"] for sample in samples) / 14)

    # The probabilities are the model's own, as a user gets them from the saved folder.
    model = AutoModelForImageTextToText.from_pretrained(model_folder, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(model_folder, trust_remote_code=True)
    with torch.inference_mode():
        expected = model.predict_expression(**processor.expression_inputs([kept[0].image], SEVEN_LABELS))
    got = [samples[0]["probabilities"][label] for label in SEVEN_LABELS]
    torch.testing.assert_close(torch.tensor(got), expected.probabilities[0], atol=1e-4, rtol=0)

    cot = results["exp_cot"]
    assert cot["judge"] == "lexicon-v2" and results["settings"]["judge"] == "lexicon-v2"
    assert cot["num_samples"] == 13 and cot["records_without_reference"] == 1  # face 3 has no reference CoT
    assert 0.0 <= cot["exp_cot_score"] <= 1.0 and 0.0 <= cot["label_accuracy_in_cot_conversation"] <= 1.0
    assert "cot" not in samples[3] and isinstance(samples[0]["cot"]["generated"], str)
    assert samples[0]["cot"]["scores"]["reference_label"] == samples[0]["label"]

    assert results["model"]["revision_source"] == "content-sha256" and len(results["model"]["revision"]) == 64
    assert results["dataset"]["revision_source"] == "content-sha256"
    index = yaml.safe_load((output / "model_index.yaml").read_text())["model-index"]
    assert index == results["model_index"] and index[0]["name"] == "expllm-tiny"
    fer_entry, cot_entry = index[0]["results"]
    assert fer_entry["task"]["type"] == "image-classification"
    # Named by the folder's name, never by a path of the machine the evaluation ran on.
    assert fer_entry["dataset"] == {"name": "expllm-synthetic (synthetic)", "type": "expllm-synthetic",
                                    "config": "synthetic",
                                    "split": "test", "revision": results["dataset"]["revision"]}  # fmt: skip
    accuracy = next(metric for metric in fer_entry["metrics"] if metric["type"] == "accuracy")
    assert accuracy["value"] == round(100 * fer["accuracy"], 2)
    assert cot_entry["task"]["type"] == "image-text-to-text"
    assert cot_entry["metrics"][0]["type"] == "exp_cot_score"
    with Image.open(output / "confusion_matrix.png") as image:
        assert image.format == "PNG" and image.width > 200 and image.height > 200


def test_the_official_protocol_beside_the_release_figures(model_folder, dataset_folder, tmp_path):
    """--protocol official: the release's probabilities as usual, and beside them the official scorer (greedy answer
    to the single label round, at most 100 new tokens, exactly the label after stripping), CoTs label-first."""
    folder, faces = dataset_folder
    output = tmp_path / "eval"
    stdout = run_script(
        ["--model", model_folder, "--dataset", folder, "--config", "synthetic", "--max-samples", "4",
         "--protocol", "official", "--cot", "--max-cot-tokens", "6", "--output-dir", str(output)],
        cwd=str(tmp_path),
    )  # fmt: skip
    assert "FER (official protocol: greedy, at most 100 new tokens, exact label): accuracy" in stdout
    results = json.loads((output / "eval_results.json").read_text())
    settings = results["settings"]
    assert settings["protocol"] == "official" and settings["max_new_tokens"] == 100
    assert settings["cot_order"] == "label-first" and settings["fer_mode"] == "probabilities"
    official = results["fer_official"]
    samples = results["samples"]
    for sample in samples:
        assert sample["official"]["correct"] == (sample["official"]["answer"].strip() == sample["label"])
        assert "probabilities" in sample  # the release's own figures are still there
    assert official["accuracy"] == pytest.approx(sum(s["official"]["correct"] for s in samples) / len(samples))
    names = [metric["name"] for entry in results["model_index"][0]["results"] for metric in entry["metrics"]]
    assert "Accuracy % (8 classes, official protocol: greedy, exact label)" in names

    for refused in (["--cot-order", "cot-first"], ["--max-new-tokens", "16"]):
        result = subprocess.run(
            [sys.executable, RUNNER, "--model", model_folder, "--dataset", folder, "--protocol", "official",
             "--output-dir", str(tmp_path / "refused"), *refused],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert result.returncode == 2 and "--protocol official" in result.stderr


def test_generated_answers_cot_first_with_string_columns_and_the_openai_judge(model_folder, tmp_path, monkeypatch):
    from expllm_testing.llm_server import LocalLLMServer

    folder = str(tmp_path / "words")
    faces = write_dataset(folder, 8, config="words", label_column="words", cot_column="text")
    output = tmp_path / "eval"
    monkeypatch.setenv("OPENAI_API_KEY", "local-key")
    reply = '{"key_observations": 1, "overall_interpretation": 1, "conclusion": 0}'
    with LocalLLMServer(responder=lambda request: reply, api_key="local-key") as server:
        results = load_runner().main(
            ["--model", model_folder, "--dataset", folder, "--config", "words", "--fer-mode", "generate",
             "--max-new-tokens", "4", "--max-samples", "5", "--batch-size", "3", "--cot", "--cot-order", "cot-first",
             "--max-cot-tokens", "8", "--judge", "openai", "--judge-base-url", server.base_url,
             "--judge-cache", str(tmp_path / "judge.sqlite"), "--dataset-id", "someone/expllm-faces",
             "--output-dir", str(output)]
        )  # fmt: skip
    judged = [sample["cot"]["scores"] for sample in results["samples"]]
    # An untrained model writes no section headers: those CoTs score 0 without a request; any other gets the reply.
    assert server.request_count == sum(len(scores["missing"]) < 3 for scores in judged)
    assert results["exp_cot"]["judge"].startswith("openai:gpt-4o-2024-08-06:exp_cot_judge_v1-")
    fer_entry = results["model_index"][0]["results"][0]
    assert fer_entry["dataset"]["type"] == "someone/expllm-faces" and fer_entry["dataset"]["config"] == "words"
    assert results["settings"]["fer_mode"] == "generate" and results["settings"]["strict"] is True
    assert results["settings"]["cot_order"] == "cot-first"
    assert results["dataset"]["num_evaluated"] == 5 and results["dataset"]["dropped_outside_labels"] == 0
    samples = results["samples"]
    assert [sample["label"] for sample in samples] == [face.label for face in faces[:5]]  # "happy" read as Happiness
    assert all(isinstance(sample["answer"], str) for sample in samples)
    for sample in samples:  # strict: only an exact label name is a prediction
        assert sample["prediction"] == (sample["answer"] if sample["answer"] in EXPRESSION_LABELS else None)
    assert results["fer"]["strict"] is True and results["fer_lenient"]["strict"] is False
    assert results["fer"]["unparseable"] == sum(sample["prediction"] is None for sample in samples)
    assert results["exp_cot"]["num_samples"] == 5
    assert all(isinstance(sample["cot"]["label_answer"], str) for sample in samples)
    assert (output / "confusion_matrix.png").exists() and (output / "model_index.yaml").exists()


def test_unusable_datasets_get_clear_errors(model_folder, tmp_path):
    runner = load_runner()
    no_cot = str(tmp_path / "no_cot")
    write_dataset(no_cot, 2, cot_column="missing")
    base = ["--model", model_folder, "--config", "synthetic", "--output-dir", str(tmp_path / "out")]
    with pytest.raises(ValueError, match="has no 'cot' column: --cot needs"):
        runner.main(base + ["--dataset", no_cot, "--cot"])
    no_label = str(tmp_path / "no_label")
    write_dataset(no_label, 2, label_column="missing")
    with pytest.raises(ValueError, match="has no 'label' column"):
        runner.main(base + ["--dataset", no_label])
    nothing_to_score = str(tmp_path / "nothing")
    write_dataset(nothing_to_score, 2, empty_cot={0, 1})
    with pytest.raises(ValueError, match="none of the evaluated records has a reference CoT"):
        runner.main(base + ["--dataset", nothing_to_score, "--cot", "--max-cot-tokens", "2"])
    no_images = str(tmp_path / "no_images")
    write_dataset(no_images, 3, images=False)
    with pytest.raises(ValueError, match=r"3 of the 3 records to evaluate have no image \(first: \['synthetic-11-0"):
        runner.main(base + ["--dataset", no_images])
    with pytest.raises(SystemExit):
        runner.parse_args(["--model", "m", "--dataset", "d", "--output-dir", "o", "--batch-size", "0"])


def test_the_openai_judge_without_a_key_stops_before_any_inference(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    arguments = ["--model", "no-such-model", "--dataset", "no-such-data", "--cot", "--judge", "openai"]
    with pytest.raises(SystemExit, match="OPENAI_API_KEY"):
        load_runner().main(arguments + ["--output-dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_bad_label_values_name_the_record(tmp_path):
    import datasets

    dataset = datasets.Dataset.from_dict({"label": ["happy", "banana"]})
    with pytest.raises(ValueError, match="record 1 has label 'banana'"):
        load_runner().read_labels(dataset, "data.parquet")
    features = datasets.Features({"label": datasets.ClassLabel(names=["happy", "grumpy"])})
    dataset = datasets.Dataset.from_dict({"label": [0, 1]}, features=features)
    with pytest.raises(ValueError, match=r"label names \['grumpy'\]"):
        load_runner().read_labels(dataset, "data.parquet")
