#!/usr/bin/env python3
"""Check a TGI transcript against an independent reference of TGI's wire
format: the Python client TGI publishes (PyPI `text-generation`).

Run by server/tests/tgi_transcript.rs with the URL of the test's fake TGI,
which serves the recorded transcripts of server/tests/fixtures/tgi/, and the
file where that server recorded the request bodies OrchQueue's `tgi` adapter
sent. It checks that:
  - TGI's own client, talking to the fake server, parses every stream event
    of every transcript (its pydantic `StreamResponse`), ends the successful
    ones with `details`, and raises the exception TGI's client raises for
    each error event (`error_type` validation / generation / overloaded);
  - `/info` carries the fields the adapter reads;
  - every request body the adapter sent is a valid `text_generation.types.Request`
    (so its parameters pass TGI's own validation rules).
Prints one line per check; exits non-zero on the first failure.
"""

import json
import sys
import urllib.request

import importlib.metadata
from text_generation import Client
from text_generation.errors import GenerationError, OverloadedError, ValidationError
from text_generation.types import FinishReason, Request


def main() -> None:
    url, bodies_path = sys.argv[1], sys.argv[2]
    client = Client(url, timeout=10)
    events = 0

    def stream(prompt: str):
        return list(client.generate_stream(prompt, max_new_tokens=5, seed=42))

    for prompt, reason in (("length", FinishReason.Length), ("eos", FinishReason.EndOfSequenceToken)):
        responses = stream(prompt)
        events += len(responses)
        last = responses[-1]
        assert last.details is not None, f"{prompt}: the last event carries details"
        assert last.details.finish_reason == reason, (prompt, last.details)
        assert all(r.details is None for r in responses[:-1]), f"{prompt}: details only at the end"
        text = "".join(r.token.text for r in responses if not r.token.special)
        assert text == last.generated_text, (prompt, text, last.generated_text)
        print(f"ok: {prompt}: {len(responses)} events parse as StreamResponse, finish {reason.value}")

    for prompt, error in (
        ("validation", ValidationError),
        ("generation", GenerationError),
        ("overloaded", OverloadedError),
    ):
        try:
            parsed = 0
            for _ in client.generate_stream(prompt, max_new_tokens=5, seed=42):
                parsed += 1
        except error as raised:
            events += parsed + 1
            print(f"ok: {prompt}: {parsed} token event(s), then {error.__name__}: {raised}")
        else:
            raise AssertionError(f"{prompt}: TGI's client raised no {error.__name__}")

    with urllib.request.urlopen(f"{url}/info", timeout=10) as response:
        info = json.load(response)
    for key in ("model_id", "model_sha", "max_total_tokens", "max_concurrent_requests", "version"):
        assert key in info, f"/info lacks {key}"
    print("ok: /info has model_id, model_sha, max_total_tokens, max_concurrent_requests, version")

    with open(bodies_path) as f:
        bodies = json.load(f)
    assert bodies, "the adapter sent no request"
    for body in bodies:
        Request(**body)
    print(f"ok: {len(bodies)} request bodies of the adapter are valid TGI Requests")
    print(f"tgi wire check passed: {events} events, text-generation {importlib.metadata.version('text-generation')}")


if __name__ == "__main__":
    main()
