"""How well does the code verifier tell a face's own description from another face's?

On the official engine outputs for the RAF-DB test split (3,068 records: file_name, emo, au, description) it measures:

- acceptance: the share of real (description, au, emo) triples that `verify_description` passes;
- rejection: the share of mismatched triples it fails, where each record's au + emo is paired with the description of
  another record (a fixed-seed derangement, so no record keeps its own text), overall and among the pairs whose two
  records happen to share the label (there only the AU checks can tell them apart);
- the reasons behind each verdict.

Usage: python bench/verifier_accuracy.py [path/to/rafdb_emo_au_val_mini_description.json] [--seed 0]
"""

import argparse
import os
import random
import time
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from dataset_builders.exp_cot.sources import OfficialJsonSource
from dataset_builders.exp_cot.verification import STRICT, read_description, verify_description

REPO_ROOT = Path(__file__).resolve().parent.parent
OFFICIAL_DIR = Path(
    os.environ.get("EXPLLM_OFFICIAL_DIR", REPO_ROOT / ".." / "shared" / "reference" / "expllm_official")
)
DEFAULT_PATH = OFFICIAL_DIR / "rafdb_emo_au_val_mini_description.json"


def load_records(path):
    """The official records (file_name, emo, au, description), read and checked by the dataset sources' reader."""
    try:
        return OfficialJsonSource(path).records(required=("au", "description"))
    except (OSError, ValueError) as error:
        raise SystemExit(str(error)) from None


def derangement(count, seed):
    """A permutation with no fixed point (Sattolo's algorithm: one cycle through all records)."""
    order = list(range(count))
    rng = random.Random(seed)
    for i in range(count - 1, 0, -1):
        j = rng.randrange(i)
        order[i], order[j] = order[j], order[i]
    return order


def evaluate(records, readings, partner, policy):
    """Verdicts for the real triples and for the mismatched ones (record i's face with record partner[i]'s text)."""
    real = [verify_description(readings[i], r["au"], r["emo"], **policy) for i, r in enumerate(records)]
    mismatched = [verify_description(readings[partner[i]], r["au"], r["emo"], **policy) for i, r in enumerate(records)]
    return real, mismatched


def summarise(name, records, partner, real, mismatched):
    same_label = [records[i]["emo"] == records[partner[i]]["emo"] for i in range(len(records))]
    accepted = sum(v.passed for v in real) / len(real)
    rejected = sum(not v.passed for v in mismatched) / len(mismatched)
    hard = [v for v, same in zip(mismatched, same_label) if same]
    hard_rejected = sum(not v.passed for v in hard) / len(hard)
    print(f"\n[{name}]")
    n_real, n_mismatched, n_hard = len(real), len(mismatched), len(hard)
    print(f"acceptance of real triples:           {accepted:.4f}  ({round(accepted * n_real)}/{n_real})")
    print(f"rejection of mismatched triples:      {rejected:.4f}  ({round(rejected * n_mismatched)}/{n_mismatched})")
    print(f"rejection of mismatched, same label:  {hard_rejected:.4f}  ({round(hard_rejected * n_hard)}/{n_hard})")
    for title, verdicts in (("real", real), ("mismatched", mismatched), ("mismatched, same label", hard)):
        reasons = Counter(reason for verdict in verdicts for reason in verdict.reasons)
        combos = Counter(" + ".join(verdict.reasons) or "passed" for verdict in verdicts)
        print(f"  reasons among {title} ({len(verdicts)}): " + ", ".join(f"{k} {v}" for k, v in reasons.most_common()))
        print("    verdicts: " + ", ".join(f"{k} {v}" for k, v in combos.most_common(6)))
    return accepted, rejected, hard_rejected


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", nargs="?", default=str(DEFAULT_PATH), help="the official description file")
    parser.add_argument("--seed", type=int, default=0, help="seed of the derangement that mismatches the pairs")
    args = parser.parse_args()
    path = Path(args.path)
    if not path.is_file():
        raise SystemExit(
            f"{path} not found. Pass the path of rafdb_emo_au_val_mini_description.json (the official ExpLLM "
            "annotation file with descriptions) as the first argument."
        )

    records = load_records(path)
    start = time.perf_counter()
    readings = [read_description(r["description"]) for r in tqdm(records, desc="reading descriptions", unit="text")]
    partner = derangement(len(records), args.seed)
    seconds = time.perf_counter() - start
    print(f"{len(records)} records from {path}; read in {seconds:.1f} s; derangement seed {args.seed}")

    real, mismatched = evaluate(records, readings, partner, {})
    summarise("default policy", records, partner, real, mismatched)
    real, mismatched = evaluate(records, readings, partner, STRICT)
    summarise("STRICT policy (every positive AU, exact degree bands)", records, partner, real, mismatched)


if __name__ == "__main__":
    main()
