"""The engine's output: append-only JSON-lines records that survive being killed, and the summary they add up to.

A record is written with one `os.write` of the whole line, then fsynced, so a line on disk is either complete or the
last one, cut short by a kill. Opening the file again cuts that partial line off; every complete line is a record, and
the ids in it are the samples a resumed run skips. Each sample gets exactly one record: "done" (a verified, refined
Exp-CoT), "skipped" (the input is unusable: unreadable image, no face...) or "failed" (the LLM side could not produce
a pair: empty answer, refusal, broken format, API unavailable...), the latter two with a `reason` and a `message`.
"""

import json
import os
import sys
from collections import Counter
from pathlib import Path

STATUSES = ("done", "skipped", "failed")


class JsonlFile:
    """An append-only JSON-lines file: `records` holds what it had when opened, `append` adds one durably."""

    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.records = read_jsonl(self.path, repair=True) if self.path.exists() else []
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def append(self, record):
        line = memoryview((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
        while line:  # os.write may write less than asked; with O_APPEND each piece lands at the end
            line = line[os.write(self._fd, line) :]
        os.fsync(self._fd)

    def close(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def read_jsonl(path, repair=False):
    """The records of a JSON-lines file.

    A last line without its newline is what a kill left half-written: with `repair` it is cut off the file (and
    reported on stderr), otherwise it is an error, like any line that is not a JSON object with an id.
    """
    path = Path(path)
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        complete = data[: data.rfind(b"\n") + 1]
        if not repair:
            raise ValueError(f"{path}: the last line is incomplete (a run was killed while writing it)")
        print(f"{path}: cutting off a half-written last line ({len(data) - len(complete)} bytes)", file=sys.stderr)
        os.truncate(path, len(complete))
        data = complete
    records = []
    for line_number, line in enumerate(data.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as error:
            raise ValueError(f"{path}:{line_number}: not a JSON line ({error}): {line[:120]!r}") from error
        if not isinstance(record, dict) or "id" not in record:
            raise ValueError(f"{path}:{line_number}: a record must be a JSON object with an 'id': {line[:120]!r}")
        records.append(record)
    return records


def rewrite_jsonl(path, records):
    """Replace a JSON-lines file by `records` atomically (write a copy, fsync, rename over the original)."""
    path = Path(path)
    temporary = path.with_name(path.name + ".rewrite")
    with open(temporary, "w", encoding="utf-8") as file:
        for record in records:
            file.write(json.dumps(record, ensure_ascii=False) + "\n")
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


def write_json(path, data):
    """Write a JSON file atomically, so that a kill never leaves half a summary."""
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(temporary, path)


# ---------------------------------------------------------------------------------------------------------------------
# Summary


def summarize_records(records):
    """Counts over a run's records: statuses and reasons, rounds, label reveals, verification, tokens and cost."""
    status_counts = Counter(record["status"] for record in records)
    reasons = {status: Counter() for status in ("skipped", "failed")}
    for record in records:
        if record["status"] in reasons:
            reasons[record["status"]][record.get("reason") or "unknown"] += 1
    done = [record for record in records if record["status"] == "done"]
    verified = [record for record in records if record.get("rounds_log")]  # reached Result Verification
    passed = sum(1 for record in verified if any(log["passed"] for log in record["rounds_log"]))
    passed_first = sum(1 for record in verified if record["rounds_log"][0]["passed"])

    llm_checked = [r for record in verified for r in record["rounds_log"] if r.get("llm_verdict") in ("pass", "fail")]
    usage = Counter()
    cost, priced = 0.0, True
    for record in records:
        usage.update({key: value for key, value in (record.get("usage") or {}).items() if isinstance(value, int)})
        if record.get("cost_usd") is None and (record.get("usage") or {}).get("prompt_tokens"):
            priced = False
        cost += record.get("cost_usd") or 0.0
    return {
        "records": len(records),
        **{status: status_counts.get(status, 0) for status in STATUSES},
        "skipped_by_reason": dict(reasons["skipped"].most_common()),
        "failed_by_reason": dict(reasons["failed"].most_common()),
        "rounds_histogram": {str(k): v for k, v in sorted(Counter(record["rounds"] for record in done).items())},
        "label_revealed": sum(1 for record in done if record.get("label_revealed")),
        "verification": {
            "samples": len(verified),
            "passed": passed,
            "passed_first_round": passed_first,
            "pass_rate": _rate(passed, len(verified)),
            "first_round_pass_rate": _rate(passed_first, len(verified)),
        },
        "llm_verification": {
            "checked_rounds": len(llm_checked),
            "agrees_with_code": sum(1 for r in llm_checked if (r["llm_verdict"] == "pass") == r["passed"]),
            "unreadable_verdicts": sum(
                1 for record in verified for r in record["rounds_log"] if r.get("llm_verdict") == "unreadable"
            ),
        },
        "usage": dict(usage),
        "cost_usd": round(cost, 6) if priced else None,
    }


def _rate(part, whole):
    return round(part / whole, 4) if whole else None


def format_summary(summary):
    """The summary as a few lines of text for the terminal."""
    lines = [
        f"records {summary['records']}: done {summary['done']}, skipped {summary['skipped']}, "
        f"failed {summary['failed']}"
    ]
    for status in ("skipped", "failed"):
        if summary[f"{status}_by_reason"]:
            reasons = ", ".join(f"{reason} {count}" for reason, count in summary[f"{status}_by_reason"].items())
            lines.append(f"  {status}: {reasons}")
    histogram = ", ".join(f"{rounds}: {count}" for rounds, count in summary["rounds_histogram"].items())
    lines.append(f"rounds to a verified analysis: {histogram or '-'}; label revealed {summary['label_revealed']}")
    verification = summary["verification"]
    if verification["samples"]:
        lines.append(
            f"verification: {verification['passed']}/{verification['samples']} passed "
            f"({verification['pass_rate']:.1%}), {verification['first_round_pass_rate']:.1%} in the first round"
        )
    llm = summary["llm_verification"]
    if llm["checked_rounds"] or llm["unreadable_verdicts"]:
        lines.append(
            f"LLM verification agrees with the code verifier in {llm['agrees_with_code']}/{llm['checked_rounds']} "
            f"rounds ({llm['unreadable_verdicts']} verdicts unreadable)"
        )
    usage = summary["usage"]
    cost = "unknown (model not in the price table)" if summary["cost_usd"] is None else f"${summary['cost_usd']:.4f}"
    lines.append(
        f"tokens: {usage.get('prompt_tokens', 0):,} in, {usage.get('completion_tokens', 0):,} out "
        f"over {usage.get('requests', 0):,} LLM calls; cost {cost}"
    )
    session = summary.get("this_run")
    if session:
        lines.append(
            f"this run: {session['pairs']} records in {session['seconds']:.1f} s "
            f"({session['pairs_per_minute']:.1f}/min); requests sent {session['requests_sent']}, "
            f"cache hits {session['cache_hits']}, retries {session['retries']}, spent ${session['cost_usd']:.4f}"
        )
    return "\n".join(lines)
