"""The offline CoT writer: deterministic, varied, within the format's rules, and always passing the strict verifier."""

import random
import re

import pytest

from dataset_builders.exp_cot.cot_text import split_cot
from dataset_builders.exp_cot.offline_writer import (
    AU_SUGGESTS,
    classify_description,
    infer_expression,
    refine,
    write_description,
)
from dataset_builders.exp_cot.verification import STRICT, verify_description
from modeling_expllm.vocabulary import (
    AU_INDEX,
    COT_MAX_WORDS,
    EXPRESSION_LABELS,
    NUM_ACTION_UNITS,
    SEVEN_LABELS,
    prototype_vector,
)

PRONOUNS = re.compile(
    r"\b(i|me|my|mine|we|us|our|ours|you|your|yours|he|him|his|she|her|hers|it|its|they|them|their|theirs|"
    r"themselves|himself|herself|itself)\b",
    re.IGNORECASE,
)
AU_NUMBER = re.compile(r"\bAUs?\s*-?\s*\d+", re.IGNORECASE)


def random_faces(count, seed):
    """AU vectors of several shapes: sparse, dense, faint, and every AU active with unequal sides."""
    rng = random.Random(seed)
    faces = []
    for i in range(count):
        shape = i % 4
        if shape == 0:
            faces.append([round(rng.uniform(0.01, 1.0), 3) if rng.random() < 0.35 else 0.0 for _ in range(24)])
        elif shape == 1:
            faces.append([round(rng.uniform(0.0, 0.6), 3) for _ in range(24)])
        elif shape == 2:
            faces.append([round(rng.uniform(0.001, 0.06), 3) if rng.random() < 0.3 else 0.0 for _ in range(24)])
        else:
            faces.append([round(rng.uniform(0.01, 1.0), 3) for _ in range(24)])
    return faces


def check_cot(cot, au, label):
    assert split_cot(cot).complete and split_cot(cot).text == cot
    assert len(cot.split()) <= COT_MAX_WORDS
    assert not PRONOUNS.search(cot), PRONOUNS.search(cot)
    assert not AU_NUMBER.search(cot)
    verdict = verify_description(cot, au, label, **STRICT)
    assert verdict.passed, (cot, verdict.feedback())


def test_suggestions_come_from_the_prototypes():
    assert AU_SUGGESTS["Nose Wrinkle"] == ("Disgust",)
    assert AU_SUGGESTS["Lip Pucker"] == ()
    assert AU_SUGGESTS["Left Lip Corner Pull"] == ("Happiness",)
    assert set(AU_SUGGESTS["Right Lip Corner Pull"]) == {"Happiness", "Contempt"}
    assert AU_SUGGESTS["Left Brow Lower"][0] == "Anger"  # the strongest use first


def test_prototypes_point_to_their_own_label():
    for label in EXPRESSION_LABELS:
        inferred, scores = infer_expression(prototype_vector(label))
        assert inferred == label, scores
    assert infer_expression([0.0] * NUM_ACTION_UNITS)[0] == "Neutral"
    assert infer_expression(prototype_vector("Contempt"), labels=SEVEN_LABELS)[0] != "Contempt"


@pytest.mark.parametrize("au", random_faces(48, seed=1))
def test_every_process_stays_within_the_rules(au):
    inferred = infer_expression(au)[0]
    for target in (None, *EXPRESSION_LABELS):
        label = target or inferred
        description = write_description(au, target_label=target)
        assert classify_description(description) == label
        verdict = verify_description(description, au, label, **STRICT)
        assert verdict.passed, (description, verdict.feedback())
        check_cot(refine(description, au, label), au, label)


def test_the_same_face_gives_the_same_text():
    au = random_faces(1, seed=7)[0]
    assert write_description(au) == write_description(list(au))
    assert refine("", au, "Fear") == refine("anything", tuple(au), "fear")


def test_wording_varies_across_faces():
    openings = set()
    for au in random_faces(60, seed=3):
        cot = refine("", au, infer_expression(au)[0])
        interpretation = split_cot(cot).overall_interpretation
        openings.add(" ".join(interpretation.split()[:2]))
    assert len(openings) >= 4, openings


def test_a_resting_face():
    rest = [0.0] * NUM_ACTION_UNITS
    description = write_description(rest)
    assert classify_description(description) == "Neutral"
    check_cot(refine(description, rest, "Neutral"), rest, "Neutral")
    faint = [0.0] * NUM_ACTION_UNITS
    faint[AU_INDEX["Left Eye Close"]] = faint[AU_INDEX["Right Eye Close"]] = 0.03
    faint[AU_INDEX["Left Lip Corner Pull"]] = 0.05
    assert infer_expression(faint)[0] == "Neutral"
    cot = refine(write_description(faint), faint, "Neutral")
    check_cot(cot, faint, "Neutral")
    assert "eye" in cot and "left lip corner" in cot  # faint movements are still named, with their side


def test_a_revealed_label_is_supported_honestly():
    smiling = prototype_vector("Happiness")
    smiling[AU_INDEX["Lower Lip Depress"]] = 0.3
    description = write_description(smiling, target_label="Sadness")
    assert classify_description(description) == "Sadness"
    reasoning = description.split("\n")[1]
    assert "lower lip depress" in reasoning  # what supports sadness
    assert "happiness" in reasoning and "lip corner pull" in reasoning  # and what points elsewhere
    check_cot(refine(description, smiling, "Sadness"), smiling, "Sadness")
    # A label no movement supports is said to rest on the whole configuration, not on invented evidence.
    description = write_description(smiling, target_label="Contempt")
    assert "No single movement is specific to contempt" in description or "typical of contempt" in description


def test_every_action_unit_at_once_fits_the_word_limit():
    rng = random.Random(11)
    for _ in range(20):
        au = [round(rng.uniform(0.01, 1.0), 3) for _ in range(NUM_ACTION_UNITS)]
        for label in EXPRESSION_LABELS:
            check_cot(refine("", au, label), au, label)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: write_description([0.1] * 23), "24 intensities"),
        (lambda: write_description([0.1] * 23 + [-1.0]), "Nose Wrinkle"),
        (lambda: write_description([0.1] * 24, target_label="Boredom"), "target_label 'Boredom'"),
        (lambda: refine("", [0.1] * 24, "Boredom"), "label 'Boredom'"),
        (lambda: refine(None, [0.1] * 24, "Anger"), "description must be a string"),
        (lambda: classify_description(3), "description must be a string"),
    ],
)
def test_bad_input_is_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_des2exp_reads_only_the_text():
    assert classify_description("Step 1: the brows drop.\nConclusion: The expression is anger.") == "Anger"
    assert classify_description("The brows drop and the lips press together.") is None
