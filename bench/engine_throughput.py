"""How many Exp-CoT pairs a minute does the engine make against an API that takes a fixed time per request?

Starts the local OpenAI-compatible server (`expllm_testing/llm_server.py`, answering with the offline writer) in a
process of its own, as an API would be, with a fixed latency per request, and runs the engine's openai backend over
real HTTP on synthetic faces:

  pairs per minute at concurrency 1 and at concurrency 32, and their ratio;
  requests sent by a rerun of the finished run (must be 0: every sample is recorded);
  requests sent by a run that lost its records but kept its cache (must be 0: every answer is cached);
  requests sent for 16 copies of one face in flight at once (3 suffice: AU2Des, Des2Exp, refinement).

    python bench/engine_throughput.py [--latency 0.2] [--serial-samples 16] [--parallel-samples 320]
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from dataset_builders.exp_cot.runner import EngineConfig, run_engine
from dataset_builders.exp_cot.sources import FolderSource, SyntheticSource
from expllm_testing.llm_server import STATS_PATH

REPO_ROOT = Path(__file__).resolve().parent.parent


class ServerProcess:
    """`python -m expllm_testing.llm_server` on a free port, in its own process (its CPU is not the engine's)."""

    def __init__(self, latency):
        command = [sys.executable, "-m", "expllm_testing.llm_server", "--port", "0", "--latency", str(latency)]
        self.process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
        first_line = self.process.stdout.readline()  # "serving http://127.0.0.1:<port>/v1 (Ctrl-C to stop)"
        if not first_line.startswith("serving "):
            self.process.kill()
            raise RuntimeError(f"the local server did not start: {first_line!r}")
        self.base_url = first_line.split()[1]

    @property
    def request_count(self):
        with urllib.request.urlopen(self.base_url.removesuffix("/v1") + STATS_PATH) as response:
            return json.load(response)["requests"]

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.process.terminate()
        self.process.wait()
        self.process.stdout.close()


def engine_run(faces, count, output, server, concurrency, source=None):
    """(summary, requests the server got) of one engine run over the first `count` faces (or over `source`)."""
    before = server.request_count
    config = EngineConfig(
        output=output,
        backend="openai",
        base_url=server.base_url,
        api_key="bench-key",
        concurrency=concurrency,
        progress=False,
    )
    summary = run_engine(source or SyntheticSource(count, faces), config)
    return summary, server.request_count - before


def copies_of_one_face(faces, folder, count):
    """A folder source of `count` copies of the first synthetic face: the same AUs and label, so identical requests."""
    folder.mkdir()
    names = [f"copy-{index:02d}.png" for index in range(count)]
    for name in names:
        shutil.copy(faces / "synthetic-0-000000.png", folder / name)
    label = next(SyntheticSource(1, faces).samples()).label
    (folder / "labels.txt").write_text("".join(f"{name} {label}\n" for name in names))
    return FolderSource(folder, folder / "labels.txt")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency", type=float, default=0.2, help="seconds the server takes per request")
    parser.add_argument("--serial-samples", type=int, default=16)
    parser.add_argument("--parallel-samples", type=int, default=320)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="engine_throughput_"))
    try:
        faces = work / "faces"
        list(SyntheticSource(max(args.serial_samples, args.parallel_samples), faces).samples())  # render once
        with ServerProcess(args.latency) as server:
            serial, serial_requests = engine_run(faces, args.serial_samples, work / "serial", server, 1)
            parallel, parallel_requests = engine_run(
                faces, args.parallel_samples, work / "parallel", server, args.concurrency
            )
            _, rerun_requests = engine_run(faces, args.parallel_samples, work / "parallel", server, args.concurrency)
            (work / "parallel" / "records.jsonl").unlink()  # the records are lost, the cache is kept
            recovered, cached_requests = engine_run(
                faces, args.parallel_samples, work / "parallel", server, args.concurrency
            )
            copies = copies_of_one_face(faces, work / "copies", 16)
            config = EngineConfig(
                output=work / "copies-run", backend="openai", base_url=server.base_url, api_key="bench-key",
                concurrency=16, au_model="oracle", progress=False,
            )  # fmt: skip
            before = server.request_count
            duplicates = run_engine(copies, config)
            duplicate_requests = server.request_count - before
    finally:
        shutil.rmtree(work, ignore_errors=True)

    serial_rate = serial["this_run"]["pairs_per_minute"]
    parallel_rate = parallel["this_run"]["pairs_per_minute"]
    print(f"\nserver latency {args.latency * 1000:.0f} ms a request; openai backend, HTTP to a local server process")
    runs = ((serial, serial_requests, 1), (parallel, parallel_requests, args.concurrency))
    for summary, requests, concurrency in runs:
        run = summary["this_run"]
        print(
            f"concurrency {concurrency:>3}: {run['pairs']:>4} samples in {run['seconds']:6.1f} s = "
            f"{run['pairs_per_minute']:8.1f} pairs/min ({requests / max(run['pairs'], 1):.2f} requests a sample, "
            f"done {summary['done']}, failed {summary['failed']})"
        )
    print(f"speed-up concurrency {args.concurrency} / 1: {parallel_rate / serial_rate:.1f}x")
    print(f"requests sent by a rerun of the finished run: {rerun_requests}")
    print(
        f"requests sent by a run with its records deleted but its cache kept: {cached_requests} "
        f"({recovered['this_run']['cache_hits']} answers from the cache, {recovered['done']} pairs done)"
    )
    print(
        f"requests sent for 16 copies of one face at concurrency 16: {duplicate_requests} "
        f"({duplicates['this_run']['backend_stats']['shared_in_flight']} shared in flight, {duplicates['done']} done)"
    )


if __name__ == "__main__":
    main()
