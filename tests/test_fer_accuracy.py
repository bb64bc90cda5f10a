"""The FER accuracy metric, loaded as users load it: `evaluate.load` on the local module folder."""

import doctest
import os
import sys

import pytest

from helpers import REPO_ROOT
from modeling_expllm.vocabulary import EXPRESSION_LABELS, SEVEN_LABELS

METRIC_DIR = os.path.join(REPO_ROOT, "evaluate", "fer_accuracy")


@pytest.fixture(scope="module")
def fer_accuracy():
    import evaluate

    return evaluate.load(METRIC_DIR)


def test_kwargs_description_examples_run(fer_accuracy, monkeypatch):
    import evaluate

    monkeypatch.chdir(REPO_ROOT)  # the examples load the metric by its path in the repository
    module = sys.modules[type(fer_accuracy).__module__]
    test = doctest.DocTestParser().get_doctest(module._KWARGS_DESCRIPTION, {"evaluate": evaluate}, "fer", None, 0)
    assert len(test.examples) >= 6
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    runner.run(test)
    assert runner.summarize(verbose=False).failed == 0


def test_figures_of_a_small_case_by_hand(fer_accuracy):
    references = ["Happiness", "Happiness", "Sadness", "Sadness", "Anger"]
    predictions = ["Happiness", "Sadness", "Sadness", "Sadness", "I cannot tell"]
    results = fer_accuracy.compute(predictions=predictions, references=references)
    assert results["accuracy"] == pytest.approx(3 / 5)
    # Per class: Happiness 1/2, Sadness 2/2, Anger 0/1; balanced accuracy is their mean.
    assert results["per_class_accuracy"]["Happiness"] == 0.5 and results["per_class_accuracy"]["Sadness"] == 1.0
    assert results["per_class_accuracy"]["Anger"] == 0.0 and results["per_class_accuracy"]["Fear"] is None
    assert results["balanced_accuracy"] == pytest.approx(0.5)
    # F1: Happiness 2*1/(2+0+1) = 2/3, Sadness 2*2/(4+1+0) = 4/5, Anger 0; classes never seen are left out.
    assert results["macro_f1"] == pytest.approx((2 / 3 + 4 / 5 + 0) / 3)
    assert results["unparseable"] == 1 and results["unparseable_indices"] == [4]
    matrix = results["confusion_matrix"]
    assert len(matrix) == 8 and all(len(row) == 9 for row in matrix)
    happiness, sadness, anger = (EXPRESSION_LABELS.index(name) for name in ("Happiness", "Sadness", "Anger"))
    assert matrix[happiness][happiness] == 1 and matrix[happiness][sadness] == 1
    assert matrix[sadness][sadness] == 2 and matrix[anger][8] == 1
    assert sum(map(sum, matrix)) == len(references)


def test_synonyms_and_inflections_map_to_the_canonical_labels(fer_accuracy):
    answers = {
        "happy": "Happiness",
        "JOY.": "Happiness",
        "Answer: sad": "Sadness",
        "**angry**": "Anger",
        " surprised ": "Surprise",
        "afraid": "Fear",
        "Disgusted!": "Disgust",
        "contemptuous": "Contempt",
        "neutral": "Neutral",
        "sorrow": "Sadness",
    }
    results = fer_accuracy.compute(predictions=list(answers), references=list(answers.values()))
    assert results["accuracy"] == 1.0 and results["unparseable"] == 0
    assert results["parsed_predictions"] == list(answers.values())


def test_free_text_and_whole_cots_are_read_by_their_conclusion(fer_accuracy):
    from dataset_builders.exp_cot.offline_writer import refine, write_description
    from dataset_builders.exp_cot.synthetic_faces import generate_faces

    faces = list(generate_faces(8, seed=3))
    cots = [refine(write_description(face.au), face.au, face.label) for face in faces]
    results = fer_accuracy.compute(predictions=cots, references=[face.label for face in faces])
    assert results["accuracy"] == 1.0 and results["unparseable"] == 0

    texts = [
        "The person looks angry rather than sad.",  # a denied label does not count
        "Happy or sad, hard to say.",  # two readings, no winner
        "It is a face.",  # no label at all
    ]
    results = fer_accuracy.compute(predictions=texts, references=["Anger", "Happiness", "Neutral"])
    assert results["parsed_predictions"] == ["Anger", None, None]
    assert results["accuracy"] == pytest.approx(1 / 3) and results["unparseable_indices"] == [1, 2]


def test_negations_final_answers_misspellings_and_everyday_words(fer_accuracy):
    answers = {
        "Happy? No.": None,  # ruled out, and nothing else named
        "She is happy? Not really - she is sad.": "Sadness",
        "Anger? No, disgust.": "Disgust",
        "I'd rule out anger. Final: sadness": "Sadness",
        "She does not look happy at all; she seems angry.": "Anger",
        "Fearful, or rather surprised.": "Surprise",
        "hapy": "Happiness",
        "suprised": "Surprise",
        "mad": "Anger",
        "upset": "Sadness",
        "smiling broadly": "Happiness",
        "Happy or sad, hard to say.": None,  # still no winner
        "It is a face.": None,  # still nothing
    }
    results = fer_accuracy.compute(predictions=list(answers), references=["Neutral"] * len(answers))
    assert results["parsed_predictions"] == list(answers.values())
    assert results["unparseable"] == 3


def test_label_ids_on_either_side(fer_accuracy):
    results = fer_accuracy.compute(predictions=[0, 1, 7, 9], references=["Neutral", "Happiness", "Anger", "Fear"])
    assert results["parsed_predictions"] == ["Neutral", "Happiness", "Contempt", None]  # 9 is no label id
    assert results["accuracy"] == 0.5 and results["unparseable"] == 1
    results = fer_accuracy.compute(predictions=["Surprise", "fear"], references=[3, 4])
    assert results["accuracy"] == 1.0


def test_strict_reading_accepts_only_exact_label_names(fer_accuracy):
    predictions = ["Happiness", " Sadness\n", "happiness", "Anger.", "angry", 3]
    references = ["Happiness", "Sadness", "Happiness", "Anger", "Anger", "Surprise"]
    strict = fer_accuracy.compute(
        predictions=[str(p) for p in predictions[:5]], references=references[:5], strict=True
    )
    assert strict["parsed_predictions"] == ["Happiness", "Sadness", None, None, None]
    assert strict["accuracy"] == pytest.approx(2 / 5) and strict["unparseable"] == 3 and strict["strict"] is True
    lenient = fer_accuracy.compute(predictions=predictions[:5], references=references[:5])
    assert lenient["accuracy"] == 1.0
    assert fer_accuracy.compute(predictions=[3], references=["Surprise"], strict=True)["accuracy"] == 1.0


def test_seven_labels_reject_outside_references_and_count_outside_predictions_wrong(fer_accuracy):
    predictions = ["Contempt", "Happiness", "Neutral"]
    results = fer_accuracy.compute(predictions=predictions, references=["Anger", "Happiness", "Neutral"], labels=7)
    assert results["labels"] == list(SEVEN_LABELS)
    assert results["accuracy"] == pytest.approx(2 / 3)
    assert results["outside_labels"] == 1 and results["unparseable"] == 0
    matrix = results["confusion_matrix"]
    assert len(matrix) == 7 and all(len(row) == 8 for row in matrix)
    assert matrix[SEVEN_LABELS.index("Anger")][7] == 1  # Contempt lands in the "other" column

    same = fer_accuracy.compute(
        predictions=predictions, references=["Anger", "Happiness", "Neutral"], labels=SEVEN_LABELS
    )
    assert same["accuracy"] == results["accuracy"]
    subset = fer_accuracy.compute(
        predictions=["happy", "sad"], references=["Happiness", "Sadness"], labels=["sad", "joy"]
    )
    assert subset["labels"] == ["Sadness", "Happiness"] and subset["accuracy"] == 1.0

    with pytest.raises(ValueError, match=r"references\[1\] = 'Contempt'.*Filter"):
        fer_accuracy.compute(predictions=["Anger", "Contempt"], references=["Anger", "Contempt"], labels=7)


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"predictions": ["happy", "sad"], "references": ["Happiness", "banana"]}, r"references\[1\] = 'banana'"),
        ({"predictions": [1, 2], "references": [1, 12]}, r"references\[1\] = 12"),
        ({"predictions": ["happy"], "references": ["Happiness"], "labels": 5}, "labels must be 7, 8"),
        ({"predictions": ["happy"], "references": ["Happiness"], "labels": ["Happiness", "joy"]}, "twice"),
        ({"predictions": ["happy"], "references": ["Happiness"], "labels": ["Smile"]}, "'Smile' is not"),
        ({"predictions": ["happy"], "references": ["Happiness"], "strict": "yes"}, "strict must be"),
        ({"predictions": ["happy", "sad"], "references": ["Happiness"]}, "Mismatch in the number"),
        ({"predictions": [["happy"]], "references": ["Happiness"]}, "don't match the expected format"),
    ],
)
def test_malformed_inputs_get_clear_errors(arguments, message):
    import evaluate

    # In memory: on disk, evaluate keeps the lock of a computation that raised and the next one waits a second for it.
    with pytest.raises(ValueError, match=message):
        evaluate.load(METRIC_DIR, keep_in_memory=True).compute(**arguments)
