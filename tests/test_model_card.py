"""The model card generator: a card from the evaluation runner's real eval_results.json files, parsed by
huggingface_hub, its model-index round-tripping through huggingface_hub's eval-result parser."""

import json

import pytest
from huggingface_hub import ModelCard
from huggingface_hub.repocard_data import model_index_to_eval_results
from test_run_eval import load_runner, write_dataset


@pytest.fixture(scope="module")
def evaluated(tiny_backbones, tmp_path_factory):
    import torch

    from modeling_expllm.modeling_expllm import ExpLLMForConditionalGeneration

    root = tmp_path_factory.mktemp("card")
    torch.manual_seed(0)
    model, processor = ExpLLMForConditionalGeneration.from_backbones(*tiny_backbones)
    model_dir = root / "expllm-tiny"
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    data = root / "exp-cot-synthetic"
    write_dataset(str(data), 8)
    runner, files = load_runner(), []
    for order, extra in (("label-first", ["--protocol", "official"]), ("cot-first", ["--cot-order", "cot-first"])):
        output = root / f"eval-{order}"
        runner.main(["--model", str(model_dir), "--dataset", str(data), "--config", "synthetic", "--cot",
                     "--max-cot-tokens", "4", "--output-dir", str(output), *extra])  # fmt: skip
        files.append(output / "eval_results.json")
    return model_dir, files


def test_the_card_carries_every_measured_result_and_parses(evaluated, tmp_path):
    from model_card.card import write_model_card

    model_dir, files = evaluated
    output = tmp_path / "README.md"
    card = write_model_card(model_dir, files, output, "org/expllm-tiny", license="apache-2.0", base_model=(),
                            datasets=["org/exp-cot"])  # fmt: skip
    assert isinstance(card, ModelCard)
    data = card.data.to_dict()
    assert data["pipeline_tag"] == "image-text-to-text" and data["library_name"] == "transformers"
    assert data["license"] == "apache-2.0" and data["datasets"] == ["org/exp-cot"] and "base_model" not in data
    name, results = model_index_to_eval_results(data["model-index"])
    assert name == "expllm-tiny"
    measured = [json.loads(path.read_text()) for path in files]
    expected = {
        round(100 * measured[0]["fer"]["accuracy"], 2),
        round(100 * measured[0]["fer_official"]["accuracy"], 2),
    }
    assert expected <= {r.metric_value for r in results if r.metric_type == "accuracy"}
    scores = {r.metric_name: r.metric_value for r in results if r.metric_type == "exp_cot_score"}
    assert set(scores) == {"Exp-CoT Score (lexicon-v2, label-first)", "Exp-CoT Score (lexicon-v2, cot-first)"}
    assert scores["Exp-CoT Score (lexicon-v2, cot-first)"] == round(measured[1]["exp_cot"]["exp_cot_score"], 4)
    names = [r.metric_name for r in results]
    assert len(names) == len(set((r.metric_name, r.metric_value) for r in results))  # the shared label figures once
    text = output.read_text()
    assert str(tmp_path.parent) not in text and str(model_dir.parent) not in text  # no local paths
    for section in ("## How to use", "## Prompt format", "## Evaluation", "## Limitations and bias",
                    "Article 5(1)(f)", "## Licences", "## Citation", "TASK: Expression recognition"):  # fmt: skip
        assert section in text, section


def test_a_file_that_is_no_evaluation_is_refused(evaluated, tmp_path):
    from model_card.card import write_model_card

    model_dir, _ = evaluated
    wrong = tmp_path / "eval_results.json"
    wrong.write_text(json.dumps({"accuracy": 0.9}))
    with pytest.raises(ValueError, match="not an eval_results.json"):
        write_model_card(model_dir, [wrong], tmp_path / "README.md", "org/x", license="apache-2.0")
    with pytest.raises(ValueError, match="license must be one of"):
        write_model_card(model_dir, [], tmp_path / "README.md", "org/x", license="mit")
