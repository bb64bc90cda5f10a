"""The prompts of the Exp-CoT Engine's LLM processes: versioned template files, rendered with the face's facts.

The templates live in `dataset_builders/exp_cot/prompts/<version>/` as plain text with `$name` placeholders
(`string.Template`). One file per message the engine sends:

    system.txt          the system message of every conversation
    au2des.txt          AU2Des: the AUs (never the image) -> a step-by-step analysis
    des2exp.txt         Des2Exp: the analysis -> exactly one label
    verify.txt          LLM Result Verification (optional extra check, in a conversation of its own)
    reflect.txt         Feedback Reflection: the analysis failed, try again (label not revealed)
    reveal.txt          Feedback Reflection after too many failed rounds: the label is revealed
    label_feedback.txt  the sentence added to the feedback when Des2Exp read a wrong label out of the analysis
    refine.txt          Format Refinement into the three-part Exp-CoT
    refine_retry.txt    Format Refinement again, told what broke the format

A record stores `PromptSet.version`: the folder name plus a hash of every template, so editing a prompt can never be
mistaken for the same prompts. `PromptSet.match` reads a rendered prompt back into its process and values; the local
test server uses it to play the LLM from the prompt text alone.
"""

import functools
import hashlib
import re
import string
from dataclasses import dataclass
from importlib import resources

from modeling_expllm.vocabulary import ACTION_UNITS, AU_NAMES, COT_SECTIONS, DEGREE_BANDS, EXPRESSION_LABELS

# This package's data files (the prompt templates, the price table) by path, when these modules run as flat copies
# written by model_card/bundle.py: a metric folder on the Hub, where evaluate copies .py files only. The generator
# replaces this line with an import of the texts from its generated resources module; in the package it stays empty
# and the files are read where they lie. `read_data_file` is the one reader of either.
EMBEDDED_DATA_FILES = {}

DEFAULT_PROMPT_VERSION = "exp_cot_v1"
PROCESSES = (
    "system", "au2des", "des2exp", "verify", "reflect", "reveal", "label_feedback", "refine", "refine_retry",
)  # fmt: skip
PRICES_FILE = "prices.txt"


# ---------------------------------------------------------------------------------------------------------------------
# The package's data files


def read_data_file(path):
    """The text of one of this package's data files, `path` relative to the package folder ("prompts/prices.txt"):
    from the texts embedded in a flat copy of these modules when there are any, else from the package itself. Raises
    FileNotFoundError when there is no such file."""
    if EMBEDDED_DATA_FILES:
        if path not in EMBEDDED_DATA_FILES:
            raise FileNotFoundError(f"{path} is not among the data files bundled with these modules")
        return EMBEDDED_DATA_FILES[path]
    file = resources.files(__package__).joinpath(*path.split("/"))
    if not file.is_file():
        raise FileNotFoundError(f"{file} is not a file")
    return file.read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------------------------------------
# Facts of a face written out for a prompt, and read back


def format_au_list(au):
    """One line per positive AU, in FEAFA order: "- Left Brow Lower: 0.35" (4 decimals at most, as the AU models give).
    "(none)" for a face with no active unit."""
    lines = [f"- {unit.name}: {round(float(value), 4):g}" for unit, value in zip(ACTION_UNITS, au) if float(value) > 0]
    return "\n".join(lines) if lines else "(none)"


def format_inactive_aus(au):
    """The names of the AUs at 0, comma-separated; "none" when all 24 are active."""
    names = [unit.name for unit, value in zip(ACTION_UNITS, au) if float(value) <= 0]
    return ", ".join(names) if names else "none"


_AU_LINE = re.compile(r"^- (?P<name>" + "|".join(re.escape(name) for name in AU_NAMES) + r"): (?P<value>[0-9.eE+-]+)$")


def parse_au_list(text):
    """The 24-value AU vector an `format_au_list` text stands for (units not listed are 0)."""
    au = [0.0] * len(AU_NAMES)
    for line in text.strip().splitlines():
        match = _AU_LINE.match(line.strip())
        if match is None:
            if line.strip() == "(none)":
                continue
            raise ValueError(f"not an action-unit line: {line!r}")
        au[AU_NAMES.index(match.group("name"))] = float(match.group("value"))
    return au


def degree_scale():
    """The degree bands of the vocabulary as a prompt reads them: "slight up to 0.1, mild up to 0.2, ..."."""
    parts = []
    for name, low, high, _ in DEGREE_BANDS:
        parts.append(f"{name} above {low:g}" if high == float("inf") else f"{name} up to {high:g}")
    return ", ".join(parts)


def cot_layout():
    """The three-part layout with placeholder bodies, headers from the vocabulary."""
    return "\n\n".join(f"**{header}:** ..." for header in COT_SECTIONS)


def face_values(au, label=None):
    """Every placeholder value that depends only on the face (and its label when the prompt may know it)."""
    values = {
        "au_list": format_au_list(au),
        "inactive_aus": format_inactive_aus(au),
        "degree_scale": degree_scale(),
        "labels": ", ".join(EXPRESSION_LABELS),
    }
    if label is not None:
        values["label"] = label
    return values


def refine_values(label, max_words):
    key_observations, overall_interpretation, conclusion = COT_SECTIONS
    return {
        "layout": cot_layout(),
        "key_observations": key_observations,
        "overall_interpretation": overall_interpretation,
        "conclusion": conclusion,
        "label": label,
        "max_words": str(max_words),
    }


# ---------------------------------------------------------------------------------------------------------------------
# The template set


@dataclass(frozen=True)
class PromptSet:
    """The templates of one prompt version, keyed by process."""

    name: str
    templates: dict

    @classmethod
    def load(cls, name=DEFAULT_PROMPT_VERSION):
        templates = {}
        for process in PROCESSES:
            try:
                text = read_data_file(f"prompts/{name}/{process}.txt")
            except FileNotFoundError as error:
                raise FileNotFoundError(f"prompt version {name!r} lacks {process}.txt: {error}") from None
            templates[process] = string.Template(text.strip())
        return cls(name, templates)

    @property
    def version(self):
        """The folder name plus the first 8 hex digits of a hash over every template, e.g. "exp_cot_v1+1a2b3c4d"."""
        digest = hashlib.sha256()
        for process in PROCESSES:
            digest.update(f"{process}\0{self.templates[process].template}\0".encode())
        return f"{self.name}+{digest.hexdigest()[:8]}"

    def render(self, process, **values):
        """The message text of `process`. Raises KeyError naming a placeholder left without a value."""
        try:
            return self.templates[process].substitute(values)
        except KeyError as error:
            raise KeyError(f"prompt {self.name}/{process}.txt needs a value for ${error.args[0]}") from None

    def match(self, text):
        """(process, values) of the template that rendered `text`, or None when no template fits it."""
        for process in PROCESSES:
            found = _template_regex(self.templates[process]).fullmatch(text.strip())
            if found is not None:
                return process, found.groupdict()
        return None


@functools.lru_cache(maxsize=64)
def _template_regex(template):
    """A regex that matches exactly the texts `template` renders, each placeholder a (lazy) named group."""
    pattern, seen, position = [], set(), 0
    for placeholder in template.pattern.finditer(template.template):
        pattern.append(re.escape(template.template[position : placeholder.start()]))
        position = placeholder.end()
        if placeholder.group("escaped") is not None:
            pattern.append(re.escape("$"))
            continue
        name = placeholder.group("named") or placeholder.group("braced")
        pattern.append(f"(?P={name})" if name in seen else f"(?P<{name}>.*?)")
        seen.add(name)
    pattern.append(re.escape(template.template[position:]))
    return re.compile("".join(pattern), re.DOTALL)


# ---------------------------------------------------------------------------------------------------------------------
# Prices


def load_prices():
    """{model id: (input $ per 1M tokens, output $ per 1M tokens)} from prompts/prices.txt."""
    file = f"prompts/{PRICES_FILE}"
    prices = {}
    for line_number, line in enumerate(read_data_file(file).splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        try:
            model, input_price, output_price = fields[0], float(fields[1]), float(fields[2])
        except (IndexError, ValueError) as error:
            raise ValueError(
                f"{file}:{line_number}: expected 'model input_price output_price', got {line!r}"
            ) from error
        prices[model] = (input_price, output_price)
    return prices
