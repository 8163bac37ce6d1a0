"""Drive orchestratord's OpenAI surface with the official `openai` Python SDK
(ORCH-8011). Run by `server/tests/openai_sdk.rs`, which starts the server, sets
OPENAI_BASE_URL and OPENAI_API_KEY, and reads the one JSON line this prints.

    python check.py basic|errors|retry

Each scenario asserts what the SDK sees; a failed assertion exits non-zero with
its message, which the Rust test shows.
"""

import json
import sys
import time

import openai
from openai import OpenAI

MESSAGES = [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "Name a river."},
]


class Attempts:
    """Every HTTP attempt the SDK makes, through httpx's event hooks: its time,
    and for an answer the status and the retry hints."""

    def __init__(self):
        self.seen = []

    def on_request(self, request):
        self.seen.append({"t": time.monotonic(), "status": None})

    def on_response(self, response):
        self.seen[-1].update(
            status=response.status_code,
            retry_after_ms=response.headers.get("retry-after-ms"),
            retry_after=response.headers.get("retry-after"),
            should_retry=response.headers.get("x-should-retry"),
        )

    def client(self, **kwargs):
        http = openai.DefaultHttpxClient(
            event_hooks={"request": [self.on_request], "response": [self.on_response]}
        )
        return OpenAI(http_client=http, **kwargs)


def basic():
    client = OpenAI(max_retries=0)
    models = [m.id for m in client.models.list()]
    assert "default" in models, models

    raw = client.chat.completions.with_raw_response.create(
        model="default", messages=MESSAGES, max_tokens=8, seed=5
    )
    chat = raw.parse()
    chat_task = raw.headers["x-orch-task-id"]
    assert chat.object == "chat.completion", chat
    assert chat.id == f"chatcmpl-{chat_task}", chat.id
    assert chat.choices[0].message.role == "assistant"
    assert chat.choices[0].finish_reason == "length", chat.choices[0]
    assert chat.usage.completion_tokens == 8, chat.usage
    assert chat.usage.total_tokens == chat.usage.prompt_tokens + 8, chat.usage

    pieces, finish, usage = [], None, None
    stream = client.chat.completions.create(
        model="default",
        messages=MESSAGES,
        max_tokens=8,
        seed=5,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert "".join(pieces) == chat.choices[0].message.content, (pieces, chat)
    assert finish == "length" and usage.completion_tokens == 8, (finish, usage)

    raw = client.completions.with_raw_response.create(
        model="default", prompt="Once upon", max_tokens=6, seed=3
    )
    completion = raw.parse()
    completion_task = raw.headers["x-orch-task-id"]
    assert completion.object == "text_completion", completion
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model="default", prompt="Once upon", max_tokens=6, seed=3, stream=True
        )
        if c.choices
    )
    assert streamed == completion.choices[0].text, (streamed, completion)
    return {
        "chat_task": chat_task,
        "chat_text": chat.choices[0].message.content,
        "completion_task": completion_task,
        "completion_text": completion.choices[0].text,
    }


def expect(error_type, call, attempts):
    """The call raises `error_type` after exactly one attempt: the SDK did not
    retry (x-should-retry: false, or max_retries=0)."""
    before = len(attempts.seen)
    try:
        call()
    except error_type as error:
        assert len(attempts.seen) - before == 1, attempts.seen[before:]
        return error
    raise AssertionError(f"no {error_type.__name__}")


def errors():
    attempts = Attempts()
    client = attempts.client(max_retries=2)
    chat = client.chat.completions.create
    out = {}

    e = expect(openai.BadRequestError, lambda: chat(model="open", messages=MESSAGES, n=2), attempts)
    assert (e.code, e.param, e.type) == ("INVALID_PARAMS", "n", "invalid_request_error"), e.body
    out["400"] = e.code

    wrong = attempts.client(max_retries=2, api_key="sk-wrong")
    e = expect(
        openai.AuthenticationError,
        lambda: wrong.chat.completions.create(model="open", messages=MESSAGES),
        attempts,
    )
    assert e.code == "UNAUTHORIZED" and e.type == "authentication_error", e.body
    out["401"] = e.code

    e = expect(openai.NotFoundError, lambda: chat(model="gpt-4o", messages=MESSAGES), attempts)
    assert e.code == "model_not_found" and e.param == "model", e.body
    out["404"] = e.code

    # The SDK retries a 409 by default; x-should-retry: false stops it, since the
    # same conflicting body cannot succeed.
    chat(model="open", messages=MESSAGES, max_tokens=1, extra_headers={"X-Orch-Task-Id": "dup"})
    other = [{"role": "user", "content": "something else"}]
    e = expect(
        openai.ConflictError,
        lambda: chat(model="open", messages=other, max_tokens=1, extra_headers={"X-Orch-Task-Id": "dup"}),
        attempts,
    )
    assert e.code == "CONFLICT" and attempts.seen[-1]["should_retry"] == "false", e.body
    out["409"] = e.code

    once = attempts.client(max_retries=0)
    e = expect(
        openai.RateLimitError,
        lambda: once.chat.completions.create(model="default", messages=MESSAGES),
        attempts,
    )
    assert e.code == "ADMISSION_REJECT" and e.type == "rate_limit_error", e.body
    hint = attempts.seen[-1]
    assert hint["retry_after_ms"] and hint["retry_after"] and hint["should_retry"] == "true", hint
    out["429"] = e.code

    e = expect(
        openai.InternalServerError,
        lambda: once.chat.completions.create(model="down", messages=MESSAGES),
        attempts,
    )
    assert e.status_code == 503 and e.code in ("POOL_UNREADY", "POOL_UNAVAILABLE"), e.body
    assert e.type == "server_error" and attempts.seen[-1]["retry_after_ms"], e.body
    out["503"] = e.code

    # A replica lost mid-stream: the tokens so far, then the SDK raises the error
    # chunk as an APIError.
    pieces = []
    try:
        for chunk in chat(model="crashy", messages=MESSAGES, max_tokens=8, stream=True):
            pieces.extend(c.delta.content or "" for c in chunk.choices)
        raise AssertionError("the stream did not fail")
    except openai.APIError as error:
        assert error.code == "WORKER_RESET" and error.type == "server_error", error.body
        out["stream"] = error.code
    assert len("".join(pieces).split()) == 2, pieces
    return out


def retry():
    """The queue is full: the SDK's own retry waits the server's hint
    (retry-after-ms), not its default backoff (0.5 s doubling, jittered)."""
    attempts = Attempts()
    client = attempts.client(max_retries=4)
    chat = client.chat.completions.create(
        model="default", messages=MESSAGES, max_tokens=1, extra_headers={"X-Orch-Task-Id": "retried"}
    )
    assert chat.choices[0].finish_reason == "length", chat
    return {"attempts": attempts.seen}


if __name__ == "__main__":
    result = {"basic": basic, "errors": errors, "retry": retry}[sys.argv[1]]()
    print(json.dumps(result))
