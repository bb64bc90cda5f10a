# Generated from modeling_expllm/vocabulary.py by `python -m model_card.bundle`: do not edit.
"""The words ExpLLM speaks: expression labels and their synonyms, the 24 FEAFA action units, degree words,
per-expression AU prototypes, the Exp-CoT section headers and the model's default questions.

Every part of the release (processor, data engine, dataset builder, training, metrics) imports this module, so each
label, AU name and question is written down once. It is plain Python with no dependencies because `save_pretrained`
copies it into every remote-code model folder next to the processor that uses it.
"""

import math
import re
from dataclasses import dataclass

# --------------------------------------------------------------------------------------------------------------------
# Expression labels

# Order of the official evaluation; equals AffectNet's class indices 0-7. RAF-DB and AffectNet-7 use the first seven.
EXPRESSION_LABELS = ("Neutral", "Happiness", "Sadness", "Surprise", "Fear", "Disgust", "Anger", "Contempt")
SEVEN_LABELS = EXPRESSION_LABELS[:7]
LABEL_TO_ID = {label: index for index, label in enumerate(EXPRESSION_LABELS)}

# Words people and models use for each label: the name, its inflections and common synonyms. Matching is on whole
# words, case-insensitive. Words that name a facial movement rather than a feeling ("smile", "frown") are not here:
# they are evidence for a label, not a statement of it.
# fmt: off
LABEL_SYNONYMS = {
    "Neutral": ("neutral", "neutrally", "neutrality", "expressionless", "impassive", "no emotion", "no expression"),
    "Happiness": (
        "happiness", "happy", "happier", "happiest", "happily", "joy", "joyful", "joyous", "joyfully", "glad",
        "gladness", "cheerful", "cheerfulness", "delight", "delighted", "elated", "elation",
    ),
    "Sadness": (
        "sadness", "sad", "sadder", "saddest", "sadly", "sorrow", "sorrowful", "unhappy", "unhappiness", "grief",
        "grieving", "melancholy", "melancholic", "downcast", "dejected", "dejection",
    ),
    "Surprise": (
        "surprise", "surprised", "surprising", "surprisingly", "astonished", "astonishment", "amazed", "amazement",
        "startled", "shocked", "shock",
    ),
    "Fear": (
        "fear", "fearful", "fearfully", "afraid", "scared", "frightened", "fright", "terrified", "terror", "anxious",
        "anxiety", "panic", "panicked",
    ),
    "Disgust": (
        "disgust", "disgusted", "disgusting", "disgustful", "revulsion", "revolted", "repulsed", "repulsion",
        "distaste",
    ),
    "Anger": (
        "anger", "angry", "angrier", "angriest", "angrily", "angered", "furious", "fury", "rage", "enraged", "irate",
        "wrath", "irritated", "irritation",
    ),
    "Contempt": (
        "contempt", "contemptuous", "contemptuously", "scorn", "scornful", "disdain", "disdainful", "sneering",
    ),
}
# fmt: on

# Words an *answer* to the label question may use besides those: common misspellings and everyday words. They are read
# in answers only (`find_answer_labels`), never in a CoT's statements about a face, where "smiling" is a movement.
# fmt: off
ANSWER_WORDS = {
    "Neutral": ("nuetral", "neutal", "netural", "nutral", "calm", "emotionless", "blank expression", "poker face"),
    "Happiness": ("hapy", "happpy", "hapyy", "happines", "hapiness", "smiling", "smiling broadly", "grinning",
                  "beaming", "cheery", "pleased"),
    "Sadness": ("sadnes", "saddness", "sadnesss", "upset", "crying", "tearful", "gloomy", "heartbroken", "miserable"),
    "Surprise": ("suprised", "surprized", "suprise", "surpise", "surpised", "supprised", "stunned", "astounded"),
    "Fear": ("fearfull", "afriad", "scaried", "nervous", "worried", "horrified", "spooked"),
    "Disgust": ("digust", "discust", "disgustd", "digusted", "grossed out", "gross", "nauseated"),
    "Anger": ("angy", "angery", "anrgy", "agry", "mad", "pissed", "livid", "annoyed", "fuming"),
    "Contempt": ("contemp", "contemt", "smug", "condescending", "dismissive", "sneer"),
}
# fmt: on

_SYNONYM_TO_LABEL = {word: label for label, words in LABEL_SYNONYMS.items() for word in words}
_ANSWER_WORD_TO_LABEL = {**{w: label for label, words in ANSWER_WORDS.items() for w in words}, **_SYNONYM_TO_LABEL}
_ANSWER_WORD_PATTERN = re.compile(
    r"\b(" + "|".join(re.escape(word) for word in sorted(_ANSWER_WORD_TO_LABEL, key=len, reverse=True)) + r")\b",
    re.IGNORECASE,
)
# Longest first so that "no emotion" wins over a shorter word inside it.
_LABEL_WORD_PATTERN = re.compile(
    r"\b(" + "|".join(re.escape(word) for word in sorted(_SYNONYM_TO_LABEL, key=len, reverse=True)) + r")\b",
    re.IGNORECASE,
)


def normalize_label(answer):
    """Map a short answer ("happy", " Happiness.", "ANGRY", "label: joy") to its canonical label, or None.

    The whole answer must be one label word (optionally wrapped in punctuation, quotes or markdown emphasis, and
    optionally introduced by a short prefix such as "Answer:"); anything longer is left to `find_labels`.
    """
    if isinstance(answer, int) and not isinstance(answer, bool):
        return EXPRESSION_LABELS[answer] if 0 <= answer < len(EXPRESSION_LABELS) else None
    if not isinstance(answer, str):
        return None
    text = answer.strip().strip("*_`'\"“”‘’ .,!;:()[]").lower()
    text = re.sub(r"^(answer|label|expression|emotion|prediction)\s*[:\-]\s*", "", text)
    text = text.strip("*_`'\"“”‘’ .,!;:")
    return _SYNONYM_TO_LABEL.get(re.sub(r"\s+", " ", text))


def find_labels(text):
    """Every label the text names, in order of appearance, as (label, start, end) triples."""
    return [(_SYNONYM_TO_LABEL[m.group(1).lower()], m.start(), m.end()) for m in _LABEL_WORD_PATTERN.finditer(text)]


def find_answer_labels(text):
    """Like `find_labels`, for an answer to the label question: also its misspellings and everyday words."""
    pattern, table = _ANSWER_WORD_PATTERN, _ANSWER_WORD_TO_LABEL
    return [(table[m.group(1).lower()], m.start(), m.end()) for m in pattern.finditer(text)]


# -------------------------------------------------------------------------------------------------------------------
# FEAFA action units


@dataclass(frozen=True)
class ActionUnit:
    """One of the 24 FEAFA action units: what moves (`part`), how (`movement`) and on which side of the subject."""

    index: int
    name: str
    side: str | None  # "left" / "right" is the subject's own side, not the image's; None for midline units
    part: str  # canonical part name used in generated text
    part_words: tuple  # words that name the part in free text
    movement: str  # canonical verb phrase used in generated text
    movement_words: tuple  # word stems that describe the movement in free text
    # Words that name the whole action on their own, the part implied ("squint", "smile", "frown"); none by default.
    cue_words: tuple = ()


# fmt: off
_EYE = ("eye", "eyes", "eyelid", "eyelids", "lid", "lids")
_BROW = ("brow", "brows", "eyebrow", "eyebrows")
_JAW = ("jaw", "mouth")
_CORNER = (
    "lip corner", "lip corners", "mouth corner", "mouth corners", "corner of the mouth", "corners of the mouth",
    "corner of the lips", "corners of the lips", "corner of the lip", "corners of the lip", "corner", "corners", "lip",
    "lips",
)
# A bare "lip(s)" may mean any lip unit; the movement word then decides which ("lip sucking", "lip stretching").
_UPPER_LIP = ("upper lip", "upper and lower lip", "upper and lower lips", "lip", "lips")
_LOWER_LIP = ("lower lip", "upper and lower lip", "upper and lower lips", "lip", "lips")
_CLOSE = ("close", "closed", "closing", "closure", "shut", "squint", "narrow", "blink", "squeeze", "droop")
# No bare "open": "the eyes are open" mostly says they are not closed, not that the lids are raised.
_WIDEN = (
    "raise", "raised", "raising", "widen", "widened", "wide", "lift", "lifted", "elevat", "rise", "rose", "upward",
)
_LOWER = (
    "lower", "lowered", "lowering", "furrow", "knit", "draw", "drawn", "pull down", "pulled down", "frown", "down",
    "downward", "pinch", "scowl", "downward pull", "pulled downward", "pull downward",
)
_RAISE = ("raise", "raised", "raising", "lift", "lifted", "lifting", "elevat", "arch", "up", "rise", "rose", "upward")
_SLIDE = ("slide", "slid", "sliding", "shift", "shifted", "sideways", "lateral", "leftward", "rightward")
_PULL = (
    "pull", "pulled", "pulling", "upturn", "upward", "raise", "raised", "lift", "lifted", "smile", "smiling", "rise",
    "rose", "elevat", "uplift", "curve", "up", "drawn up", "drawn upward", "draw upward",
)
_STRETCH = ("stretch", "stretched", "stretching", "widen", "widened", "tense", "tightened", "pulled back", "retract")
_SUCK = (
    "suck", "sucked", "sucking", "roll", "rolled", "tuck", "tucked", "press", "pressed", "compress", "inward", "tight",
    "tighten", "retract", "tense",
)
_SMILE = ("smile", "smiling", "grin")

ACTION_UNITS = (
    ActionUnit(0, "Left Eye Close", "left", "eye", _EYE, "closes", _CLOSE, ("squint",)),
    ActionUnit(1, "Right Eye Close", "right", "eye", _EYE, "closes", _CLOSE, ("squint",)),
    ActionUnit(2, "Left Lid Raise", "left", "upper eyelid", _EYE, "rises", _WIDEN, ("wide eyed",)),
    ActionUnit(3, "Right Lid Raise", "right", "upper eyelid", _EYE, "rises", _WIDEN, ("wide eyed",)),
    ActionUnit(4, "Left Brow Lower", "left", "brow", _BROW, "is lowered", _LOWER, ("frown", "furrow", "scowl")),
    ActionUnit(5, "Right Brow Lower", "right", "brow", _BROW, "is lowered", _LOWER, ("frown", "furrow", "scowl")),
    ActionUnit(6, "Left Brow Raise", "left", "brow", _BROW, "is raised", _RAISE),
    ActionUnit(7, "Right Brow Raise", "right", "brow", _BROW, "is raised", _RAISE),
    ActionUnit(
        8, "Jaw Drop", None, "jaw", _JAW, "drops", ("drop", "dropped", "open", "opened", "lower", "part", "slack"),
        ("gape", "agape", "open mouthed"),
    ),
    ActionUnit(9, "Jaw Slide Left", "left", "jaw", _JAW, "slides to the left", _SLIDE),
    ActionUnit(10, "Jaw Slide Right", "right", "jaw", _JAW, "slides to the right", _SLIDE),
    ActionUnit(11, "Left Lip Corner Pull", "left", "lip corner", _CORNER, "is pulled up", _PULL, _SMILE),
    ActionUnit(12, "Right Lip Corner Pull", "right", "lip corner", _CORNER, "is pulled up", _PULL, _SMILE),
    ActionUnit(13, "Left Lip Corner Stretch", "left", "lip corner", _CORNER, "is stretched outward", _STRETCH),
    ActionUnit(14, "Right Lip Corner Stretch", "right", "lip corner", _CORNER, "is stretched outward", _STRETCH),
    ActionUnit(15, "Upper Lip Suck", None, "upper lip", _UPPER_LIP, "is sucked in", _SUCK, ("suck", "suction")),
    ActionUnit(16, "Lower Lip Suck", None, "lower lip", _LOWER_LIP, "is sucked in", _SUCK, ("suck", "suction")),
    ActionUnit(17, "Jaw Thrust", None, "jaw", _JAW, "thrusts forward", ("thrust", "forward", "jut", "push")),
    ActionUnit(
        18, "Upper Lip Raise", None, "upper lip", _UPPER_LIP, "is raised", _RAISE + ("curl", "sneer"),
        ("sneer", "snarl", "teeth"),
    ),
    ActionUnit(
        19, "Lower Lip Depress", None, "lower lip", _LOWER_LIP, "is pulled down",
        _LOWER + ("depress", "droop", "sag", "downturn", "drop"),
    ),
    ActionUnit(20, "Chin Raise", None, "chin", ("chin",), "is raised", _RAISE + ("push", "pushed", "tense")),
    ActionUnit(
        21, "Lip Pucker", None, "lips", ("lip", "lips", "mouth"), "pucker", ("pucker", "purse", "pout"),
        ("pucker", "purse", "pout"),
    ),
    ActionUnit(
        22, "Cheeks Puff", None, "cheeks", ("cheek", "cheeks"), "puff out", ("puff", "inflat", "swell"), ("puff",)
    ),
    ActionUnit(
        23, "Nose Wrinkle", None, "nose", ("nose", "nasal", "nostril", "nostrils"), "wrinkles",
        ("wrinkl", "scrunch", "crinkl"), ("wrinkl", "scrunch"),
    ),
)
# fmt: on
AU_NAMES = tuple(unit.name for unit in ACTION_UNITS)
NUM_ACTION_UNITS = len(ACTION_UNITS)
AU_INDEX = {unit.name: unit.index for unit in ACTION_UNITS}

# Degree words, by intensity band. An AU counts as present above PRESENCE_THRESHOLD; its degree word is the band its
# intensity falls in. The bands cut FEAFA's 0..1 scale where the official engine outputs change their wording: over
# the 3,068 official RAF-DB descriptions, the intensity densities of AUs described with adjacent bands' words cross at
# about 0.1 (slight | mild), 0.2 (mild | moderate) and 0.4 (moderate | strong). "notable" and "noticeable" sit with the
# strong words because that is how those texts use them (median intensity 0.41-0.48, against 0.26 for "moderate").
PRESENCE_THRESHOLD = 0.0
# fmt: off
DEGREE_BANDS = (
    ("slight", 0.0, 0.1, (
        "slight", "slightly", "subtle", "subtly", "minimal", "minimally", "faint", "barely", "small",
    )),
    ("mild", 0.1, 0.2, ("mild", "mildly", "gentle", "gently", "light", "lightly", "modest", "modestly")),
    ("moderate", 0.2, 0.4, ("moderate", "moderately", "clear")),
    ("strong", 0.4, float("inf"), (
        "strong", "strongly", "pronounced", "marked", "markedly", "significant", "significantly", "intense",
        "intensely", "substantial", "considerable", "extreme", "wide", "widely", "high", "noticeable", "noticeably",
        "notable", "notably",
    )),
)
# fmt: on
DEGREE_NAMES = tuple(band[0] for band in DEGREE_BANDS)


def degree_of(intensity):
    """The band name ("slight", "mild", "moderate", "strong") of a positive AU intensity."""
    if not 0.0 <= intensity < float("inf"):
        raise ValueError(f"AU intensity must be a finite number >= 0, got {intensity!r}")
    return next(name for name, _, high, _ in DEGREE_BANDS if intensity <= high)


def check_au_vector(au, what="au"):
    """The 24 intensities of an AU vector in FEAFA order (any sequence of real numbers, numpy's included) as floats,
    or a ValueError naming what is wrong: `what` is how the message calls the vector."""
    if isinstance(au, (str, bytes)) or not hasattr(au, "__len__"):
        raise ValueError(f"{what} must be a sequence of {NUM_ACTION_UNITS} intensities, got {type(au).__name__}")
    if len(au) != NUM_ACTION_UNITS:
        raise ValueError(f"{what} must hold {NUM_ACTION_UNITS} intensities (FEAFA order), got {len(au)}")
    values = []
    for unit, value in zip(ACTION_UNITS, au):
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = None
        if number is None or isinstance(value, bool):
            raise ValueError(f"{what}[{unit.index}] ({unit.name}) must be a number, got {value!r}")
        if not math.isfinite(number) or number < 0:
            raise ValueError(f"{what}[{unit.index}] ({unit.name}) must be a finite number >= 0, got {value!r}")
        values.append(number)
    return values


# Typical AU intensities of each expression, by AU name (absent = 0). The synthetic-face sampler draws around these and
# the offline CoT writer reads from them which AUs support which expression. They follow the usual FACS descriptions
# translated to FEAFA's units (FEAFA has no lip-corner depressor, so sadness leans on the lower lip and chin).
# fmt: off
EXPRESSION_PROTOTYPES = {
    "Neutral": {},
    "Happiness": {
        "Left Lip Corner Pull": 0.8, "Right Lip Corner Pull": 0.8, "Left Eye Close": 0.35, "Right Eye Close": 0.35,
        "Jaw Drop": 0.25,
    },
    "Sadness": {
        "Left Brow Lower": 0.4, "Right Brow Lower": 0.4, "Left Brow Raise": 0.35, "Right Brow Raise": 0.35,
        "Lower Lip Depress": 0.55, "Chin Raise": 0.55, "Left Eye Close": 0.25, "Right Eye Close": 0.25,
    },
    "Surprise": {
        "Left Lid Raise": 0.7, "Right Lid Raise": 0.7, "Left Brow Raise": 0.8, "Right Brow Raise": 0.8,
        "Jaw Drop": 0.75,
    },
    "Fear": {
        "Left Lid Raise": 0.75, "Right Lid Raise": 0.75, "Left Brow Raise": 0.5, "Right Brow Raise": 0.5,
        "Left Brow Lower": 0.35, "Right Brow Lower": 0.35, "Left Lip Corner Stretch": 0.7,
        "Right Lip Corner Stretch": 0.7, "Jaw Drop": 0.3,
    },
    "Disgust": {
        "Nose Wrinkle": 0.85, "Upper Lip Raise": 0.75, "Left Brow Lower": 0.45, "Right Brow Lower": 0.45,
        "Left Eye Close": 0.35, "Right Eye Close": 0.35, "Chin Raise": 0.2,
    },
    "Anger": {
        "Left Brow Lower": 0.85, "Right Brow Lower": 0.85, "Left Lid Raise": 0.35, "Right Lid Raise": 0.35,
        "Upper Lip Suck": 0.5, "Lower Lip Suck": 0.5, "Jaw Thrust": 0.3, "Chin Raise": 0.35,
    },
    "Contempt": {
        "Right Lip Corner Pull": 0.8, "Right Lip Corner Stretch": 0.4, "Jaw Slide Right": 0.15, "Right Eye Close": 0.3,
    },
}

# fmt: on


def prototype_vector(label):
    """The 24-value AU prototype of a label, in FEAFA order."""
    prototype = EXPRESSION_PROTOTYPES[label]
    return [prototype.get(name, 0.0) for name in AU_NAMES]


# -------------------------------------------------------------------------------------------------------------------
# Exp-CoT format and the model's questions

# The three sections of a refined Exp-CoT, in order, rendered as "**<header>:** <text>" blocks with blank lines
# between them.
COT_SECTIONS = ("Key Observations", "Overall Emotional Interpretation", "Conclusion")
COT_MAX_WORDS = 130

# The official conversation format (DESIGN section 9). The paper's model was trained on exactly these strings, so
# converted official weights only behave when prompted with them, and the release trains its own models on them too:
# one format, interchangeable models. They are interoperability facts, kept as written, the grammar slip in the CoT
# question ("Can you analysis") and the trailing spaces included. The chat template (processing_expllm.py) lays them
# out as "SYSTEM\nImage: <image>\nTASK: ...\nUSER: ...\nASSISTANT: ...</s>"; a TASK line introduces every question.
SYSTEM_PROMPT = "You are a helpful face analysis assistant. "
FER_TASK = "Expression recognition involves identifying the emotional state of a person in a given image."
FER_QUESTION = "What is the expression of the person in the image? Please provide the expression label."
COT_TASK = "Expression analysis involves providing a detailed analysis of the face. "
COT_QUESTION = (
    "Can you analysis the facial expression step-by-step in the provided image? Provide a detailed description."
)


def turn(role, text, with_image=False):
    """One message in the TRL / transformers multimodal format."""
    content = [{"type": "image"}] if with_image else []
    return {"role": role, "content": content + [{"type": "text", "text": text}]}


def fer_messages(label=None):
    """A FER sample (DESIGN section 6): the label question about the image, answered with `label` when given."""
    messages = [turn("user", FER_QUESTION, with_image=True)]
    return messages + [turn("assistant", label)] if label is not None else messages


def cot_messages(cot=None, label=None):
    """A CoT sample: the step-by-step question answered with `cot`, then (with `label`) the label question and answer,
    the order of the official training. Without `cot` it is the prompt that asks for one."""
    messages = [turn("user", COT_QUESTION, with_image=True)]
    if cot is None:
        return messages
    messages.append(turn("assistant", cot))
    if label is not None:
        messages += [turn("user", FER_QUESTION), turn("assistant", label)]
    return messages


def label_first_cot_messages(label, cot=None):
    """The official evaluation's CoT conversation: the label round first (answered with `label`, the model's own
    prediction at test time), then the step-by-step question, answered with `cot` when given."""
    messages = fer_messages(label) + [turn("user", COT_QUESTION)]
    return messages + [turn("assistant", cot)] if cot is not None else messages
