"""Tests of the synthetic face renderer, sampler and oracle AU metadata (dataset_builders.exp_cot.synthetic_faces)."""

import dataclasses
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dataset_builders.exp_cot.synthetic_faces import (
    FaceAppearance,
    generate_faces,
    oracle_action_units,
    oracle_label,
    render_face,
    sample_appearance,
    sample_au_vector,
    sample_face,
    save_face,
    unit_au_array,
)
from modeling_expllm.vocabulary import ACTION_UNITS, AU_INDEX, AU_NAMES, EXPRESSION_LABELS, prototype_vector

REPO_ROOT = Path(__file__).resolve().parents[1]
SIZE = 224
# A centred, upright, evenly lit face, so that face units map to pixels as x_px = SIZE / 2 + SCALE * SIZE * x.
SCALE = 0.27
LOOK = FaceAppearance(face_scale=SCALE, face_aspect=1.0, offset_x=0.0, offset_y=0.0, rotation=0.0, shade=0.0)
NEUTRAL = [0.0] * len(AU_NAMES)

# Where each AU of the subject's LEFT side (and each midline AU) may change pixels, as boxes in face units
# (x_min, x_max, y_min, y_max); x grows to the image's right, y downwards, the head spans about -1..1 across.
# The subject's left is the image's right, so left boxes lie at x > 0; right AUs use the mirrored box.
EYE = (0.1, 0.7, -0.35, 0.12)
BROW = (0.0, 0.75, -0.9, -0.15)
LIP_CORNER = (0.0, 0.75, 0.2, 0.85)
REGIONS = {
    "Eye Close": EYE,
    "Lid Raise": EYE,
    "Brow Lower": BROW,
    "Brow Raise": BROW,
    "Lip Corner Pull": LIP_CORNER,
    "Lip Corner Stretch": LIP_CORNER,
    "Jaw Drop": (-1.0, 1.0, 0.25, 1.75),
    "Jaw Slide": (-1.0, 1.0, 0.3, 1.75),
    "Upper Lip Suck": (-0.5, 0.5, 0.4, 0.8),
    "Lower Lip Suck": (-0.5, 0.5, 0.45, 0.95),
    "Jaw Thrust": (-0.8, 0.8, 0.5, 1.8),
    "Upper Lip Raise": (-0.6, 0.6, 0.2, 0.8),
    "Lower Lip Depress": (-0.6, 0.6, 0.45, 1.0),
    "Chin Raise": (-0.5, 0.5, 0.4, 1.4),
    "Lip Pucker": (-0.6, 0.6, 0.4, 1.0),
    "Nose Wrinkle": (-0.3, 0.3, -0.15, 0.45),
}


def one_au(name, intensity=1.0):
    values = list(NEUTRAL)
    values[AU_INDEX[name]] = intensity
    return values


def pixels(image):
    return np.asarray(image, dtype=np.int16)


def changed_mask(image_a, image_b, threshold=24):
    """Pixels where some channel differs by more than `threshold` levels."""
    return np.abs(pixels(image_a) - pixels(image_b)).max(axis=2) > threshold


def to_pixels(x, y):
    return SIZE / 2 + SCALE * SIZE * x, SIZE / 2 + SCALE * SIZE * y


def box_mask(box):
    x_min, x_max, y_min, y_max = box
    (left, top), (right, bottom) = to_pixels(x_min, y_min), to_pixels(x_max, y_max)
    columns, rows = np.arange(SIZE) + 0.5, np.arange(SIZE) + 0.5
    return ((rows >= top) & (rows <= bottom))[:, None] & ((columns >= left) & (columns <= right))[None, :]


def region_of(unit):
    generic = unit.name.removeprefix("Left ").removeprefix("Right ")
    generic = "Jaw Slide" if generic.startswith("Jaw Slide") else generic
    x_min, x_max, y_min, y_max = REGIONS[generic]
    if unit.side == "right" and generic != "Jaw Slide":
        x_min, x_max = -x_max, -x_min
    return x_min, x_max, y_min, y_max


@pytest.fixture(scope="module")
def neutral_face():
    return render_face(NEUTRAL, LOOK, SIZE)


# ---------------------------------------------------------------------------------------------------------------------
# Determinism and sampling


def test_same_seed_same_face_and_different_seed_different_face():
    first, again, other = sample_face(7), sample_face(7), sample_face(8)
    assert first.image.tobytes() == again.image.tobytes()
    assert (first.label, first.au, first.id) == (again.label, again.au, again.id)
    assert first.image.tobytes() != other.image.tobytes()
    assert first.id == "synthetic-7-000000"


def test_face_i_depends_only_on_seed_and_index():
    run = list(generate_faces(6, seed=3))
    resumed = list(generate_faces(2, seed=3, start=4))
    assert [face.id for face in resumed] == ["synthetic-3-000004", "synthetic-3-000005"]
    for face, again in zip(run[4:], resumed):
        assert face.image.tobytes() == again.image.tobytes()
        assert face.au == again.au
    assert run[0].image.tobytes() != next(generate_faces(1, seed=4)).image.tobytes()


def test_generate_faces_is_balanced_round_robin():
    faces = list(generate_faces(2 * len(EXPRESSION_LABELS), seed=0, size=64))
    assert [face.label for face in faces] == list(EXPRESSION_LABELS) * 2
    assert [face.id for face in faces][:2] == ["synthetic-0-000000", "synthetic-0-000001"]
    subset = [face.label for face in generate_faces(5, seed=0, labels=("Happiness", "Anger"), size=64)]
    assert subset == ["Happiness", "Anger", "Happiness", "Anger", "Happiness"]
    assert all(face.image.size == (64, 64) and face.image.mode == "RGB" for face in faces)


def test_unknown_labels_are_rejected():
    with pytest.raises(ValueError, match="Joy"):
        sample_face(0, "Joy")
    with pytest.raises(ValueError, match="Happy"):
        list(generate_faces(2, labels=("Happy",)))


def test_sampled_aus_follow_the_prototype_with_noise_and_unrelated_activations():
    rng = np.random.default_rng(0)
    for label in EXPRESSION_LABELS:
        prototype = np.array(prototype_vector(label))
        samples = np.array([sample_au_vector(label, rng) for _ in range(60)])
        assert samples.shape == (60, len(AU_NAMES))
        assert samples.min() >= 0.0 and samples.max() <= 1.0
        # Around the prototype on average, but not a copy of it: noise on its AUs, extra AUs outside it.
        assert np.abs(samples.mean(axis=0) - prototype).max() < 0.12
        assert all(samples[:, index].std() > 0.03 for index in np.flatnonzero(prototype))
        assert ((samples > 0) & (prototype == 0)).any(axis=1).all()
        assert samples[:, prototype == 0].max() <= 0.2


def test_sampled_appearances_vary_and_keep_the_face_in_the_frame():
    rng = np.random.default_rng(5)
    looks = [sample_appearance(rng) for _ in range(25)]
    assert len({look.skin for look in looks}) > 20 and len({round(look.rotation, 3) for look in looks}) > 20
    # Every AU that enlarges the face at full strength, on a flat background with no lighting: both side columns must
    # stay background (only the neck may run out of the bottom of the picture). The crown of the hair may leave the
    # top, as in a tight portrait crop, but nothing else: with the hair painted in the background colour, the top
    # row is background too.
    biggest = one_au("Jaw Drop")
    for name in ("Jaw Thrust", "Cheeks Puff", "Left Brow Raise", "Right Brow Raise", "Jaw Slide Left"):
        biggest[AU_INDEX[name]] = 1.0
    background = (10, 200, 30)
    for look in looks:
        flat = dataclasses.replace(look, background_from=background, background_to=background, shade=0.0,
                                   brightness=1.0, contrast=1.0)  # fmt: skip
        image = pixels(render_face(biggest, flat, 96))
        assert (np.concatenate([image[:, 0], image[:, -1]]) == background).all(), look
        bald = pixels(render_face(biggest, dataclasses.replace(flat, hair=background), 96))
        assert (bald[0] == background).all(), look


# ---------------------------------------------------------------------------------------------------------------------
# Each AU moves its own part


@pytest.mark.parametrize("unit", ACTION_UNITS, ids=lambda unit: unit.name)
def test_each_au_moves_pixels_in_its_own_region(unit, neutral_face):
    changed = changed_mask(neutral_face, render_face(one_au(unit.name), LOOK, SIZE))
    if unit.name == "Cheeks Puff":
        region = box_mask((-1.3, -0.3, -0.1, 1.05)) | box_mask((0.3, 1.3, -0.1, 1.05))
    else:
        region = box_mask(region_of(unit))
    assert changed.sum() >= 40, f"{unit.name} at 1.0 barely changes the picture ({changed.sum()} pixels)"
    inside = (changed & region).sum() / changed.sum()
    assert inside >= 0.9, f"only {inside:.0%} of the pixels {unit.name} changes lie in its region"


@pytest.mark.parametrize("unit", [u for u in ACTION_UNITS if u.side and "Slide" not in u.name], ids=lambda u: u.name)
def test_sided_aus_act_on_the_subjects_own_side(unit, neutral_face):
    changed = changed_mask(neutral_face, render_face(one_au(unit.name), LOOK, SIZE))
    image_right = changed[:, SIZE // 2 :].sum() / changed.sum()
    # The subject's left is the image's right: the face looks at the viewer.
    expected = image_right if unit.side == "left" else 1.0 - image_right
    assert expected >= 0.97, f"{unit.name}: only {expected:.0%} of the change is on the subject's {unit.side} side"


@pytest.mark.parametrize("left_name", [u.name for u in ACTION_UNITS if u.side == "left" and "Slide" not in u.name])
def test_left_and_right_aus_mirror_each_other(left_name):
    right_name = left_name.replace("Left", "Right")
    left_image = render_face(one_au(left_name), LOOK, SIZE).transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    right_image = render_face(one_au(right_name), LOOK, SIZE)
    assert np.abs(pixels(left_image) - pixels(right_image)).mean() < 1.5


def test_jaw_slides_move_the_jaw_towards_the_subjects_side():
    def mouth_centre_x(values):
        image = pixels(render_face(values, LOOK, SIZE))
        top, bottom = (round(v) for v in (to_pixels(0, 0.5)[1], to_pixels(0, 1.3)[1]))
        dark = image[top:bottom].sum(axis=2) < 250  # the open mouth's dark inside, the lip line
        return np.nonzero(dark)[1].mean()

    open_mouth = one_au("Jaw Drop", 0.6)
    centre = mouth_centre_x(open_mouth)
    assert abs(centre - SIZE / 2) < 1.0
    slid_left = mouth_centre_x([*open_mouth[:9], 1.0, *open_mouth[10:]])
    slid_right = mouth_centre_x([*open_mouth[:10], 1.0, *open_mouth[11:]])
    assert slid_left > centre + 1.5 and slid_right < centre - 1.5


@pytest.mark.parametrize("name", ["Left Eye Close", "Jaw Drop", "Left Lip Corner Pull", "Nose Wrinkle", "Lip Pucker"])
def test_intensity_changes_the_drawing_smoothly(name, neutral_face):
    def difference(a, b):
        return np.abs(pixels(a) - pixels(b)).mean()

    full = difference(neutral_face, render_face(one_au(name, 1.0), LOOK, SIZE))
    step = difference(render_face(one_au(name, 0.5), LOOK, SIZE), render_face(one_au(name, 0.52), LOOK, SIZE))
    half = difference(neutral_face, render_face(one_au(name, 0.5), LOOK, SIZE))
    assert step < 0.1 * full
    assert 0.2 * full < half < full


# ---------------------------------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ([0.0] * 23, "24 values"),
        ([[0.0] * 24], "24 values"),
        ([0.0] * 5 + [1.5] + [0.0] * 18, r"AU 5 \(Right Brow Lower\).*1.5"),
        ([-0.1] + [0.0] * 23, r"AU 0 \(Left Eye Close\)"),
        ([math.nan] + [0.0] * 23, r"AU 0 \(Left Eye Close\)"),
        (["high"] + [0.0] * 23, "24 numbers"),
    ],
)
def test_bad_au_vectors_raise_value_errors_naming_the_problem(values, message):
    with pytest.raises(ValueError, match=message):
        unit_au_array(values)
    with pytest.raises(ValueError, match=message):
        render_face(values)


def test_bad_appearance_and_size_are_rejected():
    with pytest.raises(ValueError, match="hair_style"):
        FaceAppearance(hair_style="mohawk")
    with pytest.raises(ValueError, match="face_scale"):
        FaceAppearance(face_scale=0.9)
    with pytest.raises(ValueError, match="size"):
        render_face(NEUTRAL, size=8)


# ---------------------------------------------------------------------------------------------------------------------
# Ground truth metadata: the oracle AU detector


def test_metadata_round_trips_through_a_png(tmp_path):
    face = sample_face(11, "Fear")
    assert json.loads(face.image.info["expllm_au"]) == face.au
    assert face.image.info["expllm_label"] == "Fear"
    assert oracle_action_units(face.image) == face.au
    path = save_face(face, tmp_path / "faces" / "fear.png")
    with Image.open(path) as reopened:
        assert reopened.info["expllm_label"] == "Fear"
        assert json.loads(reopened.info["expllm_au"]) == face.au
        assert reopened.tobytes() == face.image.tobytes()
    assert oracle_action_units(path) == face.au
    assert oracle_action_units(str(path)) == face.au
    assert oracle_label(path) == "Fear"


def test_rendered_faces_carry_their_aus():
    values = one_au("Jaw Drop", 0.123456)
    assert oracle_action_units(render_face(values, LOOK, 64)) == one_au("Jaw Drop", 0.1235)


def test_images_without_metadata_give_none(tmp_path):
    plain = Image.new("RGB", (32, 32), (120, 90, 60))
    assert oracle_action_units(plain) is None and oracle_label(plain) is None
    plain.save(tmp_path / "plain.png")
    assert oracle_action_units(tmp_path / "plain.png") is None
    # Re-saving a synthetic face without its text chunks drops the ground truth too.
    sample_face(1).image.save(tmp_path / "stripped.png")
    assert oracle_action_units(tmp_path / "stripped.png") is None


def test_broken_metadata_is_an_error_not_a_guess():
    image = Image.new("RGB", (8, 8))
    image.info["expllm_au"] = "[0.5, 0.5]"
    with pytest.raises(ValueError, match="expllm_au"):
        oracle_action_units(image)
    image.info["expllm_au"] = "not json"
    with pytest.raises(ValueError, match="expllm_au"):
        oracle_action_units(image)


# ---------------------------------------------------------------------------------------------------------------------
# Command line and speed


def test_cli_writes_a_contact_sheet(tmp_path):
    out = tmp_path / "sheet" / "faces.png"
    command = [sys.executable, "-m", "dataset_builders.exp_cot.synthetic_faces", "--contact-sheet", str(out)]
    command += ["--per-class", "2", "--seed", "3", "--cell", "64"]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    with Image.open(out) as sheet:
        assert sheet.size == (64 + 2 * 64, len(EXPRESSION_LABELS) * 64)
        cells = np.asarray(sheet.convert("RGB"), dtype=np.int16)
    # Each face cell holds a picture (many colours), the name column mostly white with some dark text.
    first_face = cells[:64, 64:128]
    assert len(np.unique(first_face.reshape(-1, 3), axis=0)) > 100
    name_column = cells[:, :64]
    assert (name_column.sum(axis=2) < 200).any() and (name_column == 255).mean() > 0.8


def test_rendering_is_fast():
    rng = np.random.default_rng(0)
    jobs = [(sample_au_vector(EXPRESSION_LABELS[i % 8], rng), sample_appearance(rng)) for i in range(20)]
    render_face(*jobs[0])
    start = time.perf_counter()
    for values, look in jobs:
        render_face(values, look, SIZE)
    per_face = (time.perf_counter() - start) / len(jobs)
    # Measured about 5 ms on the project's 2-core CPU; the bound leaves room for a busy machine.
    assert per_face < 0.05, f"{per_face * 1000:.1f} ms per 224 px face"
