"""Who plays the LLM in the Exp-CoT Engine: one interface, two backends.

Every LLM process is one call `await backend.complete(LLMRequest) -> LLMReply`. A request carries the process name,
the sample's whole conversation so far (the messages an API gets) and the facts the prompt was rendered from (the AUs,
the latest analysis, and the label only where the prompt reveals it).

- `OfflineWriterBackend` (the default) needs no API: it plays each process deterministically with the offline writer,
  reading the facts instead of the prompt text. It never sees a label the prompt does not give.
- `OpenAIBackend` sends the messages to an OpenAI-compatible Chat Completions endpoint with `openai.AsyncOpenAI`:
  temperature 0 and a fixed seed, a pinned dated model snapshot, its own retries (429, 5xx, time-outs; Retry-After
  honoured), and a response cache on disk so that no request is sent twice. The API key is handed to the client and
  to nothing else: it is in no key, record, log line or error message.

A call that cannot produce an answer for this sample raises `LLMCallFailed` (the sample becomes a failed record); a
problem with the set-up itself (wrong key, unknown model) raises `BackendConfigError` and stops the run.
"""

import asyncio
import email.utils
import os
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

import openai

from .cache import request_key
from .prompting import load_prices

DEFAULT_OPENAI_MODEL = "gpt-4o-2024-08-06"
OFFLINE_MODEL = "offline-writer"
BACKENDS = ("offline", "openai")


@dataclass(frozen=True)
class Facts:
    """What a prompt was rendered from. `label` is set only for prompts that state it (reveal, verify, refine)."""

    au: list
    description: str | None = None
    label: str | None = None


@dataclass(frozen=True)
class LLMRequest:
    process: str
    messages: list
    facts: Facts


@dataclass(frozen=True)
class LLMReply:
    text: str | None
    finish_reason: str | None = "stop"
    refusal: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = 0.0
    from_cache: bool = False


class LLMCallFailed(Exception):
    """No usable reply for this request; `reason` is the failed record's reason."""

    def __init__(self, reason, message):
        super().__init__(message)
        self.reason = reason
        self.message = message


class BackendConfigError(RuntimeError):
    """The backend cannot work at all (no key, key refused, unknown model): no sample can succeed."""


@dataclass
class BackendStats:
    """What a backend did in this run: calls answered, requests sent over the network, cache hits, retries, cost."""

    calls: int = 0
    requests_sent: int = 0
    cache_hits: int = 0
    retries: int = 0
    waited_seconds: float = 0.0
    prompt_tokens_sent: int = 0
    completion_tokens_sent: int = 0
    cost_usd: float = 0.0
    errors: Counter = field(default_factory=Counter)

    def to_dict(self):
        stats = asdict(self)
        stats["errors"] = dict(self.errors)
        return stats


# ---------------------------------------------------------------------------------------------------------------------
# The offline writer


class OfflineWriterBackend:
    """Plays every LLM process with the deterministic offline writer; costs nothing, sends nothing."""

    name = "offline"

    def __init__(self):
        self.model = OFFLINE_MODEL
        self.stats = BackendStats()

    async def complete(self, request):
        from dataset_builders.exp_cot.offline_writer import classify_description, refine, write_description
        from dataset_builders.exp_cot.verification import verify_description

        facts = request.facts
        self.stats.calls += 1
        if request.process in ("au2des", "reflect"):
            text = write_description(facts.au)
        elif request.process == "reveal":
            text = write_description(facts.au, target_label=facts.label)
        elif request.process == "des2exp":
            # The writer's reading of the text; one that settles on no label is answered as a model would.
            text = classify_description(facts.description) or "Undecided"
        elif request.process == "verify":
            verification = verify_description(facts.description, facts.au, facts.label)
            text = "PASS" if verification.passed else f"FAIL: {verification.feedback()}"
        elif request.process in ("refine", "refine_retry"):
            try:
                text = refine(facts.description, facts.au, facts.label)
            except ValueError as error:  # no three-part text within the word limit for this face
                raise LLMCallFailed("format_broken", str(error)) from None
        else:
            raise ValueError(f"the offline writer has no {request.process!r} process")
        return LLMReply(text=text)

    async def aclose(self):
        pass


# ---------------------------------------------------------------------------------------------------------------------
# OpenAI-compatible endpoints


def retry_after_seconds(headers):
    """The wait a response asks for: `retry-after-ms`, or `Retry-After` in seconds or as an HTTP date; else None."""
    if headers is None:
        return None
    milliseconds = headers.get("retry-after-ms")
    if milliseconds is not None:
        try:
            return max(0.0, float(milliseconds) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        moment = email.utils.parsedate_tz(value)
        return None if moment is None else max(0.0, email.utils.mktime_tz(moment) - time.time())


def _describe(error):
    status = getattr(error, "status_code", None)
    return f"{type(error).__name__}{f' (HTTP {status})' if status else ''}: {str(error)[:300]}"


class OpenAIBackend:
    """Chat Completions over HTTP with `openai.AsyncOpenAI`, cached, with retries.

    model: a dated snapshot, so that a run can be reproduced (default gpt-4o-2024-08-06).
    base_url / api_key: arguments, else $OPENAI_BASE_URL / $OPENAI_API_KEY (base URL default: OpenAI's).
    cache: a `ResponseCache` or None. timeout: seconds a request may take before it is retried.
    max_retries: retries of one request on 429, 408/409, 5xx, time-outs and dropped connections; the wait is the
    server's Retry-After when it sends one (up to `max_wait`), else exponential backoff from `backoff` with jitter.
    """

    name = "openai"

    def __init__(
        self,
        model=DEFAULT_OPENAI_MODEL,
        *,
        base_url=None,
        api_key=None,
        cache=None,
        temperature=0.0,
        seed=0,
        max_tokens=1024,
        timeout=60.0,
        max_retries=6,
        backoff=1.0,
        max_wait=120.0,
    ):
        api_key = api_key or os.environ.get("OPENAI_API_KEY")
        if not api_key:
            raise BackendConfigError("the openai backend needs an API key: set OPENAI_API_KEY (or pass --api-key)")
        if not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be a non-negative integer, got {max_retries!r}")
        if not timeout > 0:
            raise ValueError(f"timeout must be positive seconds, got {timeout!r}")
        self.model = model
        self.cache = cache
        # Part of every cache key: a change to any of them is a different request.
        self.parameters = {"temperature": temperature, "seed": seed, "max_completion_tokens": max_tokens}
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_wait = max_wait
        self.price = load_prices().get(model)  # None: not in prompts/prices.txt, so records carry no cost
        self.stats = BackendStats()
        # The client's own retries are off: this class retries, so that every retry and wait is counted.
        self._client = openai.AsyncOpenAI(
            api_key=api_key,
            base_url=base_url or os.environ.get("OPENAI_BASE_URL") or None,
            timeout=timeout,
            max_retries=0,
        )
        self.base_url = str(self._client.base_url)

    def cost(self, prompt_tokens, completion_tokens):
        if self.price is None:
            return None
        input_price, output_price = self.price
        return (prompt_tokens * input_price + completion_tokens * output_price) / 1e6

    async def complete(self, request):
        self.stats.calls += 1
        key = request_key(self.model, request.messages, self.parameters)
        cached = self.cache.get(key) if self.cache is not None else None
        if cached is not None:
            self.stats.cache_hits += 1
            cost = self.cost(cached["prompt_tokens"], cached["completion_tokens"])
            return LLMReply(**cached, cost_usd=cost, from_cache=True)
        response = await self._send(request.messages)
        try:
            choice = response.choices[0]
            answer = {
                "text": choice.message.content,
                "finish_reason": choice.finish_reason,
                "refusal": getattr(choice.message, "refusal", None),
                "prompt_tokens": int(getattr(response.usage, "prompt_tokens", 0) or 0),
                "completion_tokens": int(getattr(response.usage, "completion_tokens", 0) or 0),
            }
        except (AttributeError, IndexError, TypeError, ValueError) as error:
            self.stats.errors["malformed_response"] += 1
            raise LLMCallFailed("malformed_response", f"the reply is not a chat completion ({error})") from error
        cost = self.cost(answer["prompt_tokens"], answer["completion_tokens"])
        self.stats.prompt_tokens_sent += answer["prompt_tokens"]
        self.stats.completion_tokens_sent += answer["completion_tokens"]
        self.stats.cost_usd += cost or 0.0
        # Only whole answers are kept: an empty, cut-off or refused one is worth asking again in a later run.
        whole = (answer["text"] or "").strip() and answer["finish_reason"] == "stop" and answer["refusal"] is None
        if self.cache is not None and whole:
            self.cache.put(key, answer)
        return LLMReply(**answer, cost_usd=cost)

    async def _send(self, messages):
        """The response to one request, retrying what a retry can fix."""
        for attempt in range(self.max_retries + 1):
            self.stats.requests_sent += 1
            try:
                return await self._client.chat.completions.create(
                    model=self.model, messages=messages, **self.parameters
                )
            except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as error:
                raise BackendConfigError(f"{self.base_url} refused the set-up: {_describe(error)}") from None
            except openai.APIConnectionError as error:  # time-outs included (APITimeoutError is one)
                failure, wait = error, None
            except openai.APIStatusError as error:
                if not (error.status_code in (408, 409, 429) or error.status_code >= 500):
                    self.stats.errors["api_rejected"] += 1
                    raise LLMCallFailed("api_rejected", _describe(error)) from None
                failure, wait = error, retry_after_seconds(error.response.headers)
            except (openai.APIResponseValidationError, ValueError) as error:
                # A 200 whose body is not a completion (the client cannot parse it).
                self.stats.errors["malformed_response"] += 1
                raise LLMCallFailed("malformed_response", _describe(error)) from None
            self.stats.errors[type(failure).__name__] += 1
            if attempt == self.max_retries:
                break
            if wait is None:
                wait = self.backoff * 2**attempt * random.uniform(0.75, 1.0)  # jitter: retries do not march in step
            wait = min(wait, self.max_wait)
            self.stats.retries += 1
            self.stats.waited_seconds += wait
            await asyncio.sleep(wait)
        raise LLMCallFailed(
            "api_unavailable", f"no answer after {self.max_retries + 1} attempts; last: {_describe(failure)}"
        )

    async def aclose(self):
        await self._client.close()
