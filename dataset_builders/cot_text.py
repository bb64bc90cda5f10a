"""Reading and writing the three-part Exp-CoT text.

A refined Exp-CoT is three blocks, `**Key Observations:** ...`, `**Overall Emotional Interpretation:** ...` and
`**Conclusion:** ...`, separated by blank lines. This module writes that form (`format_cot`), reads it back tolerantly
from whatever an LLM or a person wrote (`split_cot`), and reads what a text says about a face:

- `find_au_mentions`: which FEAFA action units it describes as present, on which side of the subject, how strongly;
- `find_emotions`: which expression labels it names, and whether as the dominant reading, a secondary one or a denied
  one ("happiness rather than sadness", "no signs of anger");
- `conclusion_label`: the one label a CoT settles on.

All of it is deterministic string processing on top of `modeling_expllm.vocabulary`, which holds every domain word
(labels and synonyms, AU parts, movements and cue words, degree words). What lives here are only the function words of
English that decide how those domain words relate: negators, hedges, side words, clause breaks.
"""

import re
from dataclasses import dataclass

from modeling_expllm.vocabulary import ACTION_UNITS, COT_SECTIONS, DEGREE_BANDS, find_labels

# ----------------------------------------------------------------------------------------------------------------------
# The three sections


@dataclass(frozen=True)
class CotSections:
    """The three sections of a CoT as read by `split_cot`; a missing section is an empty string named in `missing`."""

    key_observations: str
    overall_interpretation: str
    conclusion: str
    missing: tuple[str, ...]

    @property
    def complete(self):
        return not self.missing

    @property
    def text(self):
        """The canonical three-part form. Raises ValueError when a section is missing: there is nothing to render."""
        if self.missing:
            raise ValueError(f"the CoT has no {', '.join(repr(name) for name in self.missing)} section")
        return format_cot(self.key_observations, self.overall_interpretation, self.conclusion)


def format_cot(key_observations, overall_interpretation, conclusion):
    """Render the three sections in the exact Exp-CoT layout, each section one paragraph."""
    bodies = (key_observations, overall_interpretation, conclusion)
    for header, body in zip(COT_SECTIONS, bodies):
        if not isinstance(body, str) or not body.strip():
            raise ValueError(f"the {header!r} section must be a non-empty string, got {body!r}")
    return "\n\n".join(f"**{header}:** {_one_paragraph(body)}" for header, body in zip(COT_SECTIONS, bodies))


def _one_paragraph(text):
    return re.sub(r"\s+", " ", text).strip()


# A header may drop leading words of its name ("Emotional Interpretation", "Observations"), since writers do.
def _name_variants(name):
    words = name.split()
    return [r"\s+".join(re.escape(word) for word in words[first:]) for first in range(len(words))]


_SECTION_NAME = re.compile(
    "|".join(f"(?P<s{i}>{'|'.join(_name_variants(name))})" for i, name in enumerate(COT_SECTIONS)), re.IGNORECASE
)
_NUMBERING = r"(?:\(?\d{1,2}[.)][ \t]*)?"
_HEADER_LEAD = re.compile(r"(?P<hashes>#{1,6}[ \t]*)?" + _NUMBERING + r"(?P<bold>\*\*|__)?[ \t]*" + _NUMBERING + r"$")
_HEADER_TAIL = re.compile(r"(?P<close>\*\*|__)?[ \t]*(?P<colon>:|[ \t]-[ \t]|[ \t]?[–—])?[ \t]*(?P<close2>\*\*|__)?")


def _find_headers(text):
    """(section index, header start, header end) of every span of `text` that reads as a section header."""
    headers = []
    for match in _SECTION_NAME.finditer(text):
        section = next(int(key[1:]) for key, value in match.groupdict().items() if value is not None)
        lead = _HEADER_LEAD.search(text, 0, match.start())
        tail = _HEADER_TAIL.match(text, match.end())
        before = text[: lead.start()]
        rest_of_line = text[tail.end() :].split("\n", 1)[0]
        bold = lead.group("bold") is not None and (tail.group("close") or tail.group("close2")) is not None
        heading = lead.group("hashes") is not None and (before == "" or before.endswith("\n"))
        line_start = before.strip(" \t") == "" or before.rstrip(" \t").endswith("\n")
        after_sentence = re.search(r"[.!?][\"')\]]*[ \t]+$", before) is not None
        colon = tail.group("colon") is not None
        if bold or heading or (line_start and (colon or not rest_of_line.strip())) or (after_sentence and colon):
            headers.append((section, lead.start(), tail.end()))
    return headers


def split_cot(text):
    """Split a CoT into its three sections, tolerating the ways writers vary the headers.

    Accepted: `**Name:**`, `**Name**:`, `**Name**`, `### Name`, `Name:` at a line start or after a sentence, a name
    alone on its line, numbered headers ("1. Key Observations:"), any case, all sections on one line, and text before
    the first header (ignored). A section repeated keeps its first occurrence. `None` or "" gives all three missing.
    """
    if text is None:
        text = ""
    if not isinstance(text, str):
        raise ValueError(f"a CoT must be a string or None, got {type(text).__name__}")
    headers = _find_headers(text)
    bodies = {}
    for position, (section, _, body_start) in enumerate(headers):
        body_end = headers[position + 1][1] if position + 1 < len(headers) else len(text)
        body = _one_paragraph(text[body_start:body_end].strip(" \t\n*_#"))
        if section not in bodies and body:
            bodies[section] = body
    missing = tuple(name for i, name in enumerate(COT_SECTIONS) if i not in bodies)
    return CotSections(bodies.get(0, ""), bodies.get(1, ""), bodies.get(2, ""), missing)


# ----------------------------------------------------------------------------------------------------------------------
# Words, clauses and word forms

_WORD = re.compile(r"[A-Za-z]+(?:['’][A-Za-z]+)?")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
# Characters between two words that end a clause: a movement word in one clause never describes a part in another.
_CLAUSE_BREAK = re.compile(r"[,;:.!?()\[\]—–\n]")
# Words that open a new clause even without punctuation ("eyes close while the brows rise").
_CLAUSE_WORDS = {"while", "whereas", "but", "although", "though", "yet", "however", "meanwhile", "whilst"}


@dataclass(frozen=True)
class _Token:
    word: str  # lower case, possessive dropped ("lip's" -> "lip")
    start: int
    end: int
    clause: int


def _tokenize(text):
    tokens = []
    clause = 0
    previous_end = 0
    for match in _WORD.finditer(text):
        gap = _NUMBER.sub("", text[previous_end : match.start()])
        word = re.sub(r"['’]s$", "", match.group().lower())
        if _CLAUSE_BREAK.search(gap) or word in _CLAUSE_WORDS:
            clause += 1
        tokens.append(_Token(word, match.start(), match.end(), clause))
        previous_end = match.end()
    return tokens


def _word_forms(word):
    """The inflections a vocabulary word or stem matches: "drop" -> dropped, dropping; "elevat" -> elevation..."""
    forms = {word, word + "s", word + "es", word + "ed", word + "d", word + "ing", word + "e", word + "n", word + "ly"}
    if word.endswith("e"):
        forms |= {word[:-1] + "ing", word[:-1] + "ed"}
    if word.endswith(("t", "ss")):
        forms |= {word + "ion", word + "ions", word + "ed", word + "ing"}
    vowels = "aeiou"
    if len(word) >= 3 and word[-1] not in vowels + "wxy" and word[-2] in vowels and word[-3] not in vowels:
        forms |= {word + word[-1] + "ed", word + word[-1] + "ing"}  # drop -> dropped, knit -> knitted
    return forms


class _PhraseMatcher:
    """Finds vocabulary phrases (one or more words, each matched with its inflections) in a token list."""

    def __init__(self, phrases):
        # phrase -> payload set; one-word phrases match any form, the last word of longer ones too.
        self.entries = []
        for phrase, payload in phrases.items():
            words = phrase.split()
            pattern = [{word} for word in words[:-1]] + [_word_forms(words[-1])]
            self.entries.append((pattern, payload))
        self.entries.sort(key=lambda entry: -len(entry[0]))  # longest first

    def find(self, tokens, taken):
        """(first token, last token, payload) of non-overlapping matches, skipping tokens in `taken`; updates it."""
        found = []
        for pattern, payload in self.entries:
            for first in range(len(tokens) - len(pattern) + 1):
                span = range(first, first + len(pattern))
                if any(i in taken for i in span) or tokens[first].clause != tokens[span[-1]].clause:
                    continue
                if all(tokens[i].word in forms for i, forms in zip(span, pattern)):
                    found.append((first, span[-1], payload))
                    taken.update(span)
        return sorted(found)


def _collect(attribute):
    phrases = {}
    for unit in ACTION_UNITS:
        for phrase in getattr(unit, attribute):
            phrases.setdefault(phrase.replace("-", " "), set()).add(unit.index)
    return phrases


_PARTS = _PhraseMatcher(_collect("part_words"))
_MOVEMENTS = _PhraseMatcher(_collect("movement_words"))
_CUES = _PhraseMatcher(_collect("cue_words"))
_DEGREES = _PhraseMatcher({word: name for name, _, _, words in DEGREE_BANDS for word in words})
_PLURAL_PARTS = {phrase for phrase in _collect("part_words") if phrase.split()[0].endswith("s") or phrase.endswith("s")}

# ----------------------------------------------------------------------------------------------------------------------
# Action unit mentions

_NEGATORS = {
    "no", "not", "without", "absence", "absent", "lack", "lacks", "lacking", "devoid", "free", "nor", "neither", "never",
    "none", "zero", "nothing", "isn't", "aren't", "doesn't", "don't", "didn't", "rather", "instead",
}
# Negators that follow what they deny: "the jaw movement is absent", "brows remain neutral".
_TRAILING_NEGATORS = {"absent", "neutral", "inactive", "still", "unchanged", "unengaged", "unaffected", "relaxed"}
_SIDE_BOTH = {"both", "bilateral", "bilaterally", "symmetrical", "symmetric", "symmetrically", "each", "two", "either"}
_SIDE_WORDS = {"left": "left", "leftward": "left", "right": "right", "rightward": "right"}
# Words that may sit between two parts sharing one movement ("raised eyelids and brows").
_COORDINATION = {"and", "or", "as", "well", "both", "the", "a", "an", "its", "their", "with", "of", "along", "plus"}
# Words that weaken a degree word that follows them ("less pronounced"): the degree then says nothing reliable.
_DEGREE_SOFTENERS = {"less", "lesser", "not", "no", "without"}
_PAIR_WINDOW = 4  # at most this many words between a part and its movement
_DEGREE_WINDOW = 3  # a degree word this close to the mention belongs to it
_NEGATION_WINDOW = 5


@dataclass(frozen=True)
class AUMention:
    """One action unit a text describes as present.

    `au` indexes `ACTION_UNITS`. `side` is what the text states, on the subject's own side: "left", "right", "both" or
    None (nothing said: a bare "the brow" or a midline part). A statement about both sides, or about a bilateral part
    without a side, yields one mention for each of the two units. `degree` is the band name of a degree word next to
    the mention, or None. `implied` marks a mention named by a cue word alone ("a smile", "squinting"), which is
    evidence of the movement but less literal than a part with its movement. `start`/`end` is the character span.
    """

    au: int
    side: str | None
    degree: str | None
    start: int
    end: int
    implied: bool = False

    @property
    def name(self):
        return ACTION_UNITS[self.au].name


def _is_negated(tokens, first, last):
    clause = tokens[first].clause
    before = [t.word for t in tokens[max(0, first - _NEGATION_WINDOW) : first] if t.clause == clause]
    after = [t.word for t in tokens[last + 1 : last + 4] if t.clause == clause]
    return bool(_NEGATORS & set(before)) or bool(_TRAILING_NEGATORS & set(after)) or "not" in after[:2]


def _stated_side(tokens, first, last, part_phrase):
    clause = tokens[first].clause
    window = [t.word for t in tokens[max(0, first - 3) : last + 3] if t.clause == clause]
    sides = {_SIDE_WORDS[word] for word in window if word in _SIDE_WORDS}
    if _SIDE_BOTH & set(window) or len(sides) == 2:
        return "both"
    if sides:
        return sides.pop()
    if part_phrase is not None and part_phrase in _PLURAL_PARTS:
        return "both"
    return None


def _stated_degree(tokens, degrees, first, last, other_anchors):
    """The band of the nearest degree word around tokens first..last, unless another mention is nearer to it."""
    best = None
    for degree_first, degree_last, band in degrees:
        if tokens[degree_first].clause != tokens[first].clause:
            continue
        if degree_last < first:
            distance = first - degree_last
        elif degree_first > last:
            distance = degree_first - last
        else:
            distance = 0
        if distance > _DEGREE_WINDOW or (degree_first > 0 and tokens[degree_first - 1].word in _DEGREE_SOFTENERS):
            continue
        if any(abs(anchor - degree_first) < distance for anchor in other_anchors):
            continue
        if best is None or distance < best[0]:
            best = (distance, band)
    return None if best is None else best[1]


def _gap(a_first, a_last, b_first, b_last):
    return max(b_first - a_last, a_first - b_last) - 1


def _coordinated(tokens, a, b):
    """Whether parts at token spans a and b are joined only by coordination words ("eyelids and brows")."""
    low, high = (a, b) if a[0] < b[0] else (b, a)
    between = [t.word for t in tokens[low[1] + 1 : high[0]]]
    return tokens[low[0]].clause == tokens[high[0]].clause and all(
        word in _COORDINATION or word in _SIDE_WORDS or word in _DEGREE_SOFTENERS for word in between
    )


def find_au_mentions(text):
    """Every action unit `text` describes as present, as `AUMention`s in order of position.

    A part word ("brows", "upper lip") and a movement word ("raised", "sucked in") that share an action unit and stand
    within a few words of each other in one clause make a mention; each movement belongs to its nearest compatible
    part, and to parts coordinated with that one ("raised eyelids and brows"). Cue words name a movement alone
    ("smile", "squinting", "frown") unless they directly qualify another part ("smiling eyes"). Negated statements
    ("no jaw drop", "absence of frowning", "without raising the brows") are not mentions.
    """
    if not isinstance(text, str):
        raise ValueError(f"text must be a string, got {type(text).__name__}")
    tokens = _tokenize(text)
    taken = set()
    parts = _PARTS.find(tokens, taken)
    cues = _CUES.find(tokens, set(taken))
    movements = _MOVEMENTS.find(tokens, taken)
    degrees = _DEGREES.find(tokens, set(taken))
    part_phrases = {first: " ".join(t.word for t in tokens[first : last + 1]) for first, last, _ in parts}

    pairs = []  # (part, movement, action units)
    for movement in movements:
        m_first, m_last, m_units = movement
        candidates = [
            part
            for part in parts
            if part[2] & m_units
            and tokens[part[0]].clause == tokens[m_first].clause
            and _gap(part[0], part[1], m_first, m_last) < _PAIR_WINDOW
        ]
        if not candidates:
            continue
        nearest = min(candidates, key=lambda part: (_gap(part[0], part[1], m_first, m_last), -part[0]))
        for part in candidates:
            if part is nearest or _coordinated(tokens, part[:2], nearest[:2]):
                pairs.append((part, movement, part[2] & m_units))

    paired_movements = {movement[0] for _, movement, _ in pairs}
    implied = []
    for first, last, units in cues:
        if first in paired_movements:
            continue
        adjacent = [p for p in parts if _gap(p[0], p[1], first, last) == 0 and tokens[p[0]].clause == tokens[first].clause]
        if any(not (p[2] & units) for p in adjacent):
            continue  # "smiling eyes", "crinkled eyes": the cue qualifies a different part
        implied.append((first, last, units))

    anchors = [part[0] for part, _, _ in pairs] + [first for first, _, _ in implied]
    mentions = []
    for part, movement, units in pairs:
        first, last = min(part[0], movement[0]), max(part[1], movement[1])
        if _is_negated(tokens, first, last):
            continue
        side = _stated_side(tokens, first, last, part_phrases[part[0]])
        others = [a for a in anchors if a != part[0]]
        degree = _stated_degree(tokens, degrees, first, last, others)
        mentions += _mentions_for(units, side, degree, tokens[first].start, tokens[last].end, implied=False)
    for first, last, units in implied:
        if _is_negated(tokens, first, last):
            continue
        side = _stated_side(tokens, first, last, None)
        others = [a for a in anchors if a != first]
        degree = _stated_degree(tokens, degrees, first, last, others)
        mentions += _mentions_for(units, side, degree, tokens[first].start, tokens[last].end, implied=True)
    return sorted(set(mentions), key=lambda m: (m.start, m.au))


def _mentions_for(units, side, degree, start, end, implied):
    """One mention per action unit the statement covers, keeping only the stated side of a bilateral pair."""
    chosen = [i for i in sorted(units) if side in (None, "both") or ACTION_UNITS[i].side in (None, side)]
    return [AUMention(i, side, degree, start, end, implied) for i in chosen]


# ----------------------------------------------------------------------------------------------------------------------
# Emotion mentions and the concluded label

# Words before a label that deny it ("no signs of anger", "rather than sadness", "other emotions such as fear").
_EMOTION_NEGATORS = _NEGATORS | {"than", "unlike", "excluding", "exclude", "excludes", "eliminates", "other", "minus"}
# Words before a label that make it a side note ("hints of fear", "a touch of surprise", "tinged with sadness").
_EMOTION_HEDGES = {
    "hint", "hints", "hinting", "touch", "trace", "traces", "tinge", "tinged", "undertone", "undertones", "undercurrent",
    "element", "elements", "nuance", "nuances", "nuanced", "mixed", "mix", "mixture", "blend", "blended", "blending",
    "possible", "possibly", "potential", "potentially", "slight", "slightly", "mild", "mildly", "subtle", "subtly",
    "minor", "faint", "secondary", "underlying", "suggestion", "layer", "layers", "degree", "bit", "some", "little",
    "enriched", "tempered", "alongside", "coupled", "intertwined", "overshadowing", "overshadows", "overshadowed",
    "than", "may", "might", "could", "perhaps", "also", "additional", "lesser", "occasional", "momentary", "fleeting",
}
# Words before a label that mark it as the answer ("predominantly happiness", "classified as anger").
_EMOTION_ANCHORS = {
    "predominantly", "predominant", "primarily", "primary", "mainly", "main", "chiefly", "dominant", "dominantly",
    "dominated", "overall", "clearly", "clear", "distinctly", "distinct", "classified", "categorized", "categorised",
    "identified", "identify", "identifies", "label", "labelled", "labeled", "conclude", "concludes", "confirms",
    "confirming", "unmistakably", "definitively", "firmly", "strongly", "ultimately", "overwhelmingly", "essentially",
}
_EMOTION_WINDOW = 4
# A list continues a denial or a hedge over its items: "rather than fear, anger or sadness".
_LIST_GLUE = re.compile(r"^(?:\s*(?:,|and|or|nor|/|as well as)\s*)+$", re.IGNORECASE)


@dataclass(frozen=True)
class EmotionMention:
    """A label named in a text: `role` is "dominant", "secondary" or "negated"; `anchored` when flagged as the answer."""

    label: str
    role: str
    start: int
    end: int
    anchored: bool = False


def find_emotions(text):
    """Every expression label `text` names (synonyms included), with the role the wording gives it."""
    if text is None:
        return []
    if not isinstance(text, str):
        raise ValueError(f"text must be a string, got {type(text).__name__}")
    tokens = _tokenize(text)
    starts = {token.start: i for i, token in enumerate(tokens)}
    mentions = []
    for label, start, end in find_labels(text):
        index = starts.get(start)
        if index is None:
            continue
        clause = tokens[index].clause
        before = [t.word for t in tokens[max(0, index - _EMOTION_WINDOW) : index] if t.clause == clause]
        anchored = bool(_EMOTION_ANCHORS & set(before))
        if _EMOTION_NEGATORS & set(before) and not _denial_is_lifted(before):
            role = "negated"
        elif _EMOTION_HEDGES & set(before):
            role = "secondary"
        else:
            role = "dominant"
        previous = mentions[-1] if mentions else None
        if previous and previous.role != "dominant" and role == "dominant" and _LIST_GLUE.match(text[previous.end : start]):
            role = previous.role
        mentions.append(EmotionMention(label, role, start, end, anchored and role == "dominant"))
    return mentions


def _denial_is_lifted(before):
    # "not only X", "nothing but X" and "no doubt X" affirm X.
    for negator, lifter in (("not", "only"), ("nothing", "but"), ("no", "doubt")):
        if negator in before and lifter in before:
            return True
    return False


def conclusion_label(cot_text):
    """The final label of a CoT: read from its Conclusion section when present, else from the whole text.

    Labels named as the answer ("predominantly happiness", "classified as anger") count most, plain mentions next,
    hedged ones ("hints of sadness") little, denied ones ("rather than fear", "no signs of anger") not at all. Returns
    None when no label is named or two labels tie.
    """
    if cot_text is None:
        return None
    sections = split_cot(cot_text)
    for text in (sections.conclusion, sections.overall_interpretation, cot_text):
        label = _best_label(find_emotions(text))
        if label is not None:
            return label
    return None


def _best_label(mentions):
    scores = {}
    for order, mention in enumerate(mentions):
        weight = {"dominant": 1.0, "secondary": 0.25, "negated": 0.0}[mention.role]
        weight += 1.0 if mention.anchored else 0.0
        weight += 0.01 / (1 + order)  # the first label named breaks ties
        scores[mention.label] = scores.get(mention.label, 0.0) + weight
    if not scores or max(scores.values()) < 0.2:
        return None
    ranked = sorted(scores.items(), key=lambda item: -item[1])
    if len(ranked) > 1 and abs(ranked[0][1] - ranked[1][1]) < 1e-9:
        return None
    return ranked[0][0]
