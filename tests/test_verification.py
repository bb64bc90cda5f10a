"""The code verifier: a fitting description passes; each kind of misfit fails with its own reason and feedback."""

import importlib.util
import json
import math
import os

import pytest

from dataset_builders.exp_cot.verification import STRICT, read_description, verify_description
from helpers import OFFICIAL_DESCRIPTIONS as OFFICIAL_FILE
from helpers import REPO_ROOT, needs_official_files
from modeling_expllm.vocabulary import AU_INDEX, NUM_ACTION_UNITS


def face(**intensities):
    """A 24-value AU vector from {"Left_Eye_Close": 0.3, ...} (spaces written as underscores)."""
    au = [0.0] * NUM_ACTION_UNITS
    for name, value in intensities.items():
        au[AU_INDEX[name.replace("_", " ")]] = value
    return au


SMILING_FACE = face(
    Left_Eye_Close=0.3, Right_Eye_Close=0.3, Left_Lip_Corner_Pull=0.7, Right_Lip_Corner_Pull=0.7, Jaw_Drop=0.15
)
EYES = "Both eyes are moderately closed."
CORNERS = "Both lip corners are strongly pulled up."
JAW = "The jaw drops mildly."
INTERPRETATION = "**Overall Emotional Interpretation:** Narrowed eyes under a wide grin add up to warmth."
CONCLUSION = "**Conclusion:** The expression is happiness."


def cot(*observations, interpretation=INTERPRETATION, conclusion=CONCLUSION):
    return f"**Key Observations:** {' '.join(observations)}\n\n{interpretation}\n\n{conclusion}"


FITTING = cot(EYES, CORNERS, JAW)


def test_a_fitting_description_passes_even_strictly():
    for policy in ({}, STRICT):
        verdict = verify_description(FITTING, SMILING_FACE, "Happiness", **policy)
        assert verdict.passed, verdict.feedback()
        assert verdict.reasons == () and verdict.feedback() == ""
        assert verdict.predicted_label == "Happiness" and verdict.label_matches


def test_labels_may_be_synonyms():
    assert verify_description(FITTING, SMILING_FACE, "happy").passed
    assert verify_description(FITTING, SMILING_FACE, "Joy").label == "Happiness"


def test_an_active_movement_left_out():
    text = cot(EYES, JAW, interpretation="**Overall Emotional Interpretation:** Warmth.")
    verdict = verify_description(text, SMILING_FACE, "Happiness")
    assert not verdict.passed and verdict.reasons == ("undescribed_aus",)
    assert verdict.undescribed_aus == ("Left Lip Corner Pull", "Right Lip Corner Pull")
    assert "Left Lip Corner Pull" in verdict.feedback()


def test_sides_count():
    warm = "**Overall Emotional Interpretation:** Warmth."
    one_side = cot(EYES, "The left lip corner is strongly pulled up.", JAW, interpretation=warm)
    verdict = verify_description(one_side, SMILING_FACE, "Happiness")
    assert verdict.undescribed_aus == ("Right Lip Corner Pull",)
    both_named = cot(EYES, "The left and right lip corners are strongly pulled up.", JAW, interpretation=warm)
    assert verify_description(both_named, SMILING_FACE, "Happiness").passed


def test_weak_movements_may_be_summarised_but_not_strictly():
    au = list(SMILING_FACE)
    au[AU_INDEX["Nose Wrinkle"]] = 0.05  # below the default floor
    au[AU_INDEX["Upper Lip Raise"]] = 0.5  # strong, but the described lip corners (0.7) of its region summarise it
    assert verify_description(FITTING, au, "Happiness").passed
    strict = verify_description(FITTING, au, "Happiness", **STRICT)
    assert strict.undescribed_aus == ("Upper Lip Raise", "Nose Wrinkle")
    # Summarising needs a described movement of the region at least half as strong.
    au[AU_INDEX["Left Lip Corner Pull"]] = au[AU_INDEX["Right Lip Corner Pull"]] = 0.42
    au[AU_INDEX["Upper Lip Raise"]] = 0.9
    assert verify_description(FITTING, au, "Happiness").undescribed_aus == ("Upper Lip Raise",)


def test_a_degree_word_that_does_not_fit():
    # By default only gross contradictions fail: "barely" for a wide-open jaw.
    au = list(SMILING_FACE)
    au[AU_INDEX["Jaw Drop"]] = 0.95
    verdict = verify_description(cot(EYES, CORNERS, "The jaw barely drops."), au, "Happiness")
    assert verdict.reasons == ("degree_mismatches",)
    (mismatch,) = verdict.degree_mismatches
    assert (mismatch.au, mismatch.stated, mismatch.intensity, mismatch.expected) == (
        "Jaw Drop",
        "slight",
        0.95,
        "strong",
    )
    assert "Jaw Drop" in verdict.feedback() and "0.95" in verdict.feedback()
    # A neighbouring band passes by default and fails strictly.
    near_miss = cot(EYES, CORNERS, "The jaw drops moderately.")
    assert verify_description(near_miss, SMILING_FACE, "Happiness").passed
    assert verify_description(near_miss, SMILING_FACE, "Happiness", **STRICT).reasons == ("degree_mismatches",)


def test_a_movement_the_face_does_not_make():
    verdict = verify_description(cot(EYES, CORNERS, JAW, "The brows are raised high."), SMILING_FACE, "Happiness")
    assert verdict.reasons == ("unsupported_movements",)
    (movement,) = verdict.unsupported_movements
    assert movement.aus == ("Left Brow Raise", "Right Brow Raise")
    assert movement.quote == "brows are raised"
    assert "brows are raised" in verdict.feedback()
    # Denying a movement is no claim that it happens.
    assert verify_description(cot(EYES, CORNERS, JAW, "The brows are not raised."), SMILING_FACE, "Happiness").passed


def test_the_wrong_label():
    verdict = verify_description(FITTING, SMILING_FACE, "Sadness")
    assert verdict.reasons == ("label_mismatch",)
    assert verdict.predicted_label == "Happiness" and not verdict.label_matches
    assert "concludes Happiness" in verdict.feedback()
    undecided = cot(EYES, CORNERS, JAW, conclusion="**Conclusion:** Hard to say.")
    assert "does not settle" in verify_description(undecided, SMILING_FACE, "Happiness").feedback()


def test_to_dict_is_a_json_record():
    warm = "**Overall Emotional Interpretation:** Warmth."
    text = cot(EYES, JAW, "The brows are raised.", interpretation=warm, conclusion="**Conclusion:** Sadness.")
    record = verify_description(text, SMILING_FACE, "Happiness").to_dict()
    assert json.loads(json.dumps(record)) == record
    assert record["passed"] is False
    assert record["reasons"] == ["undescribed_aus", "unsupported_movements", "label_mismatch"]
    assert record["unsupported_movements"][0]["aus"] == ["Left Brow Raise", "Right Brow Raise"]
    assert record["feedback"].startswith("The analysis concludes Sadness")


def test_a_reading_can_be_reused():
    reading = read_description(FITTING)
    assert verify_description(reading, SMILING_FACE, "Happiness") == verify_description(
        FITTING, SMILING_FACE, "Happiness"
    )


@pytest.mark.parametrize(
    ("au", "label", "message"),
    [
        ([0.1] * 23, "Happiness", "24 intensities"),
        ([0.1] * 23 + [-0.2], "Happiness", r"au\[23\] \(Nose Wrinkle\)"),
        ([0.1] * 23 + [math.nan], "Happiness", "finite"),
        ([0.1] * 23 + ["high"], "Happiness", "must be a number"),
        ("not a vector", "Happiness", "sequence"),
        ([0.1] * 24, "Boredom", "'Boredom' is not one of"),
    ],
)
def test_bad_input_is_named(au, label, message):
    with pytest.raises(ValueError, match=message):
        verify_description(FITTING, au, label)


def test_the_description_must_be_text():
    with pytest.raises(ValueError, match="description must be a string"):
        verify_description(None, SMILING_FACE, "Happiness")


@needs_official_files
def test_accuracy_on_the_official_descriptions():
    """The benchmark's figures: accept the real triples, reject descriptions of other faces."""
    spec = importlib.util.spec_from_file_location(
        "verifier_accuracy", os.path.join(REPO_ROOT, "bench", "verifier_accuracy.py")
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    records = bench.load_records(OFFICIAL_FILE)
    readings = [read_description(record["description"]) for record in records]
    partner = bench.derangement(len(records), seed=0)
    assert all(partner[i] != i for i in range(len(records)))
    real, mismatched = bench.evaluate(records, readings, partner, {})
    acceptance = sum(v.passed for v in real) / len(real)
    rejection = sum(not v.passed for v in mismatched) / len(mismatched)
    assert acceptance >= 0.90, acceptance  # measured 0.915
    assert rejection >= 0.93, rejection  # measured 0.959
