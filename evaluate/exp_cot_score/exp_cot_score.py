"""Exp-CoT Score: how well generated three-part CoTs agree with reference CoTs, part by part.

Key Observations (0..5), Overall Emotional Interpretation (0..5) and Conclusion (0 or 5) are graded for each pair, and
Exp-CoT Score = (K + O + C) / 15, as in the ExpLLM paper. The judges live in `dataset_builders.exp_cot.judges` (here
`expllm_judges.py`, a generated copy): the default lexicon judge is deterministic and needs no API; `judge="openai"`
asks an LLM (any OpenAI-compatible endpoint), as the paper did with GPT-4o.
"""

import datasets
import evaluate

# The project's modules come along as generated flat copies beside this script (model_card/bundle.py), so that the
# folder works wherever it is copied. evaluate copies only the files the script itself imports relatively, so every
# file of the bundle is imported here, those this script takes nothing from included. (It reads a comment on such a
# line as the URL to download the file from: the noqa comments sit inside the parentheses.)
from .expllm_backends import (
    BackendConfigError,  # noqa: F401 (what the openai judge raises for a set-up it cannot work with)
)
from .expllm_cache import (
    ResponseCache,  # noqa: F401
)
from .expllm_cot_text import (
    split_cot,  # noqa: F401
)
from .expllm_judges import DEFAULT_JUDGE_MODEL, LexiconJudge, OpenAIJudge, summarize_scores
from .expllm_offline_writer import (
    write_description,  # noqa: F401
)
from .expllm_prompting import (
    read_data_file,  # noqa: F401
)
from .expllm_resources import (
    EMBEDDED_DATA_FILES,  # noqa: F401
)
from .expllm_verification import (
    verify_description,  # noqa: F401
)
from .expllm_vocabulary import EXPRESSION_LABELS, check_au_vector, normalize_label

_CITATION = """\
@article{lan2025expllm,
  title={ExpLLM: Towards Chain of Thought for Facial Expression Recognition},
  author={Lan, Xing and Xue, Jian and Qi, Ji and Jiang, Dongmei and Lu, Ke and Chua, Tat-Seng},
  journal={IEEE Transactions on Multimedia},
  year={2025}
}
"""

_DESCRIPTION = """\
Grades each generated Exp-CoT (Key Observations, Overall Emotional Interpretation, Conclusion) against the reference
CoT of the same face: K and O on 0..5, C 0 or 5, Exp-CoT Score = (K + O + C) / 15. A part is scored only when both
texts have its section; a missing one scores 0 and is reported. The default judge ("lexicon") compares the action
units, sides and degrees each text describes, the emotions each names as dominant or secondary, and the final labels,
with the ExpLLM text parsers; judge="openai" sends each pair to an LLM grader with fenced inputs and strict parsing.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): the generated CoTs. `None` or "" is a CoT with every section missing.
    references (`list` of `str`): the reference CoTs of the same faces.
    reference_au (`list` of 24 `float`, *optional*, lexicon judge): each face's AU intensities (FEAFA order); a unit
        the reference describes without a degree word is then given the degree of its intensity.
    reference_labels (`list` of `str` or `int`, *optional*, lexicon judge): each face's true label; the Conclusion
        point then compares with it instead of the label read from the reference text.
    judge (`str`, defaults to `"lexicon"`): `"lexicon"` or `"openai"`.
    judge_model (`str`, *optional*): the openai judge's model, a dated snapshot (default gpt-4o-2024-08-06).
    base_url (`str`, *optional*): an OpenAI-compatible endpoint (default $OPENAI_BASE_URL, else OpenAI's).
    api_key (`str`, *optional*): default $OPENAI_API_KEY. Handed to the HTTP client only, never stored.
    cache_file (`str`, *optional*): the judge's response cache (default ~/.cache/expllm/exp_cot_judge.sqlite).
    format_retries (`int`, defaults to 2): how often a reply that breaks the format is answered with a correction.
    concurrency (`int`, defaults to 8): openai requests in flight at once.

Returns:
    key_observations (`float`): mean K (0..5) over the judged samples.
    overall_interpretation (`float`): mean O (0..5).
    conclusion (`float`): mean C (0..5).
    exp_cot_score (`float`): (K + O + C) / 15 of the means, 0..1.
    num_samples (`int`), num_judged (`int`): pairs given, pairs the judge graded.
    failed (`list` of `dict`): index and error of each pair the openai judge could not grade (not counted in means).
    missing_sections (`dict`): section -> number of generated CoTs without it; reference_missing_sections likewise.
    judge (`str`): the judge's id (lexicon version, or openai model and prompt version).
    per_sample (`list` of `dict`): each pair's parts, exp_cot_score, missing sections and the labels read.

Examples:
    >>> exp_cot_score = evaluate.load("evaluate/exp_cot_score")
    >>> reference = (
    ...     "**Key Observations:** The left brow is strongly lowered and the right brow is strongly lowered.\\n\\n"
    ...     "**Overall Emotional Interpretation:** The lowered brows point to anger.\\n\\n"
    ...     "**Conclusion:** The expression is anger."
    ... )
    >>> other_label = reference.replace("is anger.", "is sadness.")
    >>> results = exp_cot_score.compute(predictions=[reference, other_label, ""], references=[reference] * 3)
    >>> [sample["exp_cot_score"] for sample in results["per_sample"]]  # another label: C lost, and half of O
    [1.0, 0.5, 0.0]
    >>> results["missing_sections"]["Conclusion"], results["judge"]
    (1, 'lexicon-v2')
"""

JUDGES = ("lexicon", "openai")


def _labels(values, count):
    if values is None:
        return None
    if len(values) != count:
        raise ValueError(f"reference_labels has {len(values)} entries for {count} references")
    labels = []
    for i, value in enumerate(values):
        label = normalize_label(value)
        if label is None:
            raise ValueError(f"reference_labels[{i}] = {value!r} is not one of {EXPRESSION_LABELS} (or an id)")
        labels.append(label)
    return labels


def _au_vectors(values, count):
    if values is None:
        return None
    if len(values) != count:
        raise ValueError(f"reference_au has {len(values)} entries for {count} references")
    return [check_au_vector(vector, f"reference_au[{i}]") for i, vector in enumerate(values)]


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ExpCotScore(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
            reference_urls=["https://github.com/starhiking/ExpLLM-TMM"],
        )

    def _compute(
        self,
        predictions,
        references,
        reference_au=None,
        reference_labels=None,
        judge="lexicon",
        judge_model=DEFAULT_JUDGE_MODEL,
        base_url=None,
        api_key=None,
        cache_file=None,
        format_retries=2,
        concurrency=8,
    ):
        if judge not in JUDGES:
            raise ValueError(f"judge must be one of {JUDGES}, got {judge!r}")
        if not references:
            raise ValueError("no references: the Exp-CoT Score needs at least one generated-reference pair")
        empty = [i for i, reference in enumerate(references) if reference is None or not reference.strip()]
        if empty:
            raise ValueError(f"references {empty[:10]} are empty: a generated CoT needs a reference CoT to be graded")
        if judge == "lexicon":
            lexicon = LexiconJudge()
            scores = lexicon.score_all(
                predictions,
                references,
                reference_au=_au_vectors(reference_au, len(references)),
                reference_labels=_labels(reference_labels, len(references)),
            )
            return summarize_scores(scores, lexicon.id)
        if reference_au is not None or reference_labels is not None:
            raise ValueError(
                "reference_au and reference_labels are read by the lexicon judge only; the openai judge grades the "
                "two texts, as the paper does"
            )
        grader = OpenAIJudge(
            judge_model,
            base_url=base_url,
            api_key=api_key,
            cache_file=cache_file,
            format_retries=format_retries,
            concurrency=concurrency,
        )
        return summarize_scores(grader.score_all(predictions, references), grader.id)
