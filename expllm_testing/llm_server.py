"""A local OpenAI-compatible chat server, for running the Exp-CoT Engine over real HTTP without any API.

It speaks `POST /v1/chat/completions` on 127.0.0.1 (stdlib `ThreadingHTTPServer`, one thread per connection) and
answers each request from a responder function. The default responder plays the LLM with the offline writer: it reads
the process and the face's facts back out of the prompt text (`PromptSet.match`), the way an LLM only has the prompt.
For tests and benchmarks it can add a fixed latency to every request and inject faults into the next requests: a 429
with Retry-After, a 5xx, a reply slower than the client's time-out, a body that is not JSON, a scripted answer. It
counts the requests it gets and keeps their bodies; `GET /local/stats` tells the count to another process.

    python -m expllm_testing.llm_server --port 8000 --latency 0.2
    OPENAI_BASE_URL=http://127.0.0.1:8000/v1 OPENAI_API_KEY=local \
        python -m dataset_builders.exp_cot synthetic --backend openai ...

Usage counts in the replies are estimates (about four characters a token), enough to exercise the engine's cost code.
"""

import argparse
import itertools
import json
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import NamedTuple

from dataset_builders.exp_cot.prompting import PromptSet, parse_au_list

# ---------------------------------------------------------------------------------------------------------------------
# Faults


@dataclass(frozen=True)
class Fault:
    """What the server does with one request instead of its normal answer.

    It first waits `delay` seconds (on top of the server's latency). Then it sends `body` with `status` and `headers`
    when `body` is set; otherwise a normal completion whose content is `content` (any JSON value: a string, a list of
    content parts, a number...), or the responder's when None. With `trickle` it sends the response one byte every
    `trickle` seconds; with `echo_authorization` it answers a 400 whose message quotes the request's Authorization
    header, as some proxies do.
    """

    status: int = 200
    delay: float = 0.0
    headers: tuple = ()
    body: bytes | None = None
    content: object = None
    trickle: float = 0.0
    echo_authorization: bool = False


def _error_body(message, kind):
    return json.dumps({"error": {"message": message, "type": kind, "param": None, "code": None}}).encode()


def rate_limited(retry_after):
    """A 429 that asks the client to wait `retry_after` seconds."""
    return Fault(
        429, headers=(("Retry-After", f"{retry_after:g}"),), body=_error_body("rate limited", "rate_limit_exceeded")
    )


def server_error(status=500):
    return Fault(status, body=_error_body("injected server error", "server_error"))


def slow(delay):
    """A normal answer, sent only after `delay` extra seconds."""
    return Fault(delay=delay)


def malformed():
    """A 200 whose body is not JSON at all."""
    return Fault(200, headers=(("Content-Type", "application/json"),), body=b"{this is not json")


def answer(content):
    """A normal completion with this content instead of the responder's."""
    return Fault(content=content)


def quota_exhausted():
    """OpenAI's 429 for an account without credit: no Retry-After, code insufficient_quota."""
    body = json.dumps(
        {"error": {"message": "You exceeded your current quota.", "type": "insufficient_quota", "param": None,
                   "code": "insufficient_quota"}}
    ).encode()  # fmt: skip
    return Fault(429, body=body)


def trickling(seconds_per_byte):
    """A normal answer sent one byte every `seconds_per_byte`: each read is quick, the whole is not."""
    return Fault(trickle=seconds_per_byte)


def echoing_authorization():
    """A 400 whose error message quotes the request's Authorization header."""
    return Fault(echo_authorization=True)


# ---------------------------------------------------------------------------------------------------------------------
# The default responder: the offline writer reading the engine's prompts


class Turn(NamedTuple):
    """One message of a conversation, with the process and values of the template that wrote it (None if none)."""

    role: str
    content: str
    process: str | None
    values: dict | None


class OfflineWriterResponder:
    """Answers each Exp-CoT process prompt with the offline writer, from the prompt text alone."""

    def __init__(self, prompts=None):
        self.prompts = prompts if prompts is not None else PromptSet.load()

    def __call__(self, request):
        from dataset_builders.exp_cot.offline_writer import classify_description, refine, write_description
        from dataset_builders.exp_cot.verification import verify_description

        turns = [self._read(message) for message in request["messages"]]
        process, values = turns[-1].process, turns[-1].values
        if turns[-1].role != "user" or process is None:
            raise ValueError(f"the last message is not a prompt of {self.prompts.name}: {turns[-1].content!r:.200}")
        if process == "verify":  # a conversation of its own: everything is in the prompt
            au = parse_au_list(values["au_list"])
            verification = verify_description(values["description"], au, values["label"])
            return "PASS" if verification.passed else f"FAIL: {verification.feedback()}"

        face = next((turn for turn in turns if turn.process == "au2des"), None)
        if face is None:
            raise ValueError("the conversation has no AU2Des prompt to read the action units from")
        au = parse_au_list(face.values["au_list"])
        if process in ("au2des", "reflect"):
            return write_description(au)
        if process == "reveal":
            return write_description(au, target_label=values["label"])

        # Des2Exp and refinement read the latest analysis: the answer to the latest AU2Des or reflection prompt.
        asked = max(i for i, turn in enumerate(turns) if turn.process in ("au2des", "reflect", "reveal"))
        if asked + 1 >= len(turns) or turns[asked + 1].role != "assistant":
            raise ValueError("the conversation has no answer to its latest analysis prompt")
        description = turns[asked + 1].content
        if process == "des2exp":
            return classify_description(description) or "Undecided"
        if process in ("refine", "refine_retry"):
            label = next(turn.values["label"] for turn in reversed(turns) if turn.process == "refine")
            return refine(description, au, label)
        raise ValueError(f"no answer for a {process!r} prompt")

    def _read(self, message):
        role, content = message.get("role"), message.get("content")
        if not isinstance(content, str):
            raise ValueError(f"message content must be a string, got {type(content).__name__}")
        found = self.prompts.match(content) if role == "user" else None
        return Turn(role, content, *(found or (None, None)))


# ---------------------------------------------------------------------------------------------------------------------
# The server


STATS_PATH = "/local/stats"


def estimate_tokens(text):
    return max(1, round(len(text) / 4)) if text else 0


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the OpenAI client expects
    timeout = 60  # drop a connection idle this long

    def setup(self):
        super().setup()
        # Headers and body leave in two writes; without this, Nagle's algorithm holds the body back until the client
        # acknowledges the headers, which a delayed ACK postpones by ~40 ms: a latency the test did not ask for.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format, *args):
        pass  # one line per request on stderr would bury the engine's progress bar

    def do_POST(self):
        app = self.server.app
        if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
            self._send(404, _error_body(f"no route {self.path}", "not_found"))
            return
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        try:
            request = json.loads(raw)
            if not isinstance(request.get("messages"), list) or not request["messages"]:
                raise ValueError("'messages' must be a non-empty list")
        except (ValueError, AttributeError) as error:
            self._send(400, _error_body(f"bad request body: {error}", "invalid_request_error"))
            return
        fault = app.receive(request)
        time.sleep(app.latency + fault.delay)
        if app.api_key is not None and self.headers.get("Authorization") != f"Bearer {app.api_key}":
            self._send(401, _error_body("incorrect API key", "invalid_request_error"))
            return
        if fault.echo_authorization:
            quoted = f"bad request with headers {{'Authorization': '{self.headers.get('Authorization')}'}}"
            self._send(400, _error_body(quoted, "invalid_request"))
            return
        if fault.body is not None:
            self._send(fault.status, fault.body, fault.headers)
            return
        content = fault.content
        if content is None:
            try:
                content = app.responder(request)
            except Exception as error:  # the responder's problem is the client's 400, not the server's crash
                app.responder_errors.append(f"{type(error).__name__}: {error}")
                self._send(400, _error_body(f"the responder could not answer: {error}", "invalid_request_error"))
                return
        self._send(200, json.dumps(app.completion(request, content)).encode(), trickle=fault.trickle)

    def do_GET(self):
        # Not part of the OpenAI API: lets a process that started the server as a command read its request count.
        if self.path.rstrip("/") == STATS_PATH:
            self._send(200, json.dumps({"requests": self.server.app.request_count}).encode())
            return
        self._send(404, _error_body(f"no route {self.path}", "not_found"))

    def _send(self, status, body, headers=(), trickle=0.0):
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            for name, value in headers:
                if name.lower() != "content-type":
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if trickle:
                for index in range(len(body)):
                    self.wfile.write(body[index : index + 1])
                    self.wfile.flush()
                    time.sleep(trickle)
            else:
                self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up waiting (its time-out): nobody is left to answer


class LocalLLMServer:
    """An OpenAI-compatible chat server on 127.0.0.1 in a background thread. Use as a context manager.

    responder: function(request body dict) -> assistant content; default `OfflineWriterResponder()`.
    latency: seconds every request waits before its answer (settable while running).
    api_key: when set, requests without `Authorization: Bearer <api_key>` get a 401.
    """

    def __init__(self, responder=None, *, latency=0.0, api_key=None, host="127.0.0.1", port=0):
        self.responder = responder if responder is not None else OfflineWriterResponder()
        self.latency = latency
        self.api_key = api_key
        self.requests = []  # every request body received, in order of arrival
        self.responder_errors = []
        self._faults = deque()
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._httpd = ThreadingHTTPServer((host, port), _Handler, bind_and_activate=False)
        self._httpd.daemon_threads = True
        # The stdlib's listen backlog of 5 refuses connections when a client opens dozens at once (concurrency 32).
        self._httpd.request_queue_size = 256
        self._httpd.app = self
        self._thread = None

    @property
    def base_url(self):
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    @property
    def request_count(self):
        with self._lock:
            return len(self.requests)

    def inject(self, *faults):
        """Serve the next requests with these faults, one each, in order; later requests are answered normally."""
        with self._lock:
            self._faults.extend(faults)

    def receive(self, request):
        """Count a request and take the fault it gets (a plain Fault when none is queued)."""
        with self._lock:
            self.requests.append(request)
            return self._faults.popleft() if self._faults else Fault()

    def completion(self, request, content):
        """A chat.completion body as OpenAI sends it."""
        prompt = "".join(str(message.get("content", "")) for message in request["messages"])
        answer_text = content if isinstance(content, str) else json.dumps(content)  # a list of parts, a number...
        prompt_tokens, completion_tokens = estimate_tokens(prompt), estimate_tokens(answer_text)
        return {
            "id": f"chatcmpl-local-{next(self._ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.get("model", "local"),
            "system_fingerprint": "local",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "refusal": None},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    def start(self):
        self._httpd.server_bind()
        self._httpd.server_activate()
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="local-llm-server", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="A local OpenAI-compatible server that answers with the offline writer."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every request")
    parser.add_argument("--api-key", help="require this bearer key (default: accept any)")
    args = parser.parse_args(argv)
    with LocalLLMServer(latency=args.latency, api_key=args.api_key, host=args.host, port=args.port) as server:
        print(f"serving {server.base_url} (Ctrl-C to stop)", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            print(f"stopped after {server.request_count} requests")


if __name__ == "__main__":
    main()
