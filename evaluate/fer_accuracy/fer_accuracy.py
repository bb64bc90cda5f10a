"""FER accuracy: how often a model's expression answers match the reference labels.

Predictions may be label names ("Happiness"), the words people and models use instead ("happy", "JOY."), free text
("The face looks angry rather than sad."), a whole Exp-CoT (its Conclusion decides) or label ids. The project's
vocabulary maps every synonym and inflection to one of the eight canonical labels; an answer it cannot map counts as
wrong and is reported. `strict=True` instead reproduces the official scorer, which accepts only the exact label names.
"""

import re

import datasets
import evaluate

# The project's label table and CoT parser come along as generated flat copies beside this script
# (model_card/bundle.py), imported one by one from here: evaluate copies only the files the script imports relatively.
from .expllm_cot_text import conclusion_label, split_cot
from .expllm_vocabulary import EXPRESSION_LABELS, SEVEN_LABELS, find_answer_labels, normalize_label

_CITATION = """\
@article{lan2025expllm,
  title={ExpLLM: Towards Chain of Thought for Facial Expression Recognition},
  author={Lan, Xing and Xue, Jian and Qi, Ji and Jiang, Dongmei and Lu, Ke and Chua, Tat-Seng},
  journal={IEEE Transactions on Multimedia},
  year={2025}
}
"""

_DESCRIPTION = """\
Facial expression recognition accuracy over the eight canonical labels (Neutral, Happiness, Sadness, Surprise, Fear,
Disgust, Anger, Contempt) or a subset of them (`labels=7` for RAF-DB and AffectNet-7). Besides plain accuracy it gives
balanced (mean per-class) accuracy, macro F1, per-class accuracy, the confusion matrix and the number of answers that
name no label. Answers are read leniently through the ExpLLM vocabulary by default, or exactly (`strict=True`).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str` or `int`): the model's answers: label names, synonyms, free text or a whole Exp-CoT
        (read from its Conclusion), or label ids in the canonical order (0 Neutral ... 7 Contempt). `None` is an
        answer that was never given and counts as unparseable. One type per list: evaluate stores the list with the
        type of its first element, so an id inside a list of names arrives as text ("6") and names no label.
    references (`list` of `str` or `int`): the true labels, as names (synonyms accepted) or canonical ids.
    labels (`int` or `list` of `str`, *optional*): the label set scored: 8 (default, all), 7 (the first seven, as
        RAF-DB and AffectNet-7) or a list of label names. A reference outside the set is an error (filter the data
        first); a prediction outside it (e.g. "Contempt" on a 7-class set) counts as wrong.
    strict (`bool`, defaults to `False`): accept only answers that are exactly one of the eight names (surrounding
        white space aside), as the official scorer does; ids are accepted either way.

Returns:
    accuracy (`float`): fraction of predictions equal to their reference.
    balanced_accuracy (`float`): mean over the classes present in the references of each class's accuracy.
    macro_f1 (`float`): mean F1 over the classes of the set that occur in references or predictions.
    per_class_accuracy (`dict`): label -> accuracy on that label's references (`None` when it has none).
    confusion_matrix (`list` of `list` of `int`): rows are references, columns predictions, both in `labels` order,
        plus a last column counting predictions that are unparseable or outside `labels`.
    labels (`list` of `str`): the label set, in the order of the matrix.
    unparseable (`int`): answers that name no label (or, strict, are not exactly a label name).
    unparseable_indices (`list` of `int`): their positions.
    outside_labels (`int`): answers read as a label that is not in `labels`.
    parsed_predictions (`list`): the label read from each prediction, `None` when unparseable.
    strict (`bool`): whether answers were read strictly.

Examples:
    >>> fer_accuracy = evaluate.load("evaluate/fer_accuracy")
    >>> results = fer_accuracy.compute(
    ...     predictions=["happy", "Sadness", "The face is surprised, not afraid.", "ANGRY."],
    ...     references=["Happiness", "Sadness", "Surprise", "Anger"],
    ... )
    >>> results["accuracy"], results["unparseable"]
    (1.0, 0)

    >>> results = fer_accuracy.compute(predictions=["happy", "Sadness"], references=[1, 2], strict=True)
    >>> results["accuracy"], results["unparseable_indices"]
    (0.5, [0])

    >>> results = fer_accuracy.compute(
    ...     predictions=["Contempt", "Neutral", "no idea"], references=["Anger", "Neutral", "Fear"], labels=7
    ... )
    >>> results["accuracy"], results["outside_labels"], results["unparseable"]
    (0.3333333333333333, 1, 1)
    >>> results["confusion_matrix"][0]
    [1, 0, 0, 0, 0, 0, 0, 0]
"""


def label_set(labels):
    """The scored labels: None or 8 -> all eight, 7 -> the first seven, or a list of label names (canonical order of
    the list kept)."""
    if labels is None or labels == len(EXPRESSION_LABELS):
        return list(EXPRESSION_LABELS)
    if labels == len(SEVEN_LABELS):
        return list(SEVEN_LABELS)
    if isinstance(labels, (int, str)) or not labels:
        raise ValueError(f"labels must be 7, 8 or a non-empty list of label names, got {labels!r}")
    chosen = []
    for name in labels:
        label = normalize_label(name) if isinstance(name, str) else None
        if label is None:
            raise ValueError(f"labels: {name!r} is not an expression label; expected names from {EXPRESSION_LABELS}")
        if label in chosen:
            raise ValueError(f"labels: {name!r} names {label!r} twice")
        chosen.append(label)
    return chosen


def read_prediction(answer, strict=False):
    """The canonical label an answer gives, or None when it names none (or, leniently, several with no winner).

    Lenient reading, in order: a label id; a short answer that is one label word ("happy", "Answer: JOY"); an Exp-CoT
    with a Conclusion section, read by the CoT parser; otherwise free text, read by `read_free_answer`.
    """
    if not isinstance(answer, str):
        return normalize_label(answer)  # a label id; anything else (a bool included) names no label
    if strict:
        return answer.strip() if answer.strip() in EXPRESSION_LABELS else None
    label = normalize_label(answer)
    if label is not None:
        return label
    if split_cot(answer).conclusion:
        return conclusion_label(answer)
    return read_free_answer(answer)


# A label is ruled out by a negation shortly before it in its clause ("not happy", "rather than sad", "I'd rule out
# anger", "doesn't look angry"), or by a negative answer to it put as a question ("Happy? No.", "Anger? Not really").
_NEGATION_BEFORE = re.compile(
    r"(?:\b(?:not|no|never|nor|neither|without|hardly|isn't|aren't|wasn't|doesn't|don't|didn't|can't|cannot|"
    r"rather than|instead of|rule out|ruled out|rules out|ruling out|far from|anything but)|n't)\W+(?:\w+\W+){0,2}$",
    re.IGNORECASE,
)
_NEGATIVE_REPLY_AFTER = re.compile(r"^\s*\?\s*(?:no\b|not\b|nope\b|hardly\b|never\b)", re.IGNORECASE)
# What introduces the answer a text settles on: "Final: sadness", "so: anger", "my answer is fear", "or rather fear".
_FINAL_MARKER = re.compile(
    r"\b(?:final(?:ly)?|answer|conclusion|overall|so|therefore|thus|ultimately|actually|or rather|verdict)\b"
    r"\W+(?:\w+\W+){0,2}$",
    re.IGNORECASE,
)
_CLAUSE_BREAK = re.compile(r"[.;:!?,()\[\]—–]|\s-\s|\bbut\b", re.IGNORECASE)


def read_free_answer(text):
    """The label a free-text answer settles on, or None: every label it names (misspellings and everyday words such as
    "hapy", "mad" or "smiling broadly" included) minus those it rules out; one label left is the answer, several are
    decided by a final marker before the last one ("I'd rule out anger. Final: sadness"), else there is no winner
    ("happy or sad")."""
    affirmed = []
    for label, start, end in find_answer_labels(text):
        clause = _CLAUSE_BREAK.split(text[:start])[-1]
        if _NEGATION_BEFORE.search(clause) or _NEGATIVE_REPLY_AFTER.match(text[end:]):
            continue
        affirmed.append((label, start))
    labels = {label for label, _ in affirmed}
    if len(labels) == 1:
        return labels.pop()
    if labels:
        label, start = affirmed[-1]
        before = text[max(0, start - 40) : start]
        if _FINAL_MARKER.search(before):
            return label
    return None


def read_reference(reference, position):
    """The canonical label of a reference (name, synonym or id); a clear error when there is none."""
    label = normalize_label(reference)
    if label is None:
        raise ValueError(
            f"references[{position}] = {reference!r} is not an expression label: expected a name from "
            f"{EXPRESSION_LABELS} or an id 0..{len(EXPRESSION_LABELS) - 1}"
        )
    return label


def _f1(true_positives, false_positives, false_negatives):
    denominator = 2 * true_positives + false_positives + false_negatives
    return 2 * true_positives / denominator if denominator else None


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class FerAccuracy(evaluate.Metric):
    def _info(self):
        # Names or ids on either side: evaluate picks the first feature set that fits the first example.
        options = []
        for prediction_type in ("string", "int64"):
            for reference_type in ("string", "int64"):
                options.append(
                    datasets.Features(
                        {"predictions": datasets.Value(prediction_type), "references": datasets.Value(reference_type)}
                    )
                )
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=options,
            reference_urls=["https://github.com/starhiking/ExpLLM-TMM"],
        )

    def _compute(self, predictions, references, labels=None, strict=False):
        scored = label_set(labels)
        if not isinstance(strict, bool):
            raise ValueError(f"strict must be True or False, got {strict!r}")
        if not references:
            raise ValueError("no references: FER accuracy needs at least one prediction-reference pair")
        truths = [read_reference(reference, i) for i, reference in enumerate(references)]
        outside = sorted({(i, label) for i, label in enumerate(truths) if label not in scored})
        if outside:
            shown = ", ".join(f"references[{i}] = {label!r}" for i, label in outside[:5])
            raise ValueError(
                f"{len(outside)} reference(s) outside labels={scored}: {shown}{' ...' if len(outside) > 5 else ''}. "
                "Filter those records out first (AffectNet-7 is the validation set without Contempt)."
            )
        parsed = [read_prediction(prediction, strict) for prediction in predictions]

        column = {label: i for i, label in enumerate(scored)}
        other = len(scored)  # unparseable, or a label outside the set
        matrix = [[0] * (len(scored) + 1) for _ in scored]
        for truth, label in zip(truths, parsed):
            matrix[column[truth]][column.get(label, other)] += 1

        per_class_accuracy, f1_scores = {}, []
        for i, label in enumerate(scored):
            support = sum(matrix[i])
            true_positives = matrix[i][i]
            predicted = sum(row[i] for row in matrix)
            per_class_accuracy[label] = true_positives / support if support else None
            f1 = _f1(true_positives, predicted - true_positives, support - true_positives)
            if f1 is not None:
                f1_scores.append(f1)
        present = [accuracy for accuracy in per_class_accuracy.values() if accuracy is not None]
        correct = sum(matrix[i][i] for i in range(len(scored)))
        unparseable = [i for i, label in enumerate(parsed) if label is None]
        return {
            "accuracy": correct / len(truths),
            "balanced_accuracy": sum(present) / len(present),
            "macro_f1": sum(f1_scores) / len(f1_scores),
            "per_class_accuracy": per_class_accuracy,
            "confusion_matrix": matrix,
            "labels": scored,
            "unparseable": len(unparseable),
            "unparseable_indices": unparseable,
            "outside_labels": sum(label is not None and label not in column for label in parsed),
            "parsed_predictions": parsed,
            "strict": strict,
        }
