"""One sample's way through the Exp-CoT Engine: its action units in, one record out.

    AU2Des -> Des2Exp -> Result Verification --passed--> Format Refinement -> "done"
                 ^               |
                 |             failed
                 +--- Feedback Reflection (label revealed after `reveal_after` failed rounds)

The sample's conversation (system message, every prompt and every answer) is kept from AU2Des to the last refinement,
so each reflection round sees what was said before. Result Verification is the code verifier
(`verification.verify_description`) plus the check that Des2Exp's label is the ground truth; it decides. The LLM's own
verification (`settings.llm_verify`) runs in a conversation of its own and its verdict is recorded beside the code's.

Anything that goes wrong with one sample's answers (empty, refused, cut off, not a label, a format that never comes
right, an API that stays unavailable) ends as a "failed" record with its reason: the run goes on.
"""

import asyncio
import re
from collections import Counter
from dataclasses import dataclass

from modeling_expllm.vocabulary import COT_MAX_WORDS, COT_SECTIONS, normalize_label

from .backends import Facts, LLMCallFailed, LLMRequest
from .cot_text import AU_NUMBER, split_cot
from .prompting import face_values, refine_values
from .verification import verify_description


@dataclass(frozen=True)
class EngineSettings:
    """How far the engine goes for one sample.

    reveal_after: failed rounds after which the reflection prompt reveals the label (the paper's limit; default 3).
    max_rounds: analyses written at most, the first included; a sample still failing then is "verification_failed".
    refine_attempts: Format Refinement tries; after each failed one the LLM is told what broke the format.
    llm_verify: also ask the LLM to verify each round (recorded, never deciding).
    keep_conversation: store the whole conversation in the record.
    """

    reveal_after: int = 3
    max_rounds: int = 5
    refine_attempts: int = 2
    llm_verify: bool = False
    keep_conversation: bool = False

    def __post_init__(self):
        for name, least in (("reveal_after", 0), ("max_rounds", 1), ("refine_attempts", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or value < least:
                raise ValueError(f"EngineSettings.{name} must be an integer >= {least}, got {value!r}")


class SampleFailed(Exception):
    def __init__(self, reason, message):
        super().__init__(message)
        self.reason = reason
        self.message = message


# ---------------------------------------------------------------------------------------------------------------------
# Answers that are not answers

# A refusal states itself in its first sentence ("I'm sorry, but I can't help with that."); an analysis that merely
# contains "cannot" later on is not one.
_REFUSAL = re.compile(
    r"^\W*(?:(?:i\s*(?:am|'m|’m)\s+)?(?:sorry|afraid)\b|i\s+apologi[sz]e"
    r"|.{0,60}?\bi\s*(?:can\s*not|cannot|can['’]?t|won['’]?t|am\s+unable|['’]m\s+unable|am\s+not\s+able|will\s+not)\s+"
    r"(?:help|assist|comply|provide|do|fulfil|fulfill|analy[sz]e|answer|identify|determine|support|continue))",
    re.IGNORECASE,
)


def looks_like_refusal(text):
    first_sentence = re.split(r"(?<=[.!?])\s", text.strip(), maxsplit=1)[0]
    return _REFUSAL.match(first_sentence) is not None


def checked_answer(process, reply):
    """The reply's text, or SampleFailed with the reason it cannot be used."""
    text = (reply.text or "").strip()
    if reply.refusal or reply.finish_reason == "content_filter":
        raise SampleFailed(
            "refusal", f"{process}: the model refused ({(reply.refusal or reply.finish_reason)!r:.200})"
        )
    if not text:
        raise SampleFailed("empty_answer", f"{process}: the answer is empty")
    if looks_like_refusal(text):
        raise SampleFailed("refusal", f"{process}: the model refused: {text!r:.200}")
    if reply.finish_reason == "length":
        raise SampleFailed("answer_cut_off", f"{process}: the answer hit the token limit: ...{text[-120:]!r}")
    return text


async def cpu_work(backend, function, *args):
    """`function(*args)`, off the event loop when the backend has requests in flight that must keep moving while a long
    text is verified. With the offline writer every step is CPU work on this one thread anyway, and running in place
    keeps its runs deterministic, record order included."""
    if backend.waits_on_network:
        return await asyncio.to_thread(function, *args)
    return function(*args)


# ---------------------------------------------------------------------------------------------------------------------
# One sample's conversation with the LLM


class Chat:
    """A conversation that asks the backend one process at a time and keeps every message and what it cost."""

    def __init__(self, backend, system_message):
        self.backend = backend
        self.messages = [{"role": "system", "content": system_message}]
        self.usage = {"requests": 0, "from_cache": 0, "prompt_tokens": 0, "completion_tokens": 0}
        self.cost_usd = 0.0
        self.asked = Counter()  # prompts sent, by process

    async def ask(self, process, content, facts, accept=None):
        """The answer's text. The backend caches it only once the process accepts it: when `accept` (an async check of
        the text) says True, or with no check as soon as it is a usable answer; a rejected answer is asked afresh by
        a later run (`--retry-failed`) instead of coming back from the cache."""
        self.messages.append({"role": "user", "content": content})
        self.asked[process] += 1
        try:
            reply = await self.backend.complete(LLMRequest(process, [dict(m) for m in self.messages], facts))
        except LLMCallFailed as error:
            raise SampleFailed(error.reason, f"{process}: {error.message}") from None
        self.usage["requests"] += 1
        self.usage["from_cache"] += int(reply.from_cache)
        self.usage["prompt_tokens"] += reply.prompt_tokens
        self.usage["completion_tokens"] += reply.completion_tokens
        self.cost_usd = None if self.cost_usd is None or reply.cost_usd is None else self.cost_usd + reply.cost_usd
        text = checked_answer(process, reply)
        self.messages.append({"role": "assistant", "content": text})
        if accept is None or await accept(text):
            self.backend.keep(reply)
        return text

    def add_costs_of(self, other):
        for key in self.usage:
            self.usage[key] += other.usage[key]
        self.cost_usd = None if self.cost_usd is None or other.cost_usd is None else self.cost_usd + other.cost_usd


async def llm_verdict(backend, prompts, description, au, label, spending):
    """The LLM's own verification of an analysis, in a fresh conversation: ("pass" | "fail" | "unreadable", answer)."""
    judge = Chat(backend, prompts.render("system"))
    content = prompts.render("verify", **face_values(au, label), description=description)

    async def readable(text):
        return re.match(r"\W*(pass|fail)\b", text, re.IGNORECASE) is not None

    try:
        answer = await judge.ask("verify", content, Facts(au, description, label), accept=readable)
    except SampleFailed as failure:  # the extra check failing leaves the sample to the code verifier
        answer = f"[{failure.reason}] {failure.message}"
    spending.add_costs_of(judge)
    verdict = re.match(r"\W*(pass|fail)\b", answer, re.IGNORECASE)
    return (verdict.group(1).lower() if verdict else "unreadable"), answer


# ---------------------------------------------------------------------------------------------------------------------
# The refined CoT

_PERSONAL_PRONOUNS = re.compile(
    r"\b(i|me|my|mine|myself|we|us|our|ours|ourselves|you|your|yours|yourself|he|him|his|himself|she|her|hers|"
    r"herself|they|them|their|theirs|themselves)\b",
    re.IGNORECASE,
)


def count_words(text):
    return len(text.split())


def cot_problems(cot, au, label):
    """(sections, verification of the refined text, problems): what keeps `cot` from being a valid Exp-CoT."""
    sections = split_cot(cot)
    problems = []
    if sections.missing:
        problems.append(
            f"It lacks the {', '.join(sections.missing)} section{'s' if len(sections.missing) > 1 else ''}."
        )
    words = count_words(sections.text) if sections.complete else count_words(cot)
    if words > COT_MAX_WORDS:
        problems.append(f"It has {words} words, more than {COT_MAX_WORDS}.")
    pronouns = sorted({match.group(0).lower() for match in _PERSONAL_PRONOUNS.finditer(cot)})
    if pronouns:
        problems.append(f"It uses personal pronouns ({', '.join(pronouns)}).")
    numbers = sorted({match.group(0) for match in AU_NUMBER.finditer(cot)})
    if numbers:
        problems.append(f"It names action units by number ({', '.join(numbers)}).")
    verification = verify_description(cot, au, label)
    if not verification.passed:
        problems.append(verification.feedback())
    return sections, verification, problems


async def refined_cot(chat, prompts, description, au, label, settings):
    """Format Refinement: (sections, verification) of a CoT that passes every check, else SampleFailed."""
    facts = Facts(au, description, label)
    process, content = "refine", prompts.render("refine", **refine_values(label, COT_MAX_WORDS))
    checked = {}

    async def well_formed(cot):
        checked[cot] = await cpu_work(chat.backend, cot_problems, cot, au, label)
        return not checked[cot][2]

    for _ in range(settings.refine_attempts):
        cot = await chat.ask(process, content, facts, accept=well_formed)
        sections, verification, problems = checked[cot]
        if not problems:
            return sections, verification
        process, content = "refine_retry", prompts.render("refine_retry", problems=" ".join(problems))
    raise SampleFailed("format_broken", f"after {settings.refine_attempts} refinements: {' '.join(problems)}")


# ---------------------------------------------------------------------------------------------------------------------
# The whole way


def reflection_feedback(prompts, verification, predicted, label):
    """What the reflection prompt says went wrong; never the ground-truth label itself."""
    parts = [verification.feedback()] if not verification.passed else []
    if predicted != label and predicted != verification.predicted_label:
        parts.insert(0, prompts.render("label_feedback", predicted=predicted))
    return " ".join(parts)


def new_record(sample, au_result, au_model, backend, prompts):
    """The record of a sample before any process ran on it."""
    return {
        **sample.identity(),
        "status": None,
        "reason": None,
        "message": au_result.message or "",  # e.g. "3 faces found, kept the largest"
        "au_model": au_model,
        "au": au_result.au,
        "description": None,
        "des2exp_label": None,
        "cot": None,
        "cot_sections": None,
        "rounds": 0,
        "label_revealed": False,
        "rounds_log": [],
        "verification": None,
        "refined_verification": None,
        "refine_attempts": 0,
        "llm_verification": None,
        "backend": backend.name,
        "model": backend.model,
        "prompt_version": prompts.version,
        "usage": {"requests": 0, "from_cache": 0, "prompt_tokens": 0, "completion_tokens": 0},
        "cost_usd": 0.0,
    }


async def describe_until_verified(chat, record, au, label, backend, prompts, settings):
    """AU2Des, then rounds of Des2Exp, Result Verification and Feedback Reflection (revealing the label after
    `settings.reveal_after` rounds) until a description passes; `record` gets the description and every round's log.
    Raises `SampleFailed` when none passes in `settings.max_rounds`."""

    async def is_label(answer):
        return normalize_label(answer) is not None

    record["description"] = await chat.ask("au2des", prompts.render("au2des", **face_values(au)), Facts(au))
    for round_number in range(1, settings.max_rounds + 1):
        description = record["description"]
        des2exp = prompts.render("des2exp", **face_values(au))
        answer = await chat.ask("des2exp", des2exp, Facts(au, description), accept=is_label)
        predicted = normalize_label(answer)
        if predicted is None:
            raise SampleFailed("not_a_label", f"Des2Exp answered {answer!r:.200}, which is not one of the labels")
        verification = await cpu_work(backend, verify_description, description, au, label)
        passed = verification.passed and predicted == label
        log = {
            "round": round_number,
            "label_revealed": record["label_revealed"],
            "des2exp_label": predicted,
            "passed": passed,
            "reasons": list(verification.reasons) + ([] if predicted == label else ["des2exp_label_mismatch"]),
        }
        if settings.llm_verify:
            log["llm_verdict"], log["llm_answer"] = await llm_verdict(backend, prompts, description, au, label, chat)
        record["rounds_log"].append(log)
        record.update(rounds=round_number, des2exp_label=predicted, verification=verification.to_dict())
        if passed:
            return
        if round_number == settings.max_rounds:
            raise SampleFailed(
                "verification_failed",
                f"no verified analysis in {settings.max_rounds} rounds; last: {', '.join(log['reasons'])}",
            )
        feedback = reflection_feedback(prompts, verification, predicted, label)
        if round_number >= settings.reveal_after:
            record["label_revealed"] = True
            content, facts = prompts.render("reveal", feedback=feedback, label=label), Facts(au, None, label)
        else:
            content, facts = prompts.render("reflect", feedback=feedback), Facts(au)
        record["description"] = await chat.ask("reveal" if record["label_revealed"] else "reflect", content, facts)


async def make_pair(sample, au_result, au_model, backend, prompts, settings):
    """The record of one sample: its Exp-CoT pair ("done"), or why there is none ("skipped" / "failed")."""
    record = new_record(sample, au_result, au_model, backend, prompts)
    if au_result.status != "ok":
        return {**record, "status": "skipped", "reason": au_result.status, "message": au_result.message}

    au, label = au_result.au, sample.label
    chat = Chat(backend, prompts.render("system"))
    try:
        await describe_until_verified(chat, record, au, label, backend, prompts, settings)
        sections, refined_verification = await refined_cot(chat, prompts, record["description"], au, label, settings)
        record.update(
            status="done",
            cot=sections.text,
            cot_sections=dict(
                zip(COT_SECTIONS, (sections.key_observations, sections.overall_interpretation, sections.conclusion))
            ),
            refined_verification=refined_verification.to_dict(),
        )
    except SampleFailed as failure:
        record.update(status="failed", reason=failure.reason, message=failure.message)
    if settings.llm_verify and record["rounds_log"]:
        last = record["rounds_log"][-1]
        record["llm_verification"] = {"verdict": last["llm_verdict"], "answer": last["llm_answer"]}
    record["refine_attempts"] = chat.asked["refine"] + chat.asked["refine_retry"]
    record["usage"] = dict(chat.usage)
    record["cost_usd"] = None if chat.cost_usd is None else round(chat.cost_usd, 8)
    if settings.keep_conversation:
        record["conversation"] = chat.messages
    return record
