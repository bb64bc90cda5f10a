# Generated from dataset_builders/exp_cot/cot_text.py by `python -m model_card.bundle`: do not edit.
"""Reading and writing the three-part Exp-CoT text.

A refined Exp-CoT is three blocks, `**Key Observations:** ...`, `**Overall Emotional Interpretation:** ...` and
`**Conclusion:** ...`, separated by blank lines. This module writes that form (`format_cot`), reads it back tolerantly
from whatever an LLM or a person wrote (`split_cot`), and reads what a text says about a face:

- `find_au_mentions`: which FEAFA action units it describes as present (denials excluded), on which side of the
  subject and how strongly;
- `find_emotions`: which expression labels it names, and whether as the dominant reading, a secondary one or a denied
  one ("happiness rather than sadness", "no signs of anger");
- `conclusion_label`: the one label a CoT settles on;
- `key_observation_units`: the action units its Key Observations describe.

All of it is deterministic string processing on top of `modeling_expllm.vocabulary`, which holds every domain word
(labels and synonyms, AU parts, movements and cue words, degree words). What lives here are only the function words of
English that decide how those domain words relate: negators, hedges, side words, clause breaks.
"""

import re
from dataclasses import dataclass
from typing import NamedTuple

from .expllm_vocabulary import ACTION_UNITS, COT_SECTIONS, DEGREE_BANDS, find_labels


def _words(text):
    """A set of words written as one string: the function-word tables below read better that way."""
    return frozenset(text.split())


# ---------------------------------------------------------------------------------------------------------------------
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


# Action units named by number ("AU 12", "AUs 4"), which the Format Refinement's rules forbid (DESIGN section 5).
AU_NUMBER = re.compile(r"\bAUs?\s*-?\s*\d+", re.IGNORECASE)


# A header may drop leading words of its name ("Emotional Interpretation", "Observations"), since writers do.
def _name_variants(name):
    words = name.split()
    return [r"\s+".join(re.escape(word) for word in words[first:]) for first in range(len(words))]


_SECTION_NAME = re.compile(
    "|".join(f"(?P<s{i}>{'|'.join(_name_variants(name))})" for i, name in enumerate(COT_SECTIONS)), re.IGNORECASE
)
_NUMBERING = r"(?:\(?\d{1,2}[.)][ \t]*)?"
_HEADER_LEAD = re.compile(r"(?P<hashes>#{1,6}[ \t]*)?" + _NUMBERING + r"(?P<bold>\*\*|__)?[ \t]*" + _NUMBERING + r"\Z")
_HEADER_TAIL = re.compile(r"(?P<close>\*\*|__)?[ \t]*(?P<colon>:|[ \t]-[ \t]|[ \t]?[–—])?[ \t]*(?P<close2>\*\*|__)?")


def _find_headers(text):
    """(section index, header start, header end) of every span of `text` that reads as a section header."""
    headers = []
    for match in _SECTION_NAME.finditer(text):
        section = next(int(key[1:]) for key, value in match.groupdict().items() if value is not None)
        lead = _HEADER_LEAD.search(text, max(0, match.start() - 24), match.start())
        tail = _HEADER_TAIL.match(text, match.end())
        before = text[: lead.start()]
        rest_of_line = text[tail.end() :].split("\n", 1)[0]
        bold = lead.group("bold") is not None and (tail.group("close") or tail.group("close2")) is not None
        heading = lead.group("hashes") is not None and (before == "" or before.endswith("\n"))
        line_start = before.strip(" \t") == "" or before.rstrip(" \t").endswith("\n")
        after_sentence = re.search(r"[.!?][\"')\]]*[ \t]*$", before) is not None
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


# ---------------------------------------------------------------------------------------------------------------------
# Words, clauses and word forms

# One scan finds words, sentence ends and other clause ends; a full stop inside a number ("0.35") ends nothing.
_SCAN = re.compile(r"(?P<word>[A-Za-z]+(?:['’][A-Za-z]+)?)|(?P<sentence>[;!?\n]|\.(?!\d))|(?P<clause>[,:()\[\]—–])")
# Words that open a new clause even without punctuation ("eyes close while the brows rise").
_CLAUSE_WORDS = {"while", "whereas", "but", "although", "though", "yet", "however", "meanwhile", "whilst"}


class _Token(NamedTuple):  # a tuple: texts have hundreds of words and this is built for each
    word: str  # lower case, possessive dropped ("lip's" -> "lip")
    start: int
    end: int
    clause: int
    sentence: int


def _tokenize(text):
    """Words of `text` with the clause and sentence each belongs to (a movement in one clause never describes a part
    in another)."""
    tokens = []
    clause = sentence = 0
    pending_clause = pending_sentence = False
    for match in _SCAN.finditer(text):
        kind = match.lastgroup
        if kind == "sentence":
            pending_clause = pending_sentence = True
        elif kind == "clause":
            pending_clause = True
        else:
            word = match.group().lower()
            if word.endswith(("'s", "’s")):
                word = word[:-2]
            if tokens and (pending_clause or word in _CLAUSE_WORDS):
                clause += 1
            if tokens and pending_sentence:
                sentence += 1
            pending_clause = pending_sentence = False
            tokens.append(_Token(word, match.start(), match.end(), clause, sentence))
    return tokens


def _word_forms(word):
    """The inflections a vocabulary word or stem matches: "drop" -> dropped, dropping; "elevat" -> elevation..."""
    forms = {word, word + "s", word + "es", word + "ed", word + "d", word + "ing", word + "e", word + "n"}
    if word.endswith("e"):
        forms |= {word[:-1] + "ing", word[:-1] + "ed"}
    if word.endswith(("t", "ss")):
        forms |= {word + "ion", word + "ions"}
    vowels = "aeiou"
    if len(word) >= 3 and word[-1] not in vowels + "wxy" and word[-2] in vowels and word[-3] not in vowels:
        forms |= {word + word[-1] + "ed", word + word[-1] + "ing"}  # drop -> dropped, knit -> knitted
    return forms


class _PhraseMatcher:
    """Finds vocabulary phrases of one or more words in a token list, left to right, longest match first.

    The last word of a phrase matches its inflections (`inflect=True`, for movements and degrees) or only its plural
    (for parts, so that "eyed" or "cornered" do not read as a part).
    """

    def __init__(self, phrases, inflect=True):
        self.by_first_word = {}
        for phrase, payload in phrases.items():
            words = phrase.split()
            last_forms = _word_forms(words[-1]) if inflect else {words[-1], words[-1] + "s"}
            pattern = [{word} for word in words[:-1]] + [last_forms]
            for first_word in pattern[0]:
                self.by_first_word.setdefault(first_word, []).append((pattern, payload))
        for entries in self.by_first_word.values():
            entries.sort(key=lambda entry: -len(entry[0]))

    def find(self, tokens, taken):
        """(first token, last token, payload) of the matches, skipping tokens in `taken`; adds what it matched."""
        found = []
        for first, token in enumerate(tokens):
            if first in taken:
                continue
            for pattern, payload in self.by_first_word.get(token.word, ()):
                span = range(first, first + len(pattern))
                if span[-1] >= len(tokens) or any(i in taken for i in span):
                    continue
                if tokens[span[-1]].clause == token.clause and all(
                    tokens[i].word in forms for i, forms in zip(span, pattern)
                ):
                    found.append((first, span[-1], payload))
                    taken.update(span)
                    break
        return found


def _collect(attribute):
    phrases = {}
    for unit in ACTION_UNITS:
        for phrase in getattr(unit, attribute):
            phrases.setdefault(phrase.replace("-", " "), set()).add(unit.index)
    return phrases


_PARTS = _PhraseMatcher(_collect("part_words"), inflect=False)
_MOVEMENTS = _PhraseMatcher(_collect("movement_words"))
_CUES = _PhraseMatcher(_collect("cue_words"))
_DEGREES = _PhraseMatcher({word: name for name, _, _, words in DEGREE_BANDS for word in words})

# ---------------------------------------------------------------------------------------------------------------------
# Denial

_NEGATORS = _words(
    "no not without absence absent lack lacks lacking devoid free nor neither never none zero nothing isn't aren't "
    "doesn't don't didn't instead than"  # "instead of a smile", "(rather) than raised brows"
)
_LIST_OPENERS = {"like", "including", "e.g"}
_LIST_REACH = 8  # "no signs of negative emotions, such as ...": the negator stands at most this far before "such as"


def _denied_lists(tokens, within_clause=False):
    """Indices of tokens inside an example list that a denial governs, before or after it: "the absence of tension,
    such as furrowed brows or pursed lips", "signs such as frowning or furrowed brows are absent"."""
    denied = set()
    for j, token in enumerate(tokens):
        if not (token.word in _LIST_OPENERS or (token.word == "as" and j > 0 and tokens[j - 1].word == "such")):
            continue
        scope = "clause" if within_clause else "sentence"
        items = []
        for k in range(j + 1, len(tokens)):
            if getattr(tokens[k], scope) != getattr(token, scope) or tokens[k].word in _CLAUSE_WORDS:
                break
            items.append(k)
        before = {t.word for t in tokens[max(0, j - _LIST_REACH) : j] if t.sentence == token.sentence}
        after = {tokens[k].word for k in items}
        if _NEGATORS & before or {"absent", "missing", "lacking"} & after or "not" in after:
            denied.update(items)
    return denied


# ---------------------------------------------------------------------------------------------------------------------
# Action unit mentions

# Words that follow what they deny: "the jaw movement is absent", "brows remain neutral".
_TRAILING_NEGATORS = {"absent", "neutral", "inactive", "still", "unchanged", "unengaged", "unaffected"}
_SIDE_BOTH = {"both", "bilateral", "bilaterally", "symmetrical", "symmetric", "symmetrically", "each", "two", "either"}
_SIDE_WORDS = {"left": "left", "leftward": "left", "right": "right", "rightward": "right"}
# Words that may sit between two parts sharing one movement ("raised eyelids and brows").
_COORDINATION = {"and", "or", "as", "well", "both", "the", "a", "an", "its", "their", "with", "of", "along", "plus"}
# Words that empty a degree word that follows them ("less pronounced"): it then says nothing reliable.
_DEGREE_SOFTENERS = {"less", "lesser", "not", "no", "without"}
# Words after a degree word that make it something else: a comparison ("slightly less closed"), a verb ("marked by"),
# or a sentence adverb ("notably, the brows ...", "notably the closure ...").
_DEGREE_BREAKERS = {"less", "more", "by", "the", "a", "an", "this", "these", "that", "than"}
# Words that say a part is active without saying how ("lip movements", "the upper lip's activation (0.69)").
_ACTIVITY_WORDS = _words(
    "movement movements motion motions move moves moving activity activation activations activated active engagement "
    "engaged involvement action actions tension dynamics change changes value values score scores scored intensity"
)
_PAIR_WINDOW = 4  # a part and its movement have fewer than this many words between them
_DEGREE_WINDOW = 3  # a degree word this close to the statement belongs to it
_NEGATION_WINDOW = 5
_ELLIPSIS_REACH = 8  # "the left eyelid is raised (0.74) and the right at 0.73": the other side this far after
_SIDE_REACH = 5  # side words this far before a statement, up to another statement's words, belong to it


@dataclass(frozen=True)
class AUMention:
    """One action unit a text describes as present.

    `au` indexes `ACTION_UNITS`. `side` is what the text states, on the subject's own side: "left", "right", "both" or
    None (nothing said: a bare "the brow" or a midline part). A statement about both sides, or about a bilateral part
    without a side, yields one mention for each of the two units; a statement whose words fit several units ("lip
    sucking": upper and lower) yields one for each. Mentions of one statement share `start`/`end`, the character span.
    `degree` is the band name of a degree word next to the statement, or None.

    `kind` says how literal the statement is: "explicit" (a part with its movement: "the brows are raised"), "cue" (a
    word that names the movement alone: "a smile", "squinting") or "generic" (a part said to be active without saying
    how: "subtle lip movements"; only returned on request, and then one mention per unit of that part).
    """

    au: int
    side: str | None
    degree: str | None
    start: int
    end: int
    kind: str = "explicit"

    @property
    def name(self):
        return ACTION_UNITS[self.au].name


def _gap(a, b):
    """Number of tokens strictly between token spans a and b (first, last, ...)."""
    return max(b[0] - a[1], a[0] - b[1]) - 1


def _is_negated(tokens, first, last, denied):
    """Whether the statement over tokens first..last is denied: "no jaw drop", "brows are not raised", "... absent"."""
    clause = tokens[first].clause
    before = {t.word for t in tokens[max(0, first - _NEGATION_WINDOW) : first] if t.clause == clause}
    inside = {t.word for t in tokens[first : last + 1]}
    after = {t.word for t in tokens[last + 1 : last + 4] if t.clause == clause}
    return bool(_NEGATORS & (before | inside)) or bool(_TRAILING_NEGATORS & after) or first in denied


def _stated_side(tokens, span, part_words, busy):
    """The side a statement states: "left", "right", "both" (both named, "both", "bilateral", a plural) or None."""
    clause = tokens[span[0]].clause
    first = span[0]
    while first > 0 and span[0] - first < _SIDE_REACH and tokens[first - 1].clause == clause and first - 1 not in busy:
        first -= 1  # "a slight left and mild right eye close": reach back to "left"
    window = {t.word for t in tokens[first : span[1] + 3] if t.clause == clause}
    sides = {_SIDE_WORDS[word] for word in window if word in _SIDE_WORDS}
    if _SIDE_BOTH & window or len(sides) == 2:
        return "both"
    if sides:
        return sides.pop()
    if part_words:
        # The head noun decides: "lip corners", "corners of the mouth" are plural, "corner of the lips" is not.
        head = part_words[0] if "of" in part_words else part_words[-1]
        if head.endswith("s"):
            return "both"
    return None


def _stated_degree(tokens, degrees, span, other_anchors):
    """The band of the nearest degree word around the statement, unless another statement is nearer to that word."""
    best = None
    for degree in degrees:
        if tokens[degree[0]].clause != tokens[span[0]].clause:
            continue
        distance = max(0, _gap(degree, span) + 1)
        if distance > _DEGREE_WINDOW or (degree[0] > 0 and tokens[degree[0] - 1].word in _DEGREE_SOFTENERS):
            continue
        following = tokens[degree[1] + 1] if degree[1] + 1 < len(tokens) else None
        if (
            following is not None
            and following.word in _DEGREE_BREAKERS
            and following.clause == tokens[degree[1]].clause
        ):
            continue
        if any(abs(a - degree[0]) < distance and tokens[a].clause == tokens[degree[0]].clause for a in other_anchors):
            continue
        if best is None or distance < best[0]:
            best = (distance, degree[2])
    return None if best is None else best[1]


def _coordinated(tokens, a, b):
    """Whether parts at token spans a and b are joined only by coordination words ("eyelids and brows")."""
    low, high = (a, b) if a[0] < b[0] else (b, a)
    between = [t.word for t in tokens[low[1] + 1 : high[0]]]
    return tokens[low[0]].clause == tokens[high[0]].clause and all(
        word in _COORDINATION or word in _SIDE_WORDS or word in _DEGREE_SOFTENERS for word in between
    )


def find_au_mentions(text, *, generic=False):
    """Every action unit `text` describes as present, as `AUMention`s in order of position.

    A part word ("brows", "upper lip") and a movement word ("raised", "sucked in") that share an action unit and stand
    within a few words of each other in one clause, with no other part between them, make a statement; a movement
    belongs to its nearest such part and to parts coordinated with it ("raised eyelids and brows"). Cue words make a
    statement alone ("smile", "squinting", "frown") unless they qualify a part of their own ("smiling eyes"), and
    absorb a movement word right before them ("a wide smile" says nothing about the eyes). A sentence may add the other
    side without repeating the movement ("the left eyelid rises, and the right too"). Denied statements ("no jaw drop",
    "absence of frowning", "without raised brows", "no tension such as pursed lips") are not mentions. With
    `generic=True`, parts said to be active without a movement ("lip movements", "upper lip (0.42)") are added too.
    """
    if not isinstance(text, str):
        raise ValueError(f"text must be a string, got {type(text).__name__}")
    tokens = _tokenize(text)
    taken = set()
    parts = _PARTS.find(tokens, taken)
    cues = _CUES.find(tokens, set(taken))
    movements = _MOVEMENTS.find(tokens, taken)
    degrees = _DEGREES.find(tokens, set(taken))
    denied = _denied_lists(tokens)
    layout = _Layout(tokens, parts)

    # Statements: (token span, part or None, action units, kind), from part + movement pairs, lone cues, and with
    # `generic` active parts; then each gets its side and degree, and denied ones are dropped.
    statements = _part_movement_statements(layout, movements, cues)
    statements += _cue_statements(layout, cues, statements)
    if generic:
        statements += _generic_statements(text, layout)
    anchors = [span[0] for span, _, _, _ in statements]
    busy = {k for found in (parts, movements, cues) for first, last, _ in found for k in range(first, last + 1)}
    resolved = []  # (token span, action units, side, degree, kind, part)
    for span, part, units, kind in statements:
        if _is_negated(tokens, span[0], span[1], denied):
            continue
        part_words = [t.word for t in tokens[part[0] : part[1] + 1]] if part else None
        side = _stated_side(tokens, span, part_words, busy)
        degree = _stated_degree(tokens, degrees, span, [anchor for anchor in anchors if anchor != span[0]])
        resolved.append((span, units, side, degree, kind, part))
    resolved += _elliptical_sides(tokens, parts, movements, cues, statements, resolved)

    mentions = []
    for span, units, side, degree, kind, _ in resolved:
        start, end = tokens[span[0]].start, tokens[span[1]].end
        # One mention per unit, keeping only the stated side of a bilateral pair.
        chosen = [i for i in sorted(units) if side in (None, "both") or ACTION_UNITS[i].side in (None, side)]
        mentions += [AUMention(i, side, degree, start, end, kind) for i in chosen]
    return sorted(set(mentions), key=lambda m: (m.start, m.end, m.au, m.kind))


class _Layout:
    """Where the part phrases of one text stand, for the distance tests between phrases."""

    def __init__(self, tokens, parts):
        self.tokens, self.parts = tokens, parts

    def same_clause(self, a, b):
        return self.tokens[a[0]].clause == self.tokens[b[0]].clause

    def part_between(self, a, b):
        return any(min(a[1], b[1]) < p[0] and p[1] < max(a[0], b[0]) for p in self.parts)

    def near(self, part, other):
        """In one clause, a few words apart, and no other part between them."""
        return (
            self.same_clause(part, other) and _gap(part, other) < _PAIR_WINDOW and not self.part_between(part, other)
        )


def _part_movement_statements(layout, movements, cues):
    """A movement word with its nearest part of a shared action unit, and the parts coordinated with that one."""
    tokens, parts = layout.tokens, layout.parts
    statements = []
    for movement in movements:
        if any(_gap(movement, cue) == 0 and cue[0] > movement[1] and not cue[2] & movement[2] for cue in cues):
            continue  # "a wide smile", "an open grin": the movement word qualifies the cue word
        bound = _bound_part(tokens, movement, parts)
        if bound is not None:  # "upward movement of the cheeks" is about the cheeks, whatever comes before
            candidates = [bound] if bound[2] & movement[2] else []
        else:
            candidates = [part for part in parts if part[2] & movement[2] and layout.near(part, movement)]
        if not candidates:
            continue
        nearest = min(candidates, key=lambda part: (_gap(part, movement), -part[0]))
        sharing = [nearest] + [
            part
            for part in parts
            if part is not nearest and part[2] & movement[2] and _coordinated(tokens, part, nearest)
        ]
        for part in sharing:
            span = (min(part[0], movement[0]), max(part[1], movement[1]))
            statements.append((span, part, part[2] & movement[2], "explicit"))
    return statements


def _cue_statements(layout, cues, statements):
    """Cue words not already paired, unless they qualify a part of their own ("smiling eyes")."""
    paired_movements = {span[0] for span, _, _, _ in statements} | {span[1] for span, _, _, _ in statements}
    found = []
    for cue in cues:
        if cue[0] in paired_movements or cue[1] in paired_movements:
            continue
        adjacent = [part for part in layout.parts if _gap(part, cue) == 0 and layout.same_clause(part, cue)]
        if any(not (part[2] & cue[2]) for part in adjacent):
            continue  # "smiling eyes", "crinkled eyes": the cue qualifies a different part
        found.append(((cue[0], cue[1]), None, cue[2], "cue"))
    return found


def _generic_statements(text, layout):
    """Parts said to be active without a movement: near an activity word, or followed by a number."""
    tokens = layout.tokens
    activity_words = [i for i, t in enumerate(tokens) if t.word in _ACTIVITY_WORDS]
    found = []
    for part in layout.parts:
        activity = [i for i in activity_words if abs(i - part[0]) <= _PAIR_WINDOW + 2 and layout.near(part, (i, i))]
        next_start = tokens[part[1] + 1].start if part[1] + 1 < len(tokens) else len(text)
        number_follows = re.search(r"\d", text[tokens[part[1]].end : next_start]) is not None
        if activity or number_follows:
            last = max([part[1]] + activity)
            found.append(((min([part[0]] + activity), last), part, part[2], "generic"))
    return found


_PREPOSITIONS = {"of", "in", "at", "on", "around", "to"}
_BINDING_FILLER = (
    _PREPOSITIONS | _ACTIVITY_WORDS | {"the", "a", "an", "both", "its", "their", "two"} | set(_SIDE_WORDS)
)


def _bound_part(tokens, movement, parts):
    """The part a movement noun governs through a preposition ("elevation of the brows", "pull at the lip corners",
    "upward movement of the cheeks"), or None."""
    part_at = {part[0]: part for part in parts}
    seen_preposition = False
    for k in range(movement[1] + 1, min(len(tokens), movement[1] + 6)):
        if tokens[k].clause != tokens[movement[0]].clause:
            return None
        if k in part_at:
            return part_at[k] if seen_preposition else None
        if tokens[k].word not in _BINDING_FILLER:
            return None
        seen_preposition = seen_preposition or tokens[k].word in _PREPOSITIONS
    return None


def _elliptical_sides(tokens, parts, movements, cues, statements, resolved):
    """Statements for the other side that a sentence adds without repeating the part: "the left eyelid is raised
    (0.74) and the right at 0.73", "the left corner pulls up, and the right is stretched", "the left brow lowers, and
    the right brow slightly less"."""
    part_at = {part[0]: part for part in parts}
    movement_at = {movement[0]: movement for movement in movements}
    busy = {k for span, _, _, _ in statements for k in range(span[0], span[1] + 1)}
    busy |= {k for cue in cues for k in range(cue[0], cue[1] + 1)}
    stated_parts = {part[0] for _, part, _, _ in statements if part is not None}
    added = []
    for span, units, side, _, kind, part in resolved:
        if part is None or side not in ("left", "right"):
            continue
        opposite = "right" if side == "left" else "left"
        for k in range(span[1] + 1, min(len(tokens), span[1] + 1 + _ELLIPSIS_REACH)):
            if tokens[k].sentence != tokens[span[0]].sentence or k in part_at or k in busy:
                break  # the sentence ended, or moved on to another statement
            if tokens[k].word != opposite:
                continue
            # A part right after the side word is what the side word qualifies: the ellipsis must be about that part.
            following = None
            for i in range(k + 1, min(len(tokens), k + 6)):
                if i in part_at:
                    following = part_at[i]
                if i in busy or tokens[i].sentence != tokens[k].sentence:
                    break
            if following is not None and (following[0] in stated_parts or not following[2] & part[2]):
                break
            after = (following[1] if following else k) + 1
            own = [movement_at[i] for i in range(after, min(len(tokens), after + 3)) if i in movement_at]
            own = [m for m in own if tokens[m[0]].clause == tokens[k].clause]
            if own:  # "... and the right is stretched": the other side with its own movement
                shared, last = part[2] & own[0][2], own[0][1]
            else:  # "... and the right at 0.73": the other side with the same movement
                shared, last = units & (following[2] if following else part[2]), after - 1
            if shared:
                added.append(((k, last), shared, opposite, None, kind, part))
            break
    return added


# ---------------------------------------------------------------------------------------------------------------------
# Emotion mentions and the concluded label

# Words before a label that deny it ("no signs of anger", "rather than sadness", "distinguishing it from fear").
_EMOTION_NEGATORS = _NEGATORS | _words(
    "than unlike excluding exclude excludes eliminates minus beyond over distinguishing distinguish distinguishes "
    "distinguished"
)
# Words after a negator that turn the denial around: "not only X", "no doubt X", "does not detract from the X".
_DENIAL_LIFTERS = {"only", "doubt", "detract", "detracting", "diminish", "diminishing", "overshadow", "undermine"}
# Nouns that make the label right after them a side note: "hints of fear", "a touch of surprise", "elements of joy".
_HEDGE_NOUNS = _words(
    "hint hints touch trace traces tinge undertone undertones undercurrent element elements nuance nuances suggestion "
    "layer layers degree bit glimmer flicker mix mixture blend"
)
_HEDGE_NOUN_REACH = 3  # "hints of possible fear": the noun this close before the label
# Other words before a label that make it a side note ("tinged with sadness", "possible anger", "mild surprise").
_EMOTION_HEDGES = _words(
    "hinting tinged mixed blended blending possible possibly potential potentially slight slightly mild mildly subtle "
    "subtly minor faint secondary underlying some little enriched tempered alongside coupled intertwined "
    "overshadowing overshadows overshadowed may might could perhaps also additional lesser occasional momentary "
    "fleeting minimal limited despite mere merely"
)
# A label in a clause opened by one of these is conceded, not concluded: "while the jaw suggests surprise, ...".
_CONCESSIVE_OPENERS = {"while", "whilst", "although", "though", "despite", "albeit"}
# Words before a label that mark it as the answer ("predominantly happiness", "classified as anger").
_EMOTION_ANCHORS = _words(
    "predominantly predominant primarily primary mainly main chiefly dominant dominantly dominated overall clearly "
    "clear distinctly distinct classified categorized categorised identified identify identifies label labelled "
    "labeled conclude concludes confirms confirming unmistakably definitively firmly strongly ultimately "
    "overwhelmingly essentially classification classify classifies category categorization categorize categorizes "
    "therefore thus hence"
)
_EMOTION_WINDOW = 4
_EMOTION_DENIAL_WINDOW = 8  # a denial reaches further: "without leaning strongly towards extreme feelings of joy"
# A list continues a denial or a hedge over its items: "rather than fear, anger or sadness".
_LIST_GLUE = re.compile(r"^(?:\s*(?:,|and|or|nor|/|as well as)\s*)+$", re.IGNORECASE)
_ROLE_RANK = {"dominant": 0, "secondary": 1, "negated": 2}


@dataclass(frozen=True)
class EmotionMention:
    """A label named in a text. `role`: "dominant", "secondary" or "negated"; `anchored`: flagged as the answer."""

    label: str
    role: str
    start: int
    end: int
    anchored: bool = False


def _example_lists(tokens):
    """Indices of tokens in an example list ("emotions such as fear or anger", "like joy"): named, not concluded."""
    listed = set()
    for j, token in enumerate(tokens):
        if token.word in _LIST_OPENERS or (token.word == "as" and j > 0 and tokens[j - 1].word == "such"):
            listed.update(k for k in range(j + 1, len(tokens)) if tokens[k].clause == token.clause)
    return listed


def find_emotions(text):
    """Every expression label `text` names (synonyms included), with the role the wording gives it."""
    if text is None:
        return []
    if not isinstance(text, str):
        raise ValueError(f"text must be a string, got {type(text).__name__}")
    tokens = _tokenize(text)
    index_at = {token.start: i for i, token in enumerate(tokens)}
    part_starts = {part[0] for part in _PARTS.find(tokens, set())}
    # A denied list reaches the end of its clause; further items join it through the list glue below.
    denied, listed = _denied_lists(tokens, within_clause=True), _example_lists(tokens)
    mentions = []
    previous_index = -1
    for label, start, end in find_labels(text):
        index = index_at.get(start)
        if index is None:
            continue
        last = index + len(text[start:end].split()) - 1
        if label == "Neutral" and last + 1 in part_starts:
            continue  # "a neutral brow", "neutral lips" describe a part at rest, not the expression
        clause = tokens[index].clause
        # Look back no further than the previous label: its hedges and anchors are its own.
        floor = max(previous_index + 1, 0)
        before = [t.word for t in tokens[max(floor, index - _EMOTION_WINDOW) : index] if t.clause == clause]
        wider = [t.word for t in tokens[max(floor, index - _EMOTION_DENIAL_WINDOW) : index] if t.clause == clause]
        near = [t.word for t in tokens[max(floor, index - _HEDGE_NOUN_REACH) : index] if t.clause == clause]
        previous_index = last
        # "identified as anger" marks the answer; "such as anger" and "as well as anger" do not.
        named_as = any(
            word == "as" and (i == 0 or before[i - 1] not in {"such", "well"}) for i, word in enumerate(before)
        )
        anchored = bool(_EMOTION_ANCHORS & set(before)) or named_as
        clause_opener = next(t.word for t in tokens if t.clause == clause)
        if index in denied or _is_denied(wider):
            role = "negated"
        elif _EMOTION_HEDGES & set(before) or _HEDGE_NOUNS & set(near) or clause_opener in _CONCESSIVE_OPENERS:
            role = "secondary"
        elif index in listed:
            role, anchored = "secondary", False
        else:
            role = "dominant"
        previous = mentions[-1] if mentions else None
        if previous and _ROLE_RANK[previous.role] > _ROLE_RANK[role] and _LIST_GLUE.match(text[previous.end : start]):
            role = previous.role
        mentions.append(EmotionMention(label, role, start, end, anchored and role == "dominant"))
    return mentions


def _is_denied(words):
    """Whether the words before a label deny it: a negator, not turned around by a lifter after it."""
    positions = [i for i, word in enumerate(words) if word in _EMOTION_NEGATORS]
    return bool(positions) and not _DENIAL_LIFTERS & set(words[positions[-1] + 1 :])


def conclusion_label(cot_text):
    """The final label of a CoT: read from its Conclusion section when present, else from the Overall Emotional
    Interpretation, else from the whole text.

    Labels named as the answer ("predominantly happiness", "classified as anger") count most, plain mentions next,
    hedged ones ("hints of sadness") and examples ("emotions such as fear") little, denied ones ("rather than fear",
    "no signs of anger") not at all; between equal scores the label named first wins. None when no label is named.
    """
    if cot_text is None:
        return None
    sections = split_cot(cot_text)
    for text in (sections.conclusion, sections.overall_interpretation, cot_text):
        label = _best_label(find_emotions(text))
        if label is not None:
            return label
    return None


_ROLE_WEIGHT = {"dominant": 1.0, "secondary": 0.25, "negated": 0.0}
_ANCHOR_WEIGHT = 1.5  # on the official descriptions 1.0 to 1.5 all agree with the labels in 98.4-98.5%


def _best_label(mentions):
    scores = {}
    for order, mention in enumerate(mentions):
        weight = _ROLE_WEIGHT[mention.role] + (_ANCHOR_WEIGHT if mention.anchored else 0.0)
        scores[mention.label] = scores.get(mention.label, 0.0) + weight + 0.01 / (1 + order)  # first named wins ties
    if not scores or max(scores.values()) < 0.2:  # only denied labels
        return None
    return max(scores, key=scores.get)


def key_observation_units(cot_text):
    """The action units (indices) a CoT's Key Observations section describes as present."""
    return {mention.au for mention in find_au_mentions(split_cot(cot_text).key_observations)}
