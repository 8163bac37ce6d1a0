"""Schemathesis checks of OrchQueue's own (ORCH-9018), loaded with SCHEMATHESIS_HOOKS.

`state_independent_acceptance`: a request the document says is valid may be refused
only for a reason that depends on the server's state or configuration, each listed in
the spec (ORCH-9018) and here. Anything else — a 400 naming another field, a 405, a
413, a 422 — means the document is looser than the server.
"""

import json

import schemathesis

# 400 INVALID_PARAMS whose message names one of these fields (`field: why`): the
# pool's configuration (`pool_id` unknown, `max_tokens` over the pool's limit or the
# model's context, `prompt` over the pool's byte limit, `sampler_profile_version`
# not the pool's), a cursor this server did not issue, a session over its turn limit,
# a `model_ref` the pool's engines do not serve.
STATE_DEPENDENT_FIELDS = (
    "model_ref",
    "pool_id",
    "max_tokens",
    "prompt",
    "sampler_profile_version",
    "cursor",
    "session_id",
    # The OpenAI surface (ORCH-8004): `max_completion_tokens` over the pool's limit,
    # `messages` over its byte limit, a session over its turn limit.
    "max_completion_tokens",
    "messages",
    "X-Orch-Session-Id",
)
# Codes that depend on state whatever the request: no such task/session/pool, an id
# reused with another body, a full queue or a rate limit, a draining or unready pool.
STATE_DEPENDENT_CODES = {
    404: {"NOT_FOUND", "model_not_found"},
    409: {"CONFLICT"},
    429: {"ADMISSION_REJECT"},
    503: {"POOL_UNREADY", "POOL_UNAVAILABLE"},
}


@schemathesis.check
def state_independent_acceptance(ctx, response, case):
    status = response.status_code
    if status < 400 or status >= 500 and status != 503:
        return None
    try:
        envelope = json.loads(response.content)
    except ValueError:
        raise AssertionError(f"{status} without a JSON error envelope: {response.content[:200]!r}")
    # The OpenAI surface answers `{"error": {message, type, param, code}}` (ORCH-8008).
    if isinstance(envelope.get("error"), dict):
        error = envelope["error"]
        envelope = {"code": error.get("code"), "message": f"{error.get('param')}: {error.get('message', '')}"}
    code = envelope.get("code")
    message = envelope.get("message", "")
    if status == 400 and code == "INVALID_PARAMS":
        field = message.split(":", 1)[0]
        if field in STATE_DEPENDENT_FIELDS:
            return None
        raise AssertionError(
            f"a schema-valid request was refused: 400 {code} {message!r}; "
            "the document must declare this bound (contracts::limits), or the spec "
            "must list it as state-dependent (ORCH-9018)"
        )
    if code in STATE_DEPENDENT_CODES.get(status, set()):
        return None
    raise AssertionError(f"a schema-valid request was refused: {status} {code} {message!r}")
