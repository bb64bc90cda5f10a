"""The Exp-CoT Engine end to end: the offline writer on synthetic faces, the openai backend over real HTTP against the
local server (faults included), bad inputs and bad answers, and a run killed with SIGKILL and resumed."""

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from dataset_builders.exp_cot.__main__ import main as engine_main
from dataset_builders.exp_cot.au_detection import OracleAUDetector
from dataset_builders.exp_cot.cache import ResponseCache, request_key
from dataset_builders.exp_cot.cot_text import split_cot
from dataset_builders.exp_cot.pipeline import EngineSettings, cot_problems, looks_like_refusal
from dataset_builders.exp_cot.prompting import PromptSet, format_au_list, parse_au_list
from dataset_builders.exp_cot.records import read_jsonl
from dataset_builders.exp_cot.runner import EngineConfig, run_engine
from dataset_builders.exp_cot.sources import FolderSource, Sample, SyntheticSource
from dataset_builders.exp_cot.verification import verify_description
from expllm_testing import llm_server
from modeling_expllm.vocabulary import COT_MAX_WORDS, COT_SECTIONS, EXPRESSION_LABELS, prototype_vector

REPO_ROOT = Path(__file__).resolve().parent.parent
SECRET = "sk-test-never-written-0123456789"
RECORD_FIELDS = {
    "id", "source", "split", "file_name", "label", "status", "reason", "message", "au_model", "au", "description",
    "des2exp_label", "cot", "cot_sections", "rounds", "label_revealed", "rounds_log", "verification",
    "refined_verification", "refine_attempts", "llm_verification", "backend", "model", "prompt_version", "usage",
    "cost_usd",
}  # fmt: skip


class GivenAUSource:
    """A source whose samples carry their AUs (as an annotation file with AUs would): Img2AU is skipped."""

    name = "given"
    default_au_model = "oracle"

    def __init__(self, root, rows):
        self.root, self.rows = Path(root), rows

    def samples(self):
        for sample_id, label, au in self.rows:
            yield Sample(sample_id, self.name, "train", f"{sample_id}.png", label, self.root, au=tuple(au))


def run(source, output, **options):
    return run_engine(source, EngineConfig(output=output, progress=False, workers=1, **options))


def records_of(output):
    return read_jsonl(Path(output) / "records.jsonl")


def http_options(server, **options):
    return {"backend": "openai", "base_url": server.base_url, "api_key": SECRET, "backoff": 0.05, **options}


def processes_of(record_conversation, prompts):
    return [prompts.match(m["content"])[0] for m in record_conversation if m["role"] == "user"]


# ---------------------------------------------------------------------------------------------------------------------
# The offline writer, the default backend


def test_offline_writer_end_to_end_on_synthetic_faces(tmp_path):
    source = SyntheticSource(24, tmp_path / "faces")
    summary = run(source, tmp_path / "run")
    records = records_of(tmp_path / "run")
    assert len(records) == 24 and summary["done"] == 24, summary
    oracle = OracleAUDetector()
    for record in records:
        assert set(record) == RECORD_FIELDS
        assert record["status"] == "done" and record["reason"] is None
        assert record["au"] == oracle.detect(tmp_path / "faces" / record["file_name"]).au
        assert (record["au_model"], record["backend"], record["model"]) == ("oracle", "offline", "offline-writer")
        assert record["prompt_version"] == PromptSet.load().version
        sections = split_cot(record["cot"])
        assert sections.complete and list(record["cot_sections"]) == list(COT_SECTIONS)
        assert record["cot_sections"]["Conclusion"] == sections.conclusion
        assert len(record["cot"].split()) <= COT_MAX_WORDS
        assert verify_description(record["cot"], record["au"], record["label"]).passed
        assert verify_description(record["description"], record["au"], record["label"]).passed
        assert record["rounds"] == len(record["rounds_log"]) >= 1 and record["rounds_log"][-1]["passed"]
        assert record["verification"]["passed"] and record["refined_verification"]["passed"]
        assert record["des2exp_label"] == record["label"]
        assert record["usage"]["requests"] >= 3 and record["cost_usd"] == 0.0
    assert {record["label"] for record in records} == set(EXPRESSION_LABELS)
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert on_disk["done"] == 24 and on_disk["records"] == 24 and on_disk["verification"]["pass_rate"] == 1.0
    assert sum(on_disk["rounds_histogram"].values()) == 24

    again = run(source, tmp_path / "run")
    assert len(records_of(tmp_path / "run")) == 24 and again["this_run"]["pairs"] == 0


def test_the_label_is_revealed_after_the_configured_failed_rounds(tmp_path):
    """A face whose AUs read as happiness but whose label is sadness: the offline writer concludes happiness three
    times, the fourth prompt reveals sadness, and the analysis written for it passes."""
    source = GivenAUSource(tmp_path, [("smiling-but-sad", "Sadness", prototype_vector("Happiness"))])
    run(source, tmp_path / "default", settings=EngineSettings(keep_conversation=True))
    (record,) = records_of(tmp_path / "default")
    assert record["status"] == "done", record["message"]
    assert record["rounds"] == 4 and record["label_revealed"] and record["au_model"] == "given"
    assert [r["label_revealed"] for r in record["rounds_log"]] == [False, False, False, True]
    assert [r["des2exp_label"] for r in record["rounds_log"]] == ["Happiness"] * 3 + ["Sadness"]
    prompts = PromptSet.load()
    assert processes_of(record["conversation"], prompts) == [
        "au2des", "des2exp", "reflect", "des2exp", "reflect", "des2exp", "reveal", "des2exp", "refine",
    ]  # fmt: skip
    # No prompt before the reveal names the label as the answer.
    for message in record["conversation"][:7]:
        assert "really shows is Sadness" not in message["content"]

    run(source, tmp_path / "sooner", settings=EngineSettings(reveal_after=1))
    (record,) = records_of(tmp_path / "sooner")
    assert record["status"] == "done" and record["rounds"] == 2 and record["label_revealed"]

    run(source, tmp_path / "never", settings=EngineSettings(reveal_after=3, max_rounds=3))
    (record,) = records_of(tmp_path / "never")
    assert record["status"] == "failed" and record["reason"] == "verification_failed"
    assert record["rounds"] == 3 and not record["label_revealed"]


# ---------------------------------------------------------------------------------------------------------------------
# Over real HTTP


def test_engine_over_http_records_usage_cost_and_never_the_key(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    source = SyntheticSource(16, tmp_path / "faces")
    with llm_server.LocalLLMServer() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        summary = run(source, tmp_path / "run", backend="openai", concurrency=4)
        sent = server.request_count
        records = records_of(tmp_path / "run")
        assert summary["done"] == 16 and len(records) == 16, summary
        assert sent == summary["this_run"]["requests_sent"] == sum(r["usage"]["requests"] for r in records)
        for record in records:
            assert record["model"] == "gpt-4o-2024-08-06" and record["backend"] == "openai"
            assert record["usage"]["prompt_tokens"] > 0 and record["cost_usd"] > 0
            assert split_cot(record["cot"]).complete
        assert summary["cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in records), rel=1e-4)
        for request in server.requests:
            assert request["temperature"] == 0.0 and request["seed"] == 0
            assert request["model"] == "gpt-4o-2024-08-06"

        again = run(source, tmp_path / "run", backend="openai", concurrency=4)
        assert server.request_count == sent and again["this_run"]["requests_sent"] == 0

        (tmp_path / "run" / "records.jsonl").unlink()  # records lost, cache kept: every answer comes from the cache
        recovered = run(source, tmp_path / "run", backend="openai", concurrency=4)
        assert server.request_count == sent and recovered["done"] == 16
        assert recovered["this_run"]["cache_hits"] == sent

    written = [path for path in (tmp_path / "run").rglob("*") if path.is_file()]
    assert any(path.name == "cache.sqlite" for path in written)
    for path in written:
        assert SECRET.encode() not in path.read_bytes(), path


def test_faults_during_a_run_are_retried(tmp_path):
    source = SyntheticSource(4, tmp_path / "faces")
    with llm_server.LocalLLMServer() as server:
        # With one sample at a time the requests come in a fixed order: the first request of the run meets a 429
        # (Retry-After 1 s), then a 500, then a reply slower than the 0.5 s time-out, then a body that is not JSON
        # (as a cut-off reply is): each is retried, and the fifth attempt is answered.
        server.inject(
            llm_server.rate_limited(1.0),
            llm_server.server_error(500),
            llm_server.slow(2.0),
            llm_server.malformed(),
        )
        summary = run(source, tmp_path / "run", **http_options(server, concurrency=1, timeout=0.5))
    records = records_of(tmp_path / "run")
    assert [r["status"] for r in records] == ["done"] * 4 and summary["failed_by_reason"] == {}
    session = summary["this_run"]
    assert session["retries"] == 4 and session["backend_stats"]["waited_seconds"] >= 1.0
    assert session["backend_stats"]["errors"] == {
        "RateLimitError": 1, "InternalServerError": 1, "APITimeoutError": 1, "malformed_response": 1,
    }  # fmt: skip
    assert session["seconds"] >= 1.5  # the Retry-After wait and the time-out were sat out


def test_a_reply_that_stays_malformed_fails_only_its_sample(tmp_path):
    source = SyntheticSource(3, tmp_path / "faces")
    with llm_server.LocalLLMServer() as server:
        # The first sample's Des2Exp (the second request) meets a body that is not JSON, and its one retry too.
        server.inject(llm_server.Fault(), llm_server.malformed(), llm_server.malformed())
        summary = run(source, tmp_path / "run", **http_options(server, concurrency=1, max_retries=1))
    records = {record["id"]: record for record in records_of(tmp_path / "run")}
    first = records["synthetic-0-000000"]
    assert first["status"] == "failed" and first["reason"] == "malformed_response", first
    assert "des2exp" in first["message"] and first["description"]  # AU2Des had answered
    assert summary["failed_by_reason"] == {"malformed_response": 1} and summary["done"] == 2


def test_an_api_that_stays_down_fails_samples_and_retry_failed_redoes_them(tmp_path):
    source = SyntheticSource(3, tmp_path / "faces")
    with llm_server.LocalLLMServer() as server:
        server.inject(*[llm_server.server_error(503)] * 3)
        summary = run(source, tmp_path / "run", **http_options(server, concurrency=1, max_retries=2))
        assert summary["failed_by_reason"] == {"api_unavailable": 1} and summary["done"] == 2
        again = run(source, tmp_path / "run", retry_failed=True, **http_options(server, concurrency=1))
    assert again["done"] == 3 and again["this_run"]["pairs"] == 1
    assert sorted(r["id"] for r in records_of(tmp_path / "run")) == [f"synthetic-0-00000{i}" for i in range(3)]


def test_bad_llm_answers_each_end_as_a_failed_record_with_its_reason(tmp_path):
    labels = ("Happiness", "Surprise", "Anger", "Disgust", "Fear")
    rows = [(f"face-{label.lower()}", label, prototype_vector(label)) for label in labels]
    sabotage = {  # the AU list of a face's prompt -> (process to spoil, answer given instead)
        format_au_list(prototype_vector("Happiness")): ("au2des", ""),
        format_au_list(prototype_vector("Surprise")): ("au2des", "I can't help with that."),
        format_au_list(prototype_vector("Anger")): ("des2exp", "Hard to say, it could be several things."),
        format_au_list(prototype_vector("Disgust")): ("refine", "The nose wrinkles and the upper lip rises."),
    }
    prompts = PromptSet.load()
    playing = llm_server.OfflineWriterResponder(prompts)

    def responder(request):
        face = prompts.match(request["messages"][1]["content"])[1]["au_list"]
        process = prompts.match(request["messages"][-1]["content"])[0]
        spoiled = sabotage.get(face)
        if spoiled and process.startswith(spoiled[0]):
            return spoiled[1]
        return playing(request)

    with llm_server.LocalLLMServer(responder) as server:
        summary = run(GivenAUSource(tmp_path, rows), tmp_path / "run", **http_options(server, concurrency=2))
    records = {record["label"]: record for record in records_of(tmp_path / "run")}
    assert {label: (r["status"], r["reason"]) for label, r in records.items()} == {
        "Happiness": ("failed", "empty_answer"),
        "Surprise": ("failed", "refusal"),
        "Anger": ("failed", "not_a_label"),
        "Disgust": ("failed", "format_broken"),
        "Fear": ("done", None),
    }
    assert "Hard to say" in records["Anger"]["message"]
    assert "lacks the Key Observations" in records["Disgust"]["message"]
    assert records["Disgust"]["refine_attempts"] == 2 and records["Disgust"]["rounds"] == 1
    assert summary["failed_by_reason"] == {"empty_answer": 1, "refusal": 1, "not_a_label": 1, "format_broken": 1}
    assert summary["failed"] == 4 and summary["done"] == 1


def test_llm_verification_is_recorded_beside_the_code_verifier(tmp_path):
    with llm_server.LocalLLMServer() as server:
        summary = run(
            SyntheticSource(6, tmp_path / "faces"),
            tmp_path / "run",
            settings=EngineSettings(llm_verify=True),
            **http_options(server, concurrency=3),
        )
    assert summary["done"] == 6
    for record in records_of(tmp_path / "run"):
        assert all(r["llm_verdict"] in ("pass", "fail") for r in record["rounds_log"])
        assert record["llm_verification"]["verdict"] == "pass"
    llm = summary["llm_verification"]
    assert llm["checked_rounds"] >= 6 and llm["agrees_with_code"] == llm["checked_rounds"]


# ---------------------------------------------------------------------------------------------------------------------
# Bad inputs


def test_bad_images_are_skipped_with_their_reasons(tmp_path):
    pytest.importorskip("mediapipe")
    from skimage.data import astronaut

    from dataset_builders.exp_cot.synthetic_faces import sample_face, save_face

    root = tmp_path / "images"
    root.mkdir()
    photo = Image.fromarray(astronaut())
    save_face(sample_face(0, "Happiness"), root / "whole.png")
    (root / "truncated.png").write_bytes((root / "whole.png").read_bytes()[:3000])
    (root / "text.png").write_text("this is not an image\n")
    Image.new("RGB", (640, 480), (255, 255, 255)).save(root / "blank.png")
    photo.convert("L").save(root / "gray.png")
    photo.resize((4096, 4096)).save(root / "huge.jpg", quality=90)
    (tmp_path / "labels.txt").write_text(
        "truncated.png Happiness\ntext.png Anger\nblank.png Neutral\nmissing.png Fear\ngray.png happy\nhuge.jpg joy\n"
    )
    summary = run(FolderSource(root, tmp_path / "labels.txt"), tmp_path / "run")
    records = {record["file_name"]: record for record in records_of(tmp_path / "run")}
    assert {name: (r["status"], r["reason"]) for name, r in records.items() if r["status"] == "skipped"} == {
        "truncated.png": ("skipped", "unreadable"),
        "text.png": ("skipped", "unreadable"),
        "blank.png": ("skipped", "no_face"),
        "missing.png": ("skipped", "unreadable"),
    }
    for name in ("truncated.png", "text.png", "blank.png", "missing.png"):
        assert name in records[name]["message"] and records[name]["au"] is None
    for name in ("gray.png", "huge.jpg"):  # a grayscale and a 4096 x 4096 photograph are read as any other
        assert records[name]["au_model"] == "mediapipe" and len(records[name]["au"]) == 24
        assert records[name]["status"] == "done", records[name]["message"]
    assert summary["skipped_by_reason"] == {"unreadable": 3, "no_face": 1} and summary["done"] == 2


def test_images_without_oracle_metadata_are_skipped(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    Image.new("RGB", (64, 64), (200, 150, 120)).save(root / "plain.png")
    (tmp_path / "labels.csv").write_text("file_name,label\nplain.png,Neutral\n")
    summary = run(FolderSource(root, tmp_path / "labels.csv"), tmp_path / "run", au_model="oracle")
    (record,) = records_of(tmp_path / "run")
    assert record["status"] == "skipped" and record["reason"] == "no_metadata" and "plain.png" in record["message"]
    assert summary["skipped_by_reason"] == {"no_metadata": 1}


def test_answer_and_format_checks():
    assert looks_like_refusal("I can't help with that.")
    assert looks_like_refusal("I'm sorry, but I cannot analyze faces.")
    assert looks_like_refusal("Sorry, I won't do that.")
    assert not looks_like_refusal("The brows are lowered strongly. The reason cannot be seen from AUs alone.")
    assert not looks_like_refusal("Happiness")

    au = prototype_vector("Happiness")
    problems = cot_problems("The corners of the lips are pulled up.", au, "Happiness")[2]
    assert problems[0].startswith("It lacks the Key Observations, Overall Emotional Interpretation, Conclusion")
    long_cot = "\n\n".join(f"**{header}:** " + "word " * 50 for header in COT_SECTIONS)
    assert any("more than 130" in problem for problem in cot_problems(long_cot, au, "Happiness")[2])
    personal = (
        "**Key Observations:** He smiles; AU 12 is strong.\n\n**Overall Emotional Interpretation:** x\n\n"
        "**Conclusion:** y"
    )
    problems = " ".join(cot_problems(personal, au, "Happiness")[2])
    assert "personal pronouns (he)" in problems and "by number (AU 12)" in problems


def test_au_lists_read_back_exactly():
    for label in EXPRESSION_LABELS:
        assert parse_au_list(format_au_list(prototype_vector(label))) == prototype_vector(label)
    odd = [0.0] * 24
    odd[3], odd[17] = 0.1234, 1.0
    assert parse_au_list(format_au_list(odd)) == odd


# ---------------------------------------------------------------------------------------------------------------------
# Runs that lose nothing


def test_kill_and_resume_records_each_sample_exactly_once_and_resends_nothing_cached(tmp_path):
    output = tmp_path / "run"
    records_path = output / "records.jsonl"
    command = [
        sys.executable, "-m", "dataset_builders.exp_cot", "synthetic", "--count", "40", "--output", str(output),
        "--backend", "openai", "--concurrency", "4", "--workers", "1", "--no-progress",
    ]  # fmt: skip
    with llm_server.LocalLLMServer(latency=0.2) as server:
        env = {**os.environ, "OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": SECRET}
        first = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while not (records_path.exists() and records_path.read_bytes().count(b"\n") >= 8):
            assert first.poll() is None, first.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the first run recorded nothing in time"
            time.sleep(0.02)
        # Four samples run in step, one request (0.2 s) at a time each: 0.3 s after a record the next four are
        # between their first and second answers, so the kill leaves answers in the cache for unrecorded samples.
        time.sleep(0.3)
        first.send_signal(signal.SIGKILL)
        first.wait()
        first.stdout.close()
        first.stderr.close()
        recorded_before = records_path.read_bytes().count(b"\n")
        assert 8 <= recorded_before < 40, "the kill must land in the middle of the run"
        with ResponseCache(output / "cache.sqlite") as cache:
            cached_at_kill = cache.keys()
        with open(records_path, "ab") as records:
            records.write(b'{"id": "synthetic-0-0000')  # what a kill in the middle of a write leaves behind
        requests_at_kill = server.request_count

        second = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=180)
        assert second.returncode == 0, second.stderr[-3000:]
        resumed_requests = server.requests[requests_at_kill:]

    assert "cutting off a half-written last line" in second.stderr
    data = records_path.read_bytes()
    assert data.endswith(b"\n")
    records = [json.loads(line) for line in data.decode().splitlines()]  # every line is whole JSON
    counts = Counter(record["id"] for record in records)
    assert counts == Counter(f"synthetic-0-{index:06d}" for index in range(40))
    assert all(record["status"] == "done" for record in records)
    resent = [
        request
        for request in resumed_requests
        if request_key(
            request["model"],
            request["messages"],
            {k: request[k] for k in ("temperature", "seed", "max_completion_tokens")},
        )
        in cached_at_kill
    ]
    assert resent == [], f"{len(resent)} requests whose answers were already cached were sent again"
    summary = json.loads((output / "summary.json").read_text())
    assert summary["records"] == 40 and summary["this_run"]["pairs"] == 40 - recorded_before
    assert summary["this_run"]["cache_hits"] > 0  # the samples in flight at the kill went on from their cached answers
    assert SECRET not in second.stderr and SECRET not in second.stdout


def test_a_resumed_run_must_keep_its_settings_and_two_runs_cannot_share_an_output(tmp_path):
    source = SyntheticSource(2, tmp_path / "faces")
    run(source, tmp_path / "run")
    with llm_server.LocalLLMServer() as server:
        with pytest.raises(ValueError, match="backend: 'offline' there, 'openai' now"):
            run(source, tmp_path / "run", **http_options(server))
        assert server.request_count == 0
    with open(tmp_path / "run" / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(RuntimeError, match="another run is writing"):
            run(source, tmp_path / "run")


def test_command_line_runs_and_reports_bad_input_clearly(tmp_path, capsys):
    assert engine_main(["synthetic", "--count", "3", "--output", str(tmp_path / "run"), "--no-progress"]) == 0
    assert len(records_of(tmp_path / "run")) == 3
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["done"] == 3

    (tmp_path / "images").mkdir()
    (tmp_path / "labels.txt").write_text("a.png Happiness\nb.png grumpy\n")
    arguments = ["folder", str(tmp_path / "images"), "--labels", str(tmp_path / "labels.txt")]
    assert engine_main([*arguments, "--output", str(tmp_path / "bad")]) == 2
    assert "labels.txt:2: label 'grumpy' is not one of" in capsys.readouterr().err


def test_synthetic_source_renders_at_the_asked_size_and_the_oracle_reads_its_aus(tmp_path):
    from PIL import Image

    from dataset_builders.exp_cot.synthetic_faces import generate_faces, oracle_action_units

    samples = list(SyntheticSource(2, tmp_path / "faces", seed=4, size=96).samples())
    for sample, face in zip(samples, generate_faces(2, seed=4, size=96)):
        path = tmp_path / "faces" / sample.file_name
        with Image.open(path) as image:
            assert image.size == (96, 96)
        assert oracle_action_units(path) == [round(value, 4) for value in face.au]


# ---------------------------------------------------------------------------------------------------------------------
# What a hostile or unlucky endpoint does to a long paid run (issue 11): it never crashes, hangs, pays twice or leaks


def test_content_as_a_list_of_parts_is_read_and_any_other_shape_fails_only_its_sample(tmp_path):
    playing = llm_server.OfflineWriterResponder()

    def responder(request):
        return [{"type": "text", "text": playing(request)}]  # what newer endpoints send

    source = SyntheticSource(3, tmp_path / "faces")
    with llm_server.LocalLLMServer(responder) as server:
        server.inject(llm_server.answer(42))  # the first sample's AU2Des: a number, not text
        summary = run(source, tmp_path / "run", **http_options(server, concurrency=1))
        assert summary["done"] == 2 and summary["failed_by_reason"] == {"malformed_response": 1}
        first = next(r for r in records_of(tmp_path / "run") if r["id"] == "synthetic-0-000000")
        assert "au2des" in first["message"] and "int" in first["message"]
        server.inject(llm_server.answer([{"type": "mystery", "payload": 1}]))
        again = run(source, tmp_path / "run", retry_failed=True, **http_options(server, concurrency=1))
        assert again["failed_by_reason"] == {"malformed_response": 1}  # an unknown part type: the sample, not the run
        last = run(source, tmp_path / "run", retry_failed=True, **http_options(server, concurrency=1))
    assert last["done"] == 3


def test_a_trickling_answer_meets_the_whole_request_deadline(tmp_path):
    source = SyntheticSource(2, tmp_path / "faces")
    with llm_server.LocalLLMServer() as server:
        server.inject(llm_server.trickling(0.05))  # about 30 s for the whole body, every byte within 0.05 s
        started = time.monotonic()
        summary = run(source, tmp_path / "run", **http_options(server, concurrency=1, timeout=1.0))
    assert summary["done"] == 2 and time.monotonic() - started < 15
    assert summary["this_run"]["backend_stats"]["errors"] == {"APITimeoutError": 1}


def test_answers_the_engine_rejects_are_never_cached_so_retry_failed_redoes_them(tmp_path):
    playing = llm_server.OfflineWriterResponder()
    prompts = PromptSet.load()
    spoil = {"on": True}

    def responder(request):
        process = prompts.match(request["messages"][-1]["content"])[0]
        face = prompts.match(request["messages"][1]["content"])[1]["au_list"]
        if spoil["on"] and process == "au2des" and face == format_au_list(prototype_vector("Happiness")):
            return "I'm sorry, but I can't help with analysing faces."  # a refusal written as text
        if spoil["on"] and process == "des2exp" and face == format_au_list(prototype_vector("Anger")):
            return "Honestly it is hard to say; several readings fit."  # a chatty Des2Exp answer
        return playing(request)

    rows = [(f"face-{label.lower()}", label, prototype_vector(label)) for label in ("Happiness", "Anger", "Fear")]
    source = GivenAUSource(tmp_path, rows)
    with llm_server.LocalLLMServer(responder) as server:
        first = run(source, tmp_path / "run", **http_options(server, concurrency=1))
        assert first["failed_by_reason"] == {"refusal": 1, "not_a_label": 1}
        spoil["on"] = False  # the endpoint behaves now: a retry must ask it again rather than replay the cache
        again = run(source, tmp_path / "run", retry_failed=True, **http_options(server, concurrency=1))
    assert again["done"] == 3 and again["this_run"]["pairs"] == 2
    assert again["this_run"]["requests_sent"] > 0


def test_an_exhausted_quota_stops_the_run_at_once_and_a_resume_finishes_it(tmp_path, capsys):
    output = tmp_path / "run"
    arguments = ["synthetic", "--count", "4", "--output", str(output), "--backend", "openai", "--concurrency", "1",
                 "--no-progress"]  # fmt: skip
    with llm_server.LocalLLMServer() as server:
        options = ["--base-url", server.base_url, "--api-key", SECRET]
        # The first sample takes three requests (AU2Des, Des2Exp, refinement); the second one's first meets the 429.
        server.inject(llm_server.Fault(), llm_server.Fault(), llm_server.Fault(), llm_server.quota_exhausted())
        assert engine_main([*arguments, *options]) == 2
        assert server.request_count == 4  # not retried: more attempts cannot add credit
        error = capsys.readouterr().err
        assert "quota is used up" in error and "left for a resume" in error and SECRET not in error
        assert [record["status"] for record in records_of(output)] == ["done"]
        assert engine_main([*arguments, *options]) == 0
    assert [record["status"] for record in records_of(output)] == ["done"] * 4


def test_what_the_server_echoes_never_carries_the_key_into_records_or_the_terminal(tmp_path, capsys):
    source = SyntheticSource(2, tmp_path / "faces")
    with llm_server.LocalLLMServer() as server:
        server.inject(llm_server.echoing_authorization())
        summary = run(source, tmp_path / "run", **http_options(server, concurrency=1))
    assert summary["failed_by_reason"] == {"api_rejected": 1}
    failed = next(record for record in records_of(tmp_path / "run") if record["status"] == "failed")
    assert "Authorization" in failed["message"] and "[redacted]" in failed["message"]
    printed = capsys.readouterr()
    for text in (failed["message"], printed.err, printed.out, (tmp_path / "run" / "records.jsonl").read_text()):
        assert SECRET not in text


def test_identical_requests_in_flight_share_one_http_request(tmp_path):
    face = prototype_vector("Surprise")
    source = GivenAUSource(tmp_path, [(f"copy-{index:02d}", "Surprise", face) for index in range(16)])
    with llm_server.LocalLLMServer(latency=0.2) as server:
        summary = run(source, tmp_path / "run", **http_options(server, concurrency=16))
        sent = server.request_count
    assert summary["done"] == 16
    assert sent == 3  # AU2Des, Des2Exp, refinement: once, not 16 times
    assert summary["this_run"]["backend_stats"]["shared_in_flight"] == 45


def test_a_resume_with_other_process_settings_is_refused(tmp_path):
    source = SyntheticSource(2, tmp_path / "faces")
    run(source, tmp_path / "run", settings=EngineSettings(max_rounds=5))
    for settings, message in [
        (EngineSettings(max_rounds=3), "max_rounds: 5 there, 3 now"),
        (EngineSettings(reveal_after=1), "reveal_after: 3 there, 1 now"),
        (EngineSettings(refine_attempts=4), "refine_attempts: 2 there, 4 now"),
        (EngineSettings(llm_verify=True), "llm_verify: False there, True now"),
    ]:
        with pytest.raises(ValueError, match=message):
            run(source, tmp_path / "run", settings=settings)
    run(source, tmp_path / "run", settings=EngineSettings(max_rounds=5))  # the same settings resume


def test_a_runaway_answer_is_capped_and_fails_only_its_sample(tmp_path):
    from dataset_builders.exp_cot.backends import MAX_ANSWER_CHARACTERS

    source = SyntheticSource(2, tmp_path / "faces")
    with llm_server.LocalLLMServer() as server:
        server.inject(llm_server.answer("The brows rise. " * (MAX_ANSWER_CHARACTERS // 10)))
        summary = run(source, tmp_path / "run", **http_options(server, concurrency=1))
    assert summary["failed_by_reason"] == {"answer_too_long": 1} and summary["done"] == 1
    failed = next(record for record in records_of(tmp_path / "run") if record["status"] == "failed")
    assert failed["description"] is None and len(json.dumps(failed)) < 10_000  # nothing of it was stored


def test_fifos_and_links_out_of_the_image_root_are_refused_without_opening_them(tmp_path):
    from dataset_builders.exp_cot.synthetic_faces import sample_face, save_face

    root, outside = tmp_path / "images", tmp_path / "elsewhere"
    root.mkdir()
    outside.mkdir()
    save_face(sample_face(0, "Happiness"), root / "real.png")
    save_face(sample_face(1, "Anger"), outside / "secret.png")
    os.mkfifo(root / "pipe.png")  # reading it would block forever
    os.symlink(outside / "secret.png", root / "link.png")
    (tmp_path / "labels.txt").write_text("real.png Happiness\npipe.png Anger\nlink.png Anger\n")
    summary = run(FolderSource(root, tmp_path / "labels.txt"), tmp_path / "run", au_model="oracle")
    records = {record["file_name"]: record for record in records_of(tmp_path / "run")}
    assert records["real.png"]["status"] == "done"
    assert records["pipe.png"]["reason"] == "unreadable" and "not a regular file" in records["pipe.png"]["message"]
    assert records["link.png"]["reason"] == "unreadable" and "outside the image root" in records["link.png"]["message"]
    assert summary["skipped_by_reason"] == {"unreadable": 2}


def test_label_files_report_every_bad_line_and_name_the_file(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    labels = tmp_path / "labels.txt"
    labels.write_text("a.png Happiness\nb.png grumpy\nc.png\nd.png Anger\nd.png Fear\ne.png 3\n")
    with pytest.raises(ValueError) as error:
        list(FolderSource(root, labels).samples())
    message = str(error.value)
    assert "4 bad line(s)" in message
    for fragment in ("labels.txt:2: label 'grumpy'", "labels.txt:3: expected", "labels.txt:5: 'd.png' is listed again "
                     "(first at", "labels.txt:6: label '3'"):  # fmt: skip
        assert fragment in message, message

    utf16 = tmp_path / "labels16.txt"
    utf16.write_text("a.png Happiness\n", encoding="utf-16")
    with pytest.raises(ValueError, match=r"labels16.txt: not UTF-8 text"):
        list(FolderSource(root, utf16).samples())

    ids = tmp_path / "ids.csv"
    ids.write_text("file_name,label,id\na.png,Happiness,x\nb.png,Anger,x\n")
    with pytest.raises(ValueError, match=r"ids.csv:3: id 'x' is given again \(first at .*ids.csv:2\)"):
        list(FolderSource(root, ids).samples())


def test_a_photo_with_several_faces_says_so_in_its_record(tmp_path):
    pytest.importorskip("mediapipe")
    from skimage.data import astronaut

    root = tmp_path / "images"
    root.mkdir()
    face = Image.fromarray(astronaut()).crop((120, 0, 320, 220)).resize((200, 220))
    group = Image.new("RGB", (640, 260), (235, 235, 235))
    for left in (10, 220, 430):
        group.paste(face, (left, 20))
    group.save(root / "group.png")
    (tmp_path / "labels.txt").write_text("group.png Happiness\n")
    run(FolderSource(root, tmp_path / "labels.txt"), tmp_path / "run")
    (record,) = records_of(tmp_path / "run")
    assert "3 faces found, kept the largest" in record["message"], record["message"]


def test_img2au_workers_die_with_a_killed_run(tmp_path):
    pytest.importorskip("mediapipe")
    import psutil
    from skimage.data import astronaut

    root = tmp_path / "images"
    root.mkdir()
    photo = Image.fromarray(astronaut()).resize((256, 256))
    lines = []
    for index in range(400):
        photo.save(root / f"{index:03d}.jpg", quality=85)
        lines.append(f"{index:03d}.jpg Happiness")
    (tmp_path / "labels.txt").write_text("\n".join(lines) + "\n")
    labels, output = str(tmp_path / "labels.txt"), str(tmp_path / "run")
    command = [sys.executable, "-m", "dataset_builders.exp_cot", "folder", str(root), "--labels", labels,
               "--output", output, "--workers", "2", "--no-progress"]  # fmt: skip
    run_process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        parent = psutil.Process(run_process.pid)
        deadline = time.monotonic() + 60
        workers = []
        while time.monotonic() < deadline and len(workers) < 2:
            workers = [child for child in parent.children() if "python" in child.name().lower()]
            time.sleep(0.1)
        assert len(workers) >= 2, "the Img2AU workers did not start"
        time.sleep(1.0)  # the workers are busy with images now
        run_process.send_signal(signal.SIGKILL)
        run_process.wait()
        gone, alive = psutil.wait_procs(workers, timeout=10)
        assert not alive, f"{len(alive)} Img2AU workers outlived the killed run"
    finally:
        if run_process.poll() is None:
            run_process.kill()
