"""The local OpenAI-compatible server and the engine's OpenAI backend talking to it over real HTTP."""

import asyncio
import email.utils
import time

import pytest

from dataset_builders.exp_cot.backends import (
    BackendConfigError,
    Facts,
    LLMCallFailed,
    LLMRequest,
    OpenAIBackend,
    retry_after_seconds,
)
from dataset_builders.exp_cot.cache import ResponseCache, request_key
from dataset_builders.exp_cot.prompting import PromptSet, face_values
from expllm_testing import llm_server
from modeling_expllm.vocabulary import prototype_vector

MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "Which label?"}]
REQUEST = LLMRequest("des2exp", MESSAGES, Facts([0.0] * 24))


def complete(backend, request=REQUEST):
    """One call, its reply accepted (and so cached) as a process that can use it would."""

    async def call():
        try:
            reply = await backend.complete(request)
            backend.keep(reply)
            return reply
        finally:
            await backend.aclose()

    return asyncio.run(call())


@pytest.fixture()
def server():
    with llm_server.LocalLLMServer(responder=lambda request: "Happiness") as running:
        yield running


def backend_for(server, **options):
    options = {"api_key": "test-key", "timeout": 0.5, "backoff": 0.05, **options}
    return OpenAIBackend("gpt-4o-2024-08-06", base_url=server.base_url, **options)


def test_a_scripted_answer_comes_back_with_usage_and_cost(server):
    reply = complete(backend_for(server))
    assert reply.text == "Happiness" and reply.finish_reason == "stop" and not reply.from_cache
    assert reply.prompt_tokens > 0 and reply.completion_tokens > 0
    assert reply.cost_usd == pytest.approx((reply.prompt_tokens * 2.5 + reply.completion_tokens * 10.0) / 1e6)
    (request,) = server.requests
    assert request["model"] == "gpt-4o-2024-08-06" and request["messages"] == MESSAGES
    assert request["temperature"] == 0.0 and request["seed"] == 0


def test_429_is_retried_after_the_retry_after_it_names(server):
    server.inject(llm_server.rate_limited(1.2))
    backend = backend_for(server)
    start = time.perf_counter()
    reply = complete(backend)
    waited = time.perf_counter() - start
    assert reply.text == "Happiness"
    assert 1.2 <= waited < 2.0  # the server's wait, not the 0.05 s backoff
    assert server.request_count == 2 and backend.stats.retries == 1
    assert backend.stats.waited_seconds == pytest.approx(1.2)


def test_500_then_success_and_slow_reply_then_success(server):
    server.inject(llm_server.server_error(500), llm_server.server_error(503), llm_server.slow(1.5))
    backend = backend_for(server)
    start = time.perf_counter()
    reply = complete(backend)
    assert reply.text == "Happiness"
    assert server.request_count == 4 and backend.stats.retries == 3
    assert backend.stats.errors == {"InternalServerError": 2, "APITimeoutError": 1}
    assert time.perf_counter() - start < 1.5  # the slow reply was given up at the 0.5 s time-out


def test_retries_run_out_as_api_unavailable(server):
    server.inject(*[llm_server.server_error()] * 3)
    with pytest.raises(LLMCallFailed) as failure:
        complete(backend_for(server, max_retries=2))
    assert failure.value.reason == "api_unavailable" and "after 3 attempts" in failure.value.message
    assert server.request_count == 3


def test_a_malformed_body_is_retried_and_non_completion_json_fails_the_call(server):
    # A body that is not JSON (cut off, or garbage) is retried like a dropped connection ...
    server.inject(llm_server.malformed())
    assert complete(backend_for(server)).text == "Happiness" and server.request_count == 2
    server.inject(llm_server.malformed(), llm_server.malformed())
    with pytest.raises(LLMCallFailed) as failure:
        complete(backend_for(server, max_retries=1))
    assert failure.value.reason == "malformed_response" and "after 2 attempts" in failure.value.message
    # ... while well-formed JSON that is no completion is not: the same server would say the same.
    count = server.request_count
    server.inject(llm_server.Fault(body=b'{"object": "nothing"}'))
    with pytest.raises(LLMCallFailed) as failure:
        complete(backend_for(server))
    assert failure.value.reason == "malformed_response" and server.request_count == count + 1


def test_a_responder_error_is_a_rejected_request_not_a_crash():
    def responder(request):
        raise ValueError("cannot read this prompt")

    with llm_server.LocalLLMServer(responder=responder) as server:
        with pytest.raises(LLMCallFailed) as failure:
            complete(backend_for(server))
        assert failure.value.reason == "api_rejected" and "cannot read this prompt" in failure.value.message
        assert server.responder_errors == ["ValueError: cannot read this prompt"]


def test_a_refused_key_stops_everything_and_never_shows_the_key():
    with llm_server.LocalLLMServer(responder=lambda r: "x", api_key="right-key") as server:
        with pytest.raises(BackendConfigError) as failure:
            complete(backend_for(server, api_key="wrong-secret-key"))
        assert "401" in str(failure.value) and "wrong-secret-key" not in str(failure.value)
        assert complete(backend_for(server, api_key="right-key")).text == "x"


def test_no_key_anywhere_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(BackendConfigError, match="OPENAI_API_KEY"):
        OpenAIBackend(base_url="http://127.0.0.1:9/v1")


def test_base_url_and_key_come_from_the_environment(server, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "from-env")
    assert complete(OpenAIBackend()).text == "Happiness"
    assert server.request_count == 1


def test_the_cache_answers_a_repeated_request_without_sending_it(server, tmp_path):
    with ResponseCache(tmp_path / "cache.sqlite") as cache:
        first = complete(backend_for(server, cache=cache))
        second_backend = backend_for(server, cache=cache)
        second = complete(second_backend)
        assert server.request_count == 1 and second.from_cache and second.text == first.text
        assert second.cost_usd == first.cost_usd and second_backend.stats.requests_sent == 0
        # Another seed is another request.
        complete(backend_for(server, cache=cache, seed=1))
        assert server.request_count == 2 and len(cache) == 2
        parameters = {"temperature": 0.0, "seed": 0, "max_completion_tokens": 1024}
        key = request_key("gpt-4o-2024-08-06", MESSAGES, parameters)
        assert key in cache.keys()


def test_empty_answers_are_not_cached(server, tmp_path):
    server.inject(llm_server.answer(""))
    with ResponseCache(tmp_path / "cache.sqlite") as cache:
        assert complete(backend_for(server, cache=cache)).text == ""
        assert len(cache) == 0
        assert complete(backend_for(server, cache=cache)).text == "Happiness"
        assert len(cache) == 1


def test_retry_after_forms():
    assert retry_after_seconds({"retry-after": "2"}) == 2.0
    assert retry_after_seconds({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    date = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 28 <= retry_after_seconds({"retry-after": date}) <= 31
    assert retry_after_seconds({"retry-after": "soon"}) is None
    assert retry_after_seconds({}) is None


def test_unknown_routes_and_bad_bodies_get_http_errors(server):
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(server.base_url + "/models")
    assert missing.value.code == 404
    bad = urllib.request.Request(server.base_url + "/chat/completions", data=b"[1, 2", method="POST")
    with pytest.raises(urllib.error.HTTPError) as rejected:
        urllib.request.urlopen(bad)
    assert rejected.value.code == 400


def test_the_default_responder_plays_au2des_from_the_prompt_alone():
    from dataset_builders.exp_cot.offline_writer import write_description

    prompts = PromptSet.load()
    au = prototype_vector("Surprise")
    messages = [
        {"role": "system", "content": prompts.render("system")},
        {"role": "user", "content": prompts.render("au2des", **face_values(au))},
    ]
    with llm_server.LocalLLMServer() as server:
        reply = complete(backend_for(server), LLMRequest("au2des", messages, Facts(au)))
    assert reply.text == write_description(au)
