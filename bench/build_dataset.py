"""Throughput and peak memory of the Exp-CoT dataset builder on synthetic annotation records.

    python bench/build_dataset.py                          # 50,000 records
    python bench/build_dataset.py --records 10000 50000    # two sizes: peak memory should not grow with the count

For each size, a fresh process writes an engine run (records.jsonl) of that many synthetic records, each with its
own id, label and AUs (drawn as the synthetic faces draw theirs) and a three-part CoT from the offline writer (a pool
of 500 CoTs, reused in turn: writing one costs more than building it, and the text's content does not change the
builder's work). It then builds, annotation-only, what `build_dataset.py` builds from such a run: the survey of the
input, the `synthetic` record config, the `conversations` config, the dataset card. Printed per size: records/s of
the whole build and of each step, and the process's peak resident memory (ru_maxrss) before and after the build.
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
from tqdm import tqdm

COT_POOL = 500


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def write_engine_run(run, count, seed=0):
    """An engine output folder with `count` "done" records, as the engine writes them."""
    from dataset_builders.exp_cot.cot_text import split_cot
    from dataset_builders.exp_cot.offline_writer import refine
    from dataset_builders.exp_cot.synthetic_faces import sample_au_vector
    from modeling_expllm.vocabulary import COT_SECTIONS, EXPRESSION_LABELS

    rng = np.random.default_rng(seed)
    pool = []
    for index in range(COT_POOL):
        label = EXPRESSION_LABELS[index % len(EXPRESSION_LABELS)]
        cot = refine("", sample_au_vector(label, rng), label)
        pool.append((label, cot, split_cot(cot)))
    run.mkdir(parents=True, exist_ok=True)
    with open(run / "records.jsonl", "w", encoding="utf-8") as file:
        for index in tqdm(range(count), desc="writing records", unit=" records", leave=False):
            label, cot, sections = pool[index % COT_POOL]
            bodies = (sections.key_observations, sections.overall_interpretation, sections.conclusion)
            record = {
                "id": f"synthetic-{seed}-{index:06d}", "file_name": f"synthetic-{seed}-{index:06d}.png",
                "source": "synthetic", "split": "train" if index % 10 else "test", "label": label, "status": "done",
                "reason": None, "au_model": "oracle", "au": sample_au_vector(label, rng), "cot": cot,
                "cot_sections": dict(zip(COT_SECTIONS, bodies)), "rounds": 1, "label_revealed": False,
                "rounds_log": [{"round": 1, "passed": True}], "backend": "offline", "model": "offline-writer",
                "prompt_version": "bench",
            }  # fmt: skip
            file.write(json.dumps(record) + "\n")


def measure(count, folder):
    """Build `count` records in `folder`; returns the timings and memory as a dict (run in a fresh process)."""
    from dataset_builders.exp_cot_dataset.card import write_dataset_card
    from dataset_builders.exp_cot_dataset.configs import RecordInput, survey_inputs, write_parquet_config

    folder = Path(folder)
    write_engine_run(folder / "run", count)
    before = peak_rss_mb()
    inputs = [RecordInput("synthetic", "engine", str(folder / "run"))]
    seconds, peaks = {}, {}
    start = time.perf_counter()
    _, inputs = survey_inputs(inputs, progress=False)
    seconds["survey"], peaks["survey"] = time.perf_counter() - start, peak_rss_mb()
    rows = {}
    for config in ("synthetic", "conversations"):
        step = time.perf_counter()
        rows[config] = sum(write_parquet_config(config, inputs, folder / "out", progress=False).values())
        seconds[config], peaks[config] = time.perf_counter() - step, peak_rss_mb()
    step = time.perf_counter()
    write_dataset_card(folder / "out", inputs)
    seconds["card"], peaks["card"] = time.perf_counter() - step, peak_rss_mb()
    seconds["total"] = time.perf_counter() - start
    shards = sorted((folder / "out").glob("*/*.parquet"))
    return {
        "records": count,
        "rows": rows,
        "seconds": seconds,
        "peak_rss_mb_before": before,
        "peak_rss_mb_after": peak_rss_mb(),
        "peak_rss_mb_by_step": peaks,
        "arrow_pool_peak_mb": pa.default_memory_pool().max_memory() / 1e6,
        "shards": len(shards),
        "parquet_mb": sum(shard.stat().st_size for shard in shards) / 1e6,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, nargs="+", default=[50_000], help="sizes to build (default 50000)")
    parser.add_argument("--measure", type=int, help=argparse.SUPPRESS)  # the child process of one size
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure is not None:
        print(json.dumps(measure(args.measure, args.folder)))
        return

    print(f"{'records':>8} {'rows (rec+conv)':>16} {'survey':>8} {'records':>9} {'convers.':>9} {'card':>6} "
          f"{'total':>7} {'rec/s':>7} {'RSS before':>11} {'RSS peak':>9} {'parquet':>8}")  # fmt: skip
    for count in args.records:
        with tempfile.TemporaryDirectory() as folder:
            child = subprocess.run(
                [sys.executable, __file__, "--measure", str(count), "--folder", folder],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            if child.returncode != 0:
                sys.exit(f"the build of {count} records failed:\n{child.stderr[-3000:]}")
            result = json.loads(child.stdout.strip().splitlines()[-1])
        seconds, rows = result["seconds"], result["rows"]
        print(
            f"{count:>8,} {rows['synthetic']:>7,}+{rows['conversations']:>8,} {seconds['survey']:>7.1f}s "
            f"{seconds['synthetic']:>8.1f}s {seconds['conversations']:>8.1f}s {seconds['card']:>5.1f}s "
            f"{seconds['total']:>6.1f}s {count / seconds['total']:>7,.0f} {result['peak_rss_mb_before']:>8.0f} MB "
            f"{result['peak_rss_mb_after']:>6.0f} MB {result['parquet_mb']:>5.1f} MB"
        )
        print(
            f"         per step: survey {count / seconds['survey']:,.0f} records/s, record config "
            f"{rows['synthetic'] / seconds['synthetic']:,.0f} rows/s, conversations "
            f"{rows['conversations'] / seconds['conversations']:,.0f} rows/s; {result['shards']} shards"
        )
        peaks = ", ".join(f"{step} {mb:.0f}" for step, mb in result["peak_rss_mb_by_step"].items())
        print(
            f"         peak RSS after each step (MB): {peaks}; Arrow pool peak {result['arrow_pool_peak_mb']:.0f} MB"
        )


if __name__ == "__main__":
    main()
