"""Publish the release on the Hub: every repo folder built under `out/hub/`, validated as its user would use it, then
uploaded with `huggingface_hub`.

    python -m model_card.publish --model out/tiny-stage2/merged --dataset out/exp-cot --org my-org \
        --eval out/eval-trained-label-first/eval_results.json --dry-run

Repos (names under `--org`):
- model `<org>/<model-name>`: the weights and remote code, the model card (from the `--eval` results), the Inference
  Endpoints `handler.py` with the analyser's flat copies, MediaPipe's `face_landmarker.task` and `requirements.txt`;
- dataset `<org>/<dataset-name>`: the dataset builder's folder (Parquet configs, card);
- Spaces `<org>/exp_cot_score` and `<org>/fer_accuracy`: the `evaluate/` metric modules (`evaluate.load("<org>/...")`);
- Space `<org>/<space-name>`: the Gradio demo (`model_card/space/`) reading the model repo.

Validation, each in a fresh interpreter that cannot import this project: the model folder through the AutoClasses
and its handler called as the Inference Endpoints toolkit calls it; the dataset through `load_dataset`; each metric
copied out of the tree and run through `evaluate.load`; the Space's modules imported; every card parsed. `--dry-run`
stops there and prints the tree. The upload reads the token from $HF_TOKEN only and never prints it.
"""

import argparse
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from model_card import bundle

REPO_ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).parent
METRICS = ("exp_cot_score", "fer_accuracy")
# The packages a fresh interpreter must not find when a folder is checked as a Hub user gets it: those a bundle copies
# from, and the testing and publishing code.
PROJECT_PACKAGES = (*bundle.PROJECT_PACKAGES, "expllm_testing", "model_card")
# What the handler and the Space import besides the model's remote code, with lower bounds from the tested
# environment (requirements.lock). The Inference Endpoints image brings torch; a Space installs it from here.
HANDLER_REQUIREMENTS = ("transformers", "tokenizers", "safetensors", "mediapipe", "opencv-contrib-python", "pillow",
                        "numpy", "tqdm")  # fmt: skip
SPACE_REQUIREMENTS = ("torch", *HANDLER_REQUIREMENTS, "gradio", "matplotlib")
ANALYSER_MODULES = ("expllm_analysis.photos",)  # with what they import: the faces, AU table and vocabulary


class ValidationError(RuntimeError):
    """A built folder does not work the way its Hub user would use it."""


def project_blocker():
    """Python source that, run first, makes every import of this project's packages fail."""
    return (
        "import sys, importlib.abc\n"
        "class _BlockProject(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {PROJECT_PACKAGES!r}:\n"
        "            raise ImportError(f'{name} is part of the project and must not be needed')\n"
        "sys.meta_path.insert(0, _BlockProject())\n"
    )


def run_without_project(script, *args, cwd=None, timeout=600, env=None):
    """Run a Python script in a fresh interpreter where this project's packages cannot be imported, as a Hub user
    without the project runs it. Returns its stdout; raises ValidationError with the end of its stderr."""
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", **(env or {})}
    result = subprocess.run(
        [sys.executable, "-c", project_blocker() + script, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd or tempfile.gettempdir(),
        env=environment,
    )
    if result.returncode != 0:
        raise ValidationError(f"isolated script failed:\n{result.stderr[-4000:]}")
    return result.stdout


def requirement_lines(names):
    """`name>=version` for each distribution, the version installed here (the tested one; a local build label such
    as torch's `+cpu` left out, which only `==` may name)."""
    from packaging.version import Version

    return [f"{name}>={Version(importlib.metadata.version(name)).public}" for name in names]


def landmarker_file():
    from dataset_builders.exp_cot.au_detection import resolve_model_path

    return resolve_model_path(None)


def write_analyser(folder):
    """The analyser's flat modules (`expllm_photos.py`, ...) and MediaPipe's landmarker bundle into `folder`."""
    bundle.write_bundle(list(ANALYSER_MODULES), folder, relative=False)
    shutil.copyfile(landmarker_file(), Path(folder) / "face_landmarker.task")


# ---------------------------------------------------------------------------------------------------------------------
# Building the folders


def build_model_repo(model_dir, folder, repo_id, eval_files, space_id, dataset_id, license, base_model):
    from model_card.card import write_model_card

    folder = Path(folder)
    shutil.copytree(model_dir, folder, ignore=shutil.ignore_patterns("README.md", "*.bin", "*.pt", "*.pth", "*.pkl"))
    # The card reads the training record beside the model or, for a merged model, in the training folder above it
    # (the record itself stays home: it holds this machine's paths).
    write_model_card(
        model_dir, eval_files, folder / "README.md", repo_id, base_model=base_model, datasets=[dataset_id],
        license=license, space_id=space_id,
    )  # fmt: skip

    shutil.copyfile(HERE / "handler.py", folder / "handler.py")
    write_analyser(folder)
    (folder / "requirements.txt").write_text("\n".join(requirement_lines(HANDLER_REQUIREMENTS)) + "\n")


def build_dataset_repo(dataset_dir, folder):
    if not (Path(dataset_dir) / "README.md").is_file():
        raise ValidationError(f"{dataset_dir} has no README.md: not a folder of the dataset builder")
    shutil.copytree(dataset_dir, folder)


def build_metric_space(name, folder):
    shutil.copytree(REPO_ROOT / "evaluate" / name, folder, ignore=shutil.ignore_patterns("__pycache__"))


def build_demo_space(folder, model_id):
    from dataset_builders.exp_cot.synthetic_faces import generate_faces
    from expllm_testing.group_pictures import compose_faces

    folder = Path(folder)
    shutil.copytree(HERE / "space", folder, ignore=shutil.ignore_patterns("__pycache__"))
    write_analyser(folder)
    (folder / "requirements.txt").write_text("\n".join(requirement_lines(SPACE_REQUIREMENTS)) + "\n")
    (folder / "space_settings.json").write_text(json.dumps({"model": model_id}, indent=2) + "\n")
    readme = (folder / "README.md").read_text(encoding="utf-8")
    (folder / "README.md").write_text(
        readme.replace("{{ model_id }}", model_id).replace(
            "{{ gradio_version }}", importlib.metadata.version("gradio")
        )
    )
    # Example pictures: the release's synthetic faces (no photograph of a person travels with the Space).
    examples = folder / "examples"
    examples.mkdir()
    faces = list(generate_faces(4, seed=21, labels=("Happiness", "Surprise", "Sadness", "Anger"), size=224))
    canvas, _ = compose_faces(faces, size=(1000, 420))
    canvas.save(examples / "four_faces.png")
    for face in faces[:2]:
        face.image.save(examples / f"{face.label.lower()}.png")


def build_all(args):
    """Every repo folder under `args.output` (emptied first). Returns {repo_id: (repo_type, folder)}."""
    output = Path(args.output).resolve()  # the checks run in other folders: every path they get is absolute
    if output.exists():
        unexpected = sorted(path.name for path in output.iterdir() if path.name not in ("model", "datasets", "spaces"))
        if unexpected:
            raise SystemExit(f"--output {output} holds {unexpected[:5]}: not an earlier build of this command; "
                             "name an empty or new folder")  # fmt: skip
        shutil.rmtree(output)
    output.mkdir(parents=True)
    model_id, dataset_id = f"{args.org}/{args.model_name}", f"{args.org}/{args.dataset_name}"
    space_id = f"{args.org}/{args.space_name}"
    repos = {
        model_id: ("model", output / "model" / args.model_name),
        dataset_id: ("dataset", output / "datasets" / args.dataset_name),
        **{f"{args.org}/{name}": ("space", output / "spaces" / name) for name in METRICS},
        space_id: ("space", output / "spaces" / args.space_name),
    }
    build_model_repo(
        args.model, repos[model_id][1], model_id, args.eval, space_id, dataset_id, args.license, args.base_model
    )
    build_dataset_repo(args.dataset, repos[dataset_id][1])
    for name in METRICS:
        build_metric_space(name, repos[f"{args.org}/{name}"][1])
    build_demo_space(repos[space_id][1], model_id)
    return repos


# ---------------------------------------------------------------------------------------------------------------------
# Validating them as their users would

CHECK_MODEL = r"""
import base64, json, sys
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

folder, picture = sys.argv[1], sys.argv[2]
model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
prediction = model.predict_expression(**processor.expression_inputs([Image.open(picture)]))
# The Inference Endpoints toolkit: the repo folder on sys.path, EndpointHandler(path), called with the request body.
sys.path.insert(0, folder)
from handler import EndpointHandler
handler = EndpointHandler(folder)
encoded = base64.b64encode(open(picture, "rb").read()).decode()
answer = handler({"inputs": encoded, "parameters": {"cot": True, "max_new_tokens": 8}})
print(json.dumps({"labels": prediction.labels, "answer": answer}))
"""

CHECK_DATASET = r"""
import json, sys
import yaml
from datasets import load_dataset

folder = sys.argv[1]
front = open(folder + "/README.md", encoding="utf-8").read().split("---")[1]
counts = {}
for entry in yaml.safe_load(front)["configs"]:
    loaded = load_dataset(folder, entry["config_name"])
    counts[entry["config_name"]] = {split: len(rows) for split, rows in loaded.items()}
print(json.dumps(counts))
"""

CHECK_METRIC = r"""
import json, sys
import evaluate

folder, name, reference = sys.argv[1], sys.argv[2], sys.argv[3]
metric = evaluate.load(folder)
if name == "fer_accuracy":
    result = metric.compute(predictions=["Happiness", "Sadness"], references=["Happiness", "Happiness"])
else:
    result = metric.compute(predictions=[reference], references=[reference])
print(json.dumps(result, default=str))
"""

CHECK_SPACE = r"""
import sys
sys.path.insert(0, sys.argv[1])
import app  # the Space's module: gradio, the analyser's flat copies; the model is loaded only by main()
print(app.model_name())
"""


def front_matter(path):
    import yaml

    text = Path(path).read_text(encoding="utf-8")
    if not text.startswith("---\n"):
        raise ValidationError(f"{path}: no YAML front matter")
    return yaml.safe_load(text.split("---\n", 2)[1])


def a_reference_cot(dataset_folder):
    """One CoT of the dataset (its default config), to check the Exp-CoT Score on."""
    from datasets import load_dataset

    for split in load_dataset(str(dataset_folder)).values():
        for row in split:
            if row["cot"]["text"]:
                return row["cot"]["text"]
    raise ValidationError(f"{dataset_folder}: no CoT in the default config to check the Exp-CoT Score with")


def validate(repos, example_picture):
    """Check every folder the way its user reads it; returns {repo_id: what was seen}."""
    from huggingface_hub import DatasetCard, ModelCard

    seen = {}
    for repo_id, (repo_type, folder) in repos.items():
        started = time.time()
        if repo_type == "model":
            ModelCard.load(folder / "README.md")
            report = json.loads(run_without_project(CHECK_MODEL, folder, example_picture).splitlines()[-1])
            answer = report["answer"]
            if not answer or "error" in answer[0] or set(answer[0]["probabilities"]) != set(report["labels"]):
                raise ValidationError(f"{repo_id}: the handler answered {answer!r}")
            seen[repo_id] = f"AutoClasses + handler: {len(answer)} face(s), top label {answer[0]['label']}"
        elif repo_type == "dataset":
            DatasetCard.load(folder / "README.md")
            counts = json.loads(run_without_project(CHECK_DATASET, folder).splitlines()[-1])
            seen[repo_id] = f"load_dataset: {counts}"
            dataset_folder = folder
        elif folder.name in METRICS:
            settings = front_matter(folder / "README.md")
            if settings.get("sdk") != "gradio" or settings.get("app_file") != "app.py":
                raise ValidationError(f"{folder / 'README.md'}: a metric Space needs sdk: gradio and app_file: app.py")
            with tempfile.TemporaryDirectory() as outside:  # evaluate.load from a folder outside the project
                copy = shutil.copytree(folder, Path(outside) / folder.name)
                reference = a_reference_cot(dataset_folder) if folder.name == "exp_cot_score" else ""
                result = json.loads(run_without_project(CHECK_METRIC, copy, folder.name, reference).splitlines()[-1])
            figures = {key: result[key] for key in ("exp_cot_score", "accuracy", "judge") if key in result}
            seen[repo_id] = f"evaluate.load outside the project: {figures}"
        else:
            settings = front_matter(folder / "README.md")
            if settings.get("sdk") != "gradio":
                raise ValidationError(f"{folder / 'README.md'}: the demo Space needs sdk: gradio")
            model = run_without_project(CHECK_SPACE, folder, env={"EXPLLM_MODEL": ""}).strip().splitlines()[-1]
            seen[repo_id] = f"app imports; reads {model}"
        seen[repo_id] += f" ({time.time() - started:.0f} s)"
    return seen


def print_tree(output):
    output = Path(output)
    for path in sorted(output.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            print(f"  {path.relative_to(output)}  ({path.stat().st_size:,} bytes)")


# ---------------------------------------------------------------------------------------------------------------------
# Uploading


def hub_token():
    """The Hub token, from the environment only (never a file, never printed)."""
    token = os.environ.get("HF_TOKEN")
    if not token:
        raise SystemExit("set HF_TOKEN to a Hub token with write access to upload (or pass --dry-run)")
    return token


def upload(repos, private, token):
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    for repo_id, (repo_type, folder) in repos.items():
        api.create_repo(
            repo_id,
            repo_type=repo_type,
            private=private,
            exist_ok=True,
            space_sdk="gradio" if repo_type == "space" else None,
        )
        commit = api.upload_folder(
            repo_id=repo_id, repo_type=repo_type, folder_path=str(folder), commit_message="ExpLLM release",
            ignore_patterns=["__pycache__/*", "*.pyc"],
        )  # fmt: skip
        print(f"uploaded {repo_type} {repo_id}: {commit.commit_url}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a saved ExpLLM folder (e.g. train_sft.py's merged output)")
    parser.add_argument("--dataset", required=True, help="a folder of the dataset builder")
    parser.add_argument("--org", required=True, help="the Hub user or organisation the repos go to")
    parser.add_argument("--eval", nargs="*", default=[], help="run_eval.py's eval_results.json files for the card")
    parser.add_argument("--model-name", default="expllm")
    parser.add_argument("--dataset-name", default="exp-cot")
    parser.add_argument("--space-name", default="expllm-demo")
    parser.add_argument("--license", default="llama2", help="the model's licence (model_card.card.LICENCES)")
    parser.add_argument(
        "--base-model", nargs="*", default=["facebook/dinov2-large", "lmsys/vicuna-7b-v1.5"],
        help="the towers' Hub ids for the card (none for a model trained from scratch)",
    )  # fmt: skip
    parser.add_argument("--output", default="out/hub")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--dry-run", action="store_true", help="build and validate, print the tree, upload nothing")
    args = parser.parse_args(argv)
    for name, path in (("--model", args.model), ("--dataset", args.dataset), *(("--eval", e) for e in args.eval)):
        if not Path(path).exists():
            parser.error(f"{name} {path}: no such file or folder")
    token = None if args.dry_run else hub_token()  # before any work: a missing token should cost nothing
    repos = build_all(args)
    example = next((repos[f"{args.org}/{args.space_name}"][1] / "examples").glob("happiness.png"))
    for repo_id, report in validate(repos, example).items():
        print(f"ok  {repo_id}: {report}")
    print(f"{args.output}:")
    print_tree(args.output)
    if args.dry_run:
        print("dry run: nothing uploaded")
        return
    upload(repos, args.private, token)


if __name__ == "__main__":
    main()
