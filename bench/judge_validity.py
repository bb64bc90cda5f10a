"""Is the lexicon judge of the Exp-CoT Score measuring what it should?

On the official engine outputs for the RAF-DB test split (3,068 records: file_name, emo, au, description), through
`evaluate.load("evaluate/exp_cot_score")`, it measures:

- self-score: each description graded against itself must score 1.0 when it has all three sections and its
  Conclusion names a label (a missing section scores 0, and a Conclusion without a label earns no point: those
  records are counted apart);
- Key Observations validity: over random pairs of different records, the Spearman correlation between K and the
  cosine similarity of the two records' AU vectors (the facts both texts were written from); the target is >= 0.55.
  Also with the reference's AU vector given (`reference_au`), which fills in the degrees the reference leaves unsaid;
- Overall Emotional Interpretation and Conclusion: mean O and mean C over pairs whose records share the label and
  over pairs whose labels differ, and how often C = 5 exactly when the labels agree;
- how often the Conclusion read from a description equals the record's label.

Usage: python bench/judge_validity.py [path/to/rafdb_emo_au_val_mini_description.json] [--pairs 2000] [--seed 0]
"""

import argparse
import math
import os
import random
import time
from pathlib import Path

from scipy.stats import spearmanr

from dataset_builders.exp_cot.sources import OfficialJsonSource

REPO_ROOT = Path(__file__).resolve().parent.parent
OFFICIAL_DIR = Path(
    os.environ.get("EXPLLM_OFFICIAL_DIR", REPO_ROOT / ".." / "shared" / "reference" / "expllm_official")
)
DEFAULT_PATH = OFFICIAL_DIR / "rafdb_emo_au_val_mini_description.json"
METRIC_PATH = REPO_ROOT / "evaluate" / "exp_cot_score"


def load_records(path):
    """The official records (file_name, emo, au, description), read and checked by the dataset sources' reader."""
    try:
        return OfficialJsonSource(path).records(required=("au", "description"))
    except (OSError, ValueError) as error:
        raise SystemExit(str(error)) from None


def random_pairs(count, pairs, seed):
    """`pairs` (i, j) pairs of distinct record indices, drawn uniformly with a fixed seed."""
    rng = random.Random(seed)
    return [tuple(rng.sample(range(count), 2)) for _ in range(pairs)]


def au_cosine(a, b):
    """Cosine similarity of two AU vectors; two faces at rest are alike (1), one at rest and one not are not (0)."""
    norm_a, norm_b = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(x * x for x in b))
    if norm_a == 0 or norm_b == 0:
        return 1.0 if norm_a == norm_b else 0.0
    return sum(x * y for x, y in zip(a, b)) / (norm_a * norm_b)


def _mean(values):
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


def measure(records, pairs, grade):
    """The benchmark's figures. `grade(predictions, references, **options)` returns the metric's per-sample list."""
    texts = [record["description"] for record in records]
    figures = {"records": len(records), "pairs": len(pairs)}

    own = grade(texts, texts)
    self_scores = [sample["exp_cot_score"] for sample in own]
    # A description can only agree with itself on what it states: all three sections and a label in its Conclusion.
    readable = [
        score for score, sample in zip(self_scores, own) if not sample["missing"] and sample["reference_label"]
    ]
    figures["self_score_mean"] = _mean(self_scores)
    figures["self_score_min_readable"] = min(readable) if readable else float("nan")
    figures["self_score_readable_records"] = len(readable)
    figures["conclusion_reads_label"] = _mean(s["reference_label"] == r["emo"] for s, r in zip(own, records))

    generated = [texts[i] for i, _ in pairs]
    references = [texts[j] for _, j in pairs]
    cosines = [au_cosine(records[i]["au"], records[j]["au"]) for i, j in pairs]
    plain = grade(generated, references)
    figures["k_spearman_au_cosine"] = spearmanr([s["key_observations"] for s in plain], cosines).statistic
    with_au = grade(generated, references, reference_au=[records[j]["au"] for _, j in pairs])
    figures["k_spearman_au_cosine_with_reference_au"] = spearmanr(
        [s["key_observations"] for s in with_au], cosines
    ).statistic

    same = [records[i]["emo"] == records[j]["emo"] for i, j in pairs]
    for name, keep in (("same_label", True), ("other_label", False)):
        chosen = [sample for sample, flag in zip(plain, same) if flag == keep]
        figures[f"o_mean_{name}"] = _mean(s["overall_interpretation"] for s in chosen)
        figures[f"c_mean_{name}"] = _mean(s["conclusion"] for s in chosen)
        figures[f"score_mean_{name}"] = _mean(s["exp_cot_score"] for s in chosen)
        figures[f"pairs_{name}"] = len(chosen)
    figures["c_agrees_with_label_equality"] = _mean((s["conclusion"] == 5) == flag for s, flag in zip(plain, same))
    return figures


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", nargs="?", default=str(DEFAULT_PATH))
    parser.add_argument("--pairs", type=int, default=2000, help="random pairs of records for the correlations")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import evaluate

    records = load_records(args.path)
    metric = evaluate.load(str(METRIC_PATH))

    def grade(predictions, references, **options):
        return metric.compute(predictions=predictions, references=references, **options)["per_sample"]

    start = time.perf_counter()
    figures = measure(records, random_pairs(len(records), args.pairs, args.seed), grade)
    seconds = time.perf_counter() - start

    print(f"{figures['records']} official descriptions, {figures['pairs']} random pairs (seed {args.seed})")
    print(
        f"self-score: mean {figures['self_score_mean']:.4f}; minimum over the "
        f"{figures['self_score_readable_records']} records with all three sections and a label in the Conclusion: "
        f"{figures['self_score_min_readable']:.4f}"
    )
    print(f"Conclusion read from a description equals its label: {figures['conclusion_reads_label']:.2%}")
    print(
        f"K vs AU cosine similarity, Spearman: {figures['k_spearman_au_cosine']:.3f} (target >= 0.55); "
        f"with reference_au: {figures['k_spearman_au_cosine_with_reference_au']:.3f}"
    )
    for name in ("same_label", "other_label"):
        pairs, o, c, score = (figures[f"{key}_{name}"] for key in ("pairs", "o_mean", "c_mean", "score_mean"))
        print(f"pairs with {name.replace('_', ' ')} ({pairs}): mean O {o:.2f}, mean C {c:.2f}, mean score {score:.3f}")
    print(f"C = 5 exactly when the two labels agree: {figures['c_agrees_with_label_equality']:.2%}")
    print(f"{seconds:.1f} s")
    return figures


if __name__ == "__main__":
    main()
