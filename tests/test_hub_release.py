"""The release on the Hub (`model_card/`): `python -m model_card.publish --dry-run` builds and validates every repo
folder; the model repo's Inference Endpoints handler works the way the toolkit loads it; the Gradio Space answers in a
real browser (Debian's Chromium, driven by Selenium) and through `gradio_client` with the Python API's label."""

import importlib.metadata
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from helpers import REPO_ROOT, run_isolated
from model_card.publish import project_blocker

pytest.importorskip("mediapipe", reason="the handler and the Space find faces with MediaPipe")

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
ORG = "expllm-test-org"


@pytest.fixture(scope="module")
def dataset_folder(tmp_path_factory):
    """A small Exp-CoT dataset folder: the engine's offline writer over synthetic faces, then the builder."""
    from dataset_builders.exp_cot.runner import EngineConfig, run_engine
    from dataset_builders.exp_cot.sources import SyntheticSource
    from dataset_builders.exp_cot_dataset.build import main as build

    root = tmp_path_factory.mktemp("exp_cot")
    runs = []
    for split, count, seed in (("train", 16, 1), ("test", 8, 2)):
        folder = root / split
        source = SyntheticSource(count, root=str(folder / "images"), seed=seed, split=split, size=112)
        run_engine(source, EngineConfig(output=str(folder)))
        runs += ["--synthetic-run", str(folder)]
    build([*runs, "--output", str(root / "exp-cot"), "--no-progress"])
    return root / "exp-cot"


@pytest.fixture(scope="module")
def hub(trained_model_folder, dataset_folder, tmp_path_factory):
    """`python -m model_card.publish --dry-run` as a user runs it; returns the output folder and what it printed."""
    output = tmp_path_factory.mktemp("hub") / "hub"
    # Relative paths, as a user types them in the folder they work in (the checks run elsewhere).
    model = os.path.relpath(trained_model_folder, output.parent)
    command = [sys.executable, "-m", "model_card.publish", "--model", model, "--dataset", str(dataset_folder),
               "--org", ORG, "--license", "apache-2.0", "--base-model", "--output", "hub", "--dry-run"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    env.pop("HF_TOKEN", None)
    result = subprocess.run(command, cwd=output.parent, capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    return output, result.stdout


def test_publish_dry_run_builds_and_validates_every_repo(hub):
    from huggingface_hub import ModelCard

    output, printed = hub
    model, dataset = output / "model" / "expllm", output / "datasets" / "exp-cot"
    for name in ("config.json", "model.safetensors", "modeling_expllm.py", "handler.py", "requirements.txt",
                 "face_landmarker.task", "expllm_photos.py", "expllm_faces.py", "README.md"):  # fmt: skip
        assert (model / name).is_file(), name
    assert not list(model.glob("*.bin")) and (dataset / "README.md").is_file()
    for metric in ("exp_cot_score", "fer_accuracy"):
        assert {"README.md", "app.py", "requirements.txt", f"{metric}.py"} <= {
            p.name for p in (output / "spaces" / metric).iterdir()
        }
    space = output / "spaces" / "expllm-demo"
    assert {"app.py", "requirements.txt", "README.md", "space_settings.json", "face_landmarker.task"} <= {
        p.name for p in space.iterdir()
    }
    assert json.loads((space / "space_settings.json").read_text())["model"] == f"{ORG}/expllm"
    assert len(list((space / "examples").glob("*.png"))) == 3
    # Each repo was checked as its user reads it, in a fresh interpreter without the project.
    for repo in (
        f"{ORG}/expllm",
        f"{ORG}/exp-cot",
        f"{ORG}/exp_cot_score",
        f"{ORG}/fer_accuracy",
        f"{ORG}/expllm-demo",
    ):
        assert f"ok  {repo}: " in printed, printed
    assert "AutoClasses + handler" in printed and "load_dataset" in printed and "evaluate.load" in printed
    assert "dry run: nothing uploaded" in printed
    card = ModelCard.load(model / "README.md")
    assert card.data.pipeline_tag == "image-text-to-text" and f"spaces/{ORG}/expllm-demo" in card.text
    assert card.data.datasets == [f"{ORG}/exp-cot"] and card.data.base_model is None  # trained from scratch
    assert "handler.py" in card.text and str(REPO_ROOT) not in card.text
    assert not list(model.rglob("expllm_training.yaml"))  # the training record holds local paths: never published
    space_readme = (space / "README.md").read_text()
    assert "{{" not in space_readme and f"- {ORG}/expllm" in space_readme


def test_publish_refuses_without_a_token_or_over_another_folder_before_any_work(tmp_path, monkeypatch, capsys):
    from model_card import publish

    monkeypatch.delenv("HF_TOKEN", raising=False)
    arguments = ["--model", str(tmp_path), "--dataset", str(tmp_path), "--org", ORG]
    with pytest.raises(SystemExit, match="set HF_TOKEN"):
        publish.main([*arguments, "--output", str(tmp_path / "hub")])
    assert not (tmp_path / "hub").exists()
    keep = tmp_path / "mine" / "notes.txt"
    keep.parent.mkdir()
    keep.write_text("not a build")
    with pytest.raises(SystemExit, match="not an earlier build"):
        publish.main([*arguments, "--output", str(keep.parent), "--dry-run"])
    assert keep.read_text() == "not a build"
    monkeypatch.setenv("HF_TOKEN", "hf_secret_token_value")
    with pytest.raises(SystemExit):
        publish.main([*arguments, "--model", str(tmp_path / "missing"), "--output", str(tmp_path / "hub")])
    assert "hf_secret_token_value" not in capsys.readouterr().err


def test_the_shipped_requirements_are_what_was_tested(hub):
    from packaging.requirements import Requirement

    output, _ = hub
    for path in (
        output / "model" / "expllm" / "requirements.txt",
        output / "spaces" / "expllm-demo" / "requirements.txt",
    ):
        for line in path.read_text().splitlines():
            requirement = Requirement(line)
            installed = importlib.metadata.version(requirement.name)
            assert requirement.specifier.contains(installed), f"{path}: {line} but {installed} is installed"


HANDLER_SCRIPT = r"""
import base64, io, json, sys
import numpy as np
from PIL import Image

folder, group, face = sys.argv[1], sys.argv[2], sys.argv[3]
sys.path.insert(0, folder)  # what the Inference Endpoints toolkit does with the repo folder
from handler import EndpointHandler

handler = EndpointHandler(folder)
group_bytes = open(group, "rb").read()
encoded = base64.b64encode(group_bytes).decode()
blank = io.BytesIO()
Image.fromarray(np.full((200, 200, 3), 128, np.uint8)).save(blank, format="PNG")
requests = {
    "base64": {"inputs": encoded},
    "bytes": {"inputs": group_bytes},
    "pil": {"inputs": Image.open(group)},
    "data_url": {"inputs": "data:image/png;base64," + encoded, "parameters": {"labels": 7}},
    "cot": {"inputs": open(face, "rb").read(), "parameters": {"cot": True, "max_new_tokens": 12}},
    "no_face": {"inputs": blank.getvalue()},
    "missing": {"parameters": {}},
    "not_base64": {"inputs": "this is not an image"},
    "not_an_image": {"inputs": b"GIF89a but not really"},
    "unknown_parameter": {"inputs": encoded, "parameters": {"temperature": 0.7}},
    "bad_labels": {"inputs": encoded, "parameters": {"labels": ["Joy"]}},
    "bad_cot": {"inputs": encoded, "parameters": {"cot": "yes"}},
    "bad_tokens": {"inputs": encoded, "parameters": {"max_new_tokens": 0}},
    "bad_body": ["not", "a", "dict"],
}
print(json.dumps({name: handler(body) for name, body in requests.items()}))
"""


def test_the_endpoint_handler_as_the_toolkit_loads_it(hub, tmp_path):
    from dataset_builders.exp_cot.synthetic_faces import generate_faces
    from expllm_testing.group_pictures import compose_faces

    output, _ = hub
    faces = list(generate_faces(2, seed=31, labels=("Happiness", "Surprise"), size=224))
    canvas, _ = compose_faces(faces, size=(700, 420))
    group, face = tmp_path / "group.png", tmp_path / "face.png"
    canvas.save(group)
    faces[0].image.save(face)
    answers = json.loads(run_isolated(HANDLER_SCRIPT, str(output / "model" / "expllm"), str(group), str(face)))

    found = answers["base64"]
    assert len(found) == 2 and all(entry["detected"] and len(entry["box"]) == 4 for entry in found)
    assert found[0]["box"][0] < found[1]["box"][0]  # left to right
    for entry in found:
        assert set(entry["probabilities"]) == {
            "Neutral",
            "Happiness",
            "Sadness",
            "Surprise",
            "Fear",
            "Disgust",
            "Anger",
            "Contempt",
        }
        assert abs(sum(entry["probabilities"].values()) - 1) < 1e-3
        assert entry["label"] == max(entry["probabilities"], key=entry["probabilities"].get)
        assert len(entry["au"]) == 24 and entry["cot"] is None
    assert [entry["label"] for entry in found] == ["Happiness", "Surprise"]
    assert answers["bytes"] == found and answers["pil"] == found  # raw bytes and a decoded picture read the same
    assert (
        len(answers["data_url"][0]["probabilities"]) == 7 and "Contempt" not in answers["data_url"][0]["probabilities"]
    )
    assert isinstance(answers["cot"][0]["cot"], str) and answers["cot"][0]["cot"]
    assert answers["no_face"][0]["detected"] is False and answers["no_face"][0]["box"] is None
    errors = {
        name: answer for name, answer in answers.items() if name.startswith(("missing", "not_", "unknown", "bad"))
    }
    for name, answer in errors.items():
        assert len(answer) == 1 and set(answer[0]) == {"error"}, (name, answer)
    assert "inputs: missing" in errors["missing"][0]["error"]
    assert "base64" in errors["not_base64"][0]["error"]
    assert "not a readable image" in errors["not_an_image"][0]["error"]
    assert "temperature" in errors["unknown_parameter"][0]["error"]
    assert "parameters.labels" in errors["bad_labels"][0]["error"]
    assert "parameters.cot" in errors["bad_cot"][0]["error"]
    assert "parameters.max_new_tokens" in errors["bad_tokens"][0]["error"]


# ---------------------------------------------------------------------------------------------------------------------
# The Space, in a real browser


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def space_url(hub, trained_model_folder):
    """The built Space's app.py on a local port, in an interpreter that cannot import the project."""
    output, _ = hub
    space, port = output / "spaces" / "expllm-demo", free_port()
    launcher = (
        "import runpy, sys\n"
        f"sys.path.insert(0, {str(space)!r})\n"
        f"runpy.run_path({str(space / 'app.py')!r}, run_name='__main__')\n"
    )
    blocker_and_launcher = project_blocker() + launcher
    env = {**os.environ, "EXPLLM_MODEL": trained_model_folder, "GRADIO_SERVER_PORT": str(port),
           "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}  # fmt: skip
    log = open(output / "space.log", "w")
    server = subprocess.Popen([sys.executable, "-c", blocker_and_launcher], cwd=space, env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 180
    while True:
        try:
            urllib.request.urlopen(url, timeout=5)
            break
        except OSError:
            if server.poll() is not None or time.time() > deadline:
                server.kill()
                pytest.fail(f"the Space did not start:\n{(output / 'space.log').read_text()[-4000:]}")
            time.sleep(1)
    yield url
    server.terminate()
    server.wait(timeout=30)
    log.close()


@pytest.fixture(scope="module")
def upload(tmp_path_factory, trained_model_folder):
    """A synthetic face and the label the Python API gives it (the analyser in this process, as a user scripts it)."""
    from dataset_builders.exp_cot.synthetic_faces import generate_faces
    from expllm_analysis.photos import FaceAnalyzer

    face = next(iter(generate_faces(1, seed=41, labels=("Surprise",), size=224)))
    path = tmp_path_factory.mktemp("upload") / "face.png"
    face.image.save(path)
    with FaceAnalyzer.from_pretrained(trained_model_folder) as analyzer:
        first = analyzer.explain_picture(str(path)).faces[0]
    return path, max(first["probabilities"], key=first["probabilities"].get)


def test_the_space_in_a_real_browser(space_url, upload):
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.fail("Debian's chromium and chromium-driver are needed (`make test` installs them with apt-get)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    path, expected = upload
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,1800"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.get(space_url)
        wait = WebDriverWait(driver, 120)
        upload_input = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#picture input[type=file]"))
        upload_input.send_keys(str(path))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#picture img"))
        driver.find_element(By.CSS_SELECTOR, "#explain").click()

        def shown_label(d):
            value = d.find_element(By.CSS_SELECTOR, "#top-labels textarea").get_attribute("value")
            return value if value.startswith("face 0: ") else None

        shown = wait.until(shown_label)
        wait.until(lambda d: "Face 0" in d.find_element(By.CSS_SELECTOR, "#chain-of-thought").text)
        time.sleep(1)
        out = Path(REPO_ROOT) / "out"
        out.mkdir(exist_ok=True)
        driver.save_screenshot(str(out / "space_screenshot.png"))
    finally:
        driver.quit()
    assert shown.split("\n")[0].split(": ", 1)[1].split(" (")[0] == expected, shown
    assert (Path(REPO_ROOT) / "out" / "space_screenshot.png").stat().st_size > 10_000


def test_the_space_through_gradio_client(space_url, upload):
    from gradio_client import Client, handle_file

    path, expected = upload
    client = Client(space_url, verbose=False)
    annotated, labels, probabilities, action_units, cot = client.predict(
        handle_file(str(path)), True, api_name="/explain"
    )
    assert labels.split("\n")[0].startswith(f"face 0: {expected} (")
    assert cot.startswith(f"### Face 0: {expected}") and len(cot) > len(f"### Face 0: {expected}")
    assert Image.open(annotated["path"] if isinstance(annotated, dict) else annotated).size[0] > 0
