"""Command line of the Exp-CoT Engine: one sub-command per source.

    python -m dataset_builders.exp_cot synthetic --count 64 --output out/exp_cot
    python -m dataset_builders.exp_cot folder images/ --labels labels.csv --output out/my_faces
    OPENAI_API_KEY=... python -m dataset_builders.exp_cot folder images/ --labels labels.csv --backend openai

Run the same command again after an interruption: recorded samples are skipped and cached answers are not paid for
twice. `expllm-exp-cot` is the same command once the package is installed.
"""

import argparse
import os
import sys

from .au_detection import DETECTORS
from .backends import BACKENDS, DEFAULT_OPENAI_MODEL, BackendConfigError
from .pipeline import EngineSettings
from .prompting import DEFAULT_PROMPT_VERSION
from .runner import EngineConfig, run_engine
from .sources import SOURCES


def build_parser():
    engine = argparse.ArgumentParser(add_help=False)
    run = engine.add_argument_group("run")
    run.add_argument("--output", default="out/exp_cot", help="output folder (default out/exp_cot)")
    run.add_argument("--limit", type=int, help="only the first N samples of the source")
    run.add_argument("--retry-failed", action="store_true", help="drop the failed records and try those samples again")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")

    llm = engine.add_argument_group("LLM")
    llm.add_argument("--backend", choices=BACKENDS, default="offline", help="offline writer (default) or an API")
    llm.add_argument("--model", help=f"openai backend: a dated snapshot (default {DEFAULT_OPENAI_MODEL})")
    llm.add_argument("--base-url", help="OpenAI-compatible endpoint (default $OPENAI_BASE_URL, else OpenAI)")
    llm.add_argument(
        "--api-key", help="default $OPENAI_API_KEY, which is better: a key on the command line shows in process lists"
    )
    llm.add_argument("--concurrency", type=int, default=32, help="samples in flight at once (default 32)")
    llm.add_argument("--timeout", type=float, default=60.0, help="seconds before a request is retried (default 60)")
    llm.add_argument("--max-retries", type=int, default=6, help="retries of one request (default 6)")
    llm.add_argument("--temperature", type=float, default=0.0)
    llm.add_argument("--seed", type=int, default=0, help="sampling seed sent with every request (default 0)")
    llm.add_argument("--max-tokens", type=int, default=1024, help="answer length limit in tokens (default 1024)")
    llm.add_argument("--cache", help="response cache file (default <output>/cache.sqlite)")
    llm.add_argument("--prompt-version", default=DEFAULT_PROMPT_VERSION, help="folder under dataset_builders/prompts")

    process = engine.add_argument_group("processes")
    defaults = EngineSettings()
    process.add_argument("--reveal-after", type=int, default=defaults.reveal_after, help="failed rounds before the "
                         f"label is revealed (default {defaults.reveal_after})")  # fmt: skip
    process.add_argument("--max-rounds", type=int, default=defaults.max_rounds, help="analyses per sample at most "
                         f"(default {defaults.max_rounds})")  # fmt: skip
    process.add_argument("--refine-attempts", type=int, default=defaults.refine_attempts)
    process.add_argument("--llm-verify", action="store_true", help="also let the LLM verify (recorded, not deciding)")
    process.add_argument("--keep-conversations", action="store_true", help="store each conversation in its record")
    process.add_argument("--au-model", choices=DETECTORS, help="Img2AU detector (default: the source's)")
    process.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="Img2AU processes")

    parser = argparse.ArgumentParser(
        prog="python -m dataset_builders.exp_cot",
        description="Turn face images with labels into verified three-part Exp-CoT explanations.",
    )
    sources = parser.add_subparsers(dest="source", required=True, metavar="SOURCE")
    for name, source_class in SOURCES.items():
        source_parser = sources.add_parser(
            name, parents=[engine], help=source_class.help, description=f"Source: {source_class.help}."
        )
        source_class.add_arguments(source_parser)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        source = SOURCES[args.source].from_arguments(args)
        settings = EngineSettings(
            reveal_after=args.reveal_after,
            max_rounds=args.max_rounds,
            refine_attempts=args.refine_attempts,
            llm_verify=args.llm_verify,
            keep_conversation=args.keep_conversations,
        )
        config = EngineConfig(
            output=args.output,
            backend=args.backend,
            model=args.model,
            base_url=args.base_url,
            api_key=args.api_key,
            concurrency=args.concurrency,
            timeout=args.timeout,
            max_retries=args.max_retries,
            temperature=args.temperature,
            seed=args.seed,
            max_tokens=args.max_tokens,
            settings=settings,
            au_model=args.au_model,
            workers=args.workers,
            cache=args.cache,
            limit=args.limit,
            retry_failed=args.retry_failed,
            prompt_version=args.prompt_version,
            progress=not args.no_progress,
        )
        run_engine(source, config)
    except (BackendConfigError, ValueError, OSError, RuntimeError) as error:
        # Set-up and input problems get their message, not a traceback; samples never end up here.
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
