"""The metric folders as a Hub user gets them: copied anywhere and loaded with `evaluate.load(folder)` where nothing of
this project can be imported, on the generated flat copies of the project's modules they carry (model_card/bundle.py),
with the same numbers as in the project; and what each folder needs to be a metric Space."""

import ast
import hashlib
import importlib.metadata
import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from dataset_builders.exp_cot.cot_text import format_cot
from dataset_builders.exp_cot.judges import LEXICON_JUDGE_ID, LexiconJudge, OpenAIJudge, summarize_scores
from dataset_builders.exp_cot.offline_writer import refine, write_description
from dataset_builders.exp_cot.synthetic_faces import generate_faces
from expllm_testing import llm_server
from helpers import REPO_ROOT, run_isolated
from model_card import bundle

METRICS = tuple(Path(folder).name for folder in bundle.METRIC_BUNDLES)
METRICS_DIR = Path(REPO_ROOT) / "evaluate"
API_KEY = "test-key"
# The metric Spaces run evaluate's widget on gradio 3.19.1, whose web stack needs an older fastapi than the project's:
# an upper bound for the Space's environment, not a distribution of this one.
SPACE_RUNTIME_PINS = {"fastapi"}

FER_CASES = [
    {
        "predictions": ["happy", "The face looks angry rather than sad.", "Happy or sad, hard to say.", "Contempt"],
        "references": ["Happiness", "Anger", "Sadness", "Fear"],
        "labels": 7,
    },
    {"predictions": [0, 1, 7, 9], "references": ["Neutral", "Happiness", "Anger", "Fear"]},
    {"predictions": ["Happiness", " Sadness\n", "angry"], "references": [1, 2, 6], "strict": True},
]


def _cot_inputs():
    faces = list(generate_faces(6, seed=11))
    cots = [refine(write_description(face.au), face.au, face.label) for face in faces]
    relabelled = cots[0].replace(faces[0].label, faces[1].label)
    return faces, cots, relabelled


def cot_cases():
    faces, cots, relabelled = _cot_inputs()
    return [
        {
            "predictions": cots,
            "references": cots[1:] + cots[:1],
            "reference_au": [[float(value) for value in face.au] for face in faces[1:] + faces[:1]],
            "reference_labels": [face.label for face in faces[1:] + faces[:1]],
        },
        {"predictions": [relabelled, "", None, cots[2]], "references": [cots[0], cots[1], cots[2], cots[2]]},
    ]


def openai_case(base_url, cache_file):
    _, cots, relabelled = _cot_inputs()
    return {
        "predictions": [relabelled, cots[3], ""],
        "references": [cots[0], cots[4], cots[5]],
        "judge": "openai",
        "base_url": base_url,
        "api_key": API_KEY,
        "cache_file": str(cache_file),
    }


def judge_by_hash(request):
    """Grades that depend on the whole request, so that a changed prompt or text changes them."""
    digest = int(hashlib.sha256(json.dumps(request["messages"]).encode()).hexdigest(), 16)
    grades = {"key_observations": digest % 6, "overall_interpretation": digest // 6 % 6, "conclusion": digest % 2 * 5}
    return json.dumps(grades)


def as_json(value):
    return json.loads(json.dumps(value))


# A stand-in for the part of gradio 3 that evaluate's widget calls (gradio >= 4 has no `gr.inputs`): `launch` computes
# the rows set in ROWS through the widget's own callback, the way the Space's table does, and keeps what came out.
GRADIO_STAND_IN = """
from types import SimpleNamespace

import pandas

ROWS = []
LAUNCHED = []


class Interface:
    def __init__(self, fn, inputs, outputs, **options):
        self.fn, self.inputs, self.options = fn, inputs, options

    def launch(self):
        table = pandas.DataFrame(ROWS, columns=self.inputs.headers)
        LAUNCHED.append({"title": self.options["title"], "article": self.options["article"], "result": self.fn(table)})


inputs = SimpleNamespace(Dataframe=lambda headers, **options: SimpleNamespace(headers=list(headers)))
outputs = SimpleNamespace(Textbox=lambda label: SimpleNamespace(label=label))
"""
WIDGET_COT = format_cot("The left brow is lowered.", "Anger.", "Anger.").replace("\n\n", " ")
WIDGET_ROWS = {  # as typed into the widget's table: text in double quotes
    "fer_accuracy": [['"happy"', '"Happiness"'], ['"The face looks sad."', '"Anger"']],
    "exp_cot_score": [[f'"{WIDGET_COT}"'] * 2],
}

# Run in a fresh interpreter that cannot import the project (tests/helpers.py): both metric folders copied out of the
# tree and loaded with evaluate.load, `openai` blocked while the lexicon judge runs; then the openai judge against the
# local server; a folder of relative=False copies on sys.path; and each folder's app.py with the gradio stand-in.
STANDALONE = r"""
import importlib.abc, json, os, runpy, sys

config = json.load(open(sys.argv[1]))
os.environ["HF_HOME"] = config["hf_home"]  # evaluate's module cache of its own, read when evaluate is imported


class _BlockOpenAI(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "openai":
            raise ImportError("openai is not installed here")


blocker = _BlockOpenAI()
sys.meta_path.insert(0, blocker)
import evaluate

folders = config["folders"]
out = {}
fer = evaluate.load(folders["fer_accuracy"])
out["fer_accuracy"] = [fer.compute(**case) for case in config["fer_cases"]]
cot = evaluate.load(folders["exp_cot_score"])
out["exp_cot_score"] = [cot.compute(**case) for case in config["cot_cases"]]
out["openai_imported"] = "openai" in sys.modules
sys.meta_path.remove(blocker)
out["openai_judge"] = cot.compute(**config["openai_case"])

sys.path.insert(0, config["flat_folder"])
import expllm_faces

detection = sys.modules["expllm_au_detection"]
out["flat"] = {
    "faces": expllm_faces.__file__,
    "shared": expllm_faces.blendshapes_to_au is detection.blendshapes_to_au,
    "au_names": list(detection.AU_NAMES),
}
sys.path.remove(config["flat_folder"])

sys.path.insert(0, config["gradio_stand_in"])
import gradio

out["apps"] = {}
for name, folder in folders.items():
    gradio.ROWS[:] = config["widget_rows"][name]
    sys.path.insert(0, folder)  # as `python app.py` starts: the widget reads README.md from sys.path[0]
    runpy.run_path(os.path.join(folder, "app.py"), run_name="__main__")
    sys.path.remove(folder)
    out["apps"][name] = gradio.LAUNCHED.pop()
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def standalone(tmp_path_factory):
    """What the copied folders computed, the local judge server's requests, and the inputs they were given."""
    work = tmp_path_factory.mktemp("hub")
    folders = {}
    for name in METRICS:
        folders[name] = str(work / name)
        shutil.copytree(METRICS_DIR / name, folders[name], ignore=shutil.ignore_patterns("__pycache__"))
    bundle.write_bundle(["expllm_analysis.faces"], work / "flat", relative=False)
    (work / "stand_in" / "gradio").mkdir(parents=True)
    (work / "stand_in" / "gradio" / "__init__.py").write_text(GRADIO_STAND_IN)
    with llm_server.LocalLLMServer(responder=judge_by_hash, api_key=API_KEY) as server:
        config = {
            "hf_home": str(work / "hf"),
            "folders": folders,
            "fer_cases": FER_CASES,
            "cot_cases": cot_cases(),
            "openai_case": openai_case(server.base_url, work / "judge.sqlite"),
            "flat_folder": str(work / "flat"),
            "gradio_stand_in": str(work / "stand_in"),
            "widget_rows": WIDGET_ROWS,
        }
        (work / "config.json").write_text(json.dumps(config))
        output = run_isolated(STANDALONE, str(work / "config.json"))
        requests = [request["messages"] for request in server.requests]
    return {"results": json.loads(output.strip().splitlines()[-1]), "requests": requests, "work": work}


@pytest.fixture(scope="module")
def in_project():
    import evaluate

    return {name: evaluate.load(str(METRICS_DIR / name)) for name in METRICS}


# ---------------------------------------------------------------------------------------------------------------------
# The generated files


def test_committed_bundles_equal_a_fresh_generation():
    """Nobody edits a copy, and nobody forgets to regenerate after editing a source: `python -m model_card.bundle`."""
    assert bundle.check_metric_bundles() == []


@pytest.mark.parametrize("name", METRICS)
def test_the_script_imports_every_bundled_file_as_evaluate_reads_it(name):
    """evaluate copies only the files the script itself imports relatively (one level), so each must be there."""
    from evaluate.loading import get_imports

    folder = METRICS_DIR / name
    imports = get_imports(str(folder / f"{name}.py"))
    assert {kind for kind, *_ in imports} <= {"library", "internal"}  # nothing to download
    assert {imported for kind, imported, *_ in imports if kind == "internal"} == {
        path.stem for path in folder.glob("expllm_*.py")
    }
    assert not {imported for _, imported, *_ in imports} & set(bundle.PROJECT_PACKAGES)


def _imports(path):
    """(level, module name, names) of every import statement of a file, inside functions too."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            found.append((node.level, node.module or "", [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            found += [(0, alias.name, []) for alias in node.names]
    return found


def _assert_closed(folder, relative):
    files = sorted(Path(folder).glob("expllm_*.py"))
    siblings = {path.stem for path in files}
    for path in files:
        assert bundle.is_generated(path), path
        for level, module, names in _imports(path):
            assert module.split(".")[0] not in bundle.PROJECT_PACKAGES, (path, module)
            if level:
                assert relative and level == 1 and (module or names[0]) in siblings, (path, module)
            elif module.startswith("expllm_"):
                assert not relative and module in siblings, (path, module)


def test_bundles_are_closed(tmp_path):
    """No import of a project package remains, and every flat import names a file of the same folder."""
    for name in METRICS:
        _assert_closed(METRICS_DIR / name, relative=True)
    written = bundle.write_bundle(["expllm_analysis.faces"], tmp_path, relative=False)
    assert {path.name for path in written} == {"expllm_faces.py", "expllm_au_detection.py", "expllm_vocabulary.py"}
    _assert_closed(tmp_path, relative=False)


def test_the_embedded_data_files_are_the_package_files():
    namespace = {}
    exec((METRICS_DIR / "exp_cot_score" / "expllm_resources.py").read_text(encoding="utf-8"), namespace)
    embedded = namespace[bundle.EMBEDDED_NAME]
    prompts = Path(REPO_ROOT) / "dataset_builders" / "exp_cot"
    assert "prompts/prices.txt" in embedded and "prompts/exp_cot_judge_v1/judge.txt" in embedded
    assert embedded == {path: (prompts / path).read_text(encoding="utf-8") for path in embedded}
    assert len(embedded) == sum(1 for path in (prompts / "prompts").rglob("*") if path.is_file())


def test_what_cannot_be_bundled_fails_clearly(tmp_path):
    with pytest.raises(ValueError, match="would both be written to expllm___main__.py"):
        bundle.flat_names(["dataset_builders.exp_cot.__main__", "expllm_analysis.__main__"], "expllm_")
    with pytest.raises(ValueError, match="not in a project package"):
        bundle.write_bundle(["json"], tmp_path, relative=True)
    with pytest.raises(ValueError, match="is not a module of this project"):
        bundle.write_bundle(["dataset_builders.exp_cot.no_such_module"], tmp_path, relative=True)


# ---------------------------------------------------------------------------------------------------------------------
# The folders copied out of the project


def test_copied_fer_accuracy_gives_the_in_project_numbers(standalone, in_project):
    expected = [in_project["fer_accuracy"].compute(**case) for case in FER_CASES]
    assert standalone["results"]["fer_accuracy"] == as_json(expected)
    assert expected[0]["outside_labels"] == 1 and expected[0]["parsed_predictions"][1] == "Anger"


def test_copied_exp_cot_score_gives_the_project_judges_numbers_without_openai(standalone, in_project):
    cases = cot_cases()
    expected = [in_project["exp_cot_score"].compute(**case) for case in cases]
    assert standalone["results"]["exp_cot_score"] == as_json(expected)
    assert standalone["results"]["openai_imported"] is False  # the lexicon judge ran with openai unimportable
    # ... and they are the numbers of the project's own judge, not only of its copy.
    judge = LexiconJudge()
    for case, result in zip(cases, expected):
        options = {key: case[key] for key in ("reference_au", "reference_labels") if key in case}
        scores = judge.score_all(case["predictions"], case["references"], **options)
        assert as_json(result) == as_json(summarize_scores(scores, LEXICON_JUDGE_ID))
    assert 0 < expected[0]["exp_cot_score"] < 1 and expected[1]["per_sample"][1]["missing"]


def test_copied_exp_cot_score_openai_judge_matches_the_project(standalone, tmp_path):
    with llm_server.LocalLLMServer(responder=judge_by_hash, api_key=API_KEY) as server:
        case = openai_case(server.base_url, tmp_path / "judge.sqlite")
        judge = OpenAIJudge(api_key=API_KEY, base_url=server.base_url, cache_file=case["cache_file"])
        expected = summarize_scores(judge.score_all(case["predictions"], case["references"]), judge.id)
        requests = [request["messages"] for request in server.requests]
    standalone_result = standalone["results"]["openai_judge"]
    assert standalone_result == as_json(expected)
    # The same prompts, texts and fences went out (in either order: they are sent concurrently), so the embedded
    # templates are the project's.
    assert sorted(map(json.dumps, standalone["requests"])) == sorted(map(json.dumps, requests))
    assert len(requests) == 2  # the empty CoT is never sent
    assert standalone_result["judge"] == judge.id and standalone_result["num_judged"] == 3


def test_relative_false_copies_work_from_a_folder_on_sys_path(standalone):
    from modeling_expllm.vocabulary import AU_NAMES

    flat = standalone["results"]["flat"]
    assert flat["faces"] == str(standalone["work"] / "flat" / "expllm_faces.py")
    assert flat["shared"] and flat["au_names"] == list(AU_NAMES)


# ---------------------------------------------------------------------------------------------------------------------
# What a metric Space needs


@pytest.mark.parametrize("name", METRICS)
def test_requirements_come_from_the_package_index_and_cover_the_imports(name):
    lines = (METRICS_DIR / name / "requirements.txt").read_text().splitlines()
    requirements = [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]
    names = {requirement.name.lower() for requirement in requirements}
    assert "expllm" not in names
    for requirement in requirements:
        if requirement.name in SPACE_RUNTIME_PINS:
            assert str(requirement.specifier).startswith("<"), requirement
            continue
        installed = importlib.metadata.version(requirement.name)  # raises when it is no distribution here
        assert requirement.specifier and installed in requirement.specifier, (requirement, installed)
    # Every third-party module the folder's files import is installed by some requirement.
    distributions = importlib.metadata.packages_distributions()
    folder = METRICS_DIR / name
    local = {path.stem for path in folder.glob("*.py")}
    for path in folder.glob("*.py"):
        for level, module, _ in _imports(path):
            top = module.split(".")[0]
            if level or top in local or top in sys.stdlib_module_names:
                continue
            assert {d.lower() for d in distributions.get(top, [top])} & names, f"{path.name} imports {top}"


@pytest.mark.parametrize("name", METRICS)
def test_readme_front_matter_configures_a_gradio_space(name):
    text = (METRICS_DIR / name / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n")
    front = yaml.safe_load(text.split("---\n")[1])
    assert {"title", "emoji", "colorFrom", "colorTo", "description"} <= set(front)
    assert front["sdk"] == "gradio" and front["app_file"] == "app.py" and front["pinned"] is False
    # evaluate's widget builds its table with `gr.inputs`, which gradio 4 removed: the Space runs gradio 3, as
    # evaluate's own metric Spaces do.
    assert front["sdk_version"].split(".")[0] == "3"
    assert {"evaluate", "metric"} <= set(front["tags"])
    assert (METRICS_DIR / name / front["app_file"]).is_file()


@pytest.mark.parametrize("name", METRICS)
def test_app_launches_evaluates_widget_on_the_module_of_its_own_folder(name, standalone):
    source = (METRICS_DIR / name / "app.py").read_text(encoding="utf-8")
    tree = ast.parse(compile(source, "app.py", "exec", ast.PyCF_ONLY_AST))
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)]
    assert any(ast.unparse(call) == "launch_gradio_widget(module)" for call in calls)
    assert f'Path(__file__).with_name("{name}.py")' in source
    # Run from the copied folder through evaluate's widget (with the gradio stand-in), the table's rows computed.
    launched = standalone["results"]["apps"][name]
    assert launched["title"] == f"Metric: {name}"
    assert launched["article"].lstrip().startswith("# Metric Card for")  # README.md, after its front matter
    if name == "fer_accuracy":
        assert launched["result"]["accuracy"] == 0.5 and launched["result"]["parsed_predictions"][1] == "Sadness"
    else:
        assert launched["result"]["exp_cot_score"] == 1.0
