# Generated from dataset_builders/exp_cot/backends.py by `python -m model_card.bundle`: do not edit.
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
problem with the set-up itself (wrong key, unknown model, exhausted quota) raises `BackendConfigError` and stops
the run.

A reply is cached only when the process that asked for it accepts it (`backend.keep(reply)`): an answer the engine
rejects (a refusal written as text, a Des2Exp answer that is no label, a CoT that breaks the format) is asked again
by a later run. Identical requests in flight at the same time share one HTTP request.
"""

import asyncio
import email.utils
import os
import random
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace

from .expllm_cache import request_key
from .expllm_prompting import load_prices

DEFAULT_OPENAI_MODEL = "gpt-4o-2024-08-06"
OFFLINE_MODEL = "offline-writer"
BACKENDS = ("offline", "openai")
# No Exp-CoT answer comes near this (a refined CoT is at most 130 words): a longer one is a runaway generation, not
# worth storing, re-sending in later turns or verifying.
MAX_ANSWER_CHARACTERS = 32_000


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
    cache_key: str | None = None  # set by a caching backend, for `keep`


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
    shared_in_flight: int = 0
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
    waits_on_network = False

    def __init__(self):
        self.model = OFFLINE_MODEL
        self.stats = BackendStats()

    async def complete(self, request):
        from .expllm_offline_writer import classify_description, refine, write_description
        from .expllm_verification import verify_description

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

    def keep(self, reply):
        pass  # nothing to cache: the writer answers the same again for free

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


_BEARER = re.compile(r"(?i)(authorization\W{0,3}\s*(?:bearer\s+)?|bearer\s+)[^\s'\",}]+")


def redact(text, secrets=()):
    """`text` without the given secrets and without any Authorization / Bearer value: what a server echoes back
    (an error message quoting the request's headers) must never reach a record, a log or the terminal."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    return _BEARER.sub(lambda match: match.group(1) + "[redacted]", text)


def message_text(content):
    """The text of a reply's `content` in any shape the Chat Completions API uses: a string, None (no text), or a list
    of content parts whose text parts are joined. Anything else is a malformed reply for this sample."""
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else getattr(part, "type", None)
            text = part.get("text") if isinstance(part, dict) else getattr(part, "text", None)
            if kind in ("text", "output_text") and isinstance(text, str):
                texts.append(text)
            elif kind not in ("refusal", "image_url", "input_audio", "audio"):
                raise LLMCallFailed("malformed_response", f"the reply has a content part of type {kind!r}")
        return "".join(texts)
    raise LLMCallFailed("malformed_response", f"the reply's content is a {type(content).__name__}, not text")


class OpenAIBackend:
    """Chat Completions over HTTP with `openai.AsyncOpenAI`, cached, with retries.

    model: a dated snapshot, so that a run can be reproduced (default gpt-4o-2024-08-06).
    base_url / api_key: arguments, else $OPENAI_BASE_URL / $OPENAI_API_KEY (base URL default: OpenAI's).
    cache: a `ResponseCache` or None. timeout: seconds a whole request may take (connecting, waiting and reading
    together: a server that trickles its answer cannot hold a sample forever) before it is retried.
    max_retries: retries of one request on 429, 408/409, 5xx, time-outs, dropped connections and bodies that are not
    a completion; the wait is the server's Retry-After when it sends one (up to `max_wait`), else exponential backoff
    from `backoff` with jitter. A 429 for an exhausted quota (`insufficient_quota`) is not retried: it stops the run.
    """

    name = "openai"
    waits_on_network = True

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
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_wait = max_wait
        self.price = load_prices().get(model)  # None: not in prompts/prices.txt, so records carry no cost
        self.stats = BackendStats()
        self._secrets = (api_key,)  # redacted from every message this backend makes
        self._in_flight = {}  # cache key -> the task answering it, shared by identical requests
        # Imported here and in `_send`, not with the module: the offline writer and the Exp-CoT Score's lexicon judge
        # import this module and run where `openai` is not installed (a metric folder on the Hub needs it only for
        # judge="openai").
        import openai

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

    def _describe(self, error):
        status = getattr(error, "status_code", None)
        return redact(
            f"{type(error).__name__}{f' (HTTP {status})' if status else ''}: {str(error)[:300]}", self._secrets
        )

    async def complete(self, request):
        self.stats.calls += 1
        key = request_key(self.model, request.messages, self.parameters)
        cached = self.cache.get(key) if self.cache is not None else None
        if cached is not None:
            self.stats.cache_hits += 1
            cost = self.cost(cached["prompt_tokens"], cached["completion_tokens"])
            return LLMReply(**cached, cost_usd=cost, from_cache=True, cache_key=key)
        if key in self._in_flight:  # the same request is on its way for another sample: wait for its answer
            self.stats.shared_in_flight += 1
            reply = await asyncio.shield(self._in_flight[key])
            return replace(reply, from_cache=True)
        task = asyncio.ensure_future(self._answer(request.messages, key))
        self._in_flight[key] = task
        try:
            return await asyncio.shield(task)
        finally:
            if task.done():
                self._in_flight.pop(key, None)
            else:  # this caller was cancelled: the task goes on for the others, and clears itself
                task.add_done_callback(lambda _: self._in_flight.pop(key, None))

    async def _answer(self, messages, key):
        response = await self._send(messages)
        try:
            choice = response.choices[0]
            answer = {
                "text": message_text(choice.message.content),
                "finish_reason": choice.finish_reason,
                "refusal": getattr(choice.message, "refusal", None),
                "prompt_tokens": int(getattr(response.usage, "prompt_tokens", 0) or 0),
                "completion_tokens": int(getattr(response.usage, "completion_tokens", 0) or 0),
            }
            for name in ("finish_reason", "refusal"):
                if answer[name] is not None and not isinstance(answer[name], str):
                    raise TypeError(f"{name} is a {type(answer[name]).__name__}")
        except LLMCallFailed:
            self.stats.errors["malformed_response"] += 1
            raise
        except (AttributeError, IndexError, KeyError, TypeError, ValueError) as error:
            self.stats.errors["malformed_response"] += 1
            raise LLMCallFailed("malformed_response", f"the reply is not a chat completion ({error})") from error
        cost = self.cost(answer["prompt_tokens"], answer["completion_tokens"])
        self.stats.prompt_tokens_sent += answer["prompt_tokens"]
        self.stats.completion_tokens_sent += answer["completion_tokens"]
        self.stats.cost_usd += cost or 0.0
        if len(answer["text"] or "") > MAX_ANSWER_CHARACTERS:
            self.stats.errors["answer_too_long"] += 1
            raise LLMCallFailed(
                "answer_too_long",
                f"the answer has {len(answer['text']):,} characters (at most {MAX_ANSWER_CHARACTERS:,})",
            )
        return LLMReply(**answer, cost_usd=cost, cache_key=key)

    def keep(self, reply):
        """Cache a reply the asking process accepted. Only whole answers are kept: an empty, cut-off or refused one is
        worth asking again in a later run."""
        whole = (reply.text or "").strip() and reply.finish_reason == "stop" and reply.refusal is None
        if self.cache is not None and reply.cache_key is not None and not reply.from_cache and whole:
            fields = ("text", "finish_reason", "refusal", "prompt_tokens", "completion_tokens")
            self.cache.put(reply.cache_key, {name: getattr(reply, name) for name in fields})

    async def _send(self, messages):
        """The response to one request, retrying what a retry can fix."""
        import openai

        for attempt in range(self.max_retries + 1):
            self.stats.requests_sent += 1
            try:
                async with asyncio.timeout(self.timeout):  # the whole request, however slowly its bytes arrive
                    return await self._client.chat.completions.create(
                        model=self.model, messages=messages, **self.parameters
                    )
            except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as error:
                raise BackendConfigError(f"{self.base_url} refused the set-up: {self._describe(error)}") from None
            except TimeoutError as error:
                failure, wait = error, None
            except openai.APIConnectionError as error:  # time-outs included (APITimeoutError is one)
                failure, wait = error, None
            except openai.APIStatusError as error:
                wait = retry_after_seconds(error.response.headers)
                if error.status_code == 429 and wait is None and _error_code(error) == "insufficient_quota":
                    raise BackendConfigError(
                        f"{self.base_url}: the account's quota is used up ({self._describe(error)}); the run stops "
                        "here and the samples not yet recorded are left for a resume once the quota is raised"
                    ) from None
                if not (error.status_code in (408, 409, 429) or error.status_code >= 500):
                    self.stats.errors["api_rejected"] += 1
                    raise LLMCallFailed("api_rejected", self._describe(error)) from None
                failure = error
            except (openai.APIResponseValidationError, ValueError) as error:
                # A 200 whose body is not a completion (cut off, not JSON): as worth retrying as a dropped connection.
                failure, wait = error, None
            # The whole-request deadline counts as the client's own time-out: the same failure, caught either way.
            name = "APITimeoutError" if isinstance(failure, TimeoutError) else type(failure).__name__
            if isinstance(failure, openai.APIResponseValidationError | ValueError):
                name = "malformed_response"
            self.stats.errors[name] += 1
            if attempt == self.max_retries:
                break
            if wait is None:
                wait = self.backoff * 2**attempt * random.uniform(0.75, 1.0)  # jitter: retries do not march in step
            wait = min(wait, self.max_wait)
            self.stats.retries += 1
            self.stats.waited_seconds += wait
            await asyncio.sleep(wait)
        reason = "malformed_response" if name == "malformed_response" else "api_unavailable"
        raise LLMCallFailed(
            reason, f"no answer after {self.max_retries + 1} attempts; last: {self._describe(failure)}"
        )

    async def aclose(self):
        await self._client.close()


def _error_code(error):
    """The `code` (or `type`) of an OpenAI error body, e.g. "insufficient_quota"."""
    body = getattr(error, "body", None)
    if isinstance(body, dict):
        body = body.get("error", body)
        if isinstance(body, dict):
            return body.get("code") or body.get("type")
    return getattr(error, "code", None)
