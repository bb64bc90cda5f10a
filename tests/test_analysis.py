"""Faces in the wild (`expllm_analysis`): every face of composed multi-face pictures found, aligned and read by a
tiny trained model; folders resumed and split across processes; videos tracked into expression episodes; bad input
reported as outcomes."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from dataset_builders.exp_cot.synthetic_faces import generate_faces
from expllm_analysis.faces import ALIGNMENT_LANDMARKS, ALIGNMENT_TEMPLATE, FaceFinder, measure_template
from expllm_analysis.photos import FaceAnalyzer, analyze_files
from expllm_analysis.video import VideoError, analyze_video
from expllm_testing.group_pictures import BACKGROUND, GROUP_SPOTS, compose_faces
from expllm_testing.synthetic_video import DEFAULT_EPISODES, write_expression_video
from helpers import REPO_ROOT

pytest.importorskip("mediapipe", reason="the face analyser runs MediaPipe's face landmarker")


@pytest.fixture(scope="module")
def model_folder(trained_model_folder):
    return trained_model_folder


@pytest.fixture(scope="module")
def analyzer(model_folder):
    with FaceAnalyzer.from_pretrained(model_folder) as analyzer:
        yield analyzer


def contains(outer, point):
    return outer[0] <= point[0] <= outer[2] and outer[1] <= point[1] <= outer[3]


def test_every_face_of_composed_pictures_is_found_and_read_as_on_its_own(analyzer):
    faces = list(generate_faces(16, seed=41, size=224))
    pictures, truth = [], []
    for start in range(0, 16, 4):
        canvas, boxes = compose_faces(faces[start : start + 4], GROUP_SPOTS)
        pictures.append(canvas)
        truth.append(list(zip(boxes, faces[start : start + 4])))
    results = analyzer.analyze_pictures(pictures)
    composed_correct = 0
    for result, expected in zip(results, truth):
        assert result.status == "ok" and len(result.faces) == 4
        for box, face in expected:
            # The face found inside this box (the detector's box is the inner face, so its centre lies in ours).
            inside = [
                f
                for f in result.faces
                if contains(box, ((f["box"][0] + f["box"][2]) / 2, (f["box"][1] + f["box"][3]) / 2))
            ]
            assert len(inside) == 1, (box, [f["box"] for f in result.faces])
            found = inside[0]
            assert (found["box"][2] - found["box"][0]) > 0.35 * (box[2] - box[0])
            composed_correct += found["label"] == face.label
            assert len(found["au"]) == 24 and abs(sum(found["probabilities"].values()) - 1) < 1e-3
    alone = analyzer.analyze_pictures([face.image for face in faces])
    alone_correct = sum(result.faces[0]["label"] == face.label for result, face in zip(alone, faces))
    assert alone_correct >= 13  # the tiny model reads these faces on their own (about 95% held out)
    assert composed_correct >= alone_correct - 2  # and as well among others, rotated and rescaled


def test_the_astronaut_among_synthetic_faces(analyzer):
    from skimage import data

    astronaut = Image.fromarray(data.astronaut()).resize((400, 400))  # her face about 80 px wide
    canvas, boxes = compose_faces(list(generate_faces(2, seed=43, size=224)), GROUP_SPOTS[:2], size=(980, 620))
    canvas.paste(astronaut, (580, 210))
    result = analyzer.analyze_pictures([canvas])[0]
    assert len(result.faces) == 3
    centres = [((f["box"][0] + f["box"][2]) / 2, (f["box"][1] + f["box"][3]) / 2) for f in result.faces]
    assert sum(contains((580, 210, 980, 610), c) for c in centres) == 1  # her face, inside her picture
    assert all(sum(contains(box, c) for c in centres) == 1 for box in boxes)


def test_alignment_undoes_rotation_and_scale():
    """A synthetic face rotated by 12 degrees and shrunk to 60% on a larger canvas aligns to within a few pixels of
    the upright face's crop (224 px)."""
    face = next(generate_faces(1, seed=45, size=224))
    upright = np.asarray(face.image.convert("RGB"))
    canvas, _ = compose_faces([face], [(150, 90, 134, 12)], size=(480, 360))
    with FaceFinder() as finder:
        straight, turned = finder.find(upright)[0], finder.find(np.asarray(canvas))[0]
    indices = list(ALIGNMENT_LANDMARKS.values())
    # Every landmark (not only the ones the alignment fits) lands at the same place in both crops.
    aligned = [f.landmarks @ f.alignment[:, :2].T + f.alignment[:, 2] for f in (straight, turned)]
    distances = np.linalg.norm(aligned[0] - aligned[1], axis=1)
    assert np.median(distances) < 3.0 and distances[indices].max() < 5.0
    difference = np.abs(straight.crop.astype(float) - turned.crop.astype(float))[40:184, 40:184].mean()
    assert difference < 20  # the crops look alike, not only their landmarks


def test_the_alignment_template_is_where_the_synthetic_faces_have_their_landmarks():
    pictures = [np.asarray(face.image.convert("RGB")) for face in generate_faces(32, seed=47, size=224)]
    with FaceFinder() as finder:
        measured = measure_template(finder, pictures)
    assert np.abs(measured - ALIGNMENT_TEMPLATE).max() < 0.012  # about 2.5 px at 224


def test_bad_pictures_are_outcomes(analyzer, tmp_path):
    face = next(generate_faces(1, seed=49, size=224))
    huge = Image.new("RGB", (6000, 4000), BACKGROUND)
    huge.paste(face.image.convert("RGB").resize((1200, 1200)), (3000, 1500))
    huge.save(tmp_path / "huge.jpg", quality=90)
    small_face, _ = compose_faces([face], [(200, 120, 200, 0)], size=(600, 450))  # found, but smaller than asked for
    (tmp_path / "notes.jpg").write_text("not a picture")
    inputs = [str(tmp_path / "huge.jpg"), Image.new("RGB", (400, 300), (200, 10, 10)), str(tmp_path / "notes.jpg"),
              str(tmp_path / "missing.png"), small_face]  # fmt: skip
    with FaceAnalyzer.from_pretrained(analyzer.model.name_or_path, min_face_size=150) as strict:
        results = strict.analyze_pictures(inputs)
    assert [r.status for r in results] == ["ok", "no_face", "unreadable", "unreadable", "too_small"]
    box = results[0].faces[0]["box"]  # in the original's pixels, though it was read downscaled
    assert 3000 <= box[0] < box[2] <= 4200 and 1500 <= box[1] < box[3] <= 2700
    assert "notes.jpg" in results[2].message and "missing.png" in results[3].message
    assert "smaller than 150 px" in results[4].message


def picture_folder(folder, count=6):
    folder.mkdir()
    faces = list(generate_faces(count * 2, seed=51, size=224))
    for i in range(count):
        canvas, _ = compose_faces(faces[2 * i : 2 * i + 2], GROUP_SPOTS[:2], size=(640, 320))
        canvas.save(folder / f"group_{i}.png")
    Image.new("RGB", (200, 200), (250, 250, 250)).save(folder / "empty.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return folder


def records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_folder_run_resumes_and_writes_its_pictures(analyzer, tmp_path):
    folder = picture_folder(tmp_path / "pictures")
    output = tmp_path / "out"
    merged = analyze_files(analyzer, [folder], output, annotate_images=True, charts=True)
    first = records(merged)
    assert [r["status"] for r in first].count("ok") == 12
    assert {r["file"]: r["status"] for r in first if r["status"] != "ok"} == {
        str(folder / "broken.jpg"): "unreadable",
        str(folder / "empty.png"): "no_face",
    }
    assert sorted(os.listdir(output / "annotated")) == [f"group_{i}.png" for i in range(6)]
    assert len(os.listdir(output / "charts")) == 12
    # A kill in the middle of the last file: its first face written, its second half written.
    shard = output / "faces-rank0.jsonl"
    lines = shard.read_text().splitlines(keepends=True)
    last_file = json.loads(lines[-1])["file"]
    kept = [line for line in lines if json.loads(line)["file"] != last_file]
    cut = [line for line in lines if json.loads(line)["file"] == last_file]
    shard.write_text("".join(kept) + cut[0][:-1][: len(cut[0]) // 2])

    class Counting(FaceAnalyzer):
        pictures = 0

        def analyze_pictures(self, pictures, names=None):
            Counting.pictures += len(pictures)
            return super().analyze_pictures(pictures, names)

    with Counting(analyzer.model, analyzer.processor) as again:
        merged = analyze_files(again, [folder], output)
    assert Counting.pictures == 1  # only the file the kill cut short
    assert records(merged) == first


def test_two_processes_split_a_folder_and_merge_it(model_folder, analyzer, tmp_path):
    folder = picture_folder(tmp_path / "pictures", count=4)
    alone = records(analyze_files(analyzer, [folder], tmp_path / "alone"))
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--main_process_port", "29651", "-m", "expllm_analysis", str(folder), "--model", model_folder,
               "--output-dir", str(tmp_path / "two")]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    shards = {name: records(tmp_path / "two" / name) for name in ("faces-rank0.jsonl", "faces-rank1.jsonl")}
    assert all(shards.values())  # both processes had files to do
    together = records(tmp_path / "two" / "faces.jsonl")
    assert [(r["file"], r.get("face_index"), r.get("label")) for r in together] == [
        (r["file"], r.get("face_index"), r.get("label")) for r in alone
    ]


def test_a_video_gives_each_face_an_id_and_its_episodes(analyzer, tmp_path):
    video = tmp_path / "two_faces.mp4"
    write_expression_video(video, fps=10)
    timeline = analyze_video(analyzer, video, tmp_path / "out", sample_fps=5, annotate=True)
    sample_s = 0.2
    assert len(timeline["faces"]) == 2  # two faces, two ids, for the whole clip
    for face, truth in zip(sorted(timeline["faces"], key=lambda f: f["frames"][0]["box"][0]), DEFAULT_EPISODES):
        assert len(face["frames"]) == timeline["samples"] == 20
        assert len(face["episodes"]) == 1, face["summary"]
        episode = face["episodes"][0]
        assert episode["label"] == truth.label
        start, end = truth.strong_between()
        assert abs(episode["apex"]["time_s"] - truth.apex_s) <= 2 * sample_s
        assert abs(episode["onset"]["time_s"] - start) <= 2 * sample_s
        assert abs(episode["offset"]["time_s"] - end) <= 2 * sample_s
        assert episode["cot"] is not None and truth.label in face["summary"]
    for kind in ("timeline", "plot", "annotated"):
        assert os.path.getsize(timeline["outputs"][kind]) > 1000
    with open(timeline["outputs"]["timeline"]) as file:
        assert json.load(file)["summary"] == timeline["summary"]


def test_bad_videos_are_refused_naming_them(analyzer, tmp_path):
    import cv2

    write_expression_video(tmp_path / "good.mp4", fps=10, seconds=1.0)
    (tmp_path / "cut.mp4").write_bytes((tmp_path / "good.mp4").read_bytes()[:600])
    (tmp_path / "text.mp4").write_text("this is not a video")
    empty = cv2.VideoWriter(str(tmp_path / "empty.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (64, 64))
    empty.release()
    for name in ("cut.mp4", "text.mp4", "empty.mp4", "missing.mp4"):
        with pytest.raises(VideoError, match=name):
            analyze_video(analyzer, tmp_path / name, tmp_path / "out")


def test_the_command_line_on_pictures_and_videos(model_folder, tmp_path):
    folder = picture_folder(tmp_path / "pictures", count=2)
    write_expression_video(tmp_path / "clip.mp4", fps=10, seconds=2.0)
    (tmp_path / "text.mp4").write_text("this is not a video")
    command = [sys.executable, "-m", "expllm_analysis", str(folder), str(tmp_path / "clip.mp4"),
               str(tmp_path / "text.mp4"), "--model", model_folder, "--output-dir", str(tmp_path / "out"),
               "--annotate", "--charts", "--cot", "--max-new-tokens", "8", "--annotate-video"]  # fmt: skip
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "pictures:" in result.stdout and "4 ok" in result.stdout and "video" in result.stdout
    faces = records(tmp_path / "out" / "faces.jsonl")
    assert all(isinstance(r["cot"], str) for r in faces if r["status"] == "ok")
    videos = {r["file"]: r for r in records(tmp_path / "out" / "videos.jsonl")}
    assert videos[str(tmp_path / "clip.mp4")]["status"] == "ok"
    assert videos[str(tmp_path / "text.mp4")]["status"] == "unreadable"
    assert (tmp_path / "out" / "clip.mp4.annotated.mp4").is_file()
