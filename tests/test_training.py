"""train_sft.py end to end on tiny models: stage 1 and stage 2, plain and through accelerate + DeepSpeed ZeRO-2 on
CPU, the exact loss mask, resume, the adapter and the merged folder, and the errors raised before any compute."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from helpers import REPO_ROOT, run_isolated
from modeling_expllm.vocabulary import COT_QUESTION, FER_QUESTION

TRAIN = [sys.executable, os.path.join(REPO_ROOT, "train_sft.py"), "--config", "configs/tiny_cpu.yaml"]
QUIET = ["--logging_steps", "1", "--report_to", "none", "--disable_tqdm", "true"]


def run_train(*args, launcher=None, expect_failure=False, timeout=600, with_stderr=False):
    command = (launcher or []) + (TRAIN[1:] if launcher else TRAIN) + QUIET + list(args)
    env = {**os.environ, "OMP_NUM_THREADS": "2", "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    if expect_failure:
        assert result.returncode != 0, "training should have failed"
        return result.stderr
    assert result.returncode == 0, f"training failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return (result.stdout, result.stderr) if with_stderr else result.stdout


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Tiny towers, a stage-1 caption set (LLaVA layout) and a stage-2 record dataset of synthetic faces."""
    from expllm_testing.tiny import save_tiny_backbones
    from training.synthetic_captions import write_pretrain_set

    root = tmp_path_factory.mktemp("training")
    vision, text = save_tiny_backbones(str(root / "backbones"), image_size=56)
    chat_json = write_pretrain_set(str(root / "pretrain"), count=24, seed=1, size=112)
    dataset = write_record_dataset(str(root / "records"), count=24, seed=2)
    return {"root": root, "vision": vision, "text": text, "chat_json": chat_json, "dataset": dataset}


def write_record_dataset(folder, count, seed, corrupt=False, split="train"):
    """A record-config dataset (image, label, au, cot) in Parquet, as the dataset builder publishes it."""
    from datasets import ClassLabel, Dataset, Features, Image, Sequence, Value

    from dataset_builders.exp_cot.cot_text import split_cot
    from dataset_builders.exp_cot.offline_writer import refine, write_description
    from dataset_builders.exp_cot.synthetic_faces import generate_faces
    from modeling_expllm.vocabulary import EXPRESSION_LABELS

    rows = {"id": [], "image": [], "label": [], "au": [], "cot": []}
    for face in generate_faces(count, seed=seed, size=112):
        cot = refine(write_description(face.au, target_label=face.label), face.au, face.label)
        sections = split_cot(cot)
        rows["id"].append(face.id)
        rows["image"].append(face.image)
        rows["label"].append(EXPRESSION_LABELS.index(face.label))
        rows["au"].append(face.au)
        rows["cot"].append(
            {
                "key_observations": sections.key_observations,
                "overall_interpretation": sections.overall_interpretation,
                "conclusion": sections.conclusion,
                "text": cot,
            }
        )
    cot_feature = {
        name: Value("string") for name in ("key_observations", "overall_interpretation", "conclusion", "text")
    }
    features = Features(
        {
            "id": Value("string"),
            "image": Image(),
            "label": ClassLabel(names=list(EXPRESSION_LABELS)),
            "au": Sequence(Value("float32"), length=24),
            "cot": cot_feature,
        }
    )
    dataset = Dataset.from_dict(rows, features=features)
    if corrupt:
        dataset = dataset.cast_column("image", Image(decode=False))
        broken = [{"bytes": b"not an image at all", "path": "broken_face.png"}] + dataset["image"][1:]
        dataset = dataset.remove_columns("image").add_column("image", broken).cast_column("image", Image(decode=False))
    os.makedirs(folder, exist_ok=True)
    dataset.to_parquet(os.path.join(folder, f"{split}.parquet"))
    return folder


@pytest.fixture(scope="module")
def stage1(workspace):
    output = str(workspace["root"] / "stage1")
    run_train(
        "--stage", "1", "--vision_model", workspace["vision"], "--text_model", workspace["text"],
        "--dataset_name", workspace["chat_json"], "--output_dir", output, "--max_steps", "3",
    )  # fmt: skip
    return output


def weights(folder, name="model.safetensors"):
    return load_file(os.path.join(folder, name))


def test_stage1_trains_the_projector_only(stage1):
    before, after = weights(os.path.join(stage1, "base_model")), weights(stage1)
    assert before.keys() == after.keys()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all(name.startswith("model.multi_modal_projector.") for name in changed)
    assert {n for n in before if n.startswith("model.multi_modal_projector.")} == changed


def stage2_args(workspace, model, output, *extra):
    return (
        "--stage", "2", "--model_name_or_path", model, "--dataset_name", workspace["dataset"],
        "--output_dir", output, *extra,
    )  # fmt: skip


def check_stage2_output(stage1_folder, output):
    """The LoRA matrices and the projector trained; the merged model differs from stage 1 only where
    configs/tiny_cpu.yaml puts LoRA (every linear layer of the language model, the vision tower's attention) and in
    the projector: not in the embeddings, the LM head or the vision MLP."""
    adapter = weights(output, "adapter_model.safetensors")
    lora_b = [tensor for name, tensor in adapter.items() if "lora_B" in name]
    assert lora_b and all(tensor.abs().sum() > 0 for tensor in lora_b)  # LoRA B starts at zero
    assert any(".vision_tower." in name for name in adapter) and any(".language_model." in name for name in adapter)
    base, merged = weights(stage1_folder), weights(os.path.join(output, "merged"))
    changed = {name for name in base if not torch.equal(base[name], merged[name])}
    # DINOv2 checkpoints keep transformers 4.x names on disk (attention.query / key / value / output.dense = q / k / v
    # / o_proj).
    allowed = tuple(f"{name}_proj.weight" for name in ("q", "k", "v", "o", "gate", "up", "down"))
    allowed += tuple(f"attention.{name}.weight" for name in ("query", "key", "value", "output.dense"))
    assert all(name.endswith(allowed) or "multi_modal_projector" in name for name in changed)
    assert any("vision_tower" in name and name.endswith(allowed) for name in changed)
    assert any("language_model" in name and name.endswith(allowed) for name in changed)
    assert any("language_model" in name and name.endswith("mlp.down_proj.weight") for name in changed)
    assert any("multi_modal_projector" in name for name in changed)


def test_stage2_lora_adapter_and_merged_model(workspace, stage1):
    output = str(workspace["root"] / "stage2")
    log = run_train(*stage2_args(workspace, stage1, output, "--max_steps", "3", "--merge_lora"))
    # LoRA r=8 on the 7 linear layers of each language-model layer and the 4 attention ones of each vision layer
    # (21,504), and the projector (6,272).
    assert "stage 2: 27,776 trainable parameters" in log
    check_stage2_output(stage1, output)

    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    base = AutoModelForImageTextToText.from_pretrained(stage1, trust_remote_code=True)
    reloaded = PeftModel.from_pretrained(base, output)  # the adapter reloads onto its base
    assert any("lora_A" in name for name, _ in reloaded.named_parameters())
    loaded = run_isolated(
        "import sys\n"
        "from transformers import AutoModelForImageTextToText, AutoProcessor\n"
        "model = AutoModelForImageTextToText.from_pretrained(sys.argv[1], trust_remote_code=True)\n"
        "processor = AutoProcessor.from_pretrained(sys.argv[1], trust_remote_code=True)\n"
        "print(type(model).__name__, type(processor).__name__)\n",
        os.path.join(output, "merged"),
    )
    assert loaded.split() == ["ExpLLMForConditionalGeneration", "ExpLLMProcessor"]


def test_optional_eval_split(workspace, stage1, tmp_path):
    """With --eval_strategy, the loss on --dataset_test_split is reported as the run goes."""
    folder = write_record_dataset(str(tmp_path / "with_test"), count=8, seed=4)
    write_record_dataset(folder, count=4, seed=5, split="test")
    output = str(tmp_path / "evaluated")
    extra = ["--dataset_name", folder, "--max_steps", "2", "--eval_strategy", "steps", "--eval_steps", "1"]
    run_train(*stage2_args(workspace, stage1, output, *extra))
    with open(os.path.join(output, "trainer_state.json")) as file:
        evaluated = [entry["step"] for entry in json.load(file)["log_history"] if "eval_loss" in entry]
    assert evaluated == [1, 2]


def test_training_without_cots_warns_and_long_samples_are_counted_per_kind(workspace, stage1, tmp_path):
    from datasets import load_dataset

    no_cots = tmp_path / "no_cots"
    records = load_dataset(workspace["dataset"], split="train").remove_columns("cot")
    no_cots.mkdir()
    records.to_parquet(str(no_cots / "train.parquet"))
    _, errors = run_train(
        *stage2_args(workspace, stage1, str(tmp_path / "a"), "--dataset_name", str(no_cots), "--max_steps", "1"),
        with_stderr=True,
    )
    assert "no CoT sample: stage 2 trains on labels alone" in errors

    # CoT conversations are long, FER ones short: a limit between them drops every CoT, and says so by kind.
    log = run_train(*stage2_args(workspace, stage1, str(tmp_path / "b"), "--max_length", "120", "--overlong", "drop",
                                 "--max_steps", "1"))  # fmt: skip
    assert "training sequences are longer than max_length 120" in log and "by kind: cot 24 of 24, fer 0 of 24" in log
    assert "WARNING: --overlong drop removes every cot sample" in log


def test_max_train_samples_counts_records_in_the_conversations_view(workspace):
    from datasets import Dataset, load_dataset

    from training.samples import expression_source, first_records

    records = load_dataset(workspace["dataset"], split="train")
    # The conversations view: a FER row and a CoT row per record, each naming its record's id.
    rows = [{"id": record_id, "kind": kind, "images": [None], "messages": []}
            for record_id in records["id"] for kind in ("fer", "cot")]  # fmt: skip
    source, entries = expression_source(Dataset.from_list(rows))
    kept = first_records(source, entries, 5)
    assert len({source["id"][index] for index, _ in kept}) == 5
    assert sorted(kind for _, kind in kept) == ["cot"] * 5 + ["fer"] * 5  # both samples of each of the 5 records


def logged_losses(output):
    with open(os.path.join(output, "trainer_state.json")) as file:
        return {entry["step"]: entry["loss"] for entry in json.load(file)["log_history"] if "loss" in entry}


def test_resume_continues_the_same_run(workspace, stage1):
    straight = str(workspace["root"] / "straight")
    # With the official augmentations on (tiny_cpu.yaml leaves them off): they too must be redrawn the same.
    augmented = ("--augment", "true", "--dataloader_num_workers", "1")
    run_train(*stage2_args(workspace, stage1, straight, "--max_steps", "4", "--save_steps", "2", *augmented))
    # As if the run had been killed right after its step-2 checkpoint and started again from it.
    resumed = str(workspace["root"] / "resumed")
    checkpoint = os.path.join(straight, "checkpoint-2")
    resume = ("--resume_from_checkpoint", checkpoint)
    run_train(*stage2_args(workspace, stage1, resumed, "--max_steps", "4", *resume, *augmented))
    first, second = logged_losses(straight), logged_losses(resumed)
    assert set(first) == {1, 2, 3, 4} and set(second) == {1, 2, 3, 4}  # the resumed state keeps steps 1-2's logs
    for step in (3, 4):  # same data order, same augmentations, same optimizer and schedule
        assert second[step] == pytest.approx(first[step], rel=1e-6)


@pytest.mark.parametrize("processes", [1, 2])
def test_deepspeed_zero2_on_cpu(workspace, stage1, processes):
    output = str(workspace["root"] / f"zero2-{processes}")
    launcher = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", "configs/accelerate/zero2.yaml",
        "--num_processes", str(processes), "--main_process_port", str(29600 + processes),
    ]  # fmt: skip
    arguments = stage2_args(workspace, stage1, output, "--max_steps", "2", "--merge_lora")
    log = run_train(*arguments, launcher=launcher)
    assert f"DeepSpeed ZeRO stage 2 on {processes} process" in log
    check_stage2_output(stage1, output)
    if processes == 2:
        # The main process rebuilds the dataset's cache; the other one waits for it, then reads that cache (two
        # processes rebuilding one cache at the same time is the start-up race this prevents).
        main, other = "process 0: training data ready (rebuilt", "process 1: training data ready (read the cache"
        assert main in log and other in log and log.index(main) < log.index(other)


def test_collator_puts_loss_on_the_answers_only(workspace, stage1):
    from datasets import load_dataset
    from transformers import AutoProcessor

    from training.collator import ExpLLMCollator
    from training.samples import expression_source, training_dataset

    processor = AutoProcessor.from_pretrained(stage1, trust_remote_code=True)
    records = load_dataset(workspace["dataset"], split="train")
    source, entries = expression_source(records)
    cot_entry = next(entry for entry in entries if entry[1] == "cot")
    dataset = training_dataset(source, [cot_entry, entries[0]])
    batch = ExpLLMCollator(processor)(list(dataset))

    tokenizer, eos = processor.tokenizer, processor.tokenizer.eos_token
    record = records[cot_entry[0]]
    label = records.features["label"].int2str(record["label"])
    for row, answers in enumerate(
        [[record["cot"]["text"], label], [records.features["label"].int2str(records[0]["label"])]]
    ):
        input_ids, labels = batch["input_ids"][row], batch["labels"][row]
        supervised = labels != -100
        assert torch.equal(labels[supervised], input_ids[supervised])
        # Exactly the answers and their end-of-turn tokens, in order, and nothing else.
        expected = tokenizer("".join(answer + eos for answer in answers), add_special_tokens=False)["input_ids"]
        decoded = tokenizer.decode(input_ids[supervised]).replace(" ", "")
        assert decoded == tokenizer.decode(expected).replace(" ", "")
        assert not supervised[input_ids == processor.image_token_id].any()  # no image token carries loss
        assert (input_ids == processor.image_token_id).sum() == 16
        first_answer_token = supervised.nonzero()[0, 0]
        prompt = tokenizer.decode(input_ids[:first_answer_token])
        assert COT_QUESTION in prompt or FER_QUESTION in prompt  # the question is masked
        assert not supervised[batch["attention_mask"][row] == 0].any()  # nor is padding


def load_train_sft():
    """The training script as a module, to call its `main` in this process."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_sft", os.path.join(REPO_ROOT, "train_sft.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_errors_before_any_compute(workspace, stage1, tmp_path, monkeypatch):
    from datasets import Dataset
    from trl import TrlParser

    train_sft = load_train_sft()
    parser = TrlParser((train_sft.ScriptArguments, train_sft.SFTConfig, train_sft.ModelConfig))
    monkeypatch.chdir(REPO_ROOT)

    def main(*args):
        arguments = ["--config", "configs/tiny_cpu.yaml", *QUIET, *stage2_args(workspace, stage1, *args)]
        return train_sft.main(*parser.parse_args_and_config(arguments))

    no_label = tmp_path / "no_label"
    no_label.mkdir()
    Dataset.from_dict({"image": [None], "text": ["hello"]}).to_parquet(str(no_label / "train.parquet"))
    with pytest.raises(ValueError, match=r"lacks \['label'\]"):
        main(str(tmp_path / "a"), "--dataset_name", str(no_label))

    broken = write_record_dataset(str(tmp_path / "broken"), count=4, seed=3, corrupt=True)
    with pytest.raises(ValueError, match="training images cannot be read(.|\n)*broken_face.png"):
        main(str(tmp_path / "b"), "--dataset_name", broken)

    with pytest.raises(ValueError, match="training sequences are longer than max_length 40(.|\n)*--overlong drop"):
        main(str(tmp_path / "c"), "--max_length", "40")
    for output in ("a", "b", "c"):
        assert not os.path.exists(tmp_path / output / "checkpoint-1")  # nothing was trained

    zero3 = ["--config_file", "configs/accelerate/zero3.yaml", "--num_processes", "1"]
    launcher = [sys.executable, "-m", "accelerate.commands.launch", *zero3]
    error = run_train(*stage2_args(workspace, stage1, str(tmp_path / "d")), launcher=launcher, expect_failure=True)
    assert "ZeRO-3 needs GPUs" in error


@pytest.mark.parametrize("loss_average", ["token", "conversation"])
def test_the_loss_averages_over_tokens_or_conversations(workspace, stage1, tmp_path, loss_average):
    """The trainer's loss on a batch of one CoT sample (about a hundred answer tokens) and one FER sample (a few): the
    mean over all answer tokens (TRL's), or the mean of each conversation's own token mean."""
    from datasets import load_dataset
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import SFTConfig

    from training.collator import ExpLLMCollator
    from training.samples import expression_source, training_dataset
    from training.trainer import ExpLLMSFTTrainer

    model = AutoModelForImageTextToText.from_pretrained(stage1, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(stage1, trust_remote_code=True)
    records = load_dataset(workspace["dataset"], split="train")
    source, entries = expression_source(records)
    cot_entry = next(entry for entry in entries if entry[1] == "cot")
    dataset = training_dataset(source, [cot_entry, entries[0]])
    collator = ExpLLMCollator(processor)
    args = SFTConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], remove_unused_columns=False)
    args.dataset_kwargs = {"skip_prepare_dataset": True}
    trainer = ExpLLMSFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=processor,
        data_collator=collator,
        loss_average=loss_average,
    )
    batch = collator(list(dataset))
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, dict(batch))
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    targets = batch["labels"][:, 1:]
    token_losses = torch.nn.functional.cross_entropy(
        logits[:, :-1].transpose(1, 2).float(), targets, ignore_index=-100, reduction="none"
    )
    supervised = targets != -100
    assert supervised[0].sum() > 20 * supervised[1].sum()  # the CoT sample has far more answer tokens
    if loss_average == "token":
        expected = token_losses[supervised].mean()
    else:
        expected = torch.stack([token_losses[row][supervised[row]].mean() for row in range(2)]).mean()
    torch.testing.assert_close(loss, expected, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="loss_average must be one of"):
        ExpLLMSFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=processor,
                         data_collator=collator, loss_average="sample")  # fmt: skip
