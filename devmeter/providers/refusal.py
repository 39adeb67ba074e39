"""What devmeter answers instead of the provider when it refuses a call (a cap, a pause,
a stopped session, an unanswered ask, a secret), in the error shape of the call's wire
format (`registry.error_body`) and with a status its client shows at once and does not
retry. Pure: a message in, a `Refusal` out.
"""

from __future__ import annotations

import json
from typing import Any

from devmeter.alerts import Refusal
from devmeter.providers import registry

_JSON = {"content-type": "application/json", "x-should-retry": "false"}
_TEXT = {"content-type": "text/plain; charset=utf-8", "x-should-retry": "false"}


def refusal(api: str, tool: str | None, message: str) -> Refusal:
    """The answer to a refused call of `api` from `tool`, chosen per client so that each
    shows the message as it is and does not retry (found by trying the real clients,
    see tests/test_e2e_refusals.py):

    - Anthropic (Claude Code, the SDKs): 402 `billing_error`. Claude Code prints "API
      Error: 402 devmeter: ..." and stops; on a 403 it prints "Failed to authenticate".
    - Codex CLI: 400 with the message as plain text. Codex retries any other status
      (11 attempts for a 403) and prints a 400's body verbatim; on its WebSocket, an
      `error` event with status 400 (it prints that event's JSON, and does not retry).
    - Gemini CLI (API key and Google login) and the Gemini SDKs: 403
      `PERMISSION_DENIED` in Google's shape. The CLI prints the body as it is and
      retries none of 400, 402 and 403 (a 429 it retries, 5 times over ~70 s); a
      refused router call makes it fall back to its default model, whose turn is
      refused once too.
    - Cursor: its wire format's own answer (an end-stream frame of a 200).
    - OpenAI-compatible SDKs: 403 in the provider's shape (not retried). 403, not 429:
      clients retry a 429 (Claude Code does, for minutes), and a cap will not lift by
      itself.
    """
    wire = registry.wire_format(api)
    if wire is not None and wire.refusal is not None:
        return wire.refusal(message)  # not a JSON error (Cursor's Connect streams)
    family = registry.family(api)
    if family == "anthropic":
        body = registry.error_body(api, 402, message)
        return Refusal(402, dict(_JSON), json.dumps(body).encode(), body)
    if tool == "codex" and family == "openai":
        # Codex prints this event's text as it is: the message first, then the rest.
        event: dict[str, Any] = {
            "type": "error",
            "status": 400,
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "code": "devmeter_blocked",
            },
        }
        return Refusal(400, dict(_TEXT), message.encode(), event)
    body = registry.error_body(api, 403, message)
    return Refusal(
        403, dict(_JSON), json.dumps(body).encode(), {"type": "error", "status": 403, **body}
    )
