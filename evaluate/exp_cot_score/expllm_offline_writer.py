# Generated from dataset_builders/exp_cot/offline_writer.py by `python -m model_card.bundle`: do not edit.
"""The offline CoT writer: plays the LLM's part in every Exp-CoT Engine process from the AUs (and the label) alone.

    write_description(au, target_label=None)   AU2Des: a step-by-step analysis of the face
    infer_expression(au)                        the label the AUs point to, with a score per label
    classify_description(description)           Des2Exp: the label a description concludes, read from its text only
    refine(description, au, label)              Format Refinement: the three-part Exp-CoT, at most COT_MAX_WORDS words

Everything is deterministic: the same AUs give the same text. Wording still varies across faces (a hash of the AU
vector picks among phrasings) so that a corpus is not one sentence repeated. What each AU suggests is read from the
per-expression prototypes of the vocabulary: an AU suggests the expressions whose prototype uses it, strongest first.
Every text the writer produces names every positive AU with its side and its degree word, describes nothing that is
absent, and passes `verification.verify_description` for the label it concludes, even under `STRICT`.
"""

import hashlib
import math
from dataclasses import dataclass

from .expllm_cot_text import conclusion_label, format_cot
from .expllm_vocabulary import (
    ACTION_UNITS,
    AU_NAMES,
    COT_MAX_WORDS,
    DEGREE_BANDS,
    EXPRESSION_LABELS,
    EXPRESSION_PROTOTYPES,
    LABEL_TO_ID,
    check_au_vector,
    degree_of,
    normalize_label,
    prototype_vector,
)

# ---------------------------------------------------------------------------------------------------------------------
# What the vocabulary already knows: what each AU suggests, and how to say each degree


def _suggestions():
    """AU name -> the labels whose prototype uses that AU, strongest use first."""
    uses = {name: [] for name in AU_NAMES}
    for label, prototype in EXPRESSION_PROTOTYPES.items():
        for name, weight in prototype.items():
            uses[name].append((-weight, LABEL_TO_ID[label], label))
    return {name: tuple(label for _, _, label in sorted(pairs)) for name, pairs in uses.items()}


AU_SUGGESTS = _suggestions()


def _degree_words():
    """Band -> (adverbs, adjectives) from DEGREE_BANDS, the first few of each (the most usual), skipping words that
    also name a movement ("wide") so that a degree word never reads as a movement."""
    movement_words = {word for unit in ACTION_UNITS for word in unit.movement_words}
    words = {}
    for band, _, _, band_words in DEGREE_BANDS:
        usable = [
            w
            for w in band_words
            if " " not in w and w not in movement_words and w.removesuffix("ly") not in movement_words
        ]
        adverbs = [w for w in usable if w.endswith("ly")][:4]
        adjectives = [w for w in usable if not w.endswith("ly")][:4]
        words[band] = (tuple(adverbs), tuple(adjectives))
    return words


DEGREE_WORDS = _degree_words()

# A face counts as fully expressive from this peak intensity on; below it the neutral reading gains weight.
EXPRESSIVE_PEAK = 0.3

# ---------------------------------------------------------------------------------------------------------------------
# Phrasings. The writer's own English; `{...}` fields are filled in code. Chosen per face by a hash, never at random.

GROUP_FRAMES = (  # one group of movements and the expression they suggest
    "{movements}, which {verb} {emotion}.",
    "Pointing to {emotion}: {movements}.",
    "Signs of {emotion}: {movements}.",
    "Cues of {emotion}: {movements}.",
)
GROUP_VERBS = {1: ("suggests", "points to", "fits"), 2: ("suggest", "point to", "fit")}
UNGROUPED_FRAMES = (  # movements that suggest no expression in particular
    "{movements}, with no particular emotional meaning.",
    "Without a link to any one expression: {movements}.",
)
ALSO_SEEN = (" (also typical of {emotions})", " (also found in {emotions})")
REST_OBSERVATION = (
    "Every action unit is at zero; the face is at rest.",
    "No action unit is active at all, so the face is at rest.",
)
CORE_FRAMES = (
    "Taken together, the core of {emotion} lies in {movements}",
    "The dominant reading is {emotion}, carried by {movements}",
    "The weight of the evidence lies with {movements}, the pattern of {emotion}",
)
SECONDARY_FRAMES = (
    ", while the remaining cues ({movements}) lean toward {emotions} as a secondary note.",
    "; the other cues ({movements}) add a note of {emotions} without changing the main reading.",
    ", and the rest ({movements}) brings in a trace of {emotions} that stays in the background.",
)
CONSISTENT_ENDINGS = (", with nothing pulling the other way.", ", and every movement agrees.", ".")
NEUTRAL_INTERPRETATIONS = (
    "The movements stay weak and scattered, so no emotion builds up; the face reads as calm.",
    "Activity is low and does not come together into any one emotion, which leaves a calm, resting face.",
)
REST_INTERPRETATION = "With no movement at all, no emotion is being signalled and the face reads as calm."
UNLINKED_ENDINGS = (", with no emotional weight from {movements}.", "; nothing either way comes from {movements}.")
BRIEF_UNGROUPED = "Of no particular emotion"
BRIEF_CONCLUSIONS = ("Final reading: {label}.", "The expression is {label}.")
REVEALED_SUPPORT = (
    "Read as {emotion}, the decisive evidence is {movements}",
    "For {emotion}, the telling evidence is {movements}",
)
REVEALED_NO_SUPPORT = (
    "No single movement is specific to {emotion}; the reading rests on the configuration as a whole",
    "No movement here is typical of {emotion} alone; the configuration as a whole carries that reading",
)
REVEALED_NEUTRAL = (
    "Although {movements} could hint at {emotions}, the movements do not come together into one distinct emotion",
    "Despite {movements}, which alone might suggest {emotions}, the movements do not build one distinct emotion",
)
REVEALED_OTHERS = (
    "; the remaining cues ({movements}) point elsewhere, toward {emotions}, and are outweighed.",
    ", although the other cues ({movements}) would rather suggest {emotions}.",
)
CONCLUSIONS = (
    "The expression is {label}.",
    "Final reading: {label}.",
    "The face expresses {label}.",
    "Overall, the expression is best labelled {label}.",
)
STEP_TITLES = ("Step 1, each movement and what each suggests", "Step 2, how the movements combine")

# ---------------------------------------------------------------------------------------------------------------------
# Inputs


def _checked_label(label, argument):
    canonical = normalize_label(label)
    if canonical is None:
        raise ValueError(f"{argument} {label!r} is not one of {', '.join(EXPRESSION_LABELS)} (or a synonym)")
    return canonical


class _Chooser:
    """Deterministic choice among phrasings, seeded by the face (and what is being written)."""

    def __init__(self, au, *salt):
        key = ",".join(f"{value:.4f}" for value in au) + "|" + "|".join(str(part) for part in salt)
        self.seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")

    def pick(self, options, slot):
        return options[(self.seed // (7**slot)) % len(options)]


# ---------------------------------------------------------------------------------------------------------------------
# Des2Exp and the expression the AUs point to


def infer_expression(au, labels=EXPRESSION_LABELS):
    """(label, scores): the expression an AU vector points to, by cosine similarity with each label's prototype,
    weighed by how expressive the face is (its peak intensity against EXPRESSIVE_PEAK); Neutral scores the rest."""
    values = check_au_vector(au)
    labels = tuple(_checked_label(label, "label") for label in labels)
    engagement = min(1.0, max(values) / EXPRESSIVE_PEAK)
    norm = math.sqrt(sum(v * v for v in values))
    scores = {}
    for label in labels:
        if label == "Neutral":
            scores[label] = 1.0 - engagement
            continue
        prototype = prototype_vector(label)
        prototype_norm = math.sqrt(sum(p * p for p in prototype))
        cosine = sum(v * p for v, p in zip(values, prototype)) / (norm * prototype_norm) if norm else 0.0
        scores[label] = engagement * cosine
    best = max(labels, key=lambda label: (round(scores[label], 12), -labels.index(label)))
    return best, {label: round(score, 4) for label, score in scores.items()}


def classify_description(description):
    """Des2Exp: the label a description concludes, from its text alone; None when it settles on no single label."""
    if not isinstance(description, str):
        raise ValueError(f"description must be a string, got {type(description).__name__}")
    return conclusion_label(description)


# ---------------------------------------------------------------------------------------------------------------------
# Saying one movement


@dataclass(frozen=True)
class _Style:
    """How roomy a text may be: the writer tries the roomiest style first and tightens until the word limit holds."""

    notes: bool  # add which other expressions each movement is also typical of
    compact: bool  # noun phrases ("a mild left brow raise") instead of clauses ("the left brow is mildly raised")
    brief: bool  # the shortest frames, no articles


STYLES = (
    _Style(True, False, False),
    _Style(False, False, False),
    _Style(False, True, False),
    _Style(False, True, True),
)


def _au_noun(unit, brief=False):
    """The AU's name as a noun phrase without its side: "eye close", "lip corner pull" ("corner pull" when brief)."""
    words = [word.lower() for word in unit.name.split() if word.lower() not in ("left", "right")]
    if brief and words[:2] == ["lip", "corner"]:
        words = words[1:]
    return " ".join(words)


def _twin(unit):
    """The other side's AU of a bilateral pair ("Left Brow Raise" -> "Right Brow Raise"); None for midline units and
    for the jaw slides, which are two directions rather than two sides."""
    if unit.side is None or unit.part == "jaw":
        return None
    other = "Right" if unit.side == "left" else "Left"
    return next((u for u in ACTION_UNITS if u.name == unit.name.replace(unit.side.capitalize(), other, 1)), None)


def _statements(values, pair_sides):
    """Active AUs as statements [(units, intensities)], in AU order. Both sides of a pair in one band make one
    statement; with `pair_sides`, both sides in different bands do too ("a slight left and mild right brow raise")."""
    statements = []
    handled = set()
    for unit in ACTION_UNITS:
        if values[unit.index] <= 0 or unit.index in handled:
            continue
        twin = _twin(unit)
        if twin is not None and values[twin.index] > 0:
            same_band = degree_of(values[twin.index]) == degree_of(values[unit.index])
            if same_band or pair_sides:
                handled.add(twin.index)
                statements.append(((unit, twin), (values[unit.index], values[twin.index])))
                continue
        statements.append(((unit,), (values[unit.index],)))
    return statements


def _article(word):
    return "an" if word[0] in "aeiou" else "a"


def _phrase(statement, chooser, slot, style):
    """One movement with its side and degree, in words the verifier reads back as that AU."""
    units, intensities = statement
    unit = units[0]
    bands = [degree_of(intensity) for intensity in intensities]
    adverb = chooser.pick(DEGREE_WORDS[bands[0]][0], slot)
    adjectives = [chooser.pick(DEGREE_WORDS[band][1], slot) for band in bands]
    article = "" if style.brief else f"{_article(adjectives[0])} "
    if unit.part == "jaw" and unit.side is not None:  # a jaw slide: its side is its direction
        if style.compact:
            return f"{article}{adjectives[0]} {unit.side}ward jaw slide"
        return f"the jaw {adverb} slides {unit.side}ward"
    if style.compact:
        noun = _au_noun(unit, style.brief)
        if len(units) == 1:
            side = f"{unit.side} " if unit.side else ""
            return f"{article}{adjectives[0]} {side}{noun}"
        if bands[0] == bands[1]:
            return f"{article}{adjectives[0]} bilateral {noun}"
        return f"{article}{adjectives[0]} {units[0].side} and {adjectives[1]} {units[1].side} {noun}"
    if len(units) == 2:
        subject = f"each {unit.part}"
    else:
        subject = f"the {unit.side} {unit.part}" if unit.side else f"the {unit.part}"
    verb, _, rest = unit.movement.partition(" ")
    if verb == "is":  # "is lowered" -> "is mildly lowered"
        return f"{subject} is {adverb} {rest}"
    return f"{subject} {adverb} {unit.movement}"


def _join(items):
    if len(items) == 1:
        return items[0]
    if len(items) == 2:
        return f"{items[0]}, and {items[1]}"  # a comma keeps each movement in its own clause
    return ", ".join(items[:-1]) + f", and {items[-1]}"


def _and_list(items):
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + f" and {items[-1]}"


def _capitalise(text):
    return text[:1].upper() + text[1:]


def _noun_list(statements):
    """Movements named briefly for the interpretation, without degree words: "eye close and lip corner pull"."""
    return _and_list(list(dict.fromkeys(_au_noun(units[0]) for units, _ in statements)))


# ---------------------------------------------------------------------------------------------------------------------
# The analysis


def _plan(values, label, style):
    """Statements grouped by the expression they are cited for: those supporting `label`, then the others by the
    expression they suggest most, then those suggesting none. [(emotion or None, statements)]."""
    groups = {}
    for statement in _statements(values, pair_sides=style.compact):
        suggests = AU_SUGGESTS[statement[0][0].name]
        key = label if label in suggests else (suggests[0] if suggests else None)
        groups.setdefault(key, []).append(statement)
    order = sorted(groups, key=lambda key: (key != label, key is None, LABEL_TO_ID.get(key, 99)))
    return [(key, groups[key]) for key in order]


def _observations(plan, chooser, style):
    """Key Observations: every movement with side and degree, and the expression each suggests."""
    if not plan:
        return chooser.pick(REST_OBSERVATION, 0)
    sentences = []
    slot = 1
    for position, (emotion, statements) in enumerate(plan):
        phrases = []
        for statement in statements:
            phrase = _phrase(statement, chooser, slot, style)
            slot += 1
            others = [e.lower() for e in AU_SUGGESTS[statement[0][0].name] if e != emotion]
            if style.notes and others:
                phrase += chooser.pick(ALSO_SEEN, slot).format(emotions=_and_list(others))
            phrases.append(phrase)
        movements = ", ".join(phrases) if style.brief else _join(phrases)
        if style.brief:
            title = emotion if emotion is not None else BRIEF_UNGROUPED
            sentences.append(f"{title}: {movements}.")
        elif emotion is None:
            sentences.append(_capitalise(chooser.pick(UNGROUPED_FRAMES, 20 + position).format(movements=movements)))
        else:
            frame = chooser.pick(GROUP_FRAMES, 20 + position)
            verb = chooser.pick(GROUP_VERBS[1 if len(statements) == 1 else 2], 30 + position)
            sentences.append(_capitalise(frame.format(movements=movements, verb=verb, emotion=emotion.lower())))
    return " ".join(sentences)


def _interpretation(plan, label, inferred, chooser, style):
    """Overall Emotional Interpretation: the movements combined, the dominant emotion and how the others relate."""
    if not plan:
        return REST_INTERPRETATION
    supporting = [s for emotion, group in plan if emotion == label for s in group]
    other_statements = [s for emotion, group in plan if emotion != label for s in group]
    named = [emotion.lower() for emotion, _ in plan if emotion not in (label, None)]
    other_emotions = _and_list(named) if named else ""
    if style.brief:
        return f"{label} dominates" + ("; other cues stay secondary." if other_statements else ".")
    if label == "Neutral":
        if label == inferred or not other_emotions:
            return chooser.pick(NEUTRAL_INTERPRETATIONS, 40)
        frame = chooser.pick(REVEALED_NEUTRAL, 40)
        return (
            frame.format(movements=_noun_list(other_statements), emotions=other_emotions)
            + ", so the face reads as calm."
        )
    if label == inferred:
        text = chooser.pick(CORE_FRAMES, 40).format(movements=_noun_list(supporting), emotion=label.lower())
        if other_statements:
            ending = chooser.pick(SECONDARY_FRAMES if other_emotions else UNLINKED_ENDINGS, 41)
            return text + ending.format(movements=_noun_list(other_statements), emotions=other_emotions)
        return text + chooser.pick(CONSISTENT_ENDINGS, 41)
    # The label was revealed and differs from what the AUs point to: say honestly what supports it and what does not.
    if supporting:
        text = chooser.pick(REVEALED_SUPPORT, 40).format(emotion=label.lower(), movements=_noun_list(supporting))
    else:
        text = chooser.pick(REVEALED_NO_SUPPORT, 40).format(emotion=label.lower())
    if other_emotions:
        ending = chooser.pick(REVEALED_OTHERS, 41)
        return text + ending.format(movements=_noun_list(other_statements), emotions=other_emotions)
    return text + "."


def _compose(values, label, style):
    """The three parts (observations, interpretation, conclusion) for a face and the label to conclude."""
    inferred, _ = infer_expression(values)
    chooser = _Chooser(values, label)
    plan = _plan(values, label, style)
    return (
        _observations(plan, chooser, style),
        _interpretation(plan, label, inferred, chooser, style),
        chooser.pick(BRIEF_CONCLUSIONS if style.brief else CONCLUSIONS, 50).format(label=label.lower()),
    )


def write_description(au, *, target_label=None):
    """AU2Des: a step-by-step analysis of the face from its AUs alone, ending in a "Conclusion:" line.

    Without `target_label` the analysis concludes what the AUs point to (`infer_expression`). With it (the label
    revealed in Feedback Reflection) it concludes that label, stating which movements support it and which point
    elsewhere.
    """
    values = check_au_vector(au)
    label = infer_expression(values)[0] if target_label is None else _checked_label(target_label, "target_label")
    observations, interpretation, conclusion = _compose(values, label, STYLES[0])
    steps = [f"{title}: {text}" for title, text in zip(STEP_TITLES, (observations, interpretation))]
    return "\n".join(steps + [f"Conclusion: {conclusion}"])


def refine(description, au, label):
    """Format Refinement: the three-part Exp-CoT for this face and label, at most COT_MAX_WORDS words, no personal
    pronouns, no AU numbers. The offline writer rebuilds it from the AUs and the label (which the engine settled on
    from `description`), in the roomiest style that fits the word limit."""
    if not isinstance(description, str):
        raise ValueError(f"description must be a string, got {type(description).__name__}")
    values = check_au_vector(au)
    label = _checked_label(label, "label")
    for style in STYLES:
        cot = format_cot(*_compose(values, label, style))
        words = len(cot.split())
        if words <= COT_MAX_WORDS:
            return cot
    raise ValueError(f"the Exp-CoT for this face needs {words} words even in the briefest style, over {COT_MAX_WORDS}")


def write_caption(au):
    """A one-sentence caption of the visible movements, strongest first, for stage-1 image-caption pairs: it names
    what the face does without naming an expression."""
    values = check_au_vector(au)
    statements = sorted(_statements(values, pair_sides=False), key=lambda statement: -max(statement[1]))
    if not statements:
        return "A face at rest, with no visible movement."
    chooser = _Chooser(values, "caption")
    phrases = [_phrase(statement, chooser, slot, STYLES[1]) for slot, statement in enumerate(statements[:4])]
    return f"A face where {_join(phrases)}."
