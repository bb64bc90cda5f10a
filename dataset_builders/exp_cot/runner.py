"""A run of the Exp-CoT Engine over a source: Img2AU for every image, then the LLM processes for every sample.

Everything a run makes lives in its output folder:

    records.jsonl  one record per sample (`pipeline.make_pair`), appended the moment the sample finishes
    aus.jsonl      the Img2AU results, so that a resumed run does not run the AU model again
    run.json       the settings the records are made with; a resumed run must use the same ones
    summary.json   the counts over records.jsonl, rewritten at the end of every run
    cache.sqlite   the LLM response cache (openai backend; `--cache` may put it elsewhere, e.g. to share it)
    .lock          held while a run writes here, so that two runs never write the same records

Killed at any moment and started again with the same command, a run skips the samples already recorded, asks the
cache before the API, and ends with every sample recorded exactly once.
"""

import asyncio
import fcntl
import itertools
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from .au_detection import DETECTORS, AUResult, extract_folder
from .backends import BACKENDS, DEFAULT_OPENAI_MODEL, OFFLINE_MODEL, OfflineWriterBackend, OpenAIBackend
from .cache import ResponseCache
from .pipeline import EngineSettings, make_pair
from .prompting import DEFAULT_PROMPT_VERSION, PromptSet
from .records import JsonlFile, format_summary, read_jsonl, rewrite_jsonl, summarize_records, write_json
from .sources import unique_samples

# Settings that shape the records: a resumed run with other values would mix two kinds of records in one file.
RUN_KEYS = (
    "backend", "model", "prompt_version", "au_model", "temperature", "seed", "max_tokens",
    "reveal_after", "max_rounds", "refine_attempts", "llm_verify", "keep_conversation",
)  # fmt: skip


@dataclass
class EngineConfig:
    """Everything a run needs besides its source. See `python -m dataset_builders.exp_cot --help`."""

    output: Path
    backend: str = "offline"
    model: str | None = None  # default: gpt-4o-2024-08-06 for openai; the offline writer has one model
    base_url: str | None = None  # default: $OPENAI_BASE_URL, else OpenAI's
    api_key: str | None = field(default=None, repr=False)  # default: $OPENAI_API_KEY; never written anywhere
    concurrency: int = 32
    timeout: float = 60.0
    max_retries: int = 6
    backoff: float = 1.0
    temperature: float = 0.0
    seed: int = 0
    max_tokens: int = 1024
    settings: EngineSettings = field(default_factory=EngineSettings)
    au_model: str | None = None  # default: the source's (oracle for synthetic faces, mediapipe for photographs)
    workers: int = 1
    cache: Path | None = None
    limit: int | None = None
    retry_failed: bool = False
    prompt_version: str = DEFAULT_PROMPT_VERSION
    progress: bool = True

    def __post_init__(self):
        self.output = Path(self.output)
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.backend == "offline" and self.model is not None:
            raise ValueError("--model applies to the openai backend; the offline writer has no other model")
        if self.au_model is not None and self.au_model not in DETECTORS:
            raise ValueError(f"au_model must be one of {DETECTORS}, got {self.au_model!r}")
        if not isinstance(self.concurrency, int) or self.concurrency < 1:
            raise ValueError(f"concurrency must be a positive integer, got {self.concurrency!r}")
        if self.limit is not None and self.limit < 0:
            raise ValueError(f"limit must be >= 0, got {self.limit!r}")


def run_engine(source, config):
    """Run the engine over `source` into `config.output`; returns the summary (also in summary.json)."""
    output = config.output
    output.mkdir(parents=True, exist_ok=True)
    with open(output / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released by the kernel even on SIGKILL
        except BlockingIOError:
            raise RuntimeError(f"another run is writing to {output}; wait for it or use another --output") from None
        return _run_locked(source, config)


def _run_locked(source, config):
    output = config.output
    prompts = PromptSet.load(config.prompt_version)
    au_model = config.au_model or source.default_au_model
    model = config.model or (DEFAULT_OPENAI_MODEL if config.backend == "openai" else OFFLINE_MODEL)
    _check_run_file(
        output / "run.json",
        {
            "backend": config.backend,
            "model": model,
            "prompt_version": prompts.version,
            "au_model": au_model,
            "temperature": config.temperature,
            "seed": config.seed,
            "max_tokens": config.max_tokens,
            **asdict(config.settings),
        },
    )

    records_path = output / "records.jsonl"
    if config.retry_failed and records_path.exists():
        kept = [record for record in read_jsonl(records_path, repair=True) if record["status"] != "failed"]
        rewrite_jsonl(records_path, kept)
    samples = list(unique_samples(itertools.islice(source.samples(), config.limit)))

    with JsonlFile(records_path) as records:
        recorded = {record["id"] for record in records.records}
        pending = [sample for sample in samples if sample.id not in recorded]
        print(
            f"{len(samples)} samples from {source.name}: {len(samples) - len(pending)} already recorded, "
            f"{len(pending)} to do",
            file=sys.stderr,
        )
        cache = ResponseCache(config.cache or output / "cache.sqlite") if config.backend == "openai" else None
        try:
            backend = _build_backend(config, model, cache)  # before Img2AU, so that a missing key fails at once
            au_results = detect_action_units(pending, au_model, config.workers, output / "aus.jsonl")
            session = asyncio.run(_generate(pending, au_results, backend, prompts, config, records, len(samples)))
        finally:
            if cache is not None:
                cache.close()
        all_records = read_jsonl(records_path)

    summary = {
        "backend": config.backend,
        "model": model,
        "prompt_version": prompts.version,
        **summarize_records(all_records),
        "this_run": session,
    }
    write_json(output / "summary.json", summary)
    print(format_summary(summary), file=sys.stderr)
    return summary


def _check_run_file(path, settings):
    if path.exists():
        previous = json.loads(path.read_text(encoding="utf-8"))
        changed = [key for key in RUN_KEYS if previous.get(key) != settings.get(key)]
        if changed:
            differences = "; ".join(
                f"{key}: {previous.get(key)!r} there, {settings.get(key)!r} now" for key in changed
            )
            raise ValueError(
                f"{path.parent} holds records made with other settings ({differences}); resume with the same "
                "settings, or use another --output"
            )
        return
    write_json(path, settings)


def _build_backend(config, model, cache):
    if config.backend == "offline":
        return OfflineWriterBackend()
    return OpenAIBackend(
        model,
        base_url=config.base_url,
        api_key=config.api_key,
        cache=cache,
        temperature=config.temperature,
        seed=config.seed,
        max_tokens=config.max_tokens,
        timeout=config.timeout,
        max_retries=config.max_retries,
        backoff=config.backoff,
    )


# ---------------------------------------------------------------------------------------------------------------------
# Img2AU


def detect_action_units(samples, au_model, workers, aus_path):
    """{sample id: (AUResult, AU model name)} for `samples`. AUs a source gives are used as they are; the detector
    runs (in `workers` processes) only on images that aus.jsonl does not already hold."""
    results = {}
    with JsonlFile(aus_path) as aus_file:
        known = {record["id"]: record for record in aus_file.records if record.get("au_model") == au_model}
        to_detect = {}
        for sample in samples:
            if sample.au is not None:
                results[sample.id] = (AUResult("ok", au=list(sample.au)), "given")
            elif sample.id in known:
                record = known[sample.id]
                results[sample.id] = (AUResult(record["status"], au=record["au"], message=record["message"]), au_model)
            elif (problem := sample.image_problem()) is not None:
                results[sample.id] = (AUResult("unreadable", message=problem), au_model)
            else:
                to_detect.setdefault(str(sample.path), []).append(sample)
        if to_detect:
            for path, result in extract_folder(list(to_detect), au_model, workers):
                for sample in to_detect[path]:
                    aus_file.append(
                        {"id": sample.id, "au_model": au_model, "status": result.status, "au": result.au,
                         "message": result.message}
                    )  # fmt: skip
                    results[sample.id] = (result, au_model)
    return results


# ---------------------------------------------------------------------------------------------------------------------
# The LLM processes, `concurrency` samples at a time


async def _generate(pending, au_results, backend, prompts, config, records, total):
    counts = {"done": 0, "skipped": 0, "failed": 0}
    spent = {"tokens": 0}
    progress = tqdm(
        total=total, initial=total - len(pending), unit="pair", desc="Exp-CoT", disable=not config.progress,
        file=sys.stderr, dynamic_ncols=True,
    )  # fmt: skip
    queue = iter(pending)  # shared by the workers: each sample goes to exactly one of them
    start = time.perf_counter()

    async def worker():
        for sample in queue:
            au_result, sample_au_model = au_results[sample.id]
            record = await make_pair(sample, au_result, sample_au_model, backend, prompts, config.settings)
            records.append(record)
            counts[record["status"]] += 1
            spent["tokens"] += record["usage"]["prompt_tokens"] + record["usage"]["completion_tokens"]
            stats = backend.stats
            progress.set_postfix_str(
                f"done {counts['done']} skipped {counts['skipped']} failed {counts['failed']} | "
                f"{spent['tokens'] / 1000:.1f}k tok ${stats.cost_usd:.3f} sent {stats.requests_sent} "
                f"cached {stats.cache_hits}",
                refresh=False,
            )
            progress.update()

    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(min(config.concurrency, len(pending))):
                group.create_task(worker())
    except ExceptionGroup as errors:
        raise errors.exceptions[0] from None  # the first cause, not an exception group, reaches the user
    finally:
        progress.close()
        await backend.aclose()
    seconds = time.perf_counter() - start
    written = sum(counts.values())
    return {
        "pairs": written,
        **counts,
        "seconds": round(seconds, 3),
        "pairs_per_minute": round(written / seconds * 60, 2) if seconds > 0 else 0.0,
        "requests_sent": backend.stats.requests_sent,
        "cache_hits": backend.stats.cache_hits,
        "retries": backend.stats.retries,
        "cost_usd": round(backend.stats.cost_usd, 6),
        "backend_stats": backend.stats.to_dict(),
    }
