"""Routing fallback: whether a rewritten request's failure deserves one retry as sent."""

from __future__ import annotations

import json

# Statuses the original request would have met as well: the key, the account, the
# rate limit, the bill, the body's size. Retrying with the original model is pointless.
_NOT_THE_MODEL_STATUSES = frozenset({401, 402, 403, 408, 413, 429})
_NOT_THE_MODEL_ERRORS = frozenset(
    {
        "authentication_error",
        "permission_error",
        "rate_limit_error",
        "billing_error",
        "request_too_large",
        "overloaded_error",
        "invalid_api_key",
        "insufficient_quota",
        "rate_limit_exceeded",
    }
)


def should_fallback(rewritten_status: int, body_bytes: bytes) -> bool:
    """Whether a rewritten request's failure calls for one retry with the original model.

    A 4xx the original request would not have met (the target refused a parameter,
    the model id, the prompt length) says yes; auth, quota, rate-limit and size
    errors, which the original would have met too, say no, as do 5xx (not the
    rewrite's fault) and successes.
    """
    if not 400 <= rewritten_status < 500 or rewritten_status in _NOT_THE_MODEL_STATUSES:
        return False
    try:
        payload = json.loads(body_bytes)
    except (ValueError, UnicodeDecodeError):
        return True
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict):
        kinds = {str(error.get("type")), str(error.get("code"))}
        if kinds & _NOT_THE_MODEL_ERRORS:
            return False
    return True
