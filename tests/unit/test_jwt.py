"""Recording-ready JWTs as lb_core.callbacks verifies and signs them (PyJWT, HS256 pinned)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import jwt
import pytest

from lb_core.deliveries import RECORDING_READY_ALGORITHM, sign_recording_ready, verify_recording_ready


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _pad(segment: str) -> str:
    return segment + "=" * (-len(segment) % 4)


def _forge(header: dict, payload: object, secret: str, digest=hashlib.sha256) -> str:
    """A token signed by hand, so that nothing here depends on the library under test to make it."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    signature = hmac.new(secret.encode(), signing_input.encode(), digest).digest()
    return f"{signing_input}.{_b64(signature)}"


def test_the_algorithm_is_hs256_as_bbb_signs() -> None:
    assert RECORDING_READY_ALGORITHM == "HS256"


def test_sign_is_a_compact_hs256_jws_an_integration_can_check_by_hand() -> None:
    payload = {"meeting_id": "room-1", "record_id": "abc-123"}
    token = sign_recording_ready(payload, "s3cret")
    header_segment, payload_segment, signature_segment = token.split(".")
    assert json.loads(base64.urlsafe_b64decode(_pad(header_segment))) == {"alg": "HS256", "typ": "JWT"}
    assert json.loads(base64.urlsafe_b64decode(_pad(payload_segment))) == payload
    expected = hmac.new(b"s3cret", f"{header_segment}.{payload_segment}".encode(), hashlib.sha256).digest()
    assert base64.urlsafe_b64decode(_pad(signature_segment)) == expected
    assert "=" not in token
    assert verify_recording_ready(token, "s3cret") == payload


def test_verify_accepts_the_well_known_jwt_io_example() -> None:
    token = (
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9."
        "eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ."
        "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
    )
    assert verify_recording_ready(token, "your-256-bit-secret") == {
        "sub": "1234567890",
        "name": "John Doe",
        "iat": 1516239022,
    }


def test_verify_accepts_a_header_without_typ_as_ruby_jwt_sends() -> None:
    token = _forge({"alg": "HS256"}, {"meeting_id": "m", "record_id": "r"}, "key")
    assert verify_recording_ready(token, "key") == {"meeting_id": "m", "record_id": "r"}


def test_unicode_payload_and_secret_round_trip() -> None:
    payload = {"meeting_id": "Raum Ä ✓", "record_id": "x"}
    assert verify_recording_ready(sign_recording_ready(payload, "clé"), "clé") == payload


@pytest.mark.parametrize(
    "token",
    [
        "",
        "abc",
        "a.b",
        "a.b.c.d",
        "!!!.e30.abc",
        "e30.e30.",  # header without alg
        "eyJhbGciOiJIUzI1NiJ9.e30.a+b/",  # not base64url
        "eyJhbGciOiJIUzI1NiJ9.e30.abcde",  # impossible base64 length
        "bm90IGpzb24.e30.abc",  # header is not JSON
        "W10.e30.abc",  # header is a JSON list
        "eyJhbGciOiJIUzI1NiJ9.e30.Zm9v\u00e9",  # non-ASCII
    ],
)
def test_malformed_tokens_are_refused(token: str) -> None:
    with pytest.raises(jwt.PyJWTError):
        verify_recording_ready(token, "secret")


def test_forged_tampered_and_wrong_key_tokens_are_refused() -> None:
    token = sign_recording_ready({"meeting_id": "m", "record_id": "r"}, "right")
    with pytest.raises(jwt.InvalidSignatureError):
        verify_recording_ready(token, "wrong")
    forged = _forge({"alg": "HS256", "typ": "JWT"}, {"meeting_id": "m", "record_id": "r"}, "attacker")
    with pytest.raises(jwt.InvalidSignatureError):
        verify_recording_ready(forged, "right")
    header, _, signature = token.split(".")
    other_payload = _b64(b'{"meeting_id":"m","record_id":"other"}')
    with pytest.raises(jwt.InvalidSignatureError):
        verify_recording_ready(f"{header}.{other_payload}.{signature}", "right")
    with pytest.raises(jwt.PyJWTError):
        verify_recording_ready(token, "")


def test_alg_none_and_any_other_algorithm_are_refused() -> None:
    none_header = _b64(b'{"alg":"none","typ":"JWT"}')
    unsigned = f"{none_header}.{_b64(b'{}')}."
    with pytest.raises(jwt.InvalidAlgorithmError):
        verify_recording_ready(unsigned, "secret")
    # Correctly signed with the right secret, but not with the pinned algorithm: refused all the same.
    for algorithm, digest in (("HS384", hashlib.sha384), ("HS512", hashlib.sha512)):
        with pytest.raises(jwt.InvalidAlgorithmError):
            verify_recording_ready(_forge({"alg": algorithm}, {"meeting_id": "m"}, "secret", digest), "secret")
    with pytest.raises(jwt.InvalidAlgorithmError):
        verify_recording_ready(_forge({"alg": "RS256"}, {"meeting_id": "m"}, "secret"), "secret")


def test_payload_must_be_an_object() -> None:
    with pytest.raises(jwt.DecodeError):
        verify_recording_ready(_forge({"alg": "HS256"}, ["not", "an", "object"], "secret"), "secret")


def test_expired_and_not_yet_valid_tokens_are_refused() -> None:
    expired = sign_recording_ready({"meeting_id": "m", "exp": int(time.time()) - 60}, "secret")
    with pytest.raises(jwt.ExpiredSignatureError):
        verify_recording_ready(expired, "secret")
    future = sign_recording_ready({"meeting_id": "m", "nbf": int(time.time()) + 60}, "secret")
    with pytest.raises(jwt.ImmatureSignatureError):
        verify_recording_ready(future, "secret")
    valid = sign_recording_ready({"meeting_id": "m", "exp": int(time.time()) + 60}, "secret")
    assert verify_recording_ready(valid, "secret")["meeting_id"] == "m"
