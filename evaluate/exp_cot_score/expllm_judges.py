# Generated from dataset_builders/exp_cot/judges.py by `python -m model_card.bundle`: do not edit.
"""Judges of the Exp-CoT Score: a generated three-part CoT graded against a reference CoT of the same face.

The paper's score has three parts: Key Observations (K, 0..5: the action units, their sides and degrees), Overall
Emotional Interpretation (O, 0..5: the emotions the movements point to) and Conclusion (C, 0 or 5: the same final
label), and Exp-CoT Score = (K + O + C) / 15. Two judges give them:

- `LexiconJudge` (the default, no API, deterministic): K is a weighted F1 between the action units each Key
  Observations section describes (`find_au_mentions`), with partial credit for the right unit on the wrong side or at
  another degree; O compares the emotions each Overall Emotional Interpretation names as dominant and as secondary
  (`find_emotions`); C compares the labels the two Conclusions settle on (`conclusion_label`).
- `OpenAIJudge` (the paper's form): an LLM behind any OpenAI-compatible endpoint grades the pair from the template
  files in `prompts/exp_cot_judge_v1/`. The two texts are fenced between marker lines carrying a code derived from the
  texts themselves, which no text can contain, and the instructions say that fenced text is data. The reply must be
  JSON with integer K and O in 0..5 and C in {0, 5}; a reply that is not is answered with a correction and asked
  again, and after the last attempt the sample is reported as failed, never guessed. Replies are cached on disk.

Both judges share one rule: a part is scored only when both texts have its section (`split_cot`); otherwise it is 0
and the sample says which sections were missing. A generated CoT with no section at all is never sent to an API.
"""

import asyncio
import concurrent.futures
import functools
import hashlib
import json
import os
import re
import string
from dataclasses import asdict, dataclass

from tqdm.auto import tqdm

from .expllm_backends import (
    DEFAULT_OPENAI_MODEL,
    BackendConfigError,
    Facts,
    LLMCallFailed,
    LLMRequest,
    OpenAIBackend,
)
from .expllm_cache import ResponseCache
from .expllm_cot_text import conclusion_label, find_au_mentions, find_emotions, split_cot
from .expllm_prompting import read_data_file
from .expllm_vocabulary import (
    ACTION_UNITS,
    COT_SECTIONS,
    DEGREE_NAMES,
    check_au_vector,
    degree_of,
)

PARTS = ("key_observations", "overall_interpretation", "conclusion")  # the score's parts, in COT_SECTIONS order
PART_OF_SECTION = dict(zip(COT_SECTIONS, PARTS))
PART_MAXIMUM = 5
CONCLUSION_POINTS = 5


@dataclass(frozen=True)
class CotScore:
    """One generated CoT graded against its reference. Part scores are None only when the judge failed (`error`)."""

    key_observations: float | None
    overall_interpretation: float | None
    conclusion: float | None
    missing: tuple[str, ...] = ()  # sections the generated CoT lacks
    reference_missing: tuple[str, ...] = ()  # sections the reference lacks
    predicted_label: str | None = None  # what the generated Conclusion settles on, as the project's parser reads it
    reference_label: str | None = None
    error: str | None = None

    @property
    def exp_cot_score(self):
        parts = (self.key_observations, self.overall_interpretation, self.conclusion)
        return None if None in parts else sum(parts) / (2 * PART_MAXIMUM + CONCLUSION_POINTS)

    def to_dict(self):
        return {
            **asdict(self),
            "missing": list(self.missing),
            "reference_missing": list(self.reference_missing),
            "exp_cot_score": self.exp_cot_score,
        }


def _check_text(text, what):
    if text is None:
        return ""
    if not isinstance(text, str):
        raise ValueError(f"{what} must be a string, got {type(text).__name__}")
    return text


def _final_label(text, sections):
    """The label a CoT settles on (its Conclusion first, as `conclusion_label` reads it); None without a Conclusion."""
    return conclusion_label(text) if sections.conclusion else None


def _zero_missing(scores, missing):
    """Set the parts whose section is missing (from either text) to 0."""
    return {part: 0.0 if section in missing else scores[part] for section, part in PART_OF_SECTION.items()}


# ---------------------------------------------------------------------------------------------------------------------
# The lexicon judge

# v2: a reference scores 1.0 against itself with reference_au given; an Interpretation that argues for another
# emotion than its own Conclusion loses half of O.
LEXICON_JUDGE_ID = "lexicon-v2"

# K counts a strongly acting unit more than a slight one: it is what a reader of the face notices first, and it is
# what the AU vectors' cosine similarity is made of. A unit named without a degree word sits between mild and moderate.
# Over 2,000 random pairs of the official RAF-DB descriptions these weights raise K's Spearman correlation with the
# pairs' AU cosine similarity from 0.70 (all weights 1) to 0.74 (bench/judge_validity.py).
DEGREE_WEIGHTS = {"slight": 0.5, "mild": 0.75, "moderate": 1.0, "strong": 1.25}
UNSTATED_DEGREE_WEIGHT = 0.75
OTHER_SIDE_CREDIT = 0.5  # the right movement on the other side of the face
DEGREE_STEP_PENALTY = 0.25  # per band between the two degrees ("slight" vs "strong": three bands, credit 0.25)
UNSTATED_DEGREE_CREDIT = 0.75  # one text states a degree, the other does not
EMOTION_ROLE_WEIGHTS = {"dominant": 1.0, "secondary": 0.5}  # denied emotions count for nothing
# The paper's O grades the Interpretation's AU combinations and "the dominant emotion"; the Format Refinement asks the
# Conclusion to state the final label. A generated Interpretation whose dominant emotion is not the one its own
# Conclusion states does not explain that conclusion: where the reference's does, it keeps this share of its agreement
# with the reference. (A reference that contradicts itself sets no such standard, and scores 1 against itself.)
CONTRADICTED_INTERPRETATION_CREDIT = 0.5


def _other_side_units():
    """{unit index: index of the same movement on the other side}: Left Brow Lower <-> Right Brow Lower, ..."""
    by_movement = {}
    for unit in ACTION_UNITS:
        if unit.side is not None:
            movement = tuple(word for word in unit.name.split() if word not in ("Left", "Right"))
            by_movement.setdefault(movement, []).append(unit.index)
    return {a: b for pair in by_movement.values() if len(pair) == 2 for a, b in (pair, pair[::-1])}


OTHER_SIDE = _other_side_units()


def described_units(text):
    """{unit index: degree band or None} of the action units a text describes as present, the first stated degree of
    each."""
    units = {}
    for mention in find_au_mentions(text):
        if units.get(mention.au) is None:
            units[mention.au] = mention.degree
    return units


def with_intensity_degrees(units, au, only=None):
    """`units` where a unit described without a degree word takes the band of its intensity in the AU vector `au`
    (with `only`, just the units in it)."""
    return {
        index: degree_of(au[index]) if degree is None and au[index] > 0 and (only is None or index in only) else degree
        for index, degree in units.items()
    }


def supports_its_conclusion(emotions, label):
    """Whether an Interpretation's emotion profile argues for `label`: it names no dominant emotion, or `label` is one
    of its dominant ones."""
    dominant = {emotion for emotion, weight in emotions.items() if weight >= EMOTION_ROLE_WEIGHTS["dominant"]}
    return not dominant or label is None or label in dominant


def _degree_credit(a, b):
    if a is None or b is None:
        return 1.0 if a == b else UNSTATED_DEGREE_CREDIT
    return 1.0 - DEGREE_STEP_PENALTY * abs(DEGREE_NAMES.index(a) - DEGREE_NAMES.index(b))


def _matched_share(units, other):
    """The weighted share of `units` that `other` describes too: 1 per unit matched exactly, less for another degree,
    OTHER_SIDE_CREDIT (times the degree credit) for the same movement on the other side only."""
    matched = total = 0.0
    for index, degree in units.items():
        weight = DEGREE_WEIGHTS[degree] if degree is not None else UNSTATED_DEGREE_WEIGHT
        total += weight
        if index in other:
            matched += weight * _degree_credit(degree, other[index])
        elif OTHER_SIDE.get(index) in other:
            matched += weight * OTHER_SIDE_CREDIT * _degree_credit(degree, other[OTHER_SIDE[index]])
    return matched / total


def key_observation_agreement(generated_units, reference_units):
    """0..1: weighted F1 of two `described_units` results. Two texts that describe no unit agree fully."""
    if not generated_units and not reference_units:
        return 1.0
    if not generated_units or not reference_units:
        return 0.0
    precision = _matched_share(generated_units, reference_units)
    recall = _matched_share(reference_units, generated_units)
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def emotion_profile(text):
    """{label: weight} of the emotions a text names: 1 for a dominant reading, 0.5 for a secondary one."""
    profile = {}
    for mention in find_emotions(text):
        weight = EMOTION_ROLE_WEIGHTS.get(mention.role, 0.0)
        if weight > profile.get(mention.label, 0.0):
            profile[mention.label] = weight
    return profile


def interpretation_agreement(generated_profile, reference_profile):
    """0..1: weighted Jaccard (sum of minima over sum of maxima) of two emotion profiles. The same dominant emotion
    with an extra secondary one scores 2/3; the same two emotions with dominant and secondary swapped, 1/2; two texts
    naming none agree fully."""
    labels = set(generated_profile) | set(reference_profile)
    if not labels:
        return 1.0
    shared = sum(min(generated_profile.get(label, 0.0), reference_profile.get(label, 0.0)) for label in labels)
    union = sum(max(generated_profile.get(label, 0.0), reference_profile.get(label, 0.0)) for label in labels)
    return shared / union


@dataclass(frozen=True)
class CotReading:
    """What the lexicon judge reads from one CoT (treat as read-only: readings are cached and shared)."""

    missing: tuple[str, ...]
    units: dict  # `described_units` of the Key Observations
    emotions: dict  # `emotion_profile` of the Overall Emotional Interpretation
    label: str | None  # the final label; None without a Conclusion section


@functools.lru_cache(maxsize=8192)
def read_cot(text):
    """The lexicon judge's reading of a CoT. Cached: a reference is usually graded against several generated CoTs,
    and a text against itself reads the same twice."""
    sections = split_cot(text)
    return CotReading(
        sections.missing,
        described_units(sections.key_observations),
        emotion_profile(sections.overall_interpretation),
        _final_label(text, sections),
    )


class LexiconJudge:
    """The deterministic judge. `score(generated, reference, reference_au=None, reference_label=None)`.

    reference_au: the face's 24 AU intensities; a unit the reference describes without a degree word, and the
    generated text with one, then takes the band of its intensity, so the generated degree is checked against the
    facts (a text scored against itself still scores 1). reference_label: the true label; the Conclusion point then
    compares with it instead of with the label read from the reference text. O: the emotion agreement of the two
    Interpretations, times CONTRADICTED_INTERPRETATION_CREDIT when the generated Interpretation's dominant emotion is
    not what its own Conclusion says while the reference's is.
    """

    id = LEXICON_JUDGE_ID

    def score(self, generated, reference, reference_au=None, reference_label=None):
        generated = read_cot(_check_text(generated, "the generated CoT"))
        reference = read_cot(_check_text(reference, "the reference CoT"))
        reference_units = reference.units
        if reference_au is not None:
            stated = {index for index, degree in generated.units.items() if degree is not None}
            au = check_au_vector(reference_au, "reference_au")
            reference_units = with_intensity_degrees(reference_units, au, only=stated)
        if reference_label is None:
            reference_label = reference.label
        same_label = generated.label is not None and generated.label == reference_label
        interpretation = interpretation_agreement(generated.emotions, reference.emotions)
        if not supports_its_conclusion(generated.emotions, generated.label) and supports_its_conclusion(
            reference.emotions, reference.label
        ):
            interpretation *= CONTRADICTED_INTERPRETATION_CREDIT
        scores = {
            "key_observations": PART_MAXIMUM * key_observation_agreement(generated.units, reference_units),
            "overall_interpretation": PART_MAXIMUM * interpretation,
            "conclusion": float(CONCLUSION_POINTS) if same_label else 0.0,
        }
        scores = _zero_missing(scores, set(generated.missing) | set(reference.missing))
        return CotScore(
            **scores,
            missing=generated.missing,
            reference_missing=reference.missing,
            predicted_label=generated.label,
            reference_label=reference_label,
        )

    def score_all(self, generated, references, reference_au=None, reference_labels=None):
        reference_au = reference_au if reference_au is not None else [None] * len(references)
        reference_labels = reference_labels if reference_labels is not None else [None] * len(references)
        pairs = zip(generated, references, reference_au, reference_labels)
        return [
            self.score(*pair) for pair in tqdm(pairs, total=len(references), desc="Exp-CoT (lexicon)", leave=False)
        ]


# ---------------------------------------------------------------------------------------------------------------------
# The OpenAI judge

DEFAULT_JUDGE_MODEL = DEFAULT_OPENAI_MODEL  # a dated snapshot: the same model id always means the same judge
DEFAULT_PROMPT_VERSION = "exp_cot_judge_v1"
JUDGE_FILES = ("system", "judge", "correction")
_JUDGE_PLACEHOLDERS = {"system": set(), "judge": {"fence", "reference", "generated"}, "correction": {"problem"}}
# Marker-like runs inside a fenced text are shown as look-alike quotes, so no text can write a marker line at all.
_MARKER_ESCAPES = (("<<<", "‹‹‹"), (">>>", "›››"))


def default_cache_file():
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "expllm", "exp_cot_judge.sqlite")


class JudgementFormatError(ValueError):
    """A judge reply that is not the JSON object asked for; the message says what is wrong with it."""


def parse_judgement(text):
    """(K, O, C) from a judge reply: one JSON object with exactly the integer fields key_observations (0..5),
    overall_interpretation (0..5) and conclusion (0 or 5). A ```json fence around it is tolerated; nothing else."""
    if not isinstance(text, str) or not text.strip():
        raise JudgementFormatError("the reply is empty")
    body = text.strip()
    fenced = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", body, re.DOTALL)
    if fenced:
        body = fenced.group(1)
    try:
        grades = json.loads(body)
    except json.JSONDecodeError:
        raise JudgementFormatError("the reply is not a JSON object") from None
    if not isinstance(grades, dict):
        raise JudgementFormatError(f"the reply is JSON {type(grades).__name__}, not an object")
    if set(grades) != set(PARTS):
        raise JudgementFormatError(
            f"the object must have exactly the fields {', '.join(PARTS)}; it has {sorted(grades)}"
        )
    for part in PARTS:
        value = grades[part]
        if isinstance(value, bool) or not isinstance(value, int):
            raise JudgementFormatError(f"{part} must be an integer, got {json.dumps(value)}")
    if not all(0 <= grades[part] <= PART_MAXIMUM for part in PARTS[:2]):
        raise JudgementFormatError(f"key_observations and overall_interpretation must be 0 to {PART_MAXIMUM}")
    if grades["conclusion"] not in (0, CONCLUSION_POINTS):
        raise JudgementFormatError(f"conclusion must be 0 or {CONCLUSION_POINTS}, got {grades['conclusion']}")
    return tuple(grades[part] for part in PARTS)


@dataclass(frozen=True)
class JudgePrompts:
    """The judge's template files (`string.Template`, `$name` placeholders) and their version: the folder name plus a
    hash of the three files, so that an edited prompt is never mistaken for the same judge."""

    version: str
    system: str
    judge: str
    correction: str

    @classmethod
    def load(cls, version=DEFAULT_PROMPT_VERSION):
        texts = {}
        for name in JUDGE_FILES:
            path = f"prompts/{version}/{name}.txt"
            try:
                texts[name] = read_data_file(path).strip()
            except FileNotFoundError as error:
                raise ValueError(f"judge prompts {version!r}: {error}") from None
            found = {
                match[1] or match[2] for match in string.Template.pattern.findall(texts[name]) if match[1] or match[2]
            }
            if found != _JUDGE_PLACEHOLDERS[name]:
                raise ValueError(f"{path}: placeholders {sorted(found)}, expected {sorted(_JUDGE_PLACEHOLDERS[name])}")
        digest = hashlib.sha256("\0".join(texts[name] for name in JUDGE_FILES).encode()).hexdigest()[:12]
        return cls(f"{version}-{digest}", **texts)

    def fence_code(self, generated, reference):
        """The code on the marker lines: derived from both texts, so it is the same for the same request (the cache
        works) yet no text can contain it (it would have to contain a hash of itself)."""
        material = "\0".join((self.version, reference, generated)).encode("utf-8")
        return hashlib.sha256(material).hexdigest()[:24]

    def messages(self, generated, reference):
        """The chat messages that ask for the grades of one pair."""
        generated, reference = _escape_markers(generated), _escape_markers(reference)
        fence = self.fence_code(generated, reference)
        if fence in generated or fence in reference:  # a text holding a hash of itself: never in practice
            raise ValueError("a text to be judged contains its own fence code; it cannot be fenced safely")
        user = string.Template(self.judge).substitute(fence=fence, reference=reference, generated=generated)
        return [{"role": "system", "content": self.system}, {"role": "user", "content": user}]

    def correction_message(self, problem):
        return {"role": "user", "content": string.Template(self.correction).substitute(problem=problem)}


def _escape_markers(text):
    for run, look_alike in _MARKER_ESCAPES:
        text = text.replace(run, look_alike)
    return text


class OpenAIJudge:
    """The paper's judge: an LLM grades each pair, temperature 0, through `OpenAIBackend` (retries, Retry-After) and
    a `ResponseCache` on disk keyed by model + messages + parameters.

    model: a dated snapshot (default gpt-4o-2024-08-06). base_url / api_key: arguments, else $OPENAI_BASE_URL /
    $OPENAI_API_KEY; the key goes to the HTTP client only. cache_file: default ~/.cache/expllm/exp_cot_judge.sqlite.
    format_retries: how many times a reply that is not the JSON asked for is answered with a correction.
    concurrency: requests in flight at once.
    """

    def __init__(
        self,
        model=DEFAULT_JUDGE_MODEL,
        *,
        base_url=None,
        api_key=None,
        cache_file=None,
        prompts=None,
        format_retries=2,
        concurrency=8,
        timeout=60.0,
        max_retries=6,
        backoff=1.0,
    ):
        self._api_key = api_key or os.environ.get("OPENAI_API_KEY")
        if not self._api_key:
            raise BackendConfigError("the openai judge needs an API key: pass api_key or set OPENAI_API_KEY")
        if not isinstance(format_retries, int) or format_retries < 0:
            raise ValueError(f"format_retries must be a non-negative integer, got {format_retries!r}")
        if not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"concurrency must be a positive integer, got {concurrency!r}")
        self.model = model
        self.base_url = base_url
        self.prompts = prompts or JudgePrompts.load()
        self.format_retries = format_retries
        self.concurrency = concurrency
        self.client_options = {"timeout": timeout, "max_retries": max_retries, "backoff": backoff}
        self.cache_file = cache_file or default_cache_file()

    @property
    def id(self):
        return f"openai:{self.model}:{self.prompts.version}"

    def score_all(self, generated, references):
        """A `CotScore` per pair, in order."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self._score_all(generated, references))
        # Called from a running event loop (a notebook): ours runs in a thread of its own.
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(asyncio.run, self._score_all(generated, references)).result()

    async def _score_all(self, generated, references):
        # The HTTP client and the cache's SQLite connection live in this event loop's thread, and die with it.
        cache = ResponseCache(self.cache_file)
        backend = OpenAIBackend(
            self.model,
            base_url=self.base_url,
            api_key=self._api_key,
            cache=cache,
            temperature=0.0,
            seed=0,
            max_tokens=100,
            **self.client_options,
        )
        gate = asyncio.Semaphore(self.concurrency)
        progress = tqdm(total=len(references), desc=f"Exp-CoT ({self.model})", leave=False)

        async def one(pair):
            async with gate:
                result = await self._score(backend, *pair)
            progress.update()
            return result

        try:
            return await asyncio.gather(*(one(pair) for pair in zip(generated, references)))
        finally:
            progress.close()
            await backend.aclose()
            cache.close()

    async def _score(self, backend, generated, reference):
        generated = _check_text(generated, "the generated CoT")
        reference = _check_text(reference, "the reference CoT")
        generated_sections, reference_sections = split_cot(generated), split_cot(reference)
        missing = set(generated_sections.missing) | set(reference_sections.missing)
        read = {
            "missing": generated_sections.missing,
            "reference_missing": reference_sections.missing,
            "predicted_label": _final_label(generated, generated_sections),
            "reference_label": _final_label(reference, reference_sections),
        }
        if missing == set(COT_SECTIONS):  # nothing to grade: no request, no cost
            return CotScore(0.0, 0.0, 0.0, **read)

        messages = self.prompts.messages(generated, reference)
        problems = []
        for _ in range(self.format_retries + 1):
            try:
                reply = await backend.complete(LLMRequest("exp_cot_judge", messages, Facts(au=[])))
            except LLMCallFailed as failure:
                return CotScore(None, None, None, **read, error=f"{failure.reason}: {failure.message}")
            try:
                grades = dict(zip(PARTS, map(float, parse_judgement(reply.text))))
            except JudgementFormatError as problem:
                problems.append(str(problem))
                # Asked again with the bad reply and what is wrong with it: the same request would only come back
                # from the cache (or the same model at temperature 0) with the same reply.
                messages = messages + [
                    {"role": "assistant", "content": reply.text or ""},
                    self.prompts.correction_message(str(problem)),
                ]
                continue
            backend.keep(reply)  # only a judgement that parses is worth keeping for a later run
            return CotScore(**_zero_missing(grades, missing), **read)
        attempts = self.format_retries + 1
        return CotScore(
            None,
            None,
            None,
            **read,
            error=f"judge_format: no usable reply in {attempts} attempts ({'; '.join(problems)})",
        )


# ---------------------------------------------------------------------------------------------------------------------
# Both together


def summarize_scores(scores, judge_id):
    """The metric's output: mean K, O, C over the judged samples, the Exp-CoT Score, failures and missing sections."""
    judged = [score for score in scores if score.error is None]
    means = {part: (sum(getattr(s, part) for s in judged) / len(judged) if judged else None) for part in PARTS}
    total = None if not judged else sum(means.values()) / (2 * PART_MAXIMUM + CONCLUSION_POINTS)
    return {
        **means,
        "exp_cot_score": total,
        "num_samples": len(scores),
        "num_judged": len(judged),
        "failed": [{"index": i, "error": s.error} for i, s in enumerate(scores) if s.error is not None],
        "missing_sections": {section: sum(section in s.missing for s in scores) for section in COT_SECTIONS},
        "reference_missing_sections": {
            section: sum(section in s.reference_missing for s in scores) for section in COT_SECTIONS
        },
        "judge": judge_id,
        "per_sample": [score.to_dict() for score in scores],
    }
