"""Minimal HMAC JSON Web Tokens (HS256/HS384/HS512), enough for BBB's recording-ready callback.

BBB POSTs ``signed_parameters=<JWT>`` whose payload is ``{"meeting_id": ..., "record_id": ...}``, signed
HS256 with the shared secret of the server that hosted the meeting. The load balancer has to verify
those and re-sign them with its own secret, so it needs both directions. Only HMAC algorithms exist
here on purpose: ``alg: none`` and anything asymmetric are refused, never guessed at.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

ALGORITHMS: dict[str, Callable[..., Any]] = {
    "HS256": hashlib.sha256,
    "HS384": hashlib.sha384,
    "HS512": hashlib.sha512,
}
DEFAULT_ALGORITHMS = ("HS256", "HS384", "HS512")

# base64url without padding: anything else (padding, '+', '/', whitespace) is a malformed token.
_B64URL = re.compile(r"^[A-Za-z0-9_-]*$")
# Far more than any callback needs; bounds the work an attacker can make us do per token.
MAX_TOKEN_LENGTH = 64 * 1024


class JwtError(ValueError):
    """A token that is malformed, uses a refused algorithm, has a bad signature or has expired."""


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(segment: str) -> bytes:
    if not _B64URL.match(segment) or len(segment) % 4 == 1:
        raise JwtError("malformed base64url segment")
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise JwtError("malformed base64url segment") from None


def _json_segment(segment: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(_b64decode(segment).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise JwtError(f"{what} is not valid JSON") from None
    if not isinstance(value, dict):
        raise JwtError(f"{what} is not a JSON object")
    return value


def _compact(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _sign(signing_input: bytes, secret: str, algorithm: str) -> bytes:
    return hmac.new(secret.encode("utf-8"), signing_input, ALGORITHMS[algorithm]).digest()


def encode(payload: dict[str, Any], secret: str, algorithm: str = "HS256") -> str:
    """A compact JWS of ``payload`` with header ``{"typ":"JWT","alg":...}``, as BBB and Scalelite send."""
    if algorithm not in ALGORITHMS:
        raise JwtError(f"unsupported algorithm {algorithm!r}")
    header = {"typ": "JWT", "alg": algorithm}
    signing_input = f"{_b64encode(_compact(header))}.{_b64encode(_compact(payload))}"
    signature = _sign(signing_input.encode("ascii"), secret, algorithm)
    return f"{signing_input}.{_b64encode(signature)}"


def decode(
    token: str,
    secrets: Sequence[str],
    algorithms: Sequence[str] = DEFAULT_ALGORITHMS,
    *,
    leeway: float = 0.0,
) -> dict[str, Any]:
    """The payload of ``token`` if any of ``secrets`` verifies it; raises JwtError otherwise.

    Several secrets serve key rotation and several backends alike. Every secret is tried, with a
    constant-time compare, so the time taken does not tell which one matched. ``exp``/``nbf`` are
    honoured when present (BBB's own tokens carry neither).
    """
    if isinstance(secrets, str):  # a lone str is a Sequence[str] too: do not try it char by char
        secrets = (secrets,)
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH or not token.isascii():
        raise JwtError("malformed token")
    parts = token.split(".")
    if len(parts) != 3:
        raise JwtError("a JWT has exactly three segments")
    header_segment, payload_segment, signature_segment = parts
    header = _json_segment(header_segment, "header")
    algorithm = header.get("alg")
    if not isinstance(algorithm, str) or algorithm not in ALGORITHMS or algorithm not in algorithms:
        raise JwtError(f"algorithm {algorithm!r} is not allowed")
    signature = _b64decode(signature_segment)
    signing_input = f"{header_segment}.{payload_segment}".encode("ascii")
    verified = False
    for secret in secrets:
        if hmac.compare_digest(_sign(signing_input, secret, algorithm), signature):
            verified = True
    if not verified:
        raise JwtError("signature verification failed")
    payload = _json_segment(payload_segment, "payload")
    now = time.time()
    expires = payload.get("exp")
    if isinstance(expires, int | float) and not isinstance(expires, bool) and now > expires + leeway:
        raise JwtError("token has expired")
    not_before = payload.get("nbf")
    if isinstance(not_before, int | float) and not isinstance(not_before, bool) and now < not_before - leeway:
        raise JwtError("token is not valid yet")
    return payload
